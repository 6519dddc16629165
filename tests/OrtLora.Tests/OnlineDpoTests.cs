using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using OrtLora.Training.Grpo;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.TrainGrpoTests;

namespace OrtLora.Tests;

/// <summary>`ortlora online-dpo` (TRL's OnlineDPOTrainer): two completions of each prompt sampled from the policy, the
/// reward functions pick the chosen one, and the DPO loss trains on the pair against the model as training started.</summary>
public class OnlineDpoTests
{
    sealed class PromptRow { public string? prompt { get; set; } }

    static readonly Lazy<string> Prompts = new(() => Shared.WriteParquet(new[]
    {
        "What is the capital of France?", "What is the opposite of hot?", "What sound does a cow make?", "Is this review positive or negative? The movie was great.",
    }.Select(p => new PromptRow { prompt = p }), "online_dpo_prompts.parquet"));

    /// <summary>Short completions of the random tiny model, rewarded for holding the letter e.</summary>
    static string[] Args(string output, params string[] extra) =>
    [
        "online-dpo", Tiny("model.onnx"), "--data", Prompts.Value, "--reward-funcs", "regex:e", "--max-new-tokens", "8",
        "--per-device-train-batch-size", "4", "--learning-rate", "1e-2", "--logging-steps", "1", "--plain-log", "-o", output, .. extra,
    ];

    static Completion Sampled(GrpoPrompt prompt, int[] ids, bool truncated = false) => new(prompt, [.. ids], "", truncated);

    /// <summary>Each pair's higher-rewarded completion is the chosen row (the first on a tie, as TRL's ≥ takes it); rows
    /// are prompt + completion, right-padded, only the completion labelled.</summary>
    [Test]
    public void PairsPutTheHigherRewardFirst()
    {
        var tokenizer = TokenizerLoader.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny"));
        var a = new GrpoPrompt(0, [10, 11], "a", new Dictionary<string, string?>());
        var b = new GrpoPrompt(1, [20], "b", new Dictionary<string, string?>());
        var c = new GrpoPrompt(2, [30, 31, 32], "c", new Dictionary<string, string?>());
        var completions = new[] { Sampled(a, [1]), Sampled(a, [2, 3]), Sampled(b, [4]), Sampled(b, [5]), Sampled(c, [6, 7]), Sampled(c, [8]) };
        var (batch, order) = OnlineDpoTrainer.Pairs(completions, [0.0, 1.0, 0.5, 0.5, 2.0, -1.0], tokenizer);
        Assert.That(order, Is.EqualTo(new[] { 1, 0, 2, 3, 4, 5 }));
        Assert.That(batch.BatchSize, Is.EqualTo(6));
        Assert.That(batch.SequenceLength, Is.EqualTo(5));
        long pad = tokenizer.PadId;
        Assert.That(batch.InputIds[..10], Is.EqualTo(new long[] { 10, 11, 2, 3, pad, 10, 11, 1, pad, pad }));
        Assert.That(batch.Labels[..10], Is.EqualTo(new long[] { -100, -100, 2, 3, -100, -100, -100, 1, -100, -100 }));
        Assert.That(batch.AttentionMask[..10], Is.EqualTo(new long[] { 1, 1, 1, 1, 0, 1, 1, 1, 0, 0 }));
        Assert.That(batch.InputIds[20..25], Is.EqualTo(new long[] { 30, 31, 32, 6, 7 }));

        // max_length 3: a row loses its first tokens, the prompt's before the completion's
        var (cut, _) = OnlineDpoTrainer.Pairs(completions, [0.0, 1.0, 0.5, 0.5, 2.0, -1.0], tokenizer, maxLength: 3);
        Assert.That(cut.SequenceLength, Is.EqualTo(3));
        Assert.That(cut.InputIds[..6], Is.EqualTo(new long[] { 11, 2, 3, 10, 11, 1 }));
        Assert.That(cut.Labels[..6], Is.EqualTo(new long[] { -100, 2, 3, -100, -100, 1 }));
        Assert.That(cut.InputIds[12..15], Is.EqualTo(new long[] { 32, 6, 7 }));
        Assert.That(cut.AttentionMask[6..9], Is.EqualTo(new long[] { 1, 1, 0 }), "a shorter row is padded as before");
        var (completionOnly, _) = OnlineDpoTrainer.Pairs(completions, [0.0, 1.0, 0.5, 0.5, 2.0, -1.0], tokenizer, maxLength: 1);
        Assert.That(completionOnly.InputIds[..2], Is.EqualTo(new long[] { 3, 1 }), "past the prompt, the completion's first tokens go");
        Assert.That(completionOnly.Labels[..2], Is.EqualTo(new long[] { 3, 1 }));
    }

    /// <summary>missing_eos_penalty comes off the reward of a completion that did not end, not of one that did.</summary>
    [Test]
    public void TheMissingEosPenaltyLowersUnendedCompletions()
    {
        var prompt = new GrpoPrompt(0, [10], "Say something.", new Dictionary<string, string?>());
        var completions = new[] { Sampled(prompt, [1], truncated: true) with { Text = " yes" }, Sampled(prompt, [2]) with { Text = " yes" } };
        using var regex = RewardFunctions.Parse("regex:yes", 8);
        var rewards = OnlineDpoTrainer.Rewards(completions, [regex], new GrpoOptions { NumGenerations = 2 }, new OnlineDpoOptions(MissingEosPenalty: 0.75));
        Assert.That(rewards, Is.EqualTo(new[] { 0.25, 1.0 }));
        Assert.That(OnlineDpoTrainer.Rewards(completions, [regex], new GrpoOptions { NumGenerations = 2 }, new OnlineDpoOptions()), Is.EqualTo(new[] { 1.0, 1.0 }));
    }

    /// <summary>The score rises as the pairs teach the policy to write an e; TRL's statistics are logged, and the first
    /// step, where the policy is the reference, has loss log 2, zero KL and zero implicit rewards.</summary>
    [Test]
    public void TheScoreRisesAndTrlsStatisticsAreLogged()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk(Args(dir, "--max-steps", "40", "--eval-data", Prompts.Value, "--eval-steps", "20", "--log-completions"));
        Assert.That(run.Out, Does.Contain("4 prompts, 4 a step × 2 completions"));
        var metrics = Metrics(dir).Where(m => m["eval_reward"] is null && m["train_runtime"] is null).ToList();
        var scores = Series(metrics, "objective/scores");
        Assert.That(scores, Has.Length.EqualTo(40));
        Assert.That(scores.TakeLast(10).Average(), Is.GreaterThan(scores.Take(10).Average() + 0.1));
        Assert.That(scores.TakeLast(10).Average(), Is.GreaterThanOrEqualTo(0.85));
        var first = metrics[0];
        Assert.That(first["loss"]!.GetValue<double>(), Is.EqualTo(Math.Log(2)).Within(1e-5), "the policy is its own reference at first");
        Assert.That(first["objective/kl"]!.GetValue<double>(), Is.EqualTo(0).Within(1e-4));
        Assert.That(first["rewards/chosen"]!.GetValue<double>(), Is.EqualTo(0).Within(1e-5));
        Assert.That(first["beta"]!.GetValue<double>(), Is.EqualTo(0.1));
        foreach (var key in new[] { "objective/scores_margin", "objective/non_score_reward", "objective/rlhf_reward", "objective/entropy", "val/contain_eos_token",
                     "logps/chosen", "logps/rejected", "rewards/rejected", "rewards/margins", "rewards/accuracies", "num_tokens" })
            Assert.That(metrics[^1][key], Is.Not.Null, key);
        var late = metrics[^1];
        Assert.That(late["objective/non_score_reward"]!.GetValue<double>(), Is.EqualTo(-0.1 * late["objective/kl"]!.GetValue<double>()).Within(1e-9));
        Assert.That(late["objective/rlhf_reward"]!.GetValue<double>(),
            Is.EqualTo(late["objective/scores"]!.GetValue<double>() + late["objective/non_score_reward"]!.GetValue<double>()).Within(1e-9));
        Assert.That(Series(metrics, "objective/scores_margin"), Is.All.GreaterThanOrEqualTo(0), "the chosen completion never scores lower");
        var evals = Metrics(dir).Where(m => m["eval_reward"] is not null).Select(m => m["step"]!.GetValue<int>());
        Assert.That(evals, Is.EqualTo(new[] { 0, 20, 40 }));

        // log_completions: every pair, the chosen one never rewarded lower, regex:e's rewards as the texts say
        var pairs = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!).ToList();
        Assert.That(pairs, Has.Count.EqualTo(40 * 4));
        foreach (var p in pairs)
        {
            Assert.That(p["chosen_reward"]!.GetValue<double>(), Is.GreaterThanOrEqualTo(p["rejected_reward"]!.GetValue<double>()));
            Assert.That(p["chosen_reward"]!.GetValue<double>(), Is.EqualTo(p["chosen"]!.GetValue<string>().Contains('e') ? 1.0 : 0.0));
        }
        Assert.That(pairs.Select(p => p["step"]!.GetValue<int>()).Distinct(), Is.EqualTo(Enumerable.Range(1, 40)));
    }

    /// <summary>XPO: each pair is the policy's completion against the starting model's. The policy's score rises to
    /// every completion while the reference's stays where the random model is. At step 1 (policy = reference) the
    /// DPO part is log 2 and the graph's α term is α times the mean log-probability of the reference's completions, as
    /// logged: the row weights land on the reference's rows.</summary>
    [Test]
    public void XpoRaisesThePolicysScoreAgainstTheReference()
    {
        var dir = Shared.TempDir();
        var args = Args(dir, "--max-steps", "60", "--alpha", "0.01");
        args[0] = "xpo";
        OrtloraOk(args);
        var metrics = Metrics(dir).Where(m => m["objective/model_scores"] is not null).ToList();
        var policy = Series(metrics, "objective/model_scores");
        var reference = Series(metrics, "objective/ref_scores");
        Assert.That(policy, Has.Length.EqualTo(60));
        Assert.That(policy.TakeLast(15).Average(), Is.GreaterThanOrEqualTo(0.9));
        Assert.That(reference.Average(), Is.LessThan(0.7), "the reference does not learn");
        var first = metrics[0];
        Assert.That(first["loss/dpo"]!.GetValue<double>(), Is.EqualTo(Math.Log(2)).Within(1e-5));
        Assert.That(first["loss/xpo"]!.GetValue<double>(), Is.LessThan(-0.01), "α · a log-probability of several tokens");
        Assert.That(first["objective/kl"]!.GetValue<double>(), Is.EqualTo(0).Within(1e-4));
        Assert.That(first["alpha"]!.GetValue<double>(), Is.EqualTo(0.01));
    }

    /// <summary>Checkpoints resume exactly: the sampling seeds come from the step, the reference from the start.</summary>
    [Test]
    public void AResumedRunEndsLikeAStraightOne() =>
        AssertResumedRunEndsLikeStraight(dir => With(Args(dir, "--max-steps", "4", "--save-steps", "2", "--gradient-accumulation-steps", "2"), "--per-device-train-batch-size", "2"),
            "checkpoint-4");

    /// <summary>XPO's reference samples from the starting parameters, also after a resume.</summary>
    [Test]
    public void AResumedXpoRunEndsLikeAStraightOne() =>
        AssertResumedRunEndsLikeStraight(dir => ["xpo", .. Args(dir, "--max-steps", "4", "--save-steps", "2", "--alpha", "0.01").Skip(1)], "checkpoint-4");

    [Test]
    public void MisuseIsOneClearError()
    {
        var dir = Shared.TempDir();
        var negative = Ortlora(Args(dir, "--missing-eos-penalty", "-1"));
        Assert.That(negative.ExitCode, Is.Not.Zero);
        Assert.That(negative.Error, Does.Contain("--missing-eos-penalty"));
        var loss = Ortlora(Args(dir, "--loss-type", "hinge"));
        Assert.That(loss.ExitCode, Is.Not.Zero);
        var grpoOnly = Ortlora(Args(dir, "--num-generations", "4"));
        Assert.That(grpoOnly.ExitCode, Is.Not.Zero, "online DPO samples two completions a prompt");
    }
}
