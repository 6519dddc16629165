using System.CommandLine;
using OrtLora.Lora;

namespace OrtLora.Cli;

/// <summary>The LoRA options shared by `inject` and `train`, named as PEFT's LoraConfig fields.</summary>
public sealed class LoraOptions
{
    public Option<int> R { get; } = new("--r") { Description = "rank of the update B·A", DefaultValueFactory = _ => 8 };
    public Option<double> Alpha { get; } = new("--lora-alpha") { Description = "the update is scaled by lora_alpha / r", DefaultValueFactory = _ => 16 };
    public Option<string> RankPattern { get; } = new("--rank-pattern")
    {
        Description = "PEFT's rank_pattern: NAME=r pairs, comma-separated (semicolons when a regex has commas); NAME is a module name or regex matched against the end of the module path",
        DefaultValueFactory = _ => "",
    };
    public Option<string> AlphaPattern { get; } = new("--alpha-pattern")
    {
        Description = "PEFT's alpha_pattern: NAME=lora_alpha pairs, as --rank-pattern",
        DefaultValueFactory = _ => "",
    };
    public Option<string> Targets { get; } = new("--target-modules")
    {
        Description = "comma-separated module names (matched like PEFT: the module path ends with .NAME), all-linear, or one regex (full match); a named token embedding (embed_tokens) gets PEFT's embedding adapter; default: PEFT's default for the architecture (q_proj,v_proj; c_attn for GPT-2 ...)",
        DefaultValueFactory = _ => "",
    };
    public Option<string> Exclude { get; } = new("--exclude-modules")
    {
        Description = "modules left out even when targeted: comma-separated names (matched as --target-modules names are) or one regex (full match)",
        DefaultValueFactory = _ => "",
    };
    public Option<string> ModulesToSave { get; } = new("--modules-to-save")
    {
        Description = "comma-separated modules trained whole next to the adapters, as PEFT's modules_to_save (e.g. lm_head,embed_tokens; matched as --target-modules names are)",
        DefaultValueFactory = _ => "",
    };
    public Option<bool> EnsureWeightTying { get; } = new("--ensure-weight-tying")
    {
        Description = "PEFT's ensure_weight_tying: a modules_to_save copy of a tied weight (lm_head, embed_tokens) stays shared by the modules that shared it",
    };
    public Option<string> TrainableTokens { get; } = new("--trainable-token-indices")
    {
        Description = "token ids whose embedding rows train, as PEFT's trainable_token_indices: 5,6,7 (the token embedding) or MODULE=ids;MODULE=ids (e.g. embed_tokens=5,6;lm_head=5,6 for an untied head)",
        DefaultValueFactory = _ => "",
    };
    public Option<string> Bias { get; } = new("--bias")
    {
        Description = "PEFT's bias: none, all (every bias trains too) or lora_only (the adapted layers' biases); trained biases change the base model when merged",
        DefaultValueFactory = _ => "none",
    };
    public Option<string> Layers { get; } = new("--layers-to-transform") { Description = "only these layer indices, comma-separated (the N of layers.N.)", DefaultValueFactory = _ => "" };
    public Option<string> LayersPattern { get; } = new("--layers-pattern") { Description = "the module-path segment before the layer index (layers, h, blocks ...; default: the last NAME.N.)", DefaultValueFactory = _ => "" };
    public Option<string> Variant { get; } = new("--variant") { Description = "fused projections (GPT-2 c_attn, Phi-3 qkv_proj): performant = one adapter, canonical = one per part", DefaultValueFactory = _ => "performant" };
    public Option<double> Dropout { get; } = new("--lora-dropout") { Description = "dropout on the LoRA input during training" };
    public Option<bool> Rslora { get; } = new("--use-rslora") { Description = "scale by lora_alpha / sqrt(r)" };
    public Option<bool> LoraBias { get; } = new("--lora-bias") { Description = "PEFT's lora_bias: B gets a trainable bias (zero at first); merge adds it to the layer's own bias, which the layer must have" };
    public Option<bool> UseDora { get; } = new("--use-dora") { Description = "DoRA: a trainable magnitude per output feature times the normalized W + scale·B·A" };
    public Option<string> Init { get; } = new("--init-lora-weights", "--init")
    {
        Description = "PEFT's init_lora_weights: true/kaiming (Kaiming-uniform A, B zero), gaussian, orthogonal (A and B dense, B·A = 0; even r), pissa_niter_K (A, B from W's top singular vectors), olora (from W's QR); " +
            "with these two W keeps the residual; loftq: W stored quantized (--loftq-bits), A, B from the SVD of the quantization error; " +
            "eva: A from the principal components of each layer's inputs on the training data, ranks redistributed by explained variance; corda: A and B from the SVD of W times the inputs' covariance, W keeps the residual (train computes both before the first step)",
        DefaultValueFactory = _ => "kaiming",
    };
    public Option<int> LoftqBits { get; } = new("--loftq-bits") { Description = "LoftQ: the targeted weights in 4 bits (uint4 blocks of 32) or 8 (int8 per channel)", DefaultValueFactory = _ => 4 };
    public Option<int> LoftqIter { get; } = new("--loftq-iter") { Description = "LoftQ: alternating quantize/SVD steps", DefaultValueFactory = _ => 1 };
    public Option<double> EvaRho { get; } = new("--eva-rho") { Description = "EVA: components per layer are r·rho, the most a layer's rank can grow to (EvaConfig.rho; 1: every layer keeps r)", DefaultValueFactory = _ => 2.0 };
    public Option<double> EvaTau { get; } = new("--eva-tau") { Description = "EVA: a component has converged when its cosine similarity to the previous batch's reaches tau (EvaConfig.tau)", DefaultValueFactory = _ => 0.99 };
    public Option<bool> EvaWhiten { get; } = new("--eva-whiten") { Description = "EVA: divide each component by the square root of its singular value (EvaConfig.whiten)" };
    public Option<bool> EvaAdjustScaling { get; } = new("--eva-adjust-scaling-factors") { Description = "EVA: lora_alpha follows each layer's new rank, so its scale stays lora_alpha / r (EvaConfig.adjust_scaling_factors)", DefaultValueFactory = _ => true };
    public Option<bool> EvaUseLabelMask { get; } = new("--eva-use-label-mask") { Description = "EVA: only positions with a label feed the components, not prompts or padding (EvaConfig.use_label_mask)", DefaultValueFactory = _ => true };
    public Option<string> CordaMethod { get; } = new("--corda-method") { Description = "CorDA: ipm (the adapter takes the largest singular directions of W·C: instruction-previewed) or kpm (the smallest: knowledge-preserving) (CordaConfig.corda_method)", DefaultValueFactory = _ => "ipm" };
    public Option<int> CordaSamples { get; } = new("--corda-samples") { Description = "CorDA: the training sequences the covariance is taken over", DefaultValueFactory = _ => 256 };
    public Option<int> Seed { get; } = new("--seed") { Description = "random seed", DefaultValueFactory = _ => 42 };
    public Option<string?> InitFrom { get; } = new("--init-from") { Description = "PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to inject exactly" };

    public LoraOptions()
    {
        Variant.AcceptOnlyFromAmong("performant", "canonical");
        CordaMethod.AcceptOnlyFromAmong("ipm", "kpm");
        Bias.AcceptOnlyFromAmong(TrainedBiases.Options);
        LoftqBits.AcceptOnlyFromAmong("4", "8");
    }

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { R, Alpha, RankPattern, AlphaPattern, Bias, Targets, Exclude, ModulesToSave, EnsureWeightTying, TrainableTokens, Layers, LayersPattern, Variant, Dropout, Rslora, LoraBias, UseDora, Init, LoftqBits, LoftqIter, EvaRho, EvaTau, EvaWhiten, EvaAdjustScaling, EvaUseLabelMask, CordaMethod, CordaSamples, Seed, InitFrom }) command.Options.Add(o);
    }

    public LoraConfig Read(ParseResult parse)
    {
        var config = new LoraConfig
        {
            R = parse.GetValue(R), LoraAlpha = parse.GetValue(Alpha), TargetModules = ParseTargets(parse.GetValue(Targets)!),
            Variant = parse.GetValue(Variant)!, LoraDropout = parse.GetValue(Dropout), UseRslora = parse.GetValue(Rslora), LoraBias = parse.GetValue(LoraBias), UseDora = parse.GetValue(UseDora),
            Init = parse.GetValue(Init) is "true" ? "kaiming" : parse.GetValue(Init)!, Seed = parse.GetValue(Seed), ExcludeModules = ParseTargets(parse.GetValue(Exclude)!),
            LayersToTransform = ParseLayers(parse.GetValue(Layers)!),
            ModulesToSave = parse.GetValue(ModulesToSave)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList(),
            TrainableTokenIndices = ParseTokens(parse.GetValue(TrainableTokens)!), Bias = parse.GetValue(Bias)!, EnsureWeightTying = parse.GetValue(EnsureWeightTying),
            RankPattern = ParsePattern<int>("--rank-pattern", parse.GetValue(RankPattern)!, v => int.TryParse(v, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var r) && r >= 1 ? r : (int?)null),
            AlphaPattern = ParsePattern<double>("--alpha-pattern", parse.GetValue(AlphaPattern)!, v => double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var a) && a > 0 ? a : (double?)null), LoftqBits = parse.GetValue(LoftqBits), LoftqIter = parse.GetValue(LoftqIter),
            LayersPattern = parse.GetValue(LayersPattern)!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList(),
        };
        var evaOptions = new Option[] { EvaRho, EvaTau, EvaWhiten, EvaAdjustScaling, EvaUseLabelMask };
        if (config.Init == "eva")
        {
            config.EvaConfig = new EvaConfig
            {
                Rho = parse.GetValue(EvaRho), Tau = parse.GetValue(EvaTau), Whiten = parse.GetValue(EvaWhiten),
                AdjustScalingFactors = parse.GetValue(EvaAdjustScaling), UseLabelMask = parse.GetValue(EvaUseLabelMask),
            };
            if (config.EvaConfig.Rho < 1) throw new OrtLoraException($"--eva-rho must be at least 1 (got {config.EvaConfig.Rho})");
            if (config.EvaConfig.Tau is < 0 or > 1) throw new OrtLoraException($"--eva-tau must be in [0, 1] (got {config.EvaConfig.Tau})");
        }
        else if (evaOptions.FirstOrDefault(o => parse.GetResult(o) is { Implicit: false }) is { } stray)
            throw new OrtLoraException($"{stray.Name} is an option of EVA: give --init-lora-weights eva");
        config.CordaMethod = parse.GetValue(CordaMethod)!;
        config.CordaSamples = parse.GetValue(CordaSamples);
        if (config.Init != "corda" && new Option[] { CordaMethod, CordaSamples }.FirstOrDefault(o => parse.GetResult(o) is { Implicit: false }) is { } cordaStray)
            throw new OrtLoraException($"{cordaStray.Name} is an option of CorDA: give --init-lora-weights corda");
        if (config.CordaSamples < 1) throw new OrtLoraException($"--corda-samples must be at least 1 (got {config.CordaSamples})");
        if (config.LayersPattern.Count > 0 && config.LayersToTransform.Count == 0)
            throw new OrtLoraException("--layers-pattern is read with --layers-to-transform (which layers to take)");
        if (config.LoftqIter < 1) throw new OrtLoraException($"--loftq-iter must be at least 1 (got {config.LoftqIter})");
        if (config.R < 1) throw new OrtLoraException($"--r must be at least 1 (got {config.R})");
        if (config.LoraDropout is < 0 or >= 1) throw new OrtLoraException($"--lora-dropout must be in [0, 1) (got {config.LoraDropout})");
        return config;
    }

    static List<int> ParseLayers(string text) =>
        text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t =>
            int.TryParse(t, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var i) ? i
                : throw new OrtLoraException($"--layers-to-transform: '{t}' is not a layer index (expected e.g. 0,1,2)")).ToList();

    /// <summary>"q_proj=16,down_proj=4" (or ';'-separated) → the pattern dictionary; a key is checked as a regex.</summary>
    static Dictionary<string, T> ParsePattern<T>(string option, string text, Func<string, T?> value) where T : struct
    {
        var result = new Dictionary<string, T>();
        foreach (var pair in text.Split(text.Contains(';') ? ';' : ',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = pair.LastIndexOf('=');
            var key = eq > 0 ? pair[..eq].Trim() : "";
            if (key == "" || value(pair[(eq + 1)..].Trim()) is not { } v)
                throw new OrtLoraException($"{option}: '{pair}' is not NAME=value (expected e.g. q_proj=16 with a positive value)");
            try { _ = new System.Text.RegularExpressions.Regex(key); }
            catch (ArgumentException e) { throw new OrtLoraException($"{option}: '{key}' is not a valid regular expression ({e.Message})"); }
            result[key] = v;
        }
        return result;
    }

    /// <summary>"5,6,7" → the token embedding's ids (key ""); "embed_tokens=5,6;lm_head=5,6" → ids by module.</summary>
    public static Dictionary<string, List<long>> ParseTokens(string text)
    {
        var result = new Dictionary<string, List<long>>();
        foreach (var part in text.Split(';', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var (module, ids) = part.IndexOf('=') is var eq and >= 0 ? (part[..eq].Trim(), part[(eq + 1)..]) : ("", part);
            if (result.ContainsKey(module))
                throw new OrtLoraException($"--trainable-token-indices: {(module == "" ? "the token embedding" : $"'{module}'")} is given twice");
            result[module] = ids.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(t =>
                long.TryParse(t, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var id) ? id
                    : throw new OrtLoraException($"--trainable-token-indices: '{t}' is not a token id (expected e.g. 5,6,7 or embed_tokens=5,6)")).ToList();
        }
        return result;
    }

    /// <summary>"q_proj,v_proj" → names; "all-linear" and a regex stay one string, as PEFT takes them.</summary>
    public static List<string> ParseTargets(string text)
    {
        text = text.Trim();
        if (text == "") return []; // PEFT's default for the architecture
        if (text == "all-linear" || LoraConfig.IsRegex(text)) return [text];
        return text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
    }
}
