namespace OrtLora.Training.Grpo;

/// <summary>One sampled completion's part in a step: its tokens (those the loss counts), its advantage and, where needed,
/// its tokens' log-probabilities under the policy as it is (with the entropies of those distributions), under the
/// reference (β > 0), and under the policy that sampled it (an off-policy step: the ratio's denominator).</summary>
/// <param name="CountedTokens">completion tokens in the loss (0 for a truncated completion under mask_truncated_completions)</param>
public sealed record ScoredCompletion(int CountedTokens, double Advantage, float[]? PolicyLogps = null, float[]? ReferenceLogps = null,
    float[]? OldLogps = null, float[]? Entropies = null);

/// <summary>A micro-batch's loss as TRL logs it and the means TRL logs of it: the KL over its counted tokens, the clipped
/// shares (over counted tokens, or over rows at the sequence level) and the policy's entropy (NaN where not computed).
/// <see cref="Loss"/> is NaN where it needs log-probabilities that were not computed (cispo's first step): the engine's
/// loss of the same weights is then TRL's.</summary>
public sealed record MicroBatchLoss(double Loss, double KlMean, double LowClip, double HighClip, double RegionClip, double CispoClip = 0,
    double EntropyMean = double.NaN);

/// <summary>TRL's GRPO policy loss per token (GRPOTrainer._compute_loss) and its gradient with respect to each token's
/// log p, which the engine's weighted loss takes as the token weights (Σ w·nll has gradient −w).
/// <para>The importance ratio ρ = π / π_old is per token, or at the sequence level (GSPO) exp of the mean log-ratio of the
/// completion, shared by its tokens; on-policy (no old log-probabilities) it is 1 with gradient ρ. The loss types:
/// grpo, bnpo, dr_grpo, dapo and luspo take −min(min(ρ, δ)·A, clip(ρ, 1 − ε, 1 + ε_high)·A); cispo
/// −min(ρ, ε_high)·A·log p with the factor held constant; sapo −σ(τ(ρ − 1))·4/τ·A with τ by the advantage's sign. The
/// off-policy mask (DeepSeek-V3.2) drops a completion with A &lt; 0 whose mean log(π_old / π) exceeds its threshold; the
/// entropy mask keeps the micro-batch's top tokens by entropy; then β·KL to the reference is added to every counted
/// token (times ρ with the bias correction).</para>
/// <para>A term ℓ(ρ) of the policy has d/d log p = ℓ'(ρ)·ρ at the token level. At the sequence level each of the M tokens
/// that carry ℓ(s) adds ℓ'(s)·s/n to each of the completion's n tokens, so a token's weight is (M / n)·(−ℓ'(s)·s).</para></summary>
public static class PolicyLoss
{
    /// <summary>Each completion's token weights (−d loss / d log p of its counted tokens) and the micro-batch's loss and
    /// metrics.</summary>
    /// <param name="normalizers">each completion's normalizer (<see cref="GroupAdvantages.Normalizers"/>)</param>
    public static (float[][] Weights, MicroBatchLoss Loss) Compute(IReadOnlyList<ScoredCompletion> microBatch, IReadOnlyList<double> normalizers, GrpoOptions grpo)
    {
        bool sequence = grpo.ImportanceSamplingLevel == "sequence";
        double epsilonHigh = grpo.EpsilonHigh ?? grpo.Epsilon;
        var entropyMasks = EntropyMasks(microBatch, grpo.TopEntropyQuantile);
        var weights = new float[microBatch.Count][];
        double loss = 0, klSum = 0, entropySum = 0;
        double low = 0, high = 0, region = 0, cispo = 0;
        long counted = 0, entropyTokens = 0;
        for (int i = 0; i < microBatch.Count; i++)
        {
            var c = microBatch[i];
            int n = c.CountedTokens;
            double norm = normalizers[i], a = c.Advantage;
            weights[i] = new float[n];
            counted += n;
            if (n == 0) continue;
            var logRatio = new double[n];
            if (c.OldLogps is { } old) for (int t = 0; t < n; t++) logRatio[t] = c.PolicyLogps![t] - old[t];
            double meanLogRatio = logRatio.Average(), sequenceRatio = Math.Exp(meanLogRatio);
            var sequenceTerm = sequence ? Surrogate(grpo, sequenceRatio, a, epsilonHigh) : default;
            // DeepSeek-V3.2's off-policy sequence mask: the mean of log π_old − log π is −mean(logRatio)
            bool keep = grpo.OffPolicyMaskThreshold is not { } threshold || a >= 0 || -meanLogRatio <= threshold;
            var carries = Enumerable.Range(0, n).Select(t => keep && (entropyMasks?[i][t] ?? true)).ToArray();
            int carrying = carries.Count(x => x);
            // per token e^(ref − p) − (ref − p) − 1 and its d/d log p, 1 − e^(ref − p)
            double klTotal = 0;
            var kl = new double[n];
            var dKl = new double[n];
            if (grpo.Beta > 0)
                for (int t = 0; t < n; t++)
                {
                    double d = c.ReferenceLogps![t] - c.PolicyLogps![t];
                    kl[t] = Math.Exp(d) - d - 1;
                    dKl[t] = 1 - Math.Exp(d);
                    klTotal += kl[t];
                }
            for (int t = 0; t < n; t++)
            {
                double ratio = sequence ? sequenceRatio : Math.Exp(logRatio[t]);
                var term = sequence ? sequenceTerm : Surrogate(grpo, ratio, a, epsilonHigh);
                double weight;
                if (grpo.LossType == "cispo")
                {
                    // the clamped ratio is held constant: the gradient reaches log p directly, token by token
                    weight = carries[t] ? term.Slope : 0;
                    loss += carries[t] ? norm * term.Value * (c.PolicyLogps is { } p ? p[t] : double.NaN) : 0;
                }
                else
                {
                    weight = sequence ? (double)carrying / n * term.Slope : carries[t] ? term.Slope : 0;
                    loss += carries[t] ? norm * term.Value : 0;
                }
                if (grpo.Beta > 0)
                {
                    if (grpo.UseBiasCorrectionKl)
                    {
                        // β·kl·ρ with ρ's own gradient: ρ at the token level, s/n from each token's kl at the sequence level
                        weight -= grpo.Beta * (dKl[t] * ratio + (sequence ? klTotal * ratio / n : kl[t] * ratio));
                        loss += norm * grpo.Beta * kl[t] * ratio;
                        klSum += kl[t] * ratio;
                    }
                    else
                    {
                        weight -= grpo.Beta * dKl[t];
                        loss += norm * grpo.Beta * kl[t];
                        klSum += kl[t];
                    }
                }
                weights[i][t] = (float)(norm * weight);
                if (!sequence) Count(term);
                if (c.Entropies is { } e) { entropySum += e[t]; entropyTokens++; }
            }
            if (sequence) Count(sequenceTerm);
        }
        // TRL's masked_batch_mean: over counted tokens, or over the micro-batch's rows where the ratio is per sequence
        double units = sequence ? microBatch.Count : Math.Max(1, counted);
        return (weights, new MicroBatchLoss(loss, klSum / Math.Max(1, counted), low / units, high / units, region / units, cispo / units,
            entropyTokens == 0 ? double.NaN : entropySum / entropyTokens));

        void Count(Term term)
        {
            if (term.Low) low++;
            if (term.High) high++;
            if (term.Low || term.High) region++;
            if (term.CispoClipped) cispo++;
        }
    }

    /// <summary>A token's policy term ℓ(ρ) (for cispo, the factor of log p), its slope −ℓ'(ρ)·ρ (for cispo the weight of
    /// log p), and which clip holds it as TRL counts it.</summary>
    internal readonly record struct Term(double Value, double Slope, bool Low = false, bool High = false, bool CispoClipped = false);

    internal static Term Surrogate(GrpoOptions grpo, double ratio, double a, double epsilonHigh)
    {
        switch (grpo.LossType)
        {
            case "cispo":
            {
                double clamped = Math.Min(ratio, epsilonHigh);
                return new Term(-clamped * a, clamped * a, CispoClipped: ratio > epsilonHigh && a > 0);
            }
            case "sapo":
            {
                double tau = a > 0 ? grpo.SapoTemperaturePos : grpo.SapoTemperatureNeg;
                double sigma = 1 / (1 + Math.Exp(-tau * (ratio - 1)));
                return new Term(-sigma * 4 / tau * a, 4 * a * sigma * (1 - sigma) * ratio);
            }
            default:
            {
                // −min(T1, T2): T1 = min(ρ, δ)·A (INTELLECT-2's two-sided clip), T2 = clip(ρ, 1 − ε, 1 + ε_high)·A.
                // The min's gradient is its smaller term's; on a tie, torch.minimum gives each half.
                double delta = grpo.Delta ?? double.PositiveInfinity;
                double lo = 1 - grpo.Epsilon, hi = 1 + epsilonHigh;
                double t1 = Math.Min(ratio, delta) * a, t2 = Math.Clamp(ratio, lo, hi) * a;
                double g1 = ratio <= delta ? a : 0, g2 = ratio >= lo && ratio <= hi ? a : 0;
                double slope = t1 < t2 ? g1 : t2 < t1 ? g2 : (g1 + g2) / 2;
                // TRL counts the clipping on the ratio after the δ clamp
                double counted = Math.Min(ratio, delta);
                return new Term(-Math.Min(t1, t2), slope * ratio, Low: counted < lo && a < 0, High: counted > hi && a > 0);
            }
        }
    }

    /// <summary>"Beyond the 80/20 rule" (top_entropy_quantile ρ): per completion, which counted tokens keep their policy
    /// term, those whose entropy reaches the 1 − ρ quantile (torch.quantile's linear interpolation) of the micro-batch's
    /// counted tokens. Null when every token keeps it (ρ = 1).</summary>
    public static bool[][]? EntropyMasks(IReadOnlyList<ScoredCompletion> microBatch, double topEntropyQuantile)
    {
        if (topEntropyQuantile >= 1) return null;
        var all = microBatch.SelectMany(c => c.CountedTokens == 0 ? [] : c.Entropies?.Take(c.CountedTokens)
            ?? throw new InvalidOperationException("top_entropy_quantile needs the policy's entropies")).Select(e => (double)e).ToList();
        if (all.Count == 0) return [.. microBatch.Select(c => new bool[c.CountedTokens])];
        all.Sort();
        double threshold = Statistics.Quantile(all, 1 - topEntropyQuantile);
        return [.. microBatch.Select(c => Enumerable.Range(0, c.CountedTokens).Select(t => c.Entropies![t] >= threshold).ToArray())];
    }
}
