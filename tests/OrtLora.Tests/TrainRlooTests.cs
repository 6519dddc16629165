using System.Text.Json.Nodes;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.TrainGrpoTests;

namespace OrtLora.Tests;

/// <summary>`ortlora rloo` (TRL's RLOOTrainer) on the embedded tiny model, with the regex:e task of
/// <see cref="TrainGrpoTests"/>. Each completion's baseline is the mean reward of the others of its prompt, the KL is in
/// the reward, and the ratio is per completion.</summary>
public class TrainRlooTests
{
    static string[] RlooArgs(string output, params string[] extra) => ["rloo", .. With(GrpoArgs(output, extra), "--num-generations", "4").Skip(1)];

    static List<JsonNode> Steps(string dir) => [.. Metrics(dir).Where(m => m["train_runtime"] is null && m["eval_reward"] is null)];

    /// <summary>The reward rises from the random model's share to every completion, on the training prompts and in the
    /// evaluations. Each logged advantage is the completion's reward less the mean of the other three of its group; with
    /// β 0 no KL is logged.</summary>
    [Test]
    public void TheRewardRisesAndTheBaselineLeavesTheCompletionOut()
    {
        var dir = Shared.TempDir();
        var args = RlooArgs(dir, "--max-steps", "30", "--beta", "0", "--log-completions", "--eval-steps", "15");
        var run = OrtloraOk([.. args, "--eval-data", args[Array.IndexOf(args, "--data") + 1]]);
        Assert.That(run.Out, Does.Contain("4 prompts (text), 4 per generation × 4 completions, 1 step each").And.Contain("RLOO (leave-one-out baselines"));
        var steps = Steps(dir);
        var reward = Series(steps, "reward");
        Assert.That(reward, Has.Length.EqualTo(30));
        Assert.That(reward.Take(3).Average(), Is.InRange(0.3, 0.95), "the random model's completions hold an e about as often as not");
        Assert.That(reward.TakeLast(5), Is.All.EqualTo(1.0), "after training every completion does");
        Assert.That(steps.All(m => m["kl"] is null), "β 0: no reference pass, no kl");
        Assert.That(Series(steps, "grad_norm")[0], Is.GreaterThan(0));
        // evaluations at steps 0, 15 and 30; reward_std, as TRL's RLOO logs it, is the whole batch's
        var evals = Metrics(dir).Where(m => m["eval_reward"] is not null).ToList();
        Assert.That(evals.Select(m => m["step"]!.GetValue<int>()), Is.EqualTo(new[] { 0, 15, 30 }));
        Assert.That(evals[0]["eval_reward"]!.GetValue<double>(), Is.InRange(0.3, 0.95));
        Assert.That(evals[0]["eval_reward_std"]!.GetValue<double>(), Is.GreaterThan(0.3), "a 0/1 reward over the batch");
        Assert.That(evals[^1]["eval_reward"]!.GetValue<double>(), Is.EqualTo(1.0));
        Assert.That(evals[^1]["eval_reward_std"]!.GetValue<double>(), Is.EqualTo(0.0));

        var logged = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(logged, Has.Count.EqualTo(30 * 16));
        int checkedGroups = 0;
        for (int g = 0; g < logged.Count; g += 4)
        {
            var group = logged.Skip(g).Take(4).ToList();
            var rewards = group.Select(c => c["reward"]!.GetValue<double>()).ToArray();
            for (int i = 0; i < 4; i++)
                Assert.That(group[i]["advantage"]!.GetValue<double>(), Is.EqualTo(rewards[i] - (rewards.Sum() - rewards[i]) / 3).Within(1e-12));
            if (rewards.Distinct().Count() > 1) checkedGroups++;
        }
        Assert.That(checkedGroups, Is.GreaterThan(5), "groups of unequal rewards were checked");
    }

    /// <summary>β (RLOO's default 0.05) takes each completion's KL to the starting model from its reward: logged as kl,
    /// 0 while the policy is the starting model, then positive. The advantages then differ from the plain leave-one-out
    /// ones of the logged rewards by β times the KLs.</summary>
    [Test]
    public void TheDefaultBetaPenalizesTheRewardByTheKl()
    {
        var dir = Shared.TempDir();
        OrtloraOk(RlooArgs(dir, "--max-steps", "6", "--log-completions"));
        var kl = Series(Steps(dir), "kl");
        Assert.That(kl, Has.Length.EqualTo(6));
        Assert.That(kl[0], Is.EqualTo(0).Within(1e-6), "step 1 samples from the starting model itself");
        Assert.That(kl[^1], Is.GreaterThan(1e-3));
        var last = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).TakeLast(4).Select(l => JsonNode.Parse(l)!).ToList();
        var rewards = last.Select(c => c["reward"]!.GetValue<double>()).ToArray();
        var plain = rewards.Select((r, i) => r - (rewards.Sum() - r) / 3).ToArray();
        var advantages = last.Select(c => c["advantage"]!.GetValue<double>()).ToArray();
        Assert.That(advantages.Sum(), Is.EqualTo(0).Within(1e-9), "leave-one-out advantages still sum to zero");
        Assert.That(advantages.Zip(plain).Max(p => Math.Abs(p.First - p.Second)), Is.GreaterThan(1e-6), "the KL moved them");
    }

    /// <summary>RLOO's loss is a mean over the micro-batch's completions divided by the accumulation steps, so two
    /// micro-batches of 8 give the one batch of 16's gradient (grad_norm is logged before clipping).</summary>
    [Test]
    public void AccumulationGivesTheOneBatchGradient()
    {
        var whole = Shared.TempDir();
        OrtloraOk(RlooArgs(whole, "--max-steps", "1"));
        var split = Shared.TempDir();
        OrtloraOk(With(RlooArgs(split, "--max-steps", "1", "--gradient-accumulation-steps", "2"), "--per-device-train-batch-size", "8"));
        double expected = Metrics(whole)[0]["grad_norm"]!.GetValue<double>();
        Assert.That(expected, Is.GreaterThan(1e-3));
        Assert.That(Metrics(split)[0]["grad_norm"]!.GetValue<double>(), Is.EqualTo(expected).Within(1e-4 * expected));
    }

    /// <summary>num_iterations 2: the second step on a generation batch has the ratio to the sampling policy, clipped
    /// per completion, and the clip ratios are logged; the reward rises. A checkpoint between generation batches resumes
    /// exactly.</summary>
    [Test]
    public void NumIterationsClipsWholeCompletions()
    {
        var dir = Shared.TempDir();
        OrtloraOk(RlooArgs(dir, "--max-steps", "30", "--num-iterations", "2", "--epsilon", "0.1", "--beta", "0", "--log-completions"));
        AssertTwoStepsPerGeneration(dir, 30);
        var region = Series(Steps(dir), "clip_ratio/region_mean");
        Assert.That(region.All(r => Math.Abs(r * 16 - Math.Round(r * 16)) < 1e-9), "shares of the 16 rows, not of the tokens");
        AssertResumedRunEndsLikeStraight(d => RlooArgs(d, "--max-steps", "4", "--num-iterations", "2", "--save-steps", "2"), "checkpoint-4");
    }

    [Test]
    public void MistakesAreOneClearError()
    {
        var dir = Shared.TempDir();
        var range = Ortlora(RlooArgs(dir, "--max-steps", "1", "--reward-clip-range", "1"));
        Assert.That(range.ExitCode, Is.EqualTo(1));
        Assert.That(range.Error, Does.Contain("--reward-clip-range takes two values"));
        var reversed = Ortlora(RlooArgs(dir, "--max-steps", "1", "--reward-clip-range", "2", "1"));
        Assert.That(reversed.Error, Does.Contain("MIN < MAX"));
        var single = Ortlora(With(RlooArgs(dir, "--max-steps", "1"), "--num-generations", "1"));
        Assert.That(single.Error, Does.Contain("--num-generations must be at least 2"));
        var grpoOption = Ortlora(RlooArgs(dir, "--max-steps", "1", "--loss-type", "cispo"));
        Assert.That(grpoOption.ExitCode, Is.Not.EqualTo(0));
        Assert.That(grpoOption.Error, Does.Contain("--loss-type"));
        Assert.That(File.Exists(Path.Combine(dir, "adapter_model.safetensors")), Is.False, "no partial output");
    }
}
