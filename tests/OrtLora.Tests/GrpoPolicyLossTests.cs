using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>TRL's GRPO policy loss per token (<see cref="PolicyLoss"/>): its value against the formulas worked by hand, and
/// its token weights against central differences of that value, for every loss type and importance-sampling level, with
/// the KL term, the two-sided clip, the off-policy mask and the entropy mask.</summary>
public class GrpoPolicyLossTests
{
    static GrpoOptions Options(string lossType = "grpo", string level = "token", double beta = 0, double? delta = null, bool biasCorrection = false,
        double? offPolicyMask = null, double topEntropy = 1.0) => new()
    {
        LossType = lossType, ImportanceSamplingLevel = level, Beta = beta, Epsilon = 0.2, EpsilonHigh = 0.28, Delta = delta,
        UseBiasCorrectionKl = biasCorrection, OffPolicyMaskThreshold = offPolicyMask, TopEntropyQuantile = topEntropy,
    };

    static float[] Logps(params double[] ratios) => [.. ratios.Select(r => (float)(-1 + Math.Log(r)))];
    static readonly float[] Old = [-1f, -1f, -1f, -1f];

    /// <summary>On-policy (no old log-probabilities: the ratio is 1 with gradient 1) every loss type but cispo has the
    /// gradient of GRPO's A·log p at both levels, which is why TRL says the variants only act off-policy; cispo's is the
    /// ratio clamped at epsilon_high.</summary>
    [TestCase("grpo", "token")]
    [TestCase("dapo", "sequence")]
    [TestCase("sapo", "token")]
    [TestCase("sapo", "sequence")]
    [TestCase("luspo", "sequence")]
    [TestCase("cispo", "token")]
    public void OnPolicyEveryLossTypeHasGrposGradient(string lossType, string level)
    {
        var micro = new[] { new ScoredCompletion(3, 1.5), new ScoredCompletion(2, -0.5) };
        var (weights, loss) = PolicyLoss.Compute(micro, [0.1, 0.2], Options(lossType, level) with { EpsilonHigh = lossType == "cispo" ? 5.0 : 0.28 });
        Assert.That(weights[0], Is.All.EqualTo(0.1 * 1.5).Within(1e-7));
        Assert.That(weights[1], Is.All.EqualTo(0.2 * -0.5).Within(1e-7));
        Assert.That((loss.LowClip, loss.HighClip, loss.RegionClip), Is.EqualTo((0.0, 0.0, 0.0)));
        if (lossType == "sapo")
            Assert.That(loss.Loss, Is.EqualTo(-(3 * 0.1 * 1.5 * 2 / 1.0) - 2 * 0.2 * -0.5 * 2 / 1.05).Within(1e-9), "σ(0)·4/τ = 2/τ");
        else if (lossType == "cispo")
            Assert.That(loss.Loss, Is.NaN, "cispo's value needs log p, which an on-policy step does not compute");
        else
            Assert.That(loss.Loss, Is.EqualTo(-(3 * 0.1 * 1.5) - 2 * 0.2 * -0.5).Within(1e-9));
    }

    /// <summary>Token level, off-policy: −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A); where the clipped term is the min the
    /// token stops pulling; TRL counts the clipping in the advantage's direction only.</summary>
    [Test]
    public void TokenRatiosClipInTheAdvantagesDirection()
    {
        const double norm = 0.5, epsilon = 0.2, epsilonHigh = 0.28;
        double[] rho = [1.1, 1.5, 0.7, 1.0];
        var positive = new ScoredCompletion(4, 2.0, Logps(rho), OldLogps: Old);
        var negative = new ScoredCompletion(4, -2.0, Logps(rho), OldLogps: Old);
        var (up, upLoss) = PolicyLoss.Compute([positive], [norm], Options());
        // A > 0: held above 1 + ε_high only; below 1 − ε the unclipped term is still the min
        Assert.That(up[0], Is.EqualTo(new[] { norm * 2 * rho[0], 0, norm * 2 * rho[2], norm * 2 }).Within(1e-6));
        Assert.That(upLoss.Loss, Is.EqualTo(-norm * 2 * (1.1 + (1 + epsilonHigh) + 0.7 + 1.0)).Within(1e-6));
        Assert.That((upLoss.LowClip, upLoss.HighClip, upLoss.RegionClip), Is.EqualTo((0.0, 0.25, 0.25)));
        var (down, downLoss) = PolicyLoss.Compute([negative], [norm], Options());
        Assert.That(down[0], Is.EqualTo(new[] { -norm * 2 * rho[0], -norm * 2 * rho[1], 0, -norm * 2 }).Within(1e-6));
        Assert.That(downLoss.Loss, Is.EqualTo(norm * 2 * (1.1 + 1.5 + (1 - epsilon) + 1.0)).Within(1e-6));
        Assert.That((downLoss.LowClip, downLoss.HighClip, downLoss.RegionClip), Is.EqualTo((0.25, 0.0, 0.25)));
    }

    /// <summary>GSPO: one ratio per completion, exp of its tokens' mean log-ratio, shared by its tokens. A sequence the
    /// clip holds stops pulling as a whole; the clipped shares are over rows.</summary>
    [Test]
    public void SequenceRatiosAreTheGeometricMeanOfTheTokens()
    {
        const double norm = 0.25;
        var inside = new ScoredCompletion(2, 1.0, Logps(1.2, 0.9), OldLogps: Old);
        var above = new ScoredCompletion(2, 1.0, Logps(1.6, 1.3), OldLogps: Old);
        var (weights, loss) = PolicyLoss.Compute([inside, above], [norm, norm], Options(level: "sequence"));
        double s = Math.Sqrt(1.2 * 0.9), s2 = Math.Sqrt(1.6 * 1.3);
        Assert.That(weights[0], Is.All.EqualTo(norm * s).Within(1e-6));
        Assert.That(weights[1], Is.All.EqualTo(0f), "the sequence ratio 1.44 is above 1.28: held");
        Assert.That(loss.Loss, Is.EqualTo(-2 * norm * s - 2 * norm * 1.28).Within(1e-6));
        Assert.That(s2, Is.GreaterThan(1.28));
        Assert.That((loss.HighClip, loss.RegionClip), Is.EqualTo((0.5, 0.5)), "one row of two");
    }

    /// <summary>cispo (MiniMax-M1): −min(ρ, ε_high)·A·log p with the factor held constant, so every token keeps pulling
    /// with weight min(ρ, ε_high)·A; cispo_clip_ratio counts the tokens whose ratio the clamp held (A > 0).</summary>
    [Test]
    public void CispoClampsTheRatioAndKeepsEveryToken()
    {
        const double norm = 0.1;
        var policy = Logps(1.5, 0.5, 3.0);
        var c = new ScoredCompletion(3, 2.0, policy, OldLogps: Old);
        var (weights, loss) = PolicyLoss.Compute([c], [norm], Options("cispo") with { EpsilonHigh = 2.0 });
        Assert.That(weights[0], Is.EqualTo(new[] { norm * 1.5 * 2, norm * 0.5 * 2, norm * 2.0 * 2 }).Within(1e-6));
        Assert.That(loss.Loss, Is.EqualTo(-norm * 2 * (1.5 * policy[0] + 0.5 * policy[1] + 2.0 * policy[2])).Within(1e-6));
        Assert.That(loss.CispoClip, Is.EqualTo(1 / 3.0).Within(1e-12));
    }

    /// <summary>The weights are −d loss / d log p: central differences of the loss TRL computes, over the policy's
    /// log-probabilities (the old and reference ones fixed), for each loss type and level with the KL term (plain and
    /// bias-corrected), the two-sided clip, the off-policy mask and the entropy mask. Ratios sit away from the clip's
    /// edges, where the loss has kinks.</summary>
    [TestCase("grpo", "token", 0.0, false, null, null, 1.0)]
    [TestCase("dapo", "token", 0.3, false, null, null, 1.0)]
    [TestCase("bnpo", "token", 0.3, true, null, null, 1.0)]
    [TestCase("dr_grpo", "token", 0.0, false, 1.3, null, 1.0)]
    [TestCase("grpo", "sequence", 0.3, false, null, null, 1.0)]
    [TestCase("dapo", "sequence", 0.3, true, null, null, 1.0)]
    [TestCase("luspo", "sequence", 0.0, false, null, null, 1.0)]
    [TestCase("sapo", "token", 0.3, false, null, null, 1.0)]
    [TestCase("sapo", "sequence", 0.0, true, null, null, 0.5)]
    [TestCase("grpo", "token", 0.3, false, null, 0.05, 0.5)]
    [TestCase("grpo", "sequence", 0.0, false, null, 0.05, 0.5)]
    public void TheWeightsAreTheLossGradient(string lossType, string level, double beta, bool biasCorrection, double? delta, double? offPolicyMask, double topEntropy)
    {
        var grpo = Options(lossType, level, beta, delta, biasCorrection, offPolicyMask, topEntropy);
        // ratios inside the clip, below it, above it and above delta; a negative advantage far off-policy
        ScoredCompletion[] micro =
        [
            new(4, 1.3, Logps(1.1, 0.7, 1.45, 1.02), [-0.8f, -1.4f, -0.9f, -1.1f], Old, [0.5f, 2.0f, 1.0f, 0.1f]),
            new(3, -0.9, Logps(0.95, 1.4, 0.6), [-1.2f, -0.7f, -1.0f], [-1f, -1f, -1f], [1.5f, 0.3f, 0.9f]),
            new(2, 0.4, Logps(1.05, 0.98), [-1.0f, -0.95f], [-1f, -1f], [0.7f, 1.2f]),
        ];
        double[] normalizers = [0.07, 0.11, 0.05];
        var (weights, _) = PolicyLoss.Compute(micro, normalizers, grpo);
        double LossAt(int i, int t, double shift)
        {
            var logps = (float[])micro[i].PolicyLogps!.Clone();
            logps[t] += (float)shift;
            var moved = micro.Select((c, j) => j == i ? c with { PolicyLogps = logps } : c).ToList();
            return PolicyLoss.Compute(moved, normalizers, grpo).Loss.Loss;
        }
        const double h = 1e-3;
        for (int i = 0; i < micro.Length; i++)
            for (int t = 0; t < micro[i].CountedTokens; t++)
            {
                double numeric = -(LossAt(i, t, h) - LossAt(i, t, -h)) / (2 * h);
                Assert.That(weights[i][t], Is.EqualTo(numeric).Within(2e-5 + 1e-3 * Math.Abs(numeric)), $"completion {i}, token {t}");
            }
        if (offPolicyMask is not null)
            Assert.That(weights[1].All(w => Math.Abs(w) < 1e-9) || beta > 0, "the negative completion, log(π_old / π) 0.075 on average, is masked");
    }

    /// <summary>"Beyond the 80/20 rule": the threshold is torch.quantile's linear interpolation over the micro-batch's
    /// counted tokens; a token at or above it keeps the policy term.</summary>
    [Test]
    public void TheEntropyMaskKeepsTheTopQuantile()
    {
        ScoredCompletion[] micro = [new(3, 1, Entropies: [0.1f, 0.9f, 0.4f, 5f]), new(2, 1, Entropies: [0.6f, 0.2f]), new(0, 1, Entropies: [9f])];
        // counted entropies sorted: 0.1 0.2 0.4 0.6 0.9; the 0.6 quantile sits at position 2.4: 0.4 + 0.4·0.2 = 0.48
        var masks = PolicyLoss.EntropyMasks(micro, 0.4)!;
        Assert.That(masks[0], Is.EqualTo(new[] { false, true, false }));
        Assert.That(masks[1], Is.EqualTo(new[] { true, false }));
        Assert.That(masks[2], Is.Empty);
        Assert.That(PolicyLoss.EntropyMasks(micro, 1.0), Is.Null);
        var (weights, loss) = PolicyLoss.Compute(micro, [1, 1, 1], Options(topEntropy: 0.4));
        Assert.That(weights[0], Is.EqualTo(new[] { 0f, 1f, 0f }));
        Assert.That(loss.EntropyMean, Is.EqualTo((0.1 + 0.9 + 0.4 + 0.6 + 0.2) / 5).Within(1e-6), "the logged entropy is every counted token's");
    }

    /// <summary>DeepSeek-V3.2's off-policy mask drops a completion of negative advantage whose mean log(π_old / π)
    /// exceeds the threshold; one of positive advantage, or close to the sampling policy, keeps pulling.</summary>
    [Test]
    public void TheOffPolicyMaskDropsFarNegativeCompletions()
    {
        var far = Logps(0.5, 0.6);   // mean log(π_old / π) = (0.69 + 0.51) / 2 = 0.60
        var near = Logps(0.9, 1.0);  // 0.05
        var grpo = Options(offPolicyMask: 0.5) with { Epsilon = 0.6 };
        var (weights, _) = PolicyLoss.Compute([new(2, -1, far, OldLogps: Old), new(2, 1, far, OldLogps: Old), new(2, -1, near, OldLogps: Old)], [1, 1, 1], grpo);
        Assert.That(weights[0], Is.All.EqualTo(0f));
        Assert.That(weights[1], Is.EqualTo(new[] { 0.5f, 0.6f }).Within(1e-6));
        Assert.That(weights[2], Is.EqualTo(new[] { -0.9f, -1.0f }).Within(1e-6));
    }
}
