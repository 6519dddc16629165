namespace OrtLora.Training.Grpo;

/// <summary>TRL's GRPOConfig (and RLOOConfig) options that shape sampling and the loss (the Trainer's own options are
/// <see cref="TrainingArguments"/>'s).</summary>
public sealed record GrpoOptions
{
    /// <summary>grpo (TRL's GRPOTrainer) or rloo (its RLOOTrainer: leave-one-out baselines, the KL in the reward, one
    /// ratio per completion; <see cref="Rloo"/>).</summary>
    public string Algorithm { get; init; } = "grpo";
    public bool IsRloo => Algorithm == "rloo";
    /// <summary>The losses TRL's GRPOTrainer takes: how a step's per-token terms are summed and normalized.</summary>
    public static readonly string[] LossTypes = ["dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo"];
    public static readonly string[] RewardScalings = ["group", "batch", "none"];
    public static readonly string[] ImportanceSamplingLevels = ["token", "sequence"];
    public static readonly string[] Aggregations = ["sum_then_normalize", "normalize_then_sum"];

    /// <summary>num_generations: completions sampled per prompt, the group its rewards are compared within (at least 2).</summary>
    public int NumGenerations { get; init; } = 8;
    /// <summary>num_generations_eval: completions per eval prompt (null: <see cref="NumGenerations"/>).</summary>
    public int? NumGenerationsEval { get; init; }
    /// <summary>max_completion_length: a completion stops there if it has not ended with EOS (it is then truncated).</summary>
    public int MaxCompletionLength { get; init; } = 256;
    /// <summary>The prompt keeps its last this many tokens.</summary>
    public int MaxPromptLength { get; init; } = 512;
    public double Temperature { get; init; } = 1.0;
    public double TopP { get; init; } = 1.0;
    /// <summary>0: no top-k filtering.</summary>
    public int TopK { get; init; }
    /// <summary>min_p: only tokens at least this times as likely as the most likely one (0: off).</summary>
    public double MinP { get; init; }
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>dapo (TRL's default: the tokens of the whole generation batch), grpo (each completion's mean, then the
    /// mean over completions), bnpo (the micro-batch's tokens), dr_grpo (batch size × max_completion_length); cispo
    /// (MiniMax-M1: the ratio clamped at epsilon_high and held constant, times A·log p; normalized as dapo), sapo (a soft
    /// sigmoid gate instead of the clip; normalized as grpo), luspo (GSPO's sequence term times the sequence's length).</summary>
    public string LossType { get; init; } = "dapo";
    /// <summary>token: one ratio π / π_old per token; sequence (GSPO): exp of the completion's mean log-ratio, for all its tokens.</summary>
    public string ImportanceSamplingLevel { get; init; } = "token";
    /// <summary>INTELLECT-2's two-sided clip: the unclipped term's ratio is capped at delta (null: no cap; above 1 + epsilon_high).</summary>
    public double? Delta { get; init; }
    /// <summary>SAPO's gate temperatures for tokens of positive and of other advantages.</summary>
    public double SapoTemperaturePos { get; init; } = 1.0;
    public double SapoTemperatureNeg { get; init; } = 1.05;
    /// <summary>DeepSeek-V3.2's off-policy sequence mask: a completion with A &lt; 0 whose mean log(π_old / π) exceeds this
    /// leaves the policy term (null: none).</summary>
    public double? OffPolicyMaskThreshold { get; init; }
    /// <summary>The KL term times the importance ratio (DeepSeek-V3.2's unbiased estimator off-policy).</summary>
    public bool UseBiasCorrectionKl { get; init; }
    /// <summary>"Beyond the 80/20 rule": only the micro-batch's top this share of tokens by the policy's entropy keep the
    /// policy term (1: all).</summary>
    public double TopEntropyQuantile { get; init; } = 1.0;
    /// <summary>sum_then_normalize (TRL's default) or normalize_then_sum (GDPO: each reward normalized within its group first).</summary>
    public string MultiObjectiveAggregation { get; init; } = "sum_then_normalize";
    /// <summary>steps_per_generation: optimizer steps one generation batch of per_device_train_batch_size × this many
    /// completions is split over (null: gradient_accumulation_steps, one step per generation batch). Steps after a batch's
    /// first are off-policy: their ratio is to the policy that sampled it.</summary>
    public int? StepsPerGeneration { get; init; }
    /// <summary>generation_batch_size: the completions sampled at once (null: from <see cref="StepsPerGeneration"/>);
    /// TRL's other way to say the same thing, a multiple of per_device_train_batch_size.</summary>
    public int? GenerationBatchSize { get; init; }
    /// <summary>group: advantages divided by the group's reward standard deviation; batch: by the whole batch's; none.</summary>
    public string ScaleRewards { get; init; } = "group";
    /// <summary>The KL coefficient against the reference (the model as training starts); 0 (TRL's default) computes no
    /// reference log-probabilities.</summary>
    public double Beta { get; init; }
    /// <summary>num_iterations (μ): optimizer steps on each generation batch; from the second on, the ratio to the
    /// policy that sampled it is clipped to [1 − ε, 1 + ε_high].</summary>
    public int NumIterations { get; init; } = 1;
    public double Epsilon { get; init; } = 0.2;
    /// <summary>epsilon_high (null: <see cref="Epsilon"/>; DAPO uses 0.28).</summary>
    public double? EpsilonHigh { get; init; }
    /// <summary>Truncated completions (no EOS within max_completion_length) count in the rewards but not in the loss.</summary>
    public bool MaskTruncatedCompletions { get; init; }
    /// <summary>One weight per reward function (null: all 1).</summary>
    public IReadOnlyList<double>? RewardWeights { get; init; }
    /// <summary>RLOO's normalize_advantages: the generation batch's advantages to mean 0 and standard deviation 1.</summary>
    public bool NormalizeAdvantages { get; init; }
    /// <summary>RLOO's reward_clip_range: each completion's weighted reward clamped to [Min, Max] before the KL penalty.</summary>
    public (double Min, double Max)? RewardClipRange { get; init; }

    public void Validate(int rewardFunctions)
    {
        if (NumGenerations < 2) throw new OrtLoraException($"--num-generations must be at least 2 (rewards are compared within each prompt's group), got {NumGenerations}");
        if (NumGenerationsEval is < 1) throw new OrtLoraException($"--num-generations-eval must be at least 1, got {NumGenerationsEval}");
        if (MaxCompletionLength < 1) throw new OrtLoraException("--max-completion-length must be at least 1");
        if (MaxPromptLength < 1) throw new OrtLoraException("--max-prompt-length must be at least 1");
        if (Temperature <= 0) throw new OrtLoraException($"--temperature must be positive (GRPO samples its completions), got {Temperature}");
        if (TopP is <= 0 or > 1) throw new OrtLoraException($"--top-p must be in (0, 1], got {TopP}");
        if (TopK < 0) throw new OrtLoraException("--top-k must not be negative");
        if (MinP is < 0 or > 1) throw new OrtLoraException($"--min-p must be in [0, 1], got {MinP}");
        if (RepetitionPenalty <= 0) throw new OrtLoraException("--repetition-penalty must be positive");
        if (!LossTypes.Contains(LossType)) throw new OrtLoraException($"unknown GRPO loss type '{LossType}'; expected {string.Join(", ", LossTypes)}");
        if (!RewardScalings.Contains(ScaleRewards)) throw new OrtLoraException($"unknown --scale-rewards '{ScaleRewards}'; expected {string.Join(", ", RewardScalings)}");
        if (NumIterations < 1) throw new OrtLoraException($"--num-iterations must be at least 1, got {NumIterations}");
        if (Epsilon is <= 0 or >= 1) throw new OrtLoraException($"--epsilon must be in (0, 1), got {Epsilon}");
        if (EpsilonHigh is <= 0) throw new OrtLoraException($"--epsilon-high must be positive, got {EpsilonHigh}");
        if (Beta < 0) throw new OrtLoraException($"--beta must not be negative, got {Beta}");
        if (!ImportanceSamplingLevels.Contains(ImportanceSamplingLevel))
            throw new OrtLoraException($"unknown --importance-sampling-level '{ImportanceSamplingLevel}'; expected {string.Join(", ", ImportanceSamplingLevels)}");
        if (!Aggregations.Contains(MultiObjectiveAggregation))
            throw new OrtLoraException($"unknown --multi-objective-aggregation '{MultiObjectiveAggregation}'; expected {string.Join(", ", Aggregations)}");
        // TRL's luspo multiplies a (B, 1) sequence term by the lengths and takes the plain mean; with per-token terms
        // (token level, or a KL term) that mean runs over padded positions, which no fixed layout reproduces
        if (LossType == "luspo" && ImportanceSamplingLevel != "sequence")
            throw new OrtLoraException("--loss-type luspo needs --importance-sampling-level sequence (it scales GSPO's sequence term by the length)");
        if (LossType == "luspo" && Beta > 0)
            throw new OrtLoraException("--loss-type luspo takes --beta 0: TRL averages luspo's KL terms over padded positions");
        if (Delta is <= 0) throw new OrtLoraException($"--delta must be positive (TRL recommends more than 1 + epsilon), got {Delta}");
        if (Delta is not null && LossType is "cispo" or "sapo")
            throw new OrtLoraException($"--delta applies to the clipped losses, not to --loss-type {LossType}");
        if (SapoTemperaturePos <= 0 || SapoTemperatureNeg <= 0) throw new OrtLoraException("--sapo-temperature-pos and --sapo-temperature-neg must be positive");
        if (OffPolicyMaskThreshold is <= 0) throw new OrtLoraException($"--off-policy-mask-threshold must be positive, got {OffPolicyMaskThreshold}");
        if (TopEntropyQuantile is < 0 or > 1) throw new OrtLoraException($"--top-entropy-quantile must be in [0, 1], got {TopEntropyQuantile}");
        if (StepsPerGeneration is < 1) throw new OrtLoraException($"--steps-per-generation must be at least 1, got {StepsPerGeneration}");
        if (GenerationBatchSize is < 1) throw new OrtLoraException($"--generation-batch-size must be at least 1, got {GenerationBatchSize}");
        if (StepsPerGeneration is not null && GenerationBatchSize is not null)
            throw new OrtLoraException("give --steps-per-generation or --generation-batch-size, not both");
        if (Algorithm is not ("grpo" or "rloo")) throw new OrtLoraException($"unknown policy-gradient algorithm '{Algorithm}'; expected grpo or rloo");
        if (IsRloo) ValidateRloo();
        else if (NormalizeAdvantages || RewardClipRange is not null)
            throw new OrtLoraException("--normalize-advantages and --reward-clip-range are RLOO's (ortlora rloo); GRPO normalizes with --scale-rewards");
        if (rewardFunctions == 0) throw new OrtLoraException($"{Algorithm.ToUpperInvariant()} needs at least one reward function (--reward-funcs)");
        if (RewardWeights is { } w && w.Count != rewardFunctions)
            throw new OrtLoraException($"--reward-weights has {w.Count} values for {rewardFunctions} reward functions");
    }

    /// <summary>RLOO's loss is its own (<see cref="Rloo.Loss"/>): GRPO's loss options have no meaning there.</summary>
    void ValidateRloo()
    {
        var defaults = new GrpoOptions();
        var grpoOnly = new (string Option, bool Changed)[]
        {
            ("--loss-type", LossType != defaults.LossType), ("--importance-sampling-level", ImportanceSamplingLevel != defaults.ImportanceSamplingLevel),
            ("--delta", Delta is not null), ("--off-policy-mask-threshold", OffPolicyMaskThreshold is not null), ("--use-bias-correction-kl", UseBiasCorrectionKl),
            ("--top-entropy-quantile", TopEntropyQuantile < 1), ("--multi-objective-aggregation", MultiObjectiveAggregation != defaults.MultiObjectiveAggregation),
            ("--scale-rewards", ScaleRewards != defaults.ScaleRewards),
        };
        if (grpoOnly.FirstOrDefault(o => o.Changed).Option is { } option)
            throw new OrtLoraException($"{option} is GRPO's (ortlora grpo); RLOO's loss is one clipped ratio per completion, its advantages leave-one-out");
        if (RewardClipRange is { } range && !(range.Min < range.Max))
            throw new OrtLoraException($"--reward-clip-range takes MIN MAX with MIN < MAX, got {range.Min} {range.Max}");
    }

    /// <summary>Micro-batches per generation batch (TRL's steps_per_generation): given, from generation_batch_size, or
    /// gradient_accumulation_steps. A whole number of optimizer steps, of whole groups.</summary>
    public int MicroBatchesPerGeneration(int perDeviceTrainBatchSize, int gradientAccumulationSteps)
    {
        if (GenerationBatchSize is { } size && size % perDeviceTrainBatchSize != 0)
            throw new OrtLoraException($"--generation-batch-size ({size}) must be a multiple of --per-device-train-batch-size ({perDeviceTrainBatchSize})");
        int steps = StepsPerGeneration ?? (GenerationBatchSize is { } g ? g / perDeviceTrainBatchSize : gradientAccumulationSteps);
        if (steps % gradientAccumulationSteps != 0)
            throw new OrtLoraException($"--steps-per-generation ({steps}) must be a multiple of --gradient-accumulation-steps ({gradientAccumulationSteps}): " +
                "each optimizer step takes whole micro-batches of one generation batch");
        if (perDeviceTrainBatchSize * steps % NumGenerations != 0)
            throw new OrtLoraException($"the generation batch (--per-device-train-batch-size × --steps-per-generation = {perDeviceTrainBatchSize * steps}) must be a " +
                $"multiple of --num-generations ({NumGenerations}): it is sampled in whole groups");
        return steps;
    }
}
