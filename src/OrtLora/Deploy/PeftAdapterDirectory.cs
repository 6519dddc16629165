using System.Text.Json;
using System.Text.Json.Nodes;
using OrtLora.Lora;

namespace OrtLora.Deploy;

/// <summary>One LoRA module of a PEFT adapter: A [r, in], B [out, r] and its scale (lora_alpha / r, or / sqrt(r)
/// with rsLoRA), so that ΔW = Scale · B · A. An embedding's pair (lora_embedding_A [r, vocabulary], lora_embedding_B
/// [hidden, r]) combines by the same arithmetic and keeps its kind of key.</summary>
public sealed record LoraPair(float[] A, float[] B, int Rank, int In, int Out, double Scale, bool Embedding = false)
{
    public static (string A, string B) Suffixes(bool embedding) => embedding ? (".lora_embedding_A", ".lora_embedding_B") : (".lora_A.weight", ".lora_B.weight");
}

/// <summary>A PEFT adapter directory as saved by save_pretrained: adapter_config.json (kept as JSON so fields
/// ortlora does not model survive a rewrite) and adapter_model.safetensors, grouped into modules.</summary>
public sealed class PeftAdapterDirectory
{
    public required string Source { get; init; }
    public required JsonObject Config { get; init; }
    /// <summary>Module key (the tensor name before ".lora_A.weight" or ".lora_embedding_A") → its pair, in file order.</summary>
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
            if (!ModuleNames.IsLoraA(name))
            {
                if (!ModuleNames.IsLoraB(name))
                    throw new OrtLoraException($"{weightsPath}: tensor '{name}' is not a LoRA A/B weight (modules_to_save, trainable tokens and biases are not supported)");
                continue;
            }
            bool embedding = name.EndsWith(".lora_embedding_A", StringComparison.Ordinal);
            var module = name[..^LoraPair.Suffixes(embedding).A.Length];
            if (!tensors.TryGetValue(module + LoraPair.Suffixes(embedding).B, out var b))
                throw new OrtLoraException($"{weightsPath}: '{name}' has no matching {LoraPair.Suffixes(embedding).B.TrimStart('.')}");
            if (a.Shape.Length != 2 || b.Shape.Length != 2 || a.Shape[0] != b.Shape[1])
                throw new OrtLoraException($"{weightsPath}: module '{module}' has A [{string.Join(",", a.Shape)}] and B [{string.Join(",", b.Shape)}], not [r,in] and [out,r]");
            int rank = (int)a.Shape[0];
            // rank_pattern can give a module its own r; the tensor's shape says which one applies.
            double scale = parsed.UseRslora ? parsed.LoraAlpha / Math.Sqrt(rank) : parsed.LoraAlpha / rank;
            modules[module] = new LoraPair(a.AsFloats(), b.AsFloats(), rank, (int)a.Shape[1], (int)b.Shape[0], scale, embedding);
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
            tensors[module + LoraPair.Suffixes(pair.Embedding).A] = SafeTensor.FromFloats([rank, pair.In], pair.A);
            tensors[module + LoraPair.Suffixes(pair.Embedding).B] = SafeTensor.FromFloats([pair.Out, rank], pair.B);
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
