namespace OrtLora.Training.Grpo;

/// <summary>One sampled completion's part in a step: its tokens (those the loss counts) and, where needed, its tokens'
/// log-probabilities under the policy as it is (β > 0, or a later iteration), the reference (β > 0), and the policy that
/// sampled it (a later iteration of num_iterations: the ratio's denominator).</summary>
/// <param name="CountedTokens">completion tokens in the loss (0 for a truncated completion under mask_truncated_completions)</param>
public sealed record ScoredCompletion(int CountedTokens, double Advantage, float[]? PolicyLogps = null, float[]? ReferenceLogps = null,
    float[]? OldLogps = null);

/// <summary>A micro-batch's loss as TRL logs it, the sum of its KL terms, and how many of its tokens the clipping held:
/// low (A &lt; 0, ratio &lt; 1 − ε), high (A &gt; 0, ratio &gt; 1 + ε_high), and out of [1 − ε, 1 + ε_high] at all.</summary>
public sealed record MicroBatchLoss(double Loss, double KlSum, int LowClipped, int HighClipped, int RegionClipped);

/// <summary>GRPO's arithmetic between the rewards and the loss, as TRL's GRPOTrainer computes it
/// (_generate_and_score_completions, then _compute_loss). Each token's loss is −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A)
/// + β·kl with ρ = π / π_old; at the first iteration on a generation batch ρ is 1 and the clipping never acts.</summary>
public static class GroupAdvantages
{
    /// <summary>Rewards, advantages and the statistics TRL logs for one generation batch of groups of
    /// <paramref name="groupSize"/> consecutive completions.</summary>
    /// <param name="rewardsPerFunction">[completion][function], NaN where a function gave no score</param>
    public static (double[] Rewards, double[] Advantages, double[] Std, bool[] StdIsZero) Compute(double[][] rewardsPerFunction, IReadOnlyList<double> weights,
        int groupSize, string scaleRewards)
    {
        int n = rewardsPerFunction.Length;
        if (n % groupSize != 0) throw new ArgumentException($"{n} completions are not whole groups of {groupSize}");
        // nansum: a function that did not score a completion adds nothing to its reward
        var rewards = rewardsPerFunction.Select(row => row.Select((r, f) => double.IsNaN(r) ? 0 : r * weights[f]).Sum()).ToArray();
        var mean = new double[n];
        var std = new double[n];
        double batchStd = StdDev(rewards);
        for (int start = 0; start < n; start += groupSize)
        {
            var group = rewards.AsSpan(start, groupSize).ToArray();
            double m = group.Average(), s = scaleRewards == "batch" ? batchStd : StdDev(group);
            for (int i = start; i < start + groupSize; i++) { mean[i] = m; std[i] = s; }
        }
        // as torch.std: the unbiased estimate; torch.isclose(std, 0): within 1e-8
        var advantages = rewards.Select((r, i) => scaleRewards == "none" ? r - mean[i] : (r - mean[i]) / (std[i] + 1e-4)).ToArray();
        return (rewards, advantages, std, [.. std.Select(s => Math.Abs(s) <= 1e-8)]);
    }

    static double StdDev(IReadOnlyList<double> values)
    {
        if (values.Count < 2) return double.NaN;
        double mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
    }

    /// <summary>Each completion's normalizer for one micro-batch: what its summed per-token terms are divided by, with the
    /// window's gradient accumulation folded in (TRL divides the grpo, bnpo and dr_grpo losses by the accumulation steps;
    /// dapo's count is the whole window's).</summary>
    /// <param name="microBatch">the micro-batch's completions</param>
    /// <param name="windowTokens">counted tokens of the whole generation batch (all micro-batches of the step)</param>
    public static double[] Normalizers(IReadOnlyList<ScoredCompletion> microBatch, long windowTokens, int accumulationSteps, string lossType, int maxCompletionLength)
    {
        int b = microBatch.Count;
        long batchTokens = microBatch.Sum(c => (long)c.CountedTokens);
        return [.. microBatch.Select(c => lossType switch
        {
            "grpo" => 1.0 / Math.Max(1, c.CountedTokens) / b / accumulationSteps,
            "bnpo" => 1.0 / Math.Max(1, batchTokens) / accumulationSteps,
            "dr_grpo" => 1.0 / ((double)b * maxCompletionLength) / accumulationSteps,
            "dapo" => 1.0 / Math.Max(1, windowTokens),
            _ => throw new OrtLoraException($"unknown GRPO loss type '{lossType}'"),
        })];
    }

    /// <summary>Token t's ratio ρ = π / π_old (1 without old log-probabilities) and which bound holds it: −1 low, +1 high,
    /// 0 none (the min picks the unclipped term).</summary>
    static (double Ratio, int Clipped) Ratio(ScoredCompletion c, int t, double epsilon, double epsilonHigh)
    {
        if (c.OldLogps is null) return (1, 0);
        double ratio = Math.Exp(c.PolicyLogps![t] - c.OldLogps[t]);
        return c.Advantage < 0 && ratio < 1 - epsilon ? (ratio, -1) : c.Advantage > 0 && ratio > 1 + epsilonHigh ? (ratio, 1) : (ratio, 0);
    }

    /// <summary>−d loss / d log p of each counted token of a completion (the token weights of the engine's weighted loss):
    /// normalizer·(A·ρ − β·(1 − e^(ref − logp))), with A·ρ replaced by 0 where the clipped term is the min (it is constant
    /// there), since d ρ / d log p = ρ and d/d log p of e^(ref − logp) − (ref − logp) − 1 is 1 − e^(ref − logp).</summary>
    public static float[] TokenWeights(ScoredCompletion completion, double normalizer, double beta, double epsilon = 0.2, double epsilonHigh = 0.2)
    {
        var weights = new float[completion.CountedTokens];
        for (int t = 0; t < weights.Length; t++)
        {
            var (ratio, clipped) = Ratio(completion, t, epsilon, epsilonHigh);
            double kl = beta == 0 ? 0 : beta * (1 - Math.Exp(completion.ReferenceLogps![t] - completion.PolicyLogps![t]));
            weights[t] = (float)(normalizer * ((clipped == 0 ? completion.Advantage * ratio : 0) - kl));
        }
        return weights;
    }

    /// <summary>TRL's logged loss for one micro-batch: Σ over counted tokens of normalizer·(−min(ρ·A, clip(ρ)·A) + β·kl),
    /// with the KL terms' sum and the clipped tokens.</summary>
    public static MicroBatchLoss Loss(IReadOnlyList<ScoredCompletion> microBatch, IReadOnlyList<double> normalizers, double beta,
        double epsilon = 0.2, double epsilonHigh = 0.2)
    {
        double loss = 0, klSum = 0;
        int low = 0, high = 0, region = 0;
        for (int i = 0; i < microBatch.Count; i++)
        {
            var c = microBatch[i];
            for (int t = 0; t < c.CountedTokens; t++)
            {
                double kl = 0;
                if (beta > 0)
                {
                    double d = c.ReferenceLogps![t] - c.PolicyLogps![t];
                    kl = Math.Exp(d) - d - 1;
                }
                var (ratio, clipped) = Ratio(c, t, epsilon, epsilonHigh);
                double surrogate = Math.Min(ratio * c.Advantage, Math.Clamp(ratio, 1 - epsilon, 1 + epsilonHigh) * c.Advantage);
                klSum += kl;
                loss += normalizers[i] * (-surrogate + beta * kl);
                if (clipped < 0) low++;
                if (clipped > 0) high++;
                if (ratio < 1 - epsilon || ratio > 1 + epsilonHigh) region++;
            }
        }
        return new MicroBatchLoss(loss, klSum, low, high, region);
    }
}
