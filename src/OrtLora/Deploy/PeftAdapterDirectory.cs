using System.Text.Json;
using System.Text.Json.Nodes;
using OrtLora.Lora;

namespace OrtLora.Deploy;

/// <summary>One LoRA module of a PEFT adapter: A [r, in], B [out, r] and its scale (lora_alpha / r, or / sqrt(r)
/// with rsLoRA), so that ΔW = Scale · B · A.</summary>
public sealed record LoraPair(float[] A, float[] B, int Rank, int In, int Out, double Scale);

/// <summary>A PEFT adapter directory as saved by save_pretrained: adapter_config.json (kept as JSON so fields
/// ortlora does not model survive a rewrite) and adapter_model.safetensors, grouped into modules.</summary>
public sealed class PeftAdapterDirectory
{
    public required string Source { get; init; }
    public required JsonObject Config { get; init; }
    /// <summary>Module key (the tensor name before ".lora_A.weight") → its pair, in file order.</summary>
    public required Dictionary<string, LoraPair> Modules { get; init; }

    public static PeftAdapterDirectory Load(string dir)
    {
        var configPath = Path.Combine(dir, "adapter_config.json");
        var weightsPath = Path.Combine(dir, "adapter_model.safetensors");
        if (!Directory.Exists(dir)) throw new OrtLoraException($"{dir}: adapter directory not found");
        if (!File.Exists(configPath) || !File.Exists(weightsPath))
            throw new OrtLoraException($"{dir}: not a PEFT adapter directory (needs adapter_config.json and adapter_model.safetensors)");
        var parsed = LoraConfig.FromPeftJson(configPath); // validates peft_type
        if (parsed.UseDora)
            throw new OrtLoraException($"{configPath}: a DoRA adapter (use_dora); adapter arithmetic takes plain LoRA adapters " +
                "(a weighted sum of DoRA adapters is not a DoRA adapter of the summed update)");
        var config = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        if (config["alpha_pattern"] is JsonObject { Count: > 0 })
            throw new OrtLoraException($"{configPath}: alpha_pattern is not supported (per-module lora_alpha)");
        var tensors = SafeTensors.Read(weightsPath);
        var modules = new Dictionary<string, LoraPair>();
        foreach (var (name, a) in tensors)
        {
            if (!name.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            {
                if (!name.EndsWith(".lora_B.weight", StringComparison.Ordinal))
                    throw new OrtLoraException($"{weightsPath}: tensor '{name}' is not a LoRA A/B weight (modules_to_save and embedding adapters are not supported)");
                continue;
            }
            var module = name[..^".lora_A.weight".Length];
            if (!tensors.TryGetValue(module + ".lora_B.weight", out var b))
                throw new OrtLoraException($"{weightsPath}: '{name}' has no matching lora_B");
            if (a.Shape.Length != 2 || b.Shape.Length != 2 || a.Shape[0] != b.Shape[1])
                throw new OrtLoraException($"{weightsPath}: module '{module}' has A [{string.Join(",", a.Shape)}] and B [{string.Join(",", b.Shape)}], not [r,in] and [out,r]");
            int rank = (int)a.Shape[0];
            // rank_pattern can give a module its own r; the tensor's shape says which one applies.
            double scale = parsed.UseRslora ? parsed.LoraAlpha / Math.Sqrt(rank) : parsed.LoraAlpha / rank;
            modules[module] = new LoraPair(a.AsFloats(), b.AsFloats(), rank, (int)a.Shape[1], (int)b.Shape[0], scale);
        }
        if (modules.Count == 0) throw new OrtLoraException($"{weightsPath}: no LoRA modules");
        return new PeftAdapterDirectory { Source = dir, Config = config, Modules = modules };
    }

    /// <summary>Writes an adapter whose every module has rank <paramref name="rank"/> and scale 1 (lora_alpha = r),
    /// as PEFT's add_weighted_adapter does; the other config fields are copied from <paramref name="template"/>.
    /// Atomic: written to a temporary directory, then moved into place.</summary>
    public static void Save(string dir, JsonObject template, int rank, IReadOnlyDictionary<string, LoraPair> modules)
    {
        var config = template.DeepClone().AsObject();
        config["r"] = rank;
        config["lora_alpha"] = rank;
        config["use_rslora"] = false;
        config["rank_pattern"] = new JsonObject();
        config["alpha_pattern"] = new JsonObject();
        var tensors = new Dictionary<string, SafeTensor>();
        foreach (var (module, pair) in modules)
        {
            if (pair.Rank != rank || Math.Abs(pair.Scale - 1.0) > 1e-12) throw new ArgumentException($"module {module}: rank {pair.Rank}, scale {pair.Scale}");
            tensors[module + ".lora_A.weight"] = SafeTensor.FromFloats([rank, pair.In], pair.A);
            tensors[module + ".lora_B.weight"] = SafeTensor.FromFloats([pair.Out, rank], pair.B);
        }
        var full = Path.GetFullPath(dir);
        var tmp = full.TrimEnd(Path.DirectorySeparatorChar) + $".tmp{Environment.ProcessId}";
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        try
        {
            Directory.CreateDirectory(tmp);
            File.WriteAllText(Path.Combine(tmp, "adapter_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            SafeTensors.Write(Path.Combine(tmp, "adapter_model.safetensors"), tensors);
            if (Directory.Exists(full))
            {
                foreach (var f in new[] { "adapter_config.json", "adapter_model.safetensors" })
                    File.Move(Path.Combine(tmp, f), Path.Combine(full, f), overwrite: true);
            }
            else Directory.Move(tmp, full);
        }
        finally { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); }
    }
}
