using System.Text.Json.Nodes;
using OrtLora.Lora;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora grpo` (TRL's GRPOTrainer) on the embedded tiny model: completions sampled from the policy as it is,
/// scored by reward functions, and the adapters trained toward the better ones of each group.</summary>
public class TrainGrpoTests
{
    sealed class PromptRow { public string? prompt { get; set; } public string? solution { get; set; } }

    static readonly Lazy<string> Prompts = new(() => Shared.WriteParquet(new[]
    {
        "What is the capital of France?", "What is the opposite of hot?", "What sound does a cow make?", "Is this review positive or negative? The movie was great.",
    }.Select(p => new PromptRow { prompt = p, solution = "x" }), "grpo_prompts.parquet"));

    /// <summary>Short completions of the random model, rewarded for holding the letter e: about three in four do at first.</summary>
    internal static string[] GrpoArgs(string output, params string[] extra) =>
    [
        "grpo", Tiny("model.onnx"), "--data", Prompts.Value, "--reward-funcs", "regex:e", "--max-completion-length", "8",
        "--num-generations", "8", "--per-device-train-batch-size", "16", "--learning-rate", "1e-2", "--logging-steps", "1", "--plain-log",
        "-o", output, .. extra,
    ];

    /// <summary><paramref name="args"/> with <paramref name="option"/>'s value replaced.</summary>
    internal static string[] With(string[] args, string option, string value) => [.. args.Select((a, i) => i > 0 && args[i - 1] == option ? value : a)];

    internal static List<JsonNode> Metrics(string dir) => [.. File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)];
    internal static double[] Series(List<JsonNode> metrics, string name) => [.. metrics.Where(m => m[name] is not null && m["train_runtime"] is null).Select(m => m[name]!.GetValue<double>())];

    /// <summary>The reward rises from the random model's share to every completion, and TRL's metrics are logged: the
    /// reward is the mean of the function's, reward_std the group's, the loss (ratio 1, equal lengths) zero.</summary>
    [Test]
    public void TheRewardRisesToOne()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk(GrpoArgs(dir, "--max-steps", "30", "--log-completions", "--eval-data", Prompts.Value, "--eval-steps", "10"));
        Assert.That(run.Out, Does.Contain("4 prompts (text), 2 per generation × 8 completions, 1 step each"));
        var metrics = Metrics(dir);
        var reward = Series(metrics.Where(m => m["eval_reward"] is null).ToList(), "reward");
        Assert.That(reward, Has.Length.EqualTo(30));
        Assert.That(reward.Take(3).Average(), Is.InRange(0.3, 0.95), "the random model's completions hold an e about as often as not");
        Assert.That(reward.TakeLast(5), Is.All.EqualTo(1.0), "after training every completion does");
        Assert.That(Series(metrics, "rewards/regex/mean"), Is.EqualTo(reward), "one function of weight 1: its mean is the reward");
        Assert.That(Series(metrics, "frac_reward_zero_std")[^1], Is.EqualTo(1.0));
        Assert.That(Series(metrics, "completions/mean_length"), Is.All.InRange(1.0, 8.0));
        Assert.That(Series(metrics, "grad_norm")[0], Is.GreaterThan(0));

        // evaluations before the first step, every 10 steps and after the last: the eval prompts' groups sampled and scored
        var evals = metrics.Where(m => m["eval_reward"] is not null).ToList();
        Assert.That(evals.Select(m => m["step"]!.GetValue<int>()), Is.EqualTo(new[] { 0, 10, 20, 30 }));
        Assert.That(evals[0]["eval_reward"]!.GetValue<double>(), Is.InRange(0.3, 0.95));
        Assert.That(evals[^1]["eval_reward"]!.GetValue<double>(), Is.EqualTo(1.0));
        Assert.That(evals[^1]["eval_rewards/regex/mean"]!.GetValue<double>(), Is.EqualTo(1.0));
        Assert.That(evals.All(m => m["loss"] is null), "an evaluation trains nothing and logs no loss");

        // log_completions: each completion with its reward and advantage; a group's advantages sum to zero
        var logged = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(logged, Has.Count.EqualTo(30 * 16));
        var first = logged.Take(8).ToList();
        Assert.That(first.Select(c => c["prompt"]!.GetValue<string>()).Distinct().Count(), Is.EqualTo(1), "a group is one prompt's completions");
        foreach (var c in first)
            Assert.That(c["regex"]!.GetValue<double>(), Is.EqualTo(c["completion"]!.GetValue<string>().Contains('e') ? 1.0 : 0.0));
        Assert.That(first.Sum(c => c["advantage"]!.GetValue<double>()), Is.EqualTo(0).Within(1e-9));

        // the adapter is PEFT's, and it moved
        var adapter = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        Assert.That(adapter.Where(kv => kv.Key.Contains("lora_B")).Sum(kv => kv.Value.AsFloats().Sum(v => Math.Abs(v))), Is.GreaterThan(0));
    }

    /// <summary>A step's gradient is the same whichever way its completions are split into micro-batches, for each loss
    /// type: dapo normalizes by the whole step's tokens, grpo's and bnpo's micro-batch means are divided by the
    /// accumulation steps (the micro-batches here hold whole groups of equal token counts, where bnpo's local count is
    /// the global one's share). The logged grad_norm, before clipping, compares the gradients themselves (AdamW's
    /// first step is blind to their scale).</summary>
    [TestCase("dapo")]
    [TestCase("grpo")]
    [TestCase("dr_grpo")]
    public void AccumulationGivesTheOneBatchGradient(string lossType)
    {
        var whole = Shared.TempDir();
        OrtloraOk(GrpoArgs(whole, "--max-steps", "1", "--loss-type", lossType));
        var split = Shared.TempDir();
        OrtloraOk(With(GrpoArgs(split, "--max-steps", "1", "--loss-type", lossType, "--gradient-accumulation-steps", "2"), "--per-device-train-batch-size", "8"));
        double expected = Metrics(whole)[0]["grad_norm"]!.GetValue<double>();
        Assert.That(expected, Is.GreaterThan(1e-3));
        Assert.That(Metrics(split)[0]["grad_norm"]!.GetValue<double>(), Is.EqualTo(expected).Within(1e-4 * expected));
        Assert.That(Metrics(split)[0]["reward"]!.GetValue<double>(), Is.EqualTo(Metrics(whole)[0]["reward"]!.GetValue<double>()), "the same completions");
    }

    /// <summary>A run resumed from a checkpoint draws the same completions (each sampler is seeded from the step and its
    /// place) and ends byte for byte like the straight run.</summary>
    [Test]
    public void AResumedRunEndsLikeTheStraightRun()
    {
        var (straight, resumed) = AssertResumedRunEndsLikeStraight(dir => GrpoArgs(dir, "--max-steps", "4", "--save-steps", "2"), "checkpoint-4");
        Assert.That(Series(Metrics(resumed), "reward"), Is.EqualTo(Series(Metrics(straight), "reward")), "the same completions, the log continued");
    }

    /// <summary>β > 0: the KL to the model as training started is logged (0 before the first update, then positive).</summary>
    [Test]
    public void BetaLogsTheKlToTheStartingModel()
    {
        var dir = Shared.TempDir();
        OrtloraOk(GrpoArgs(dir, "--max-steps", "4", "--beta", "0.04", "--loss-type", "grpo"));
        var kl = Series(Metrics(dir), "kl");
        Assert.That(kl, Has.Length.EqualTo(4));
        Assert.That(kl[0], Is.EqualTo(0).Within(1e-6), "step 1 samples from the starting model itself");
        Assert.That(kl[^1], Is.GreaterThan(1e-4));
    }

    /// <summary>num_iterations 2: each generation batch trains two steps, so the rewards (logged when sampled) are logged on
    /// every other step, the second step's ratio moves away from 1 and the clip ratios are logged; the reward still rises.
    /// A run resumed from a checkpoint (which falls between generation batches) ends like the straight run; a --save-steps
    /// that would cut between the two iterations is one error.</summary>
    [Test]
    public void NumIterationsTrainsEachGenerationBatchTwice()
    {
        var dir = Shared.TempDir();
        OrtloraOk(GrpoArgs(dir, "--max-steps", "30", "--num-iterations", "2", "--epsilon", "0.1", "--log-completions"));
        AssertTwoStepsPerGeneration(dir, 30);

        // checkpoints fall between generation batches, so a resumed run ends byte for byte like the straight one
        AssertResumedRunEndsLikeStraight(dir => GrpoArgs(dir, "--max-steps", "4", "--num-iterations", "2", "--save-steps", "2"), "checkpoint-4");

        var cut = Ortlora(GrpoArgs(Shared.TempDir(), "--max-steps", "4", "--num-iterations", "2", "--save-steps", "3"));
        Assert.That(cut.ExitCode, Is.EqualTo(1));
        Assert.That(cut.Error, Does.Contain("--save-steps (3) must be a multiple of the 2 steps each generation batch trains"));
    }

    /// <summary>A run of <paramref name="steps"/> steps where each generation batch of 16 completions trains two steps:
    /// the rewards (logged when sampled) on every other step, the first step's ratio 1 (no clipping), the second's moved
    /// by the first step at lr 1e-2 out of [0.9, 1.1] somewhere, and the reward rising (a μ 2 run: 0.73 → 0.90).</summary>
    internal static void AssertTwoStepsPerGeneration(string dir, int steps)
    {
        var metrics = Metrics(dir).Where(m => m["train_runtime"] is null).ToList();
        Assert.That(metrics, Has.Count.EqualTo(steps));
        Assert.That(metrics.Select(m => m["reward"] is not null), Is.EqualTo(Enumerable.Range(1, steps).Select(step => step % 2 == 1)));
        Assert.That(File.ReadAllLines(Path.Combine(dir, "completions.jsonl")), Has.Length.EqualTo(steps / 2 * 16), "one generation batch per two steps");
        var region = metrics.Select(m => m["clip_ratio/region_mean"]!.GetValue<double>()).ToList();
        Assert.That(region.Where((_, i) => i % 2 == 0), Is.All.EqualTo(0.0), "a generation batch's first step is on-policy");
        Assert.That(region.Where((_, i) => i % 2 == 1).Max(), Is.GreaterThan(0), "the first step moved the second step's ratios");
        var reward = Series(metrics, "reward");
        Assert.That(reward.TakeLast(3).Average(), Is.GreaterThan(reward.Take(3).Average() + 0.1), "the reward rises");
    }

    /// <summary>Conversational prompts (JSON Lines, lists of messages) are rendered by the chat template with the
    /// assistant's turn opened (the tiny model has none of its own: ChatML), and the rewards read the other columns.</summary>
    [Test]
    public void ConversationalPromptsGoThroughTheChatTemplate()
    {
        var data = Path.Combine(Shared.TempDir(), "chat_prompts.jsonl");
        File.WriteAllLines(data, new[] { "France", "Japan" }.Select(country =>
            $$"""{"prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of {{country}}?"}], "country": "{{country}}"}"""));
        var dir = Shared.TempDir();
        OrtloraOk(With(With(GrpoArgs(dir, "--max-steps", "2", "--log-completions"), "--data", data), "--reward-funcs", "contains:country"));
        var logged = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(logged, Has.Count.EqualTo(32));
        var prompt = logged[0]["prompt"]!.GetValue<string>();
        Assert.That(prompt, Does.StartWith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat is the capital of"));
        Assert.That(prompt, Does.EndWith("<|im_start|>assistant\n"));
        Assert.That(logged.Select(c => c["contains:country"]!.GetValue<double>()), Is.All.EqualTo(0.0).Or.EqualTo(1.0));
    }

    /// <summary>--chat-template-kwargs reach the prompts' template (TRL's chat_template_kwargs), and the training data's
    /// (show-data renders rows as train does): a template that writes /no_think first and closes an empty think block
    /// after the generation prompt unless enable_thinking.</summary>
    [Test]
    public void ChatTemplateKwargsReachTheTemplate()
    {
        var template = Path.Combine(Shared.TempDir(), "thinking.jinja");
        File.WriteAllText(template, "{% if enable_thinking is defined and not enable_thinking %}/no_think\n{% endif %}{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}" +
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}<think></think>{% endif %}{% endif %}");
        var data = Path.Combine(Shared.TempDir(), "chat_prompts.jsonl");
        File.WriteAllLines(data, ["""{"prompt": [{"role": "user", "content": "What is the capital of France?"}]}"""]);
        var dir = Shared.TempDir();
        OrtloraOk([.. With(GrpoArgs(dir, "--max-steps", "1", "--log-completions", "--chat-template", template, "--chat-template-kwargs", """{"enable_thinking": false}"""), "--data", data)]);
        var prompt = JsonNode.Parse(File.ReadLines(Path.Combine(dir, "completions.jsonl")).First())!["prompt"]!.GetValue<string>();
        Assert.That(prompt, Does.StartWith("/no_think\n<|im_start|>user\n").And.EndWith("<|im_start|>assistant\n<think></think>"));
        var bad = Ortlora([.. With(GrpoArgs(Shared.TempDir(), "--max-steps", "1", "--chat-template", template, "--chat-template-kwargs", "enable_thinking=false"), "--data", data)]);
        Assert.That(bad.ExitCode, Is.EqualTo(1));
        Assert.That(bad.Error, Does.Contain("--chat-template-kwargs is not valid JSON"));

        var show = OrtloraOk("show-data", Shared.Require("data", "alpaca_500.chat.parquet"), "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"),
            "--chat-template", template, "--chat-template-kwargs", """{"enable_thinking": false}""", "--rows", "1");
        Assert.That(show.Out, Does.Contain("tokens, ").And.Contain("/no_think\n<|im_start|>"), "train's data goes through the template with them");
    }

    [Test]
    public void MistakesAreOneClearError()
    {
        var dir = Shared.TempDir();
        var odd = Ortlora(With(GrpoArgs(dir, "--max-steps", "1"), "--num-generations", "3"));
        Assert.That(odd.ExitCode, Is.EqualTo(1));
        Assert.That(odd.Error, Does.Contain("multiple of --num-generations"));
        var sft = Ortlora(["grpo", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--reward-funcs", "exact_match", "-o", dir]);
        Assert.That(sft.ExitCode, Is.EqualTo(1));
        Assert.That(sft.Error, Does.Contain("demo.parquet").And.Contain("prompt-only"));
        // a prompt-completion file is refused, and read as prompts with --dataset-format prompt-only (its completion a column)
        var pairs = Path.Combine(Shared.TempDir(), "pairs.jsonl");
        File.WriteAllLines(pairs, ["""{"prompt": "What is the capital of France?", "completion": "The capital of France is Paris."}"""]);
        var detected = Ortlora(With(GrpoArgs(dir, "--max-steps", "1"), "--data", pairs));
        Assert.That(detected.Error, Does.Contain("prompt-completion data").And.Contain("--dataset-format prompt-only"));
        var asPrompts = Shared.TempDir();
        OrtloraOk(With(With(GrpoArgs(asPrompts, "--max-steps", "1", "--dataset-format", "prompt-only"), "--data", pairs), "--reward-funcs", "exact_match:completion"));
        Assert.That(File.Exists(Path.Combine(asPrompts, "adapter_model.safetensors")));
        var column = Ortlora(With(GrpoArgs(dir, "--max-steps", "1"), "--reward-funcs", "exact_match:answer"));
        Assert.That(column.ExitCode, Is.EqualTo(1));
        Assert.That(column.Error, Does.Contain("'answer'").And.Contain("grpo_prompts.parquet"));
        var unknown = Ortlora(With(GrpoArgs(dir, "--max-steps", "1"), "--reward-funcs", "accuracy"));
        Assert.That(unknown.ExitCode, Is.EqualTo(1));
        Assert.That(unknown.Error, Does.Contain("accuracy"));
        Assert.That(File.Exists(Path.Combine(dir, "adapter_model.safetensors")), Is.False, "no partial output");
    }
}
