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

    /// <summary>cispo takes dapo's normalizer, sapo grpo's; luspo's is 1 / (rows × accumulation), each of a sequence's n
    /// tokens carrying the sequence term, so that a sequence adds n·ℓ / (B·GA), TRL's mean of ℓ·n over rows.</summary>
    [Test]
    public void TheNewerLossTypesNormalizeAsTrlDoes()
    {
        ScoredCompletion[] micro = [new(3, 1.0), new(5, -1.0)];
        Assert.That(GroupAdvantages.Normalizers(micro, 20, 2, "cispo", 16), Is.EqualTo(GroupAdvantages.Normalizers(micro, 20, 2, "dapo", 16)));
        Assert.That(GroupAdvantages.Normalizers(micro, 20, 2, "sapo", 16), Is.EqualTo(GroupAdvantages.Normalizers(micro, 20, 2, "grpo", 16)));
        Assert.That(GroupAdvantages.Normalizers(micro, 20, 2, "luspo", 16), Is.EqualTo(new[] { 1.0 / 2 / 2, 1.0 / 2 / 2 }));
    }

    /// <summary>GDPO (normalize_then_sum): each function's rewards are normalized within the group, a missing score stays
    /// out, the weighted sums are normalized over the batch. Worked by hand for two groups of two and two functions.</summary>
    [Test]
    public void NormalizeThenSumNormalizesEachRewardInItsGroupFirst()
    {
        double[][] rewards = [[1, 0], [0, 10], [1, double.NaN], [1, 4]];
        var (sums, advantages, std, zero) = GroupAdvantages.Compute(rewards, [1.0, 0.5], groupSize: 2, "group", "normalize_then_sum");
        Assert.That(sums, Is.EqualTo(new[] { 1.0, 5.0, 1.0, 3.0 }), "the logged rewards are the weighted raw sums");
        // group 1: f0 (1, 0) → ±0.5/(s + 1e-4), s = √0.5; f1 (0, 10) → ∓5/(s' + 1e-4), s' = √50
        double s0 = Math.Sqrt(0.5), s1 = Math.Sqrt(50);
        double a = 0.5 / (s0 + 1e-4) - 0.5 * 5 / (s1 + 1e-4), b = -0.5 / (s0 + 1e-4) + 0.5 * 5 / (s1 + 1e-4);
        // group 2: f0 equal (0 each); f1 has one score: its std is NaN, so it adds nothing
        double[] aggregated = [a, b, 0, 0];
        double mean = aggregated.Average(), batchStd = Math.Sqrt(aggregated.Sum(x => (x - mean) * (x - mean)) / 3);
        Assert.That(advantages, Is.EqualTo(aggregated.Select(x => (x - mean) / (batchStd + 1e-4))).Within(1e-12));
        Assert.That(std, Is.All.EqualTo(batchStd).Within(1e-12));
        Assert.That(zero, Is.All.False);
    }
}
