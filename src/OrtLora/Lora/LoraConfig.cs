using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Lora;

/// <summary>One LoRA configuration shared by inject, train, merge and export, with PEFT's names and meanings
/// (saved as PEFT's adapter_config.json).</summary>
public sealed class LoraConfig
{
    /// <summary>PEFT's task_type: CAUSAL_LM, or SEQ_CLS for a sequence classifier (a reward model).</summary>
    public string TaskType { get; set; } = "CAUSAL_LM";
    /// <summary>Rank of the update B·A.</summary>
    public int R { get; set; } = 8;
    /// <summary>The update is scaled by lora_alpha / r (or lora_alpha / sqrt(r) with rsLoRA).</summary>
    public double LoraAlpha { get; set; } = 16;
    /// <summary>Module names matched as PEFT matches them (suffix of the dotted module path), "all-linear", or one
    /// regular expression (full match against the module path). Empty: PEFT's default for the architecture.</summary>
    public List<string> TargetModules { get; set; } = ["q_proj", "v_proj"];
    /// <summary>Modules left out even when targeted: names matched as target_modules names are, or one regex (full match).</summary>
    public List<string> ExcludeModules { get; set; } = [];
    /// <summary>Only modules of these layer indices (empty: every layer). The index is the number after
    /// <see cref="LayersPattern"/> in the module path (<c>layers.3.</c>), or after the last "NAME.N." segment when no
    /// pattern is given, as PEFT reads it.</summary>
    public List<int> LayersToTransform { get; set; } = [];
    public List<string> LayersPattern { get; set; } = [];
    public double LoraDropout { get; set; }
    public bool UseRslora { get; set; }
    /// <summary>PEFT's lora_bias: B gets a bias vector [out], zero at first, inside the scale (scale·(x·Aᵀ·Bᵀ + b)); merge
    /// adds scale·b to the layer's own bias.</summary>
    public bool LoraBias { get; set; }
    /// <summary>DoRA: each adapted weight becomes m ⊙ (W + scale·B·A) / ‖W + scale·B·A‖ per output feature, with a
    /// trainable magnitude m (lora_magnitude_vector) that starts at ‖W‖.</summary>
    public bool UseDora { get; set; }
    /// <summary>True when the base weight is stored [in, out] (GPT-2 Conv1D), as PEFT records it.</summary>
    public bool FanInFanOut { get; set; }
    /// <summary>"performant": one adapter on a fused projection; "canonical": one per part.</summary>
    public string Variant { get; set; } = "performant";
    /// <summary>"kaiming" (PEFT's default, Kaiming-uniform A), "gaussian" (A ~ N(0, 1/r)), "orthogonal" (A and B dense with
    /// B·A = 0), or PiSSA, OLoRA and LoftQ's names.</summary>
    public string Init { get; set; } = "kaiming";
    /// <summary>LoftQ (Init "loftq"): the bits the targeted weights are stored in (4: uint4 blocks of
    /// <see cref="LoftqBlockSize"/>; 8: int8 per channel) and the alternating steps (PEFT's LoftQConfig).</summary>
    public int LoftqBits { get; set; } = 4;
    public int LoftqIter { get; set; } = 1;
    public int LoftqBlockSize { get; set; } = 32;
    /// <summary>EVA (Init "eva"): PEFT's EvaConfig; null means its defaults.</summary>
    public EvaConfig? EvaConfig { get; set; }
    /// <summary>CorDA (Init "corda"): PEFT's CordaConfig.corda_method, "ipm" (the adapter takes the principal
    /// components of W·C, C the inputs' covariance) or "kpm" (the least ones, keeping what the data uses in W).</summary>
    public string CordaMethod { get; set; } = "ipm";
    /// <summary>CorDA: how many training sequences the covariance is taken over (PEFT leaves it to the caller's run_model).</summary>
    public int CordaSamples { get; set; } = 256;
    public int Seed { get; set; } = 42;
    /// <summary>PEFT's modules_to_save: modules trained whole next to the adapters (names matched as target_modules
    /// names are), e.g. lm_head, embed_tokens.</summary>
    public List<string> ModulesToSave { get; set; } = [];
    /// <summary>PEFT's ensure_weight_tying: a modules_to_save copy of a tied weight is read by every module that shared it.</summary>
    public bool EnsureWeightTying { get; set; }
    /// <summary>PEFT's trainable_token_indices: module name → token ids whose rows train; the key "" (PEFT's list
    /// form) is the token embedding.</summary>
    public Dictionary<string, List<long>> TrainableTokenIndices { get; set; } = new();
    /// <summary>PEFT's bias: "none", "all" (every bias trains) or "lora_only" (the adapted layers' biases).</summary>
    public string Bias { get; set; } = "none";

    /// <summary>PEFT's per-module overrides of r and lora_alpha: key = module name or regex, matched as PEFT
    /// matches them (the key matches the end of the module path at a dot boundary).</summary>
    public Dictionary<string, int> RankPattern { get; set; } = new();
    public Dictionary<string, double> AlphaPattern { get; set; } = new();

    public double Scale => ScaleFor(R, LoraAlpha);
    double ScaleFor(int r, double alpha) => UseRslora ? alpha / Math.Sqrt(r) : alpha / r;

    /// <summary>The rank and scale PEFT gives the module at <paramref name="peftPath"/> (rank_pattern, alpha_pattern).</summary>
    public int RankFor(string peftPath) => Pattern(RankPattern, peftPath) is { } k ? RankPattern[k] : R;
    public double AlphaFor(string peftPath) => Pattern(AlphaPattern, peftPath) is { } k ? AlphaPattern[k] : LoraAlpha;
    public double ScaleFor(string peftPath, int r) => ScaleFor(r, AlphaFor(peftPath));

    static string? Pattern<T>(Dictionary<string, T> patterns, string path) =>
        patterns.Keys.FirstOrDefault(k => System.Text.RegularExpressions.Regex.IsMatch(path, $"^(.*\\.)?(?:{k})$"));

    /// <summary>Whether PEFT puts an adapter on the module at <paramref name="peftPath"/>: target_modules, then
    /// exclude_modules, then layers_to_transform.</summary>
    public bool Selects(string peftPath, bool isHead) =>
        ModuleNames.IsTarget(TargetModules, peftPath, isHead) && !ModuleNames.IsExcluded(ExcludeModules, peftPath)
        && ModuleNames.InLayers(LayersToTransform, LayersPattern, peftPath);

    static JsonNode? NamesOrRegex(List<string> names) =>
        names.Count == 1 && (names[0] == "all-linear" || IsRegex(names[0])) ? names[0] : new JsonArray(names.Select(t => (JsonNode)t).ToArray());

    static List<string> ReadNamesOrRegex(JsonNode? node) => node switch
    {
        JsonArray a => a.Select(x => x!.GetValue<string>()).ToList(),
        JsonValue v => [v.GetValue<string>()],
        _ => [],
    };

    public JsonObject ToPeftJson(string? baseModel = null) => new()
    {
        ["peft_type"] = "LORA",
        ["task_type"] = TaskType,
        ["base_model_name_or_path"] = baseModel,
        ["r"] = R,
        ["lora_alpha"] = LoraAlpha,
        ["lora_dropout"] = LoraDropout,
        ["target_modules"] = NamesOrRegex(TargetModules),
        ["exclude_modules"] = ExcludeModules.Count == 0 ? null : NamesOrRegex(ExcludeModules),
        ["layers_to_transform"] = LayersToTransform.Count == 0 ? null : new JsonArray(LayersToTransform.Select(i => (JsonNode)i).ToArray()),
        ["layers_pattern"] = LayersPattern.Count switch { 0 => null, 1 => LayersPattern[0], _ => new JsonArray(LayersPattern.Select(t => (JsonNode)t).ToArray()) },
        ["use_rslora"] = UseRslora,
        ["lora_bias"] = LoraBias,
        ["fan_in_fan_out"] = FanInFanOut,
        ["bias"] = Bias,
        ["init_lora_weights"] = Init is "gaussian" or "loftq" or "orthogonal" or "eva" or "corda" ? Init : true,
        ["eva_config"] = Init == "eva" ? (EvaConfig ?? new()).ToPeftJson() : null,
        ["corda_config"] = Init == "corda" ? new JsonObject { ["corda_method"] = CordaMethod, ["verbose"] = false, ["use_float16_for_covariance"] = false, ["prune_temporary_fields"] = true } : null,
        ["loftq_config"] = Init == "loftq" ? new JsonObject { ["loftq_bits"] = LoftqBits, ["loftq_iter"] = LoftqIter } : new JsonObject(),
        ["use_dora"] = UseDora,
        ["inference_mode"] = true,
        ["ensure_weight_tying"] = EnsureWeightTying,
        ["modules_to_save"] = ModulesToSave.Count == 0 ? null : new JsonArray(ModulesToSave.Select(t => (JsonNode)t).ToArray()),
        ["trainable_token_indices"] = TrainableTokenIndices.Count == 0 ? null
            : TrainableTokenIndices.Count == 1 && TrainableTokenIndices.ContainsKey("") ? Ids(TrainableTokenIndices[""])
            : new JsonObject(TrainableTokenIndices.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)Ids(p.Value)))),
        ["rank_pattern"] = new JsonObject(RankPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
        ["alpha_pattern"] = new JsonObject(AlphaPattern.Select(p => KeyValuePair.Create(p.Key, (JsonNode?)p.Value))),
    };

    static JsonArray Ids(List<long> ids) => new(ids.Select(i => (JsonNode)i).ToArray());

    public static bool IsRegex(string s) => s.IndexOfAny(['*', '(', '[', '|', '^', '$', '\\', '+', '?']) >= 0;

    public static LoraConfig FromPeftJson(string path)
    {
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
        { throw new OrtLoraException($"{path}: not a PEFT adapter_config.json ({e.Message})"); }
        if (json["peft_type"]?.GetValue<string>() is { } t && t != "LORA")
            throw new OrtLoraException($"{path}: peft_type is {t}; ortlora reads LORA adapters only");
        var c = new LoraConfig
        {
            R = json["r"]?.GetValue<int>() ?? 8,
            LoraAlpha = json["lora_alpha"]?.GetValue<double>() ?? 8,
            LoraDropout = json["lora_dropout"]?.GetValue<double>() ?? 0,
            UseRslora = json["use_rslora"]?.GetValue<bool>() ?? false,
            LoraBias = json["lora_bias"]?.GetValue<bool>() ?? false,
            UseDora = json["use_dora"]?.GetValue<bool>() ?? false,
            Init = json["init_lora_weights"] is JsonValue init && init.TryGetValue<string>(out var how) && how is "gaussian" or "orthogonal" ? how : "kaiming",
            FanInFanOut = json["fan_in_fan_out"]?.GetValue<bool>() ?? false,
            RankPattern = json["rank_pattern"] is JsonObject rp ? rp.ToDictionary(p => p.Key, p => p.Value!.GetValue<int>()) : new(),
            AlphaPattern = json["alpha_pattern"] is JsonObject ap ? ap.ToDictionary(p => p.Key, p => p.Value!.GetValue<double>()) : new(),
        };
        c.TargetModules = json["target_modules"] is null ? throw new OrtLoraException($"{path}: target_modules is missing") : ReadNamesOrRegex(json["target_modules"]);
        c.ExcludeModules = ReadNamesOrRegex(json["exclude_modules"]);
        if (json["task_type"] is JsonValue task && task.TryGetValue<string>(out var taskType)) c.TaskType = taskType;
        c.ModulesToSave = ReadNamesOrRegex(json["modules_to_save"]);
        c.Bias = json["bias"]?.GetValue<string>() ?? "none";
        c.EnsureWeightTying = json["ensure_weight_tying"]?.GetValue<bool>() ?? false;
        c.TrainableTokenIndices = json["trainable_token_indices"] switch
        {
            JsonArray a => new() { [""] = a.Select(x => x!.GetValue<long>()).ToList() },
            JsonObject o => o.ToDictionary(p => p.Key, p => p.Value!.AsArray().Select(x => x!.GetValue<long>()).ToList()),
            _ => new(),
        };
        c.LayersPattern = ReadNamesOrRegex(json["layers_pattern"]);
        c.LayersToTransform = json["layers_to_transform"] switch
        {
            JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
            JsonValue v => [v.GetValue<int>()],
            _ => [],
        };
        return c;
    }

    // ortlora's own form (the ortlora.lora metadata): PEFT's snake_case names plus variant, init and seed.
    static readonly JsonSerializerOptions SnakeCase = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    public JsonObject ToJson() => JsonSerializer.SerializeToNode(this, SnakeCase)!.AsObject();

    /// <summary>Reads <see cref="ToJson"/>; also the PascalCase form written by the first ortlora builds.</summary>
    public static LoraConfig FromJson(JsonNode node) =>
        (node is JsonObject o && o.ContainsKey("R") ? node.Deserialize<LoraConfig>() : node.Deserialize<LoraConfig>(SnakeCase))!;
}

/// <summary>PEFT's EvaConfig: how EVA draws each adapter's A from the principal components of the layer's inputs on
/// the training data, and redistributes the ranks (<see cref="Training.Eva"/>).</summary>
public sealed class EvaConfig
{
    /// <summary>Each layer computes round(r·rho) components; the ranks are then shared out by explained variance, so a
    /// layer ends with between 0 and r·rho (rho = 1: every layer keeps r).</summary>
    public double Rho { get; set; } = 2.0;
    /// <summary>A component has converged when its cosine similarity to the previous batch's is at least tau.</summary>
    public double Tau { get; set; } = 0.99;
    /// <summary>Only positions with a label (not -100) feed the components.</summary>
    public bool UseLabelMask { get; set; } = true;
    /// <summary>Divide each component by the square root of its singular value.</summary>
    public bool Whiten { get; set; }
    /// <summary>lora_alpha follows the rank (alpha·new_r/r), so a layer's scale stays lora_alpha / r.</summary>
    public bool AdjustScalingFactors { get; set; } = true;

    public JsonObject ToPeftJson() => new()
    {
        ["rho"] = Rho, ["tau"] = Tau, ["use_label_mask"] = UseLabelMask, ["label_mask_value"] = -100,
        ["whiten"] = Whiten, ["adjust_scaling_factors"] = AdjustScalingFactors,
    };
}
