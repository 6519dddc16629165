namespace OrtLora.Lora;

/// <summary>A PEFT adapter directory: adapter_config.json + adapter_model.safetensors, as <c>save_pretrained</c>
/// writes it and <c>PeftModel.from_pretrained</c> reads it.</summary>
public sealed class PeftAdapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";

    public required LoraConfig Config { get; init; }
    /// <summary>lora_A / lora_B tensors by adapter key (e.g. base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight,
    /// base_model.model.model.embed_tokens.lora_embedding_A).</summary>
    public required Dictionary<string, SafeTensor> Tensors { get; init; }
    public string WeightsPath { get; init; } = WeightsFile;
    /// <summary>The weights file's metadata besides PEFT's format: a classifier's classes (transformers' id2label and
    /// problem_type, the keys `ortlora classify` writes into the model), which a PEFT adapter has no field for.</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; init; } = new Dictionary<string, string>();
    public static readonly string[] ClassifierMetadataKeys = ["id2label", "problem_type"];

    /// <summary>One module's A [r, in] and B [out, r] under their keys, and DoRA's magnitude m [out] when the adapter has one.</summary>
    /// <param name="Embedding">an embedding's adapter (lora_embedding_A [r, vocabulary], lora_embedding_B [hidden, r])</param>
    /// <param name="Bias">lora_bias: B's bias [out] (<c>PATH.lora_B.bias</c>)</param>
    public sealed record Module(string Path, string KeyA, SafeTensor A, string KeyB, SafeTensor B, string? KeyM = null, SafeTensor? M = null,
        bool Embedding = false, SafeTensor? Bias = null);

    public static PeftAdapter Load(string dir)
    {
        if (!Directory.Exists(dir)) throw new OrtLoraException($"{dir}: PEFT adapter directory not found");
        var configPath = Path.Combine(dir, ConfigFile);
        var weightsPath = Path.Combine(dir, WeightsFile);
        if (!File.Exists(configPath)) throw new OrtLoraException($"{dir}: no {ConfigFile} (not a PEFT adapter directory)");
        if (!File.Exists(weightsPath))
            throw new OrtLoraException(File.Exists(Path.Combine(dir, "adapter_model.bin"))
                ? $"{dir}: only adapter_model.bin (pickle) found; save the adapter with safe_serialization=True"
                : $"{dir}: no {WeightsFile}");
        var tensors = SafeTensors.Read(weightsPath, out var metadata);
        return new PeftAdapter
        {
            Config = LoraConfig.FromPeftJson(configPath), Tensors = tensors, WeightsPath = weightsPath,
            Metadata = metadata.Where(kv => ClassifierMetadataKeys.Contains(kv.Key)).ToDictionary(),
        };
    }

    /// <summary>The adapter's modules: every lora_A key paired with its lora_B. The weights of modules_to_save are
    /// read by inject; other keys (e.g. saved biases) are reported, since injecting only part of an adapter would
    /// silently change it.</summary>
    public List<Module> Modules()
    {
        var a = new Dictionary<string, string>();
        var b = new Dictionary<string, string>();
        var m = new Dictionary<string, string>();
        var biases = new Dictionary<string, string>();
        foreach (var key in Tensors.Keys)
        {
            if (IsSavedModuleKey(key) || TrainableTokens.IsRows(key) || Config.Bias != "none" && TrainedBiases.IsBias(key)) continue;
            var parsed = ModuleNames.ParseAdapterKey(key)
                ?? throw new OrtLoraException($"{WeightsPath}: tensor '{key}' is not a LoRA A/B weight or DoRA magnitude; ortlora imports LoRA and DoRA adapters only");
            if (parsed.Kind == "lora_bias" && !Config.LoraBias) throw new OrtLoraException($"{WeightsPath}: '{key}' is a lora_bias tensor but the config has no lora_bias");
            (parsed.Kind switch { "lora_A" or "lora_embedding_A" => a, "lora_B" or "lora_embedding_B" => b, "lora_bias" => biases, _ => m })[parsed.Module] = key;
        }
        if (m.Count > 0 && !Config.UseDora) throw new OrtLoraException($"{WeightsPath}: '{m.Values.First()}' is a DoRA magnitude but the config has no use_dora");
        if (Config.UseDora && m.Count == 0) throw new OrtLoraException($"{WeightsPath}: use_dora is set but no lora_magnitude_vector tensor is saved");
        foreach (var path in m.Keys.Where(p => !a.ContainsKey(p)))
            throw new OrtLoraException($"{WeightsPath}: '{m[path]}' has no matching lora_A tensor");
        var modules = new List<Module>();
        foreach (var (path, keyA) in a.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (!b.TryGetValue(path, out var keyB)) throw new OrtLoraException($"{WeightsPath}: '{keyA}' has no matching lora_B tensor");
            var (tA, tB) = (Tensors[keyA], Tensors[keyB]);
            if (tA.Shape.Length != 2 || tB.Shape.Length != 2 || tA.Shape[0] != tB.Shape[1])
                throw new OrtLoraException($"{WeightsPath}: '{keyA}' [{string.Join(", ", tA.Shape)}] and '{keyB}' [{string.Join(", ", tB.Shape)}] are not a rank-r pair A [r, in], B [out, r]");
            bool embedding = ModuleNames.ParseAdapterKey(keyA)!.Value.Kind == "lora_embedding_A";
            if (embedding != (ModuleNames.ParseAdapterKey(keyB)!.Value.Kind == "lora_embedding_B"))
                throw new OrtLoraException($"{WeightsPath}: '{keyA}' and '{keyB}' are not both a linear layer's (lora_A, lora_B) or both an embedding's (lora_embedding_A, lora_embedding_B)");
            SafeTensor? tBias = null;
            if (Config.LoraBias && !embedding)
            {
                if (!biases.TryGetValue(path, out var keyBias)) throw new OrtLoraException($"{WeightsPath}: lora_bias is set but '{keyB}' has no lora_B.bias");
                tBias = Tensors[keyBias];
            }
            if (!Config.UseDora) { modules.Add(new Module(path, keyA, tA, keyB, tB, Embedding: embedding, Bias: tBias)); continue; }
            if (!m.TryGetValue(path, out var keyM)) throw new OrtLoraException($"{WeightsPath}: DoRA module '{path}' has no lora_magnitude_vector");
            var tM = Tensors[keyM];
            if (tM.Shape.Length != 1 || tM.Shape[0] != tB.Shape[0])
                throw new OrtLoraException($"{WeightsPath}: '{keyM}' [{string.Join(", ", tM.Shape)}] is not a magnitude vector [{tB.Shape[0]}] for '{keyB}'");
            modules.Add(new Module(path, keyA, tA, keyB, tB, keyM, tM, Embedding: embedding));
        }
        foreach (var path in b.Keys.Where(p => !a.ContainsKey(p)))
            throw new OrtLoraException($"{WeightsPath}: '{b[path]}' has no matching lora_A tensor");
        if (modules.Count == 0) throw new OrtLoraException($"{WeightsPath}: no LoRA tensors");
        return modules;
    }

    /// <summary>A modules_to_save weight (<c>base_model.model.lm_head.weight</c>) of a module the config lists.</summary>
    public bool IsSavedModuleKey(string key) => ModulesToSave.PathOfPeftKey(key, Config.ModulesToSave) is not null;

    /// <summary>Writes the directory; each file atomically.</summary>
    public void Save(string dir)
    {
        Directory.CreateDirectory(dir);
        var configPath = Path.Combine(dir, ConfigFile);
        var tmp = configPath + $".tmp{Environment.ProcessId}";
        File.WriteAllText(tmp, Config.ToPeftJson().ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        SafeTensors.Write(Path.Combine(dir, WeightsFile), Tensors, new Dictionary<string, string>(Metadata) { ["format"] = "pt" });
        File.Move(tmp, configPath, overwrite: true);
    }
}
