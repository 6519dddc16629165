namespace OrtLora.Training.Grpo;

/// <summary>GRPO's arithmetic between the rewards and the loss, as TRL's GRPOTrainer computes it: the group-relative
/// advantages (_generate_and_score_completions) and what each loss type divides its summed token terms by
/// (_compute_loss). The token terms themselves are <see cref="PolicyLoss"/>'s.</summary>
public static class GroupAdvantages
{
    /// <summary>Rewards, advantages and the statistics TRL logs for one generation batch of groups of
    /// <paramref name="groupSize"/> consecutive completions.</summary>
    /// <param name="rewardsPerFunction">[completion][function], NaN where a function gave no score</param>
    /// <param name="aggregation">sum_then_normalize (TRL's default); normalize_then_sum (GDPO): each function's rewards
    /// normalized within the group first, their weighted sum then normalized over the batch (scale_rewards unused)</param>
    public static (double[] Rewards, double[] Advantages, double[] Std, bool[] StdIsZero) Compute(double[][] rewardsPerFunction, IReadOnlyList<double> weights,
        int groupSize, string scaleRewards, string aggregation = "sum_then_normalize")
    {
        int n = rewardsPerFunction.Length;
        if (n % groupSize != 0) throw new ArgumentException($"{n} completions are not whole groups of {groupSize}");
        if (aggregation == "normalize_then_sum") return NormalizeThenSum(rewardsPerFunction, weights, groupSize);
        // nansum: a function that did not score a completion adds nothing to its reward
        var rewards = rewardsPerFunction.Select(row => row.Select((r, f) => double.IsNaN(r) ? 0 : r * weights[f]).Sum()).ToArray();
        var mean = new double[n];
        var std = new double[n];
        double batchStd = Statistics.StdDev(rewards);
        for (int start = 0; start < n; start += groupSize)
        {
            var group = rewards.AsSpan(start, groupSize).ToArray();
            double m = group.Average(), s = scaleRewards == "batch" ? batchStd : Statistics.StdDev(group);
            for (int i = start; i < start + groupSize; i++) { mean[i] = m; std[i] = s; }
        }
        // as torch.std: the unbiased estimate; torch.isclose(std, 0): within 1e-8
        var advantages = rewards.Select((r, i) => scaleRewards == "none" ? r - mean[i] : (r - mean[i]) / (std[i] + 1e-4)).ToArray();
        return (rewards, advantages, std, [.. std.Select(s => Math.Abs(s) <= 1e-8)]);
    }

    /// <summary>GDPO as TRL computes it: per function and group, (r − nanmean) / (nanstd + 1e-4), a function's missing
    /// scores staying missing; the weighted nansum over functions; then (x − batch mean) / (batch std + 1e-4). The rewards
    /// returned (and logged) are the weighted sums of the raw scores; the std is the batch's, as TRL tests it for zero.</summary>
    static (double[] Rewards, double[] Advantages, double[] Std, bool[] StdIsZero) NormalizeThenSum(double[][] rewardsPerFunction,
        IReadOnlyList<double> weights, int groupSize)
    {
        int n = rewardsPerFunction.Length, functions = weights.Count;
        var aggregated = new double[n];
        for (int start = 0; start < n; start += groupSize)
            for (int f = 0; f < functions; f++)
            {
                var scored = Enumerable.Range(start, groupSize).Select(i => rewardsPerFunction[i][f]).Where(r => !double.IsNaN(r)).ToList();
                double mean = scored.Count == 0 ? double.NaN : scored.Average(), std = Statistics.StdDev(scored);
                for (int i = start; i < start + groupSize; i++)
                {
                    double normalized = (rewardsPerFunction[i][f] - mean) / (std + 1e-4);
                    if (!double.IsNaN(normalized)) aggregated[i] += normalized * weights[f];
                }
            }
        double batchMean = aggregated.Average(), batchStd = Statistics.StdDev(aggregated);
        var advantages = aggregated.Select(x => (x - batchMean) / (batchStd + 1e-4)).ToArray();
        var raw = rewardsPerFunction.Select(row => row.Select((r, f) => double.IsNaN(r) ? 0 : r * weights[f]).Sum()).ToArray();
        return (raw, advantages, [.. aggregated.Select(_ => batchStd)], [.. aggregated.Select(_ => Math.Abs(batchStd) <= 1e-8)]);
    }

    /// <summary>Each completion's normalizer for one micro-batch: what its summed per-token terms are divided by, with the
    /// step's gradient accumulation folded in (TRL divides the grpo, sapo, bnpo, dr_grpo and luspo losses by the
    /// accumulation steps; dapo and cispo divide by the generation batch's completion tokens, TRL's num_items_in_batch).</summary>
    /// <param name="microBatch">the micro-batch's completions</param>
    /// <param name="generationTokens">completion tokens of the whole generation batch, truncated ones included (TRL counts
    /// them before mask_truncated_completions)</param>
    public static double[] Normalizers(IReadOnlyList<ScoredCompletion> microBatch, long generationTokens, int accumulationSteps, string lossType, int maxCompletionLength)
    {
        int b = microBatch.Count;
        long batchTokens = microBatch.Sum(c => (long)c.CountedTokens);
        return [.. microBatch.Select(c => lossType switch
        {
            "grpo" or "sapo" => 1.0 / Math.Max(1, c.CountedTokens) / b / accumulationSteps,
            "bnpo" => 1.0 / Math.Max(1, batchTokens) / accumulationSteps,
            "dr_grpo" => 1.0 / ((double)b * maxCompletionLength) / accumulationSteps,
            "dapo" or "cispo" => 1.0 / Math.Max(1, generationTokens),
            // mean over rows of the sequence's term times its length: each of its n tokens carries 1 / (B·GA)
            "luspo" => 1.0 / b / accumulationSteps,
            _ => throw new OrtLoraException($"unknown GRPO loss type '{lossType}'"),
        })];
    }
}
