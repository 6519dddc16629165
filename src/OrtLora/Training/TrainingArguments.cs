namespace OrtLora.Training;

/// <summary>The loop's settings, named and meant as Hugging Face's TrainingArguments.</summary>
public sealed class TrainingArguments
{
    public string OutputDir { get; set; } = "out";
    /// <summary>The Trainer's report_to: "none", or "tensorboard" (also "all": every integration ortlora has).</summary>
    public List<string> ReportTo { get; set; } = ["none"];
    /// <summary>The Trainer's logging_dir, where TensorBoard's event files go; null: OUTPUT/runs/DATE_TIME_HOST.</summary>
    public string? LoggingDir { get; set; }
    public bool ReportsToTensorBoard => ReportTo.Contains("tensorboard") || ReportTo.Contains("all");
    public double NumTrainEpochs { get; set; } = 1;
    /// <summary>When positive, overrides NumTrainEpochs.</summary>
    public int MaxSteps { get; set; } = -1;
    public int PerDeviceTrainBatchSize { get; set; } = 8;
    /// <summary>Rows per eval batch; 0: the training batch size.</summary>
    public int PerDeviceEvalBatchSize { get; set; }
    public int GradientAccumulationSteps { get; set; } = 1;
    public double LearningRate { get; set; } = 2e-4;
    public string LrSchedulerType { get; set; } = "linear";
    /// <summary>lr_scheduler_kwargs (num_cycles, lr_end, power, timescale, min_lr, min_lr_rate, warmup_lr_rate,
    /// num_decay_steps, num_stable_steps, min_lr_ratio, warmup_type, decay_type).</summary>
    public SchedulerKwargs LrSchedulerKwargs { get; set; } = SchedulerKwargs.None;
    public double WarmupRatio { get; set; }
    public int WarmupSteps { get; set; }
    public double WeightDecay { get; set; }
    public double AdamBeta1 { get; set; } = 0.9;
    public double AdamBeta2 { get; set; } = 0.999;
    public double AdamEpsilon { get; set; } = 1e-8;
    public double MaxGradNorm { get; set; } = 1.0;
    public int Seed { get; set; } = 42;
    public int LoggingSteps { get; set; } = 10;
    /// <summary>Also log the first step (logging_first_step).</summary>
    public bool LoggingFirstStep { get; set; }
    /// <summary>When to log the training loss: "steps" (every LoggingSteps, and the last step), "epoch" (at each epoch's
    /// end) or "no"; LoggingFirstStep adds step 1 in all three, as the Trainer's logging_strategy.</summary>
    public string LoggingStrategy { get; set; } = "steps";
    public int SaveSteps { get; set; } = 500;
    /// <summary>save_only_model: checkpoints hold the adapter and the trainer state, not the optimizer state (smaller, but
    /// training cannot resume from them).</summary>
    public bool SaveOnlyModel { get; set; }
    /// <summary>Keep at most this many checkpoint-N folders (oldest deleted); 0 or less keeps all.</summary>
    public int SaveTotalLimit { get; set; }
    public int EvalSteps { get; set; }
    /// <summary>When to evaluate during training: "steps" (every EvalSteps), "epoch" (at each epoch's end) or "no"; eval
    /// data is always evaluated before the first step and after the last.</summary>
    public string EvalStrategy { get; set; } = "steps";
    /// <summary>When to save a checkpoint: "steps" (every SaveSteps), "epoch" or "no".</summary>
    public string SaveStrategy { get; set; } = "steps";
    /// <summary>At the end, the adapter (and merge) takes the parameters of the evaluation with the lowest eval loss.</summary>
    public bool LoadBestModelAtEnd { get; set; }
    /// <summary>The evaluation metric the best model and early stopping compare (the Trainer's metric_for_best_model;
    /// "eval_" is prepended when missing, as the Trainer does).</summary>
    public string MetricForBestModel { get; set; } = "eval_loss";
    /// <summary>The Trainer's greater_is_better; null: true unless the metric's name ends in "loss" (perplexity, too,
    /// is lower-better here).</summary>
    public bool? GreaterIsBetter { get; set; }
    /// <summary>Stop when this many evaluations in a row have not lowered the best eval loss by more than
    /// EarlyStoppingThreshold (transformers' EarlyStoppingCallback); 0: never.</summary>
    public int EarlyStoppingPatience { get; set; }
    public double EarlyStoppingThreshold { get; set; }
    /// <summary>label_smoothing_factor ε: the loss is (1 − ε)·cross-entropy + ε·the mean −log p over the vocabulary.</summary>
    public double LabelSmoothingFactor { get; set; }
    /// <summary>For preference data: TRL's DPOConfig options (beta, loss_type, label_smoothing, rpo_alpha).</summary>
    public Autodiff.PreferenceOptions Preference { get; set; } = new();
    /// <summary>For preference data: the reference's log-probabilities of every training pair are computed once before
    /// the first step (TRL's precompute_ref_log_probs) instead of by a forward in every step.</summary>
    public bool PrecomputeRefLogProbs { get; set; }
    /// <summary>The loss and its gradient in this many chunks of the sequence through the lm_head (less memory: one
    /// chunk's logits at a time); null: 8 from a vocabulary of 8192, else 1.</summary>
    public int? LossChunks { get; set; }
    /// <summary>NEFTune's α (neftune_noise_alpha): uniform noise on the token embeddings while training; 0: none.</summary>
    public double NeftuneNoiseAlpha { get; set; }
    /// <summary>LoRA+: B's learning rate is LearningRate times this (1 = plain LoRA).</summary>
    public double LoraplusLrRatio { get; set; } = 1;
    /// <summary>The Trainer's optim: adamw_torch (and its fused twin, the same numbers), or PEFT's LoRA-FA (<see cref="LoraFa"/>).</summary>
    public string Optim { get; set; } = "adamw_torch";
    /// <summary>Mixed precision: the frozen model computes in float16 (bf16: bfloat16); LoRA parameters, their branches,
    /// the loss and AdamW stay float32, as PEFT trains a model loaded in half.</summary>
    public bool Fp16 { get; set; }
    public bool Bf16 { get; set; }
    /// <summary>Recompute the forward in the backward, segment by segment, instead of storing its activations
    /// (Hugging Face's gradient_checkpointing): less memory, more compute.</summary>
    public bool GradientCheckpointing { get; set; }
    /// <summary>Recompute attention's probabilities in the backward instead of storing them, as PyTorch's sdpa kernels
    /// do: the same numbers, much less memory at long sequences, a little more compute. On by default because sdpa is
    /// Hugging Face's default attention: a PEFT user's memory is what a model that stores no [batch, heads, seq, seq]
    /// probabilities takes (storing them is eager attention's memory).</summary>
    public bool RecomputeAttention { get; set; } = true;
    /// <summary>TRL's disable_dropout (DPOConfig, KTOConfig, ORPOConfig, CPOConfig, RewardConfig, GKDConfig,
    /// OnlineDPOConfig, all true by default): no dropout while training, PEFT's lora_dropout included (TRL sets every
    /// nn.Dropout's p to 0, and lora_dropout is one). Null: the trainer's default, on for preference data, reward
    /// models and distillation, off for SFT (SFTConfig has no such option).</summary>
    public bool? DisableDropout { get; set; }
    /// <summary>CUDA graphs: each step's kernels captured once and replayed (ONNX Runtime's enable_cuda_graph). Every batch
    /// is then padded to one shape (max_seq_length × the batch size).</summary>
    public bool CudaGraphs { get; set; }
    public string Device { get; set; } = "cpu";
    public string? EpLibrary { get; set; }
    /// <summary>ONNX Runtime's graph optimization level for the training graphs: all, extended, basic or none. Above
    /// basic ORT fuses the backward's Transpose+MatMul into com.microsoft ops, which a CUDA plugin EP may not take
    /// (docs/gpu.md).</summary>
    public string GraphOptimizationLevel { get; set; } = "all";

    public Microsoft.ML.OnnxRuntime.GraphOptimizationLevel OrtOptimizationLevel => OrtLevel(GraphOptimizationLevel);
    /// <summary>What the frozen model computes in (--fp16, --bf16, else float32).</summary>
    public Engine.ComputeType Compute => Bf16 ? Engine.ComputeType.BFloat16 : Fp16 ? Engine.ComputeType.Float16 : Engine.ComputeType.Float32;

    /// <summary>AdamW as these arguments set it up for <paramref name="model"/>'s trainable parameters: LoRA+ gives B (and
    /// the trained vectors) its own learning rate; weight decay leaves biases and norms alone, as the Trainer does.</summary>
    public Autodiff.AdamWOptions AdamWFor(Onnx.OnnxModel model)
    {
        var vectors = model.Graph.Initializer.Where(t => Engine.TrainingGraph.IsTrainable(t.Name) && t.Dims.Count == 1).Select(t => t.Name).ToHashSet();
        return new Autodiff.AdamWOptions(AdamBeta1, AdamBeta2, AdamEpsilon, WeightDecay,
            LrMultiplier: p => LoraPlusGroupB(p, vectors.Contains(p)) ? LoraplusLrRatio : 1.0, Decays: DecaysWeight);
    }

    /// <summary>The ORT level of a --graph-optimization-level value (train and verify take the same names).</summary>
    /// <summary>The Trainer's get_decay_parameter_names: weight decay applies to a parameter unless its name (lowercase)
    /// has "bias", "layernorm", "rmsnorm", a "norm" segment or "_norm" (the PEFT names ortlora gives parameters: trained
    /// biases and LoRA's own lora_B.bias are left out).</summary>
    public static bool DecaysWeight(string parameter) => !NoDecay.IsMatch(parameter.ToLowerInvariant());
    static readonly System.Text.RegularExpressions.Regex NoDecay = new(@"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)");

    /// <summary>PEFT's LoRA+ (create_loraplus_optimizer) puts in B's group, at --loraplus-lr-ratio times the learning rate,
    /// every parameter named lora_B and every 1-D one (DoRA's magnitudes, trained biases); the rest (A, an embedding's
    /// lora_embedding_A/B, modules_to_save weights, token rows) keeps the learning rate.</summary>
    public static bool LoraPlusGroupB(string parameter, bool isVector) => parameter.Contains("lora_B", StringComparison.Ordinal) || isVector;

    public static Microsoft.ML.OnnxRuntime.GraphOptimizationLevel OrtLevel(string name) => name switch
    {
        "all" => Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended" => Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic" => Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none" => Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
        var other => throw new OrtLoraException($"--graph-optimization-level {other}: expected all, extended, basic or none"),
    };
}

/// <summary>Hugging Face's learning-rate schedules (transformers.get_scheduler), as a pure function of the step.
/// The lr used by optimizer step k (0-based) is the schedule at k, as the Trainer applies it.</summary>
public static class LrSchedule
{
    public static int WarmupSteps(TrainingArguments a, int totalSteps) =>
        a.WarmupSteps > 0 ? a.WarmupSteps : (int)Math.Ceiling(totalSteps * a.WarmupRatio);

    /// <summary>The Hugging Face Trainer's schedulers (transformers.get_scheduler): "constant" ignores warmup, the others
    /// ramp up linearly over it. <paramref name="kwargs"/> is lr_scheduler_kwargs, with transformers' defaults:
    /// num_cycles (0.5 for cosine and cosine_with_min_lr, 1 for cosine_with_restarts), lr_end 1e-7 and power 1
    /// (polynomial), timescale (inverse_sqrt: the warmup, or 10,000 without one), min_lr or min_lr_rate
    /// (cosine_with_min_lr, one of them required).</summary>
    public static double At(string type, double baseLr, int step, int warmup, int total, SchedulerKwargs? kwargs = null)
    {
        kwargs ??= SchedulerKwargs.None;
        double Arg(string name, double fallback) => kwargs.Number(name) ?? fallback;
        if (type is "constant" or ReduceLrOnPlateau.Name) return baseLr; // the plateau's rate before any evaluation
        if (type == "warmup_stable_decay") return baseLr * WarmupStableDecay(step, warmup, total, kwargs);
        if (type == "cosine_warmup_with_min_lr") return baseLr * CosineWarmupWithMinLr(step, warmup, total, Arg("num_cycles", 0.5), MinLrRate(kwargs, baseLr), kwargs.Number("warmup_lr_rate"));
        if (step < warmup) return baseLr * step / Math.Max(1, warmup);
        double progress = (double)(step - warmup) / Math.Max(1, total - warmup);
        double Cosine(double cycles) => 0.5 * (1.0 + Math.Cos(Math.PI * cycles * 2.0 * progress));
        return type switch
        {
            "linear" => baseLr * Math.Max(0.0, (double)(total - step) / Math.Max(1, total - warmup)),
            "cosine" => baseLr * Math.Max(0.0, Cosine(Arg("num_cycles", 0.5))),
            "cosine_with_min_lr" => baseLr * Math.Max(0.0, Cosine(Arg("num_cycles", 0.5)) * (1 - MinLrRate(kwargs, baseLr)) + MinLrRate(kwargs, baseLr)),
            "cosine_with_restarts" => progress >= 1 ? 0
                : baseLr * Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * (Arg("num_cycles", 1) * progress % 1.0)))),
            "polynomial" => Polynomial(baseLr, step, warmup, total, Arg("lr_end", 1e-7), Arg("power", 1.0)),
            "inverse_sqrt" => InverseSqrt(baseLr, step, warmup, Arg("timescale", warmup > 0 ? warmup : 10_000)),
            "constant_with_warmup" => baseLr,
            _ => throw new OrtLoraException($"--lr-scheduler-type {type}: expected one of {string.Join(", ", Types)}"),
        };
    }

    public static readonly string[] Types = ["linear", "cosine", "cosine_with_restarts", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "polynomial",
        "constant", "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay", ReduceLrOnPlateau.Name];

    /// <summary>transformers' get_wsd_schedule: warm up (linear, cosine or 1-sqrt) from min_lr_ratio to 1, hold, then decay
    /// (linear, cosine or 1-sqrt) over num_decay_steps (required) to min_lr_ratio; the hold lasts num_stable_steps, or
    /// whatever the total leaves.</summary>
    static double WarmupStableDecay(int step, int warmup, int total, SchedulerKwargs kwargs)
    {
        int decay = (int)(kwargs.Number("num_decay_steps") ?? throw new OrtLoraException("--lr-scheduler-type warmup_stable_decay needs num_decay_steps in --lr-scheduler-kwargs"));
        int stable = (int)(kwargs.Number("num_stable_steps") ?? total - warmup - decay);
        double minRatio = kwargs.Number("min_lr_ratio") ?? 0, cycles = kwargs.Number("num_cycles") ?? 0.5;
        string warmupType = kwargs.Name("warmup_type", "linear", ["linear", "cosine", "1-sqrt"]), decayType = kwargs.Name("decay_type", "cosine", ["linear", "cosine", "1-sqrt"]);
        if (step < warmup)
        {
            double progress = (double)step / Math.Max(1, warmup);
            double factor = warmupType switch { "linear" => progress, "cosine" => 0.5 * (1.0 - Math.Cos(Math.PI * progress)), _ => 1.0 - Math.Sqrt(1.0 - progress) };
            return Math.Max(0.0, factor * (1.0 - minRatio) + minRatio);
        }
        if (step < warmup + stable) return 1.0;
        if (step < warmup + stable + decay)
        {
            double progress = (double)(step - warmup - stable) / Math.Max(1, decay);
            double factor = decayType switch { "linear" => 1.0 - progress, "cosine" => 0.5 * (1.0 + Math.Cos(Math.PI * cycles * 2.0 * progress)), _ => 1.0 - Math.Sqrt(progress) };
            return Math.Max(0.0, factor * (1.0 - minRatio) + minRatio);
        }
        return minRatio;
    }

    /// <summary>transformers' get_cosine_with_min_lr_schedule_with_warmup_lr_rate: the warmup starts at warmup_lr_rate (or
    /// 1/warmup) and reaches 1 at its last step; the cosine counts from the step after.</summary>
    static double CosineWarmupWithMinLr(int step, int warmup, int total, double cycles, double minRate, double? warmupRate)
    {
        if (step < warmup)
            return warmupRate is { } start ? start + (1.0 - start) * step / Math.Max(1, warmup - 1) : (step + 1.0) / Math.Max(1.0, warmup);
        double progress = (step - warmup + 1.0) / Math.Max(1.0, total - warmup);
        return Math.Max(0, 0.5 * (1.0 + Math.Cos(Math.PI * cycles * 2.0 * progress)) * (1 - minRate) + minRate);
    }

    static double InverseSqrt(double baseLr, int step, int warmup, double timescale) =>
        baseLr / Math.Sqrt((step + (timescale - warmup)) / timescale);

    static double Polynomial(double baseLr, int step, int warmup, int total, double lrEnd, double power)
    {
        if (lrEnd > baseLr) throw new OrtLoraException($"--lr-scheduler-kwargs: lr_end ({lrEnd}) must be smaller than the learning rate ({baseLr})");
        if (step > total) return lrEnd;
        return (baseLr - lrEnd) * Math.Pow(1 - (double)(step - warmup) / (total - warmup), power) + lrEnd;
    }

    static double MinLrRate(SchedulerKwargs kwargs, double baseLr) =>
        kwargs.Number("min_lr") is { } minLr ? minLr / baseLr
        : kwargs.Number("min_lr_rate") ?? throw new OrtLoraException("--lr-scheduler-type cosine_with_min_lr and cosine_warmup_with_min_lr need min_lr or min_lr_rate in --lr-scheduler-kwargs");

    /// <summary>lr_scheduler_kwargs as the Trainer's CLI takes it: a JSON object of numbers and names, e.g. {"num_cycles": 2}.</summary>
    public static SchedulerKwargs ParseKwargs(string? json)
    {
        if (string.IsNullOrWhiteSpace(json)) return SchedulerKwargs.None;
        try
        {
            var values = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject().ToDictionary(p => p.Key, p => p.Value!.AsValue());
            return new SchedulerKwargs(
                values.Where(p => !p.Value.TryGetValue<string>(out _)).ToDictionary(p => p.Key, p => p.Value.GetValue<double>()),
                values.Where(p => p.Value.TryGetValue<string>(out _)).ToDictionary(p => p.Key, p => p.Value.GetValue<string>()));
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new OrtLoraException($"--lr-scheduler-kwargs: expected a JSON object of numbers (and warmup_type / decay_type names) such as {{\"num_cycles\": 2}}, got '{json}'");
        }
    }
}

/// <summary>lr_scheduler_kwargs: the numbers (num_cycles, min_lr_rate, num_decay_steps ...) and the names (warmup_type,
/// decay_type) a schedule reads.</summary>
public sealed record SchedulerKwargs(IReadOnlyDictionary<string, double> Numbers, IReadOnlyDictionary<string, string> Names)
{
    public static readonly SchedulerKwargs None = new(new Dictionary<string, double>(), new Dictionary<string, string>());
    public double? Number(string name) => Numbers.TryGetValue(name, out var v) ? v : null;
    public string Name(string name, string fallback, string[] allowed) =>
        !Names.TryGetValue(name, out var v) ? fallback : allowed.Contains(v) ? v
        : throw new OrtLoraException($"--lr-scheduler-kwargs: {name} '{v}' is not one of {string.Join(", ", allowed)}");
}
