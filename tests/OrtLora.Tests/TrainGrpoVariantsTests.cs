using System.Text.Json.Nodes;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.TrainGrpoTests;

namespace OrtLora.Tests;

/// <summary>TRL's GRPO variants through `ortlora grpo` on the embedded tiny model (the regex:e task of
/// <see cref="TrainGrpoTests"/>): generation batches split over several steps, GSPO's sequence ratio, the cispo, sapo and
/// luspo losses, the entropy mask and GDPO's reward aggregation.</summary>
public class TrainGrpoVariantsTests
{
    static List<JsonNode> Steps(string dir) => [.. Metrics(dir).Where(m => m["train_runtime"] is null && m["eval_reward"] is null)];

    /// <summary>steps_per_generation 2: one generation batch of two micro-batches, a step each; the second step is
    /// off-policy (its ratio is to the sampling policy, clipped), so rewards are logged every other step and the clip
    /// ratios are. The same run asked as --generation-batch-size 16 is the same run. Checkpoints fall between generation
    /// batches and resume exactly; a --save-steps inside one is refused.</summary>
    [Test]
    public void StepsPerGenerationSplitsAGenerationBatchOverSteps()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk(With(GrpoArgs(dir, "--max-steps", "20", "--steps-per-generation", "2", "--epsilon", "0.1", "--log-completions"),
            "--per-device-train-batch-size", "8"));
        Assert.That(run.Out, Does.Contain("2 per generation × 8 completions, 2 steps each"));
        AssertTwoStepsPerGeneration(dir, 20);
        var steps = Steps(dir);

        var same = Shared.TempDir();
        OrtloraOk(With(GrpoArgs(same, "--max-steps", "20", "--generation-batch-size", "16", "--epsilon", "0.1"), "--per-device-train-batch-size", "8"));
        Assert.That(Series(Steps(same), "grad_norm"), Is.EqualTo(Series(steps, "grad_norm")), "generation_batch_size 16 = steps_per_generation 2 of 8");

        AssertResumedRunEndsLikeStraight(d => With(GrpoArgs(d, "--max-steps", "4", "--steps-per-generation", "2", "--save-steps", "2"),
            "--per-device-train-batch-size", "8"), "checkpoint-4");
        var cut = Ortlora(With(GrpoArgs(Shared.TempDir(), "--max-steps", "4", "--steps-per-generation", "2", "--save-steps", "1"), "--per-device-train-batch-size", "8"));
        Assert.That(cut.ExitCode, Is.EqualTo(1));
        Assert.That(cut.Error, Does.Contain("--save-steps (1) must be a multiple of the 2 steps each generation batch trains"));
    }

    /// <summary>GSPO (importance_sampling_level sequence) with num_iterations 2: one ratio per completion, so the clip
    /// ratios of the second iteration are shares of the 16 rows; the reward rises.</summary>
    [Test]
    public void GspoClipsWholeCompletions()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk(GrpoArgs(dir, "--max-steps", "30", "--num-iterations", "2", "--importance-sampling-level", "sequence", "--loss-type", "grpo",
            "--epsilon", "0.05"));
        Assert.That(run.Out, Does.Contain("loss grpo (sequence ratio)"));
        var steps = Steps(dir);
        var high = steps.Select(m => m["clip_ratio/high_mean"]!.GetValue<double>()).ToList();
        Assert.That(high.Select(h => h * 16), Is.All.Matches<double>(x => Math.Abs(x - Math.Round(x)) < 1e-9), "shares of 16 rows");
        Assert.That(steps.Where((_, i) => i % 2 == 1).Max(m => m["clip_ratio/region_mean"]!.GetValue<double>()), Is.GreaterThan(0));
        var reward = Series(steps, "reward");
        Assert.That(reward.TakeLast(3).Average(), Is.GreaterThan(reward.Take(3).Average() + 0.1));
    }

    /// <summary>cispo, sapo and luspo each train off-policy (num_iterations 2): the loss is finite at every step, on-policy
    /// ones included (cispo's from the engine), the reward rises, and cispo logs its own clip ratio instead of TRL's
    /// clip_ratio/*; sapo logs none. (luspo's second iterations clip a quarter to a half of the sequences at ε 0.2, so it
    /// rises slower: a run went 0.62 → 1.0 in 30 steps.)</summary>
    [TestCase("cispo", "--epsilon-high", "5")]
    [TestCase("sapo")]
    [TestCase("luspo", "--importance-sampling-level", "sequence")]
    public void EachLossTypeTrainsOffPolicy(string lossType, params string[] extra)
    {
        var dir = Shared.TempDir();
        OrtloraOk(GrpoArgs(dir, ["--max-steps", "30", "--num-iterations", "2", "--loss-type", lossType, .. extra]));
        var steps = Steps(dir);
        Assert.That(Series(steps, "loss"), Has.Length.EqualTo(30).And.All.Matches<double>(double.IsFinite));
        Assert.That(steps.Any(m => m["clip_ratio/region_mean"] is not null), Is.EqualTo(lossType == "luspo"));
        Assert.That(steps.All(m => m["cispo_clip_ratio"] is not null), Is.EqualTo(lossType == "cispo"));
        var reward = Series(steps, "reward");
        Assert.That(reward.TakeLast(3).Average(), Is.GreaterThan(reward.Take(3).Average() + 0.1), $"{lossType}: the reward rises");
    }

    /// <summary>top_entropy_quantile: the policy's entropies are computed each step and logged (between 0 and log V), and
    /// training on the top fifth of tokens by entropy still moves the adapters.</summary>
    [Test]
    public void TopEntropyQuantileLogsTheEntropy()
    {
        var dir = Shared.TempDir();
        OrtloraOk(GrpoArgs(dir, "--max-steps", "3", "--top-entropy-quantile", "0.2"));
        var entropy = Series(Steps(dir), "entropy");
        Assert.That(entropy, Has.Length.EqualTo(3).And.All.InRange(0.01, Math.Log(TinyVocabulary)));
        Assert.That(Series(Steps(dir), "grad_norm"), Is.All.GreaterThan(0));
    }

    const int TinyVocabulary = 512;

    /// <summary>GDPO (normalize_then_sum) with two rewards: the advantages are normalized over the batch (they sum to zero
    /// and their std is 1), not within each group.</summary>
    [Test]
    public void NormalizeThenSumNormalizesOverTheBatch()
    {
        var dir = Shared.TempDir();
        var args = GrpoArgs(dir, "--max-steps", "1", "--multi-objective-aggregation", "normalize_then_sum", "--log-completions").ToList();
        args.Insert(args.IndexOf("--reward-funcs") + 2, "regex:a");
        OrtloraOk([.. args]);
        var advantages = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => JsonNode.Parse(l)!["advantage"]!.GetValue<double>()).ToList();
        Assert.That(advantages, Has.Count.EqualTo(16));
        double mean = advantages.Average();
        Assert.That(mean, Is.EqualTo(0).Within(1e-9));
        Assert.That(Math.Sqrt(advantages.Sum(a => (a - mean) * (a - mean)) / 15), Is.EqualTo(1).Within(1e-3));
    }

    [Test]
    public void MistakesAreOneClearError()
    {
        var dir = Shared.TempDir();
        (string[] Args, string Message)[] cases =
        [
            (GrpoArgs(dir, "--max-steps", "1", "--loss-type", "luspo"), "--loss-type luspo needs --importance-sampling-level sequence"),
            (GrpoArgs(dir, "--max-steps", "1", "--steps-per-generation", "2", "--generation-batch-size", "32"), "not both"),
            (GrpoArgs(dir, "--max-steps", "1", "--steps-per-generation", "3", "--gradient-accumulation-steps", "2"), "must be a multiple of --gradient-accumulation-steps"),
            (GrpoArgs(dir, "--max-steps", "1", "--generation-batch-size", "20"), "--generation-batch-size (20) must be a multiple of --per-device-train-batch-size (16)"),
            (GrpoArgs(dir, "--max-steps", "1", "--top-entropy-quantile", "1.5"), "--top-entropy-quantile must be in [0, 1]"),
        ];
        foreach (var (args, message) in cases)
        {
            var result = Ortlora(args);
            Assert.That(result.ExitCode, Is.EqualTo(1), message);
            Assert.That(result.Error, Does.Contain(message));
        }
        Assert.That(File.Exists(Path.Combine(dir, "adapter_model.safetensors")), Is.False, "no partial output");
    }
}
