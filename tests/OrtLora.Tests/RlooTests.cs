using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>RLOO's arithmetic (<see cref="Rloo"/>) against TRL's RLOOTrainer formulas worked out by hand. The
/// leave-one-out baselines come after the reward is clamped and penalized by β times the completion's KL; the
/// normalization is over the batch. The loss uses one ratio per completion, exp of the sum of its tokens' log-ratios,
/// averaged over the micro-batch and divided by the accumulation steps. Its token weights are checked against central
/// differences of that loss.</summary>
public class RlooTests
{
    static GrpoOptions Options(double beta = 0, bool normalize = false, (double, double)? clip = null) => new()
    {
        Algorithm = "rloo", NumGenerations = 3, Beta = beta, NormalizeAdvantages = normalize, RewardClipRange = clip, Epsilon = 0.2, EpsilonHigh = 0.28,
    };

    [Test]
    public void TheBaselineIsTheMeanOfTheOtherCompletionsOfTheGroup()
    {
        double[][] rewards = [[1], [0], [0.5], [2], [2], [2]];
        var scores = Rloo.Score(rewards, [1.0], 3, Options());
        // 1 − (0 + 0.5)/2, 0 − (1 + 0.5)/2, 0.5 − (1 + 0)/2; a group of equal rewards: 0
        Assert.That(scores.Advantages, Is.EqualTo(new[] { 0.75, -0.75, 0, 0, 0, 0 }).Within(1e-12));
        Assert.That(scores.StdIsZero, Is.EqualTo(new[] { false, false, false, true, true, true }));
        // TRL logs reward_std as the whole batch's (unbiased) std, not the groups' mean
        double mean = 7.5 / 6, s = Math.Sqrt(rewards.Sum(r => (r[0] - mean) * (r[0] - mean)) / 5);
        Assert.That(scores.Std, Is.All.EqualTo(s).Within(1e-12));
        Assert.That(scores.KlMean, Is.NaN);
        // G·(r − mean)/(G − 1): the leave-one-out advantage is the group-centred reward scaled by 3/2
        Assert.That(scores.Advantages[0], Is.EqualTo(1.5 * (1 - 0.5)).Within(1e-12));
        // an evaluation with one completion per prompt: no baseline, advantage 0, std 0 as TRL sets it
        var single = Rloo.Score([[1], [0]], [1.0], 1, Options());
        Assert.That((single.Advantages, single.StdIsZero), Is.EqualTo((new[] { 0.0, 0.0 }, new[] { true, true })));
    }

    [Test]
    public void TheRewardIsClampedThenPenalizedByTheKlBeforeTheBaseline()
    {
        double[][] rewards = [[3, double.NaN], [0.2, 0.1], [-1, 0.5]];
        double[] kl = [0.4, 0.0, 2.0];
        var scores = Rloo.Score(rewards, [1.0, 2.0], 3, Options(beta: 0.1, clip: (-0.5, 1.0)), kl, klMean: 0.25);
        // weighted nansums 3, 0.4, 0; clamped 1, 0.4, 0; less 0.1·KL: 0.96, 0.4, −0.2
        double[] r = [0.96, 0.4, -0.2];
        Assert.That(scores.Advantages, Is.EqualTo(new[] { r[0] - (r[1] + r[2]) / 2, r[1] - (r[0] + r[2]) / 2, r[2] - (r[0] + r[1]) / 2 }).Within(1e-12));
        Assert.That(scores.Rewards, Is.EqualTo(new[] { 3.0, 0.4, 0.0 }).Within(1e-12), "logged: the weighted sums, neither clamped nor penalized");
        Assert.That(scores.KlMean, Is.EqualTo(0.25));

        // equal raw rewards made unequal by the KL: the group's std is not zero
        var penalized = Rloo.Score([[1], [1], [1]], [1.0], 3, Options(beta: 0.1), [0.0, 0.5, 0.0]);
        Assert.That(penalized.StdIsZero, Is.All.False);
        Assert.That(penalized.Advantages[1], Is.EqualTo(-0.05 - 0.0).Within(1e-12));
    }

    [Test]
    public void NormalizedAdvantagesHaveTheBatchsMeanAndStd()
    {
        double[][] rewards = [[1], [0], [0.5], [3], [1], [1]];
        var plain = Rloo.Score(rewards, [1.0], 3, Options()).Advantages;
        var normalized = Rloo.Score(rewards, [1.0], 3, Options(normalize: true)).Advantages;
        double mean = plain.Average(), std = Math.Sqrt(plain.Sum(a => (a - mean) * (a - mean)) / (plain.Length - 1));
        Assert.That(mean, Is.EqualTo(0).Within(1e-12), "leave-one-out advantages sum to zero in each group");
        Assert.That(normalized, Is.EqualTo(plain.Select(a => (a - mean) / (std + 1e-4)).ToArray()).Within(1e-12));
    }

    [Test]
    public void TheSequenceKlIsTheSumOverCountedTokens()
    {
        TokenScores Scores(params float[] logps) => new(logps, new float[logps.Length]);
        var (kl, mean) = Rloo.SequenceKl([2, 0, 3], [Scores(-1f, -2f), Scores(-1f), Scores(-0.5f, -0.5f, -3f)], [Scores(-1.5f, -2.5f), Scores(-9f), Scores(-0.5f, -1f, -2f)]);
        Assert.That(kl, Is.EqualTo(new[] { 1.0, 0, 0.5 - 1 }).Within(1e-6), "a masked completion's tokens are not counted");
        Assert.That(mean, Is.EqualTo((1.0 - 0.5) / 5).Within(1e-6));
    }

    /// <summary>On-policy the ratio is 1: every token of a completion carries A / (B·GA), and the loss, −mean(A) / GA,
    /// is zero over whole groups.</summary>
    [Test]
    public void OnPolicyEachTokenCarriesTheAdvantageOverTheBatch()
    {
        ScoredCompletion[] micro = [new(3, 0.75), new(2, -0.75), new(0, 0.5)];
        var (weights, loss) = Rloo.Loss(micro, accumulationSteps: 2, Options());
        Assert.That(weights[0], Is.All.EqualTo(0.75 / 6).Within(1e-7));
        Assert.That(weights[1], Is.All.EqualTo(-0.75 / 6).Within(1e-7));
        Assert.That(weights[2], Is.Empty);
        Assert.That(loss.Loss, Is.EqualTo(-(0.75 - 0.75 + 0.5) / 6).Within(1e-12), "a completion with nothing counted still adds −A, as TRL's ratio of 1");
        Assert.That((loss.LowClip, loss.HighClip, loss.RegionClip), Is.EqualTo((0.0, 0.0, 0.0)));
        Assert.That(loss.KlMean, Is.NaN, "RLOO's KL is in the reward");
    }

    /// <summary>Off-policy: ρ = exp(Σ log π − Σ log π_old), not GSPO's mean; a completion the clip holds stops pulling as
    /// a whole, and the clipped shares are over rows. The weights equal −d loss / d log p by central differences.</summary>
    [Test]
    public void TheWeightsAreTheLossGradientOfTheSummedRatio()
    {
        var grpo = Options();
        ScoredCompletion[] micro =
        [
            new(3, 1.2, [-0.95f, -1.02f, -0.98f], OldLogps: [-1f, -1f, -1f], Entropies: [1f, 2f, 3f]),   // ρ = e^0.05: inside
            new(2, 0.8, [-0.8f, -0.9f], OldLogps: [-1f, -1f]),                                           // ρ = e^0.3: above 1.28, A > 0: held
            new(2, -0.6, [-1.2f, -1.15f], OldLogps: [-1f, -1f]),                                         // ρ = e^−0.35: below 0.8, A < 0: held
            new(2, 0.5, [-1.2f, -1.15f], OldLogps: [-1f, -1f]),                                          // below 0.8, A > 0: pulls
        ];
        var (weights, loss) = Rloo.Loss(micro, accumulationSteps: 1, grpo);
        const double norm = 0.25;
        Assert.That(weights[0], Is.All.EqualTo(norm * 1.2 * Math.Exp(0.05)).Within(1e-6));
        Assert.That(weights[1], Is.All.EqualTo(0f));
        Assert.That(weights[2], Is.All.EqualTo(0f));
        Assert.That(weights[3], Is.All.EqualTo(norm * 0.5 * Math.Exp(-0.35)).Within(1e-6));
        Assert.That(loss.Loss, Is.EqualTo(-norm * (1.2 * Math.Exp(0.05) + 0.8 * 1.28 + -0.6 * 0.8 + 0.5 * Math.Exp(-0.35))).Within(1e-6));
        Assert.That((loss.LowClip, loss.HighClip, loss.RegionClip), Is.EqualTo((0.25, 0.25, 0.5)));
        Assert.That(loss.EntropyMean, Is.EqualTo(2.0).Within(1e-9));

        double LossAt(int i, int t, double shift)
        {
            var logps = (float[])micro[i].PolicyLogps!.Clone();
            logps[t] += (float)shift;
            return Rloo.Loss([.. micro.Select((c, j) => j == i ? c with { PolicyLogps = logps } : c)], 1, grpo).Loss.Loss;
        }
        const double h = 1e-3;
        for (int i = 0; i < micro.Length; i++)
            for (int t = 0; t < micro[i].CountedTokens; t++)
            {
                double numeric = -(LossAt(i, t, h) - LossAt(i, t, -h)) / (2 * h);
                Assert.That(weights[i][t], Is.EqualTo(numeric).Within(2e-5 + 1e-3 * Math.Abs(numeric)), $"completion {i}, token {t}");
            }
    }

    [Test]
    public void GrposAndRloosOptionsStayWithTheirTrainer()
    {
        var rlooWithGrpoLoss = Options() with { LossType = "cispo" };
        Assert.That(() => rlooWithGrpoLoss.Validate(1), Throws.TypeOf<OrtLoraException>().With.Message.Contains("--loss-type is GRPO's"));
        Assert.That(() => (Options() with { ScaleRewards = "none" }).Validate(1), Throws.TypeOf<OrtLoraException>().With.Message.Contains("--scale-rewards"));
        Assert.That(() => (Options() with { RewardClipRange = (1, 1) }).Validate(1), Throws.TypeOf<OrtLoraException>().With.Message.Contains("MIN < MAX"));
        Assert.That(() => new GrpoOptions { NormalizeAdvantages = true }.Validate(1), Throws.TypeOf<OrtLoraException>().With.Message.Contains("RLOO's"));
        Assert.That(() => Options().Validate(0), Throws.TypeOf<OrtLoraException>().With.Message.Contains("RLOO needs at least one reward function"));
        Assert.That(() => Options(beta: 0.05, normalize: true, clip: (-1, 1)).Validate(2), Throws.Nothing);
    }
}
