namespace OrtLora.Training.Grpo;

/// <summary>TRL's GRPOConfig options that shape sampling and the loss (the Trainer's own options are
/// <see cref="TrainingArguments"/>'s).</summary>
public sealed record GrpoOptions
{
    /// <summary>The losses TRL's GRPOTrainer takes: how a step's per-token terms are summed and normalized.</summary>
    public static readonly string[] LossTypes = ["dapo", "grpo", "bnpo", "dr_grpo"];
    public static readonly string[] RewardScalings = ["group", "batch", "none"];

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
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>dapo (TRL's default: the tokens of the whole generation batch), grpo (each completion's mean, then the
    /// mean over completions), bnpo (the micro-batch's tokens), dr_grpo (batch size × max_completion_length).</summary>
    public string LossType { get; init; } = "dapo";
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

    public void Validate(int rewardFunctions)
    {
        if (NumGenerations < 2) throw new OrtLoraException($"--num-generations must be at least 2 (rewards are compared within each prompt's group), got {NumGenerations}");
        if (NumGenerationsEval is < 1) throw new OrtLoraException($"--num-generations-eval must be at least 1, got {NumGenerationsEval}");
        if (MaxCompletionLength < 1) throw new OrtLoraException("--max-completion-length must be at least 1");
        if (MaxPromptLength < 1) throw new OrtLoraException("--max-prompt-length must be at least 1");
        if (Temperature <= 0) throw new OrtLoraException($"--temperature must be positive (GRPO samples its completions), got {Temperature}");
        if (TopP is <= 0 or > 1) throw new OrtLoraException($"--top-p must be in (0, 1], got {TopP}");
        if (TopK < 0) throw new OrtLoraException("--top-k must not be negative");
        if (RepetitionPenalty <= 0) throw new OrtLoraException("--repetition-penalty must be positive");
        if (!LossTypes.Contains(LossType)) throw new OrtLoraException($"unknown GRPO loss type '{LossType}'; expected {string.Join(", ", LossTypes)}");
        if (!RewardScalings.Contains(ScaleRewards)) throw new OrtLoraException($"unknown --scale-rewards '{ScaleRewards}'; expected {string.Join(", ", RewardScalings)}");
        if (NumIterations < 1) throw new OrtLoraException($"--num-iterations must be at least 1, got {NumIterations}");
        if (Epsilon is <= 0 or >= 1) throw new OrtLoraException($"--epsilon must be in (0, 1), got {Epsilon}");
        if (EpsilonHigh is <= 0) throw new OrtLoraException($"--epsilon-high must be positive, got {EpsilonHigh}");
        if (Beta < 0) throw new OrtLoraException($"--beta must not be negative, got {Beta}");
        if (rewardFunctions == 0) throw new OrtLoraException("GRPO needs at least one reward function (--reward-funcs)");
        if (RewardWeights is { } w && w.Count != rewardFunctions)
            throw new OrtLoraException($"--reward-weights has {w.Count} values for {rewardFunctions} reward functions");
    }
}
