using System.Text.Json;
using System.Text.Json.Nodes;
using OrtLora.Lora;

namespace OrtLora.Training;

/// <summary>Where a run stands after step N: the global step, the data position and the seed that drive shuffling,
/// and the best eval so far (load_best_model_at_end, early stopping). Saved as trainer_state.json like the Hugging Face
/// Trainer's (best_metric, best_global_step and the early-stopping counter under its names).</summary>
public sealed record TrainerState(int GlobalStep, int Epoch, long DataIndex, int Seed, long TokensSeen)
{
    public BestEval? Best { get; init; }
    /// <summary>reduce_lr_on_plateau's state (<see cref="ReduceLrOnPlateau"/>), null with other schedules.</summary>
    public PlateauState? Plateau { get; init; }
    /// <summary>Batches done of the length group starting at DataIndex (--group-by-length).</summary>
    public int DataSkipBatches { get; init; }
    public Data.DataPosition Position => new(Epoch, DataIndex, DataSkipBatches);

    public JsonObject ToJson() => new()
    {
        ["global_step"] = GlobalStep, ["epoch"] = Epoch, ["data_index"] = DataIndex, ["data_skip_batches"] = DataSkipBatches,
        ["seed"] = Seed, ["tokens_seen"] = TokensSeen,
        ["best_metric"] = Best?.Metric, ["best_global_step"] = Best?.Step, ["early_stopping_patience_counter"] = Best?.EvalsWithoutImprovement ?? 0,
        ["plateau"] = Plateau is { } p ? new JsonObject
        {
            ["lr"] = p.Lr, ["best"] = p.Best, ["num_bad_epochs"] = p.BadEvals, ["cooldown_counter"] = p.Cooldown,
        } : null,
    };

    public static TrainerState FromJson(JsonNode j) => new(
        j["global_step"]!.GetValue<int>(), j["epoch"]!.GetValue<int>(), j["data_index"]!.GetValue<long>(),
        j["seed"]!.GetValue<int>(), j["tokens_seen"]!.GetValue<long>())
    {
        DataSkipBatches = j["data_skip_batches"]?.GetValue<int>() ?? 0,
        Plateau = j["plateau"] is JsonObject p ? new PlateauState(p["lr"]!.GetValue<double>(), p["best"]?.GetValue<double>(),
            p["num_bad_epochs"]!.GetValue<int>(), p["cooldown_counter"]!.GetValue<int>()) : null,
        Best = j["best_metric"] is { } metric && j["best_global_step"] is { } step
            ? new BestEval(metric.GetValue<double>(), step.GetValue<int>(), j["early_stopping_patience_counter"]?.GetValue<int>() ?? 0) : null,
    };
}

/// <summary>The lowest eval loss so far, its step, and how many evaluations since have not improved on it by more than
/// the early-stopping threshold.</summary>
public sealed record BestEval(double Metric, int Step, int EvalsWithoutImprovement);

/// <summary>checkpoint-N/: the adapter (PEFT format), the optimizer moments, trainer_state.json. Written to a temp
/// folder and renamed, so a run killed mid-save never leaves a half checkpoint that resume would pick.</summary>
public static class Checkpoint
{
    public const string AdapterFile = "adapter_model.safetensors";
    public const string ConfigFile = "adapter_config.json";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string StateFile = "trainer_state.json";

    /// <param name="optimizer">moments and raw parameters for an exact resume; null with save_only_model</param>
    public static string Save(string outputDir, TrainerState state, LoraConfig config,
        IReadOnlyDictionary<string, SafeTensor> adapter, IReadOnlyDictionary<string, SafeTensor>? optimizer)
    {
        var final = Path.Combine(outputDir, $"checkpoint-{state.GlobalStep}");
        var tmp = Path.Combine(outputDir, $".tmp-checkpoint-{state.GlobalStep}-{Environment.ProcessId}");
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        SafeTensors.Write(Path.Combine(tmp, AdapterFile), adapter, new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(tmp, ConfigFile), config.ToPeftJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (optimizer is not null) SafeTensors.Write(Path.Combine(tmp, OptimizerFile), optimizer);
        File.WriteAllText(Path.Combine(tmp, StateFile), state.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (Directory.Exists(final)) Directory.Delete(final, true);
        Directory.Move(tmp, final);
        return final;
    }

    public static (TrainerState State, Dictionary<string, SafeTensor> Adapter, Dictionary<string, SafeTensor> Optimizer) Load(string dir)
    {
        if (File.Exists(Path.Combine(dir, AdapterFile)) && File.Exists(Path.Combine(dir, StateFile)) && !File.Exists(Path.Combine(dir, OptimizerFile)))
            throw new OrtLoraException($"{dir}: saved with --save-only-model (the adapter, no {OptimizerFile}); training cannot resume from it, as the Trainer cannot");
        foreach (var f in new[] { AdapterFile, OptimizerFile, StateFile })
            if (!File.Exists(Path.Combine(dir, f))) throw new OrtLoraException($"{dir}: not a complete checkpoint ({f} missing)");
        var state = TrainerState.FromJson(JsonNode.Parse(File.ReadAllText(Path.Combine(dir, StateFile)))!);
        return (state, SafeTensors.Read(Path.Combine(dir, AdapterFile)), SafeTensors.Read(Path.Combine(dir, OptimizerFile)));
    }

    /// <summary>checkpoint-N folders in the output dir, oldest first.</summary>
    public static List<string> List(string outputDir) =>
        !Directory.Exists(outputDir) ? [] :
        Directory.GetDirectories(outputDir, "checkpoint-*")
            .Select(d => (Dir: d, Ok: int.TryParse(Path.GetFileName(d)["checkpoint-".Length..], out var n), N: n))
            .Where(x => x.Ok && File.Exists(Path.Combine(x.Dir, StateFile)))
            .OrderBy(x => x.N).Select(x => x.Dir).ToList();

    public static string? Latest(string outputDir) => List(outputDir).LastOrDefault();

    /// <summary>The checkpoint --resume-from-checkpoint names: null (start fresh), "" (the latest in the output
    /// directory, which must have one) or a folder.</summary>
    public static string? ToResume(string? resume, string outputDir) => resume is null ? null : resume != "" ? resume
        : Latest(outputDir) ?? throw new OrtLoraException($"{outputDir}: no checkpoint to resume from");

    public static void Prune(string outputDir, int saveTotalLimit)
    {
        if (saveTotalLimit <= 0) return;
        var all = List(outputDir);
        foreach (var old in all.Take(Math.Max(0, all.Count - saveTotalLimit))) Directory.Delete(old, true);
    }
}
