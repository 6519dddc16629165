using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>GRPO's arithmetic between rewards and the loss (<see cref="GroupAdvantages"/>) against TRL's formulas worked
/// out by hand: group means, torch's unbiased std with 1e-4 added, nansum over the reward functions, each loss type's
/// normalizer, the KL term's gradient.</summary>
public class GrpoAdvantageTests
{
    [Test]
    public void AdvantagesAreGroupRelativeAndScaledByTheGroupsStd()
    {
        double[][] rewards = [[1], [0], [0], [1], [2], [2], [2], [2]];
        var (sums, advantages, std, zero) = GroupAdvantages.Compute(rewards, [1.0], groupSize: 4, "group");
        Assert.That(sums, Is.EqualTo(new[] { 1.0, 0, 0, 1, 2, 2, 2, 2 }));
        double s = Math.Sqrt(4 * 0.25 / 3); // unbiased: Σ(r − 0.5)² / (4 − 1)
        Assert.That(std[0], Is.EqualTo(s).Within(1e-12));
        Assert.That(advantages[0], Is.EqualTo(0.5 / (s + 1e-4)).Within(1e-12));
        Assert.That(advantages[1], Is.EqualTo(-0.5 / (s + 1e-4)).Within(1e-12));
        Assert.That(advantages.Skip(4), Is.All.EqualTo(0.0), "a group of equal rewards teaches nothing");
        Assert.That(zero, Is.EqualTo(new[] { false, false, false, false, true, true, true, true }));
    }

    [Test]
    public void BatchScalingUsesTheWholeBatchsStdAndNoneOnlySubtractsTheMean()
    {
        double[][] rewards = [[1], [0], [3], [3]];
        var (_, batch, std, zero) = GroupAdvantages.Compute(rewards, [1.0], groupSize: 2, "batch");
        double mean = 7 / 4.0, s = Math.Sqrt(((1 - mean) * (1 - mean) + mean * mean + 2 * (3 - mean) * (3 - mean)) / 3);
        Assert.That(std, Is.All.EqualTo(s).Within(1e-12));
        Assert.That(batch[0], Is.EqualTo(0.5 / (s + 1e-4)).Within(1e-12), "the group's mean, the batch's std");
        Assert.That(batch[2], Is.EqualTo(0.0));
        Assert.That(zero, Is.All.False, "the batch's std is not zero even where a group's is");
        var (_, none, _, _) = GroupAdvantages.Compute(rewards, [1.0], groupSize: 2, "none");
        Assert.That(none, Is.EqualTo(new[] { 0.5, -0.5, 0, 0 }));
    }

    [Test]
    public void RewardsAreTheWeightedSumOfTheFunctionsThatScored()
    {
        double[][] rewards = [[1, double.NaN], [double.NaN, 4], [0.5, 2], [double.NaN, double.NaN]];
        var (sums, _, _, _) = GroupAdvantages.Compute(rewards, [2.0, 0.25], groupSize: 2, "none");
        Assert.That(sums, Is.EqualTo(new[] { 2.0, 1.0, 1.5, 0.0 }));
    }

    [Test]
    public void EachLossTypeNormalizesItsOwnWay()
    {
        ScoredCompletion[] micro = [new(3, 1.0), new(5, -1.0)];
        const int window = 20, accumulation = 2, maxLength = 16;
        Assert.That(GroupAdvantages.Normalizers(micro, window, accumulation, "grpo", maxLength), Is.EqualTo(new[] { 1.0 / 3 / 2 / 2, 1.0 / 5 / 2 / 2 }).Within(1e-15));
        Assert.That(GroupAdvantages.Normalizers(micro, window, accumulation, "bnpo", maxLength), Is.EqualTo(new[] { 1.0 / 8 / 2, 1.0 / 8 / 2 }).Within(1e-15));
        Assert.That(GroupAdvantages.Normalizers(micro, window, accumulation, "dr_grpo", maxLength), Is.EqualTo(new[] { 1.0 / 32 / 2, 1.0 / 32 / 2 }).Within(1e-15));
        Assert.That(GroupAdvantages.Normalizers(micro, window, accumulation, "dapo", maxLength), Is.EqualTo(new[] { 1.0 / 20, 1.0 / 20 }).Within(1e-15));
    }

    /// <summary>TRL's per-token loss −A·ratio + β·(e^(r − p) − (r − p) − 1) at ratio 1: its value, and −d/d log p as the
    /// token weights.</summary>
    [Test]
    public void TokenWeightsAreMinusTheLossGradientAndTheLossIsTrls()
    {
        var completion = new ScoredCompletion(2, 0.8, PolicyLogps: [-1.0f, -2.0f], ReferenceLogps: [-1.5f, -1.0f]);
        const double norm = 0.1, beta = 0.04;
        var weights = GroupAdvantages.TokenWeights(completion, norm, beta);
        // d/dp of β·(e^(r − p) − (r − p) − 1) = β·(1 − e^(r − p))
        Assert.That(weights[0], Is.EqualTo(norm * (0.8 - beta * (1 - Math.Exp(-0.5)))).Within(1e-7));
        Assert.That(weights[1], Is.EqualTo(norm * (0.8 - beta * (1 - Math.Exp(1.0)))).Within(1e-7));
        double Kl(double r, double p) => Math.Exp(r - p) - (r - p) - 1;
        var (loss, klSum, _, _, _) = GroupAdvantages.Loss([completion], [norm], beta);
        Assert.That(klSum, Is.EqualTo(Kl(-1.5, -1.0) + Kl(-1.0, -2.0)).Within(1e-7));
        Assert.That(loss, Is.EqualTo(norm * (-0.8 * 2 + beta * klSum)).Within(1e-9));
        Assert.That(GroupAdvantages.TokenWeights(new ScoredCompletion(3, -0.5), norm, 0), Is.All.EqualTo((float)(-0.05)));
    }

    /// <summary>A later iteration on a generation batch (num_iterations > 1): the per-token loss is
    /// −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A). Where the unclipped term is the min its gradient is A·ρ·∇log p, where the
    /// clipped one is, nothing: tokens whose ratio has left the trust region in the advantage's direction stop pulling.</summary>
    [Test]
    public void LaterIterationsWeighByTheRatioAndStopAtTheClip()
    {
        const double norm = 0.5, epsilon = 0.2, epsilonHigh = 0.28;
        float[] old = [-1.0f, -1.0f, -1.0f, -1.0f];
        // ratios e^(p − old): 1.1 (inside), 1.5 (above 1 + ε_high), 0.7 (below 1 − ε), 1.0
        float[] policy = [(float)(-1 + Math.Log(1.1)), (float)(-1 + Math.Log(1.5)), (float)(-1 + Math.Log(0.7)), -1.0f];
        var positive = new ScoredCompletion(4, 2.0, policy, OldLogps: old);
        var negative = new ScoredCompletion(4, -2.0, policy, OldLogps: old);
        double[] rho = [1.1, 1.5, 0.7, 1.0];
        var up = GroupAdvantages.TokenWeights(positive, norm, 0, epsilon, epsilonHigh);
        // A > 0: clipped above 1 + ε_high only; below 1 − ε the unclipped term is still the min
        Assert.That(up, Is.EqualTo(new[] { norm * 2 * rho[0], 0, norm * 2 * rho[2], norm * 2 }).Within(1e-6));
        var down = GroupAdvantages.TokenWeights(negative, norm, 0, epsilon, epsilonHigh);
        // A < 0: clipped below 1 − ε only
        Assert.That(down, Is.EqualTo(new[] { -norm * 2 * rho[0], -norm * 2 * rho[1], 0, -norm * 2 }).Within(1e-6));

        var up_ = GroupAdvantages.Loss([positive], [norm], 0, epsilon, epsilonHigh);
        double expected = -norm * 2 * (1.1 + (1 + epsilonHigh) + 0.7 + 1.0);
        Assert.That(up_.Loss, Is.EqualTo(expected).Within(1e-6));
        Assert.That((up_.LowClipped, up_.HighClipped, up_.RegionClipped), Is.EqualTo((0, 1, 2)));
        var down_ = GroupAdvantages.Loss([negative], [norm], 0, epsilon, epsilonHigh);
        Assert.That(down_.Loss, Is.EqualTo(norm * 2 * (1.1 + 1.5 + (1 - epsilon) + 1.0)).Within(1e-6));
        Assert.That((down_.LowClipped, down_.HighClipped, down_.RegionClipped), Is.EqualTo((1, 0, 2)));
    }
}
