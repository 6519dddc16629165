namespace OrtLora.Training.Grpo;

/// <summary>RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024, "Back to Basics") as TRL's RLOOTrainer computes it. It
/// uses the GRPO trainer's sampling, scoring and steps; what differs is here:
/// <list type="bullet">
/// <item>The reward: the weighted sum of the functions' scores, clamped to reward_clip_range, minus β times the
/// completion's KL to the reference. That KL is Σ (log π_old − log π_ref) over its counted tokens, under the policy that
/// sampled it.</item>
/// <item>The advantage: the reward minus the mean of the other rewards of its group, optionally normalized over the
/// generation batch.</item>
/// <item>The loss: one ratio per completion, exp of the sum of its tokens' log-ratios, in PPO's clipped term, averaged over
/// the micro-batch's completions. The KL is in the reward, so the loss has no KL term.</item>
/// </list></summary>
public static class Rloo
{
    /// <summary>Each completion's KL to the reference as RLOO puts it in the reward: Σ (log π_old − log π_ref) over its
    /// counted tokens (none for a truncated completion under mask_truncated_completions). Also returns the mean over all
    /// counted tokens of the generation batch, which TRL logs as kl.</summary>
    public static (double[] PerCompletion, double Mean) SequenceKl(IReadOnlyList<int> countedTokens, IReadOnlyList<TokenScores> sampling,
        IReadOnlyList<TokenScores> reference)
    {
        var kl = new double[countedTokens.Count];
        long tokens = 0;
        for (int i = 0; i < kl.Length; i++)
        {
            for (int t = 0; t < countedTokens[i]; t++) kl[i] += sampling[i].Logps[t] - reference[i].Logps[t];
            tokens += countedTokens[i];
        }
        return (kl, kl.Sum() / Math.Max(1, tokens));
    }

    /// <summary>Rewards, leave-one-out advantages and the statistics TRL's RLOOTrainer logs for one generation batch of
    /// groups of <paramref name="groupSize"/> consecutive completions.</summary>
    /// <param name="rewardsPerFunction">[completion][function], NaN where a function gave no score</param>
    /// <param name="sequenceKl">each completion's KL (<see cref="SequenceKl"/>); null when β = 0</param>
    /// <param name="klMean">the mean KL per token, logged (NaN when β = 0)</param>
    public static RolloutScores Score(double[][] rewardsPerFunction, IReadOnlyList<double> weights, int groupSize, GrpoOptions options,
        IReadOnlyList<double>? sequenceKl = null, double klMean = double.NaN)
    {
        int n = rewardsPerFunction.Length;
        if (n % groupSize != 0) throw new ArgumentException($"{n} completions are not whole groups of {groupSize}");
        // nansum: a function that did not score a completion adds nothing to its reward
        var raw = rewardsPerFunction.Select(row => row.Select((r, f) => double.IsNaN(r) ? 0 : r * weights[f]).Sum()).ToArray();
        var rewards = raw.Select((r, i) =>
        {
            double clipped = options.RewardClipRange is { } range ? Math.Clamp(r, range.Min, range.Max) : r;
            return clipped - (options.Beta != 0 && sequenceKl is not null ? options.Beta * sequenceKl[i] : 0);
        }).ToArray();
        var advantages = new double[n];
        var zero = new bool[n];
        for (int start = 0; start < n; start += groupSize)
        {
            var group = rewards.AsSpan(start, groupSize);
            double sum = 0;
            foreach (var r in group) sum += r;
            // torch.isclose(std, 0): within 1e-8; a group of one (an evaluation's) has std 0 in TRL
            bool equal = groupSize < 2 || Math.Abs(Statistics.StdDev(group.ToArray())) <= 1e-8;
            for (int i = start; i < start + groupSize; i++)
            {
                // the baseline is the mean of the other completions' rewards
                advantages[i] = groupSize > 1 ? rewards[i] - (sum - rewards[i]) / (groupSize - 1) : 0;
                zero[i] = equal;
            }
        }
        if (options.NormalizeAdvantages)
        {
            double mean = advantages.Average(), std = Statistics.StdDev(advantages);
            for (int i = 0; i < n; i++) advantages[i] = (advantages[i] - mean) / (std + 1e-4);
        }
        // TRL logs the weighted sums of the scores (neither clamped nor penalized), reward_std over the whole batch
        double batchStd = Statistics.StdDev(raw);
        return new RolloutScores(rewardsPerFunction, raw, advantages, [.. raw.Select(_ => batchStd)], zero, klMean);
    }

    /// <summary>RLOO's loss of one micro-batch and its token weights (−d loss / d log p). The completion's ratio is
    /// ρ = exp(Σ log π − Σ log π_old) over its counted tokens (1 on-policy), its term −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A),
    /// and the loss the mean of the terms over the micro-batch's completions, divided by the accumulation steps. Since
    /// d ρ / d log p = ρ for each of the completion's tokens, each token's weight is the term's slope −ℓ'(ρ)·ρ over B·GA.
    /// A completion with no counted tokens still adds −A / (B·GA) to the loss, as TRL's masked sum of nothing gives ρ = 1,
    /// but has no gradient. The clipped shares are over the micro-batch's rows; the KL is logged at generation, so
    /// <see cref="MicroBatchLoss.KlMean"/> is NaN.</summary>
    public static (float[][] Weights, MicroBatchLoss Loss) Loss(IReadOnlyList<ScoredCompletion> microBatch, int accumulationSteps, GrpoOptions options)
    {
        double norm = 1.0 / microBatch.Count / accumulationSteps, epsilonHigh = options.EpsilonHigh ?? options.Epsilon;
        var weights = new float[microBatch.Count][];
        double loss = 0, entropySum = 0;
        int low = 0, high = 0, region = 0;
        long entropyTokens = 0;
        for (int i = 0; i < microBatch.Count; i++)
        {
            var c = microBatch[i];
            double logRatio = 0;
            if (c.OldLogps is { } old)
                for (int t = 0; t < c.CountedTokens; t++) logRatio += c.PolicyLogps![t] - old[t];
            var term = PolicyLoss.Surrogate(options, Math.Exp(logRatio), c.Advantage, epsilonHigh);
            weights[i] = new float[c.CountedTokens];
            Array.Fill(weights[i], (float)(norm * term.Slope));
            loss += norm * term.Value;
            if (term.Low) low++;
            if (term.High) high++;
            if (term.Low || term.High) region++;
            if (c.Entropies is { } e)
                for (int t = 0; t < c.CountedTokens; t++) { entropySum += e[t]; entropyTokens++; }
        }
        int rows = microBatch.Count;
        return (weights, new MicroBatchLoss(loss, double.NaN, (double)low / rows, (double)high / rows, (double)region / rows,
            EntropyMean: entropyTokens == 0 ? double.NaN : entropySum / entropyTokens));
    }
}
