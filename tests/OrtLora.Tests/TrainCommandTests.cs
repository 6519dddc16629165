using System.Diagnostics;
using System.Text.Json.Nodes;
using OrtLora.Lora;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora train` as a user runs it, on the embedded tiny model and its demo data.</summary>
public class TrainCommandTests
{
    static string[] TrainArgs(string output, params string[] extra) =>
    [
        "train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--target-modules", "q_proj,v_proj,down_proj", "--r", "4",
        "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--logging-steps", "1", "--plain-log", "-o", output, .. extra,
    ];

    /// <summary>--lr-scheduler-type reduce_lr_on_plateau steps on each evaluation's eval_loss (threshold 0.9: only a 90%
    /// drop counts as better, so every evaluation after the first halves the rate); the rate is logged at the steps that
    /// follow; a resumed run goes on from the checkpoint's plateau state; without evaluations it is one error.</summary>
    [Test]
    public void ReduceLrOnPlateauHalvesTheRateAfterEachEvaluationThatDoesNotImprove()
    {
        string[] Plateau(string dir, params string[] extra) => TrainArgs(dir, ["--eval-data", Tiny("demo_eval.parquet"), "--eval-steps", "2",
            "--lr-scheduler-type", "reduce_lr_on_plateau", "--lr-scheduler-kwargs", """{"patience": 0, "factor": 0.5, "threshold": 0.9}""", .. extra]);
        double[] Rates(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["learning_rate"] is not null).Select(m => m["learning_rate"]!.GetValue<double>()).ToArray();
        var dir = Shared.TempDir();
        OrtloraOk(Plateau(dir, "--max-steps", "8", "--save-steps", "4"));
        // Evaluations at steps 2 (the first beats nothing), 4 and 6 (not 90% lower): halved after 4 and after 6.
        double[] expected = [5e-3, 5e-3, 5e-3, 5e-3, 2.5e-3, 2.5e-3, 1.25e-3, 1.25e-3];
        Assert.That(Rates(dir), Is.EqualTo(expected).Within(1e-15));
        OrtloraOk(Plateau(dir, "--max-steps", "8", "--resume-from-checkpoint", Path.Combine(dir, "checkpoint-4")));
        Assert.That(Rates(dir), Is.EqualTo(expected).Within(1e-15), "resumed at step 4");

        var error = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "2", "--lr-scheduler-type", "reduce_lr_on_plateau"));
        Assert.That(error.ExitCode, Is.Not.EqualTo(0));
        Assert.That(error.Error, Does.Contain("reduce_lr_on_plateau lowers the learning rate when eval_loss stops improving"));
    }

    /// <summary>--logging-strategy (the Trainer's logging_strategy): epoch logs the loss at each epoch's end, no logs none;
    /// --logging-first-step adds step 1 to either.</summary>
    [TestCase("epoch", false, new[] { 66, 132 })]
    [TestCase("epoch", true, new[] { 1, 66, 132 })]
    [TestCase("no", false, new int[0])]
    public void LoggingStrategyChoosesTheStepsThatLog(string strategy, bool firstStep, int[] logged)
    {
        var dir = Shared.TempDir();
        // 263 rows in batches of 4: 66 steps an epoch
        OrtloraOk(TrainArgs(dir, ["--num-train-epochs", "2", "--logging-strategy", strategy,
            .. firstStep ? new[] { "--logging-first-step" } : []]));
        var steps = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>()).ToArray();
        Assert.That(steps, Is.EqualTo(logged));
        Assert.That(File.Exists(Path.Combine(dir, "adapter_model.safetensors")), "the run finishes");
    }

    /// <summary>--save-only-model (the Trainer's save_only_model): checkpoints hold the adapter, which loads, and the
    /// trainer state, but no optimizer state; resuming from one is one error naming the folder.</summary>
    [Test]
    public void SaveOnlyModelCheckpointsHoldTheAdapterAndCannotResume()
    {
        var dir = Shared.TempDir();
        OrtloraOk(TrainArgs(dir, "--max-steps", "4", "--save-steps", "2", "--save-only-model"));
        var checkpoint = Path.Combine(dir, "checkpoint-2");
        Assert.That(Directory.GetFiles(checkpoint).Select(Path.GetFileName), Is.EquivalentTo(new[] { "adapter_model.safetensors", "adapter_config.json", "trainer_state.json" }));
        Assert.That(PeftAdapter.Load(checkpoint).Tensors, Has.Count.EqualTo(2 * 3 * 4), "A and B of q_proj, v_proj and down_proj in 4 layers");
        var error = Ortlora(TrainArgs(dir, "--max-steps", "4", "--resume-from-checkpoint", checkpoint));
        Assert.That(error.ExitCode, Is.Not.EqualTo(0));
        Assert.That(error.Error, Does.Contain($"{checkpoint}: saved with --save-only-model"));
    }

    /// <summary>Attention's probabilities are recomputed in the backward by default (Hugging Face's default attention, sdpa,
    /// stores none); `--recompute-attention false` stores them. Same training either way, to float rounding.</summary>
    [Test]
    public void AttentionIsRecomputedByDefaultAndCanBeStored()
    {
        double[] Losses(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["loss"] is not null).Select(m => m["loss"]!.GetValue<double>()).ToArray();
        var (recomputedDir, storedDir) = (Shared.TempDir(), Shared.TempDir());
        var recomputed = OrtloraOk(TrainArgs(recomputedDir, "--max-steps", "4"));
        var stored = OrtloraOk(TrainArgs(storedDir, "--max-steps", "4", "--recompute-attention", "false"));
        // 3 of tiny's 4 layers: no gradient flows through the first layer's K (no k_proj adapter, nothing trainable
        // below it), so its Q·Kᵀ keeps no Q to recompute from, and that layer keeps its probabilities.
        Assert.That(recomputed.Out + recomputed.Error, Does.Contain("recompute attention: the backward recomputes 3 layers' attention probabilities"));
        Assert.That(stored.Out + stored.Error, Does.Not.Contain("recompute attention"));
        Assert.That(Losses(recomputedDir), Has.Length.EqualTo(4));
        Assert.That(Losses(recomputedDir), Is.EqualTo(Losses(storedDir)).Within(1e-4));
    }

    [Test]
    public void TrainingWritesAPeftAdapterMetricsAndPlotAndLowersEvalLoss()
    {
        var dir = Shared.TempDir();
        OrtloraOk(TrainArgs(dir, "--max-steps", "12", "--eval-data", Tiny("demo_eval.parquet"), "--merge", "--warmup-ratio", "0.1"));
        var metrics = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var evals = metrics.Where(m => m["eval_loss"] is not null).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();
        Assert.That(evals, Has.Count.EqualTo(2));
        Assert.That(evals[^1], Is.LessThan(evals[0] - 0.05), "eval loss goes down");
        var lrs = metrics.Where(m => m["learning_rate"] is not null).Select(m => m["learning_rate"]!.GetValue<double>()).ToList();
        // As the Hugging Face Trainer logs it: the scheduler after its step. Warmup 2 of 12 steps, linear: step 1 trained
        // at lr 0 and logs 2.5e-3, step 2 logs the peak, the last step logs 0.
        Assert.That(lrs, Has.Count.EqualTo(12));
        Assert.That(lrs[0], Is.EqualTo(2.5e-3).Within(1e-12));
        Assert.That(lrs[1], Is.EqualTo(5e-3).Within(1e-12));
        Assert.That(lrs[6], Is.EqualTo(5e-3 * 5 / 10).Within(1e-12));
        Assert.That(lrs[^1], Is.EqualTo(0.0));
        // epoch is fractional, as the Trainer logs it: 12 steps of 4 rows of the demo's 263.
        var epochs = metrics.Where(m => m["loss"] is not null).Select(m => m["epoch"]!.GetValue<double>()).ToList();
        Assert.That(epochs[0], Is.EqualTo(Math.Round(4.0 / 263, 4)));
        Assert.That(epochs[^1], Is.EqualTo(Math.Round(48.0 / 263, 4)));
        // The Trainer's closing summary: train_loss is the mean of the 12 step losses (logged one per step here).
        var summary = metrics.Single(m => m["train_loss"] is not null);
        var losses = metrics.Where(m => m["loss"] is not null).Select(m => m["loss"]!.GetValue<double>()).ToList();
        Assert.That(summary["train_loss"]!.GetValue<double>(), Is.EqualTo(losses.Average()).Within(1e-9));
        Assert.That(summary["train_samples_per_second"]!.GetValue<double>(), Is.EqualTo(48 / summary["train_runtime"]!.GetValue<double>()).Within(1).Percent);
        Assert.That(summary["step"]!.GetValue<int>(), Is.EqualTo(12));
        var adapter = PeftAdapter.Load(dir);
        Assert.That(adapter.Config.R, Is.EqualTo(4));
        Assert.That(adapter.Tensors.Keys, Has.Some.EndsWith("layers.0.self_attn.q_proj.lora_B.weight"));
        Assert.That(adapter.Tensors.Values.Where(t => t.Shape[1] == 4).SelectMany(t => t.AsFloats()).Any(v => v != 0), "B was trained");
        Assert.That(new FileInfo(Path.Combine(dir, "loss.png")).Length, Is.GreaterThan(1000));
        Assert.That(Histogram(Path.Combine(dir, "merged", "model.onnx")), Is.EqualTo(Histogram(Tiny("model.onnx"))), "merged = original topology");
        Assert.That(File.Exists(Path.Combine(dir, "merged", "vocab.json")), "tokenizer beside the merged model");
    }

    /// <summary>--graph-optimization-level basic (no com.microsoft fusions: what a CUDA plugin EP can take whole),
    /// --gradient-checkpointing (activations recomputed in the backward), --pad-to-max-length (every batch [4, 512],
    /// graphs loaded for that shape) and --cuda-graphs (the same, every buffer bound at a fixed address; on the CPU there
    /// is nothing to capture) train the same as the defaults: same losses step by step, to float32 rounding.</summary>
    [TestCase("--graph-optimization-level basic")]
    [TestCase("--gradient-checkpointing")]
    [TestCase("--pad-to-max-length")]
    [TestCase("--cuda-graphs")]
    public void OptionsThatChangeOnlyHowTrainingRunsTrainLikeTheDefault(string option)
    {
        double[] Losses(params string[] extra)
        {
            var dir = Shared.TempDir();
            var result = OrtloraOk(TrainArgs(dir, ["--max-steps", "4", .. extra]));
            if (extra.Contains("--gradient-checkpointing"))
                Assert.That(result.Out, Does.Match(@"gradient checkpointing: the backward recomputes \d+ forward segments"));
            if (extra.Contains("--cuda-graphs") || extra.Contains("--pad-to-max-length"))
                Assert.That(result.Out, Does.Contain("every batch padded to [4, 512]"));
            return File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
                .Where(m => m["loss"] is not null).Select(m => m["loss"]!.GetValue<double>()).ToArray();
        }
        var all = Losses();
        var basic = Losses(option.Split(' '));
        Assert.That(basic, Has.Length.EqualTo(4));
        Assert.That(basic, Is.EqualTo(all).Within(1e-4));
        Assert.That(basic[^1], Is.LessThan(basic[0]), "it trains");
    }

    /// <summary>--lr-scheduler-kwargs reaches the schedule: cosine_with_min_lr with min_lr_rate 0.5 over 6 steps logs
    /// (after each step, as the Trainer does) a cosine from the peak down to half of it.</summary>
    [Test]
    public void SchedulerKwargsReachTheSchedule()
    {
        var dir = Shared.TempDir();
        OrtloraOk(TrainArgs(dir, "--max-steps", "6", "--lr-scheduler-type", "cosine_with_min_lr", "--lr-scheduler-kwargs", """{"min_lr_rate": 0.5}"""));
        var lrs = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["learning_rate"] is not null).Select(m => m["learning_rate"]!.GetValue<double>()).ToList();
        var expected = Enumerable.Range(1, 6).Select(k => 5e-3 * (0.5 * (1 + Math.Cos(Math.PI * k / 6)) * 0.5 + 0.5));
        Assert.That(lrs, Is.EqualTo(expected).Within(1e-12));
        var bad = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "2", "--lr-scheduler-kwargs", "{num_cycles: 2}"));
        Assert.That(bad.ExitCode, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("--lr-scheduler-kwargs"));
    }

    /// <summary>--eval-strategy epoch and --save-strategy epoch act on the step that ends each epoch. 263 rows in batches
    /// of 16 are 17 batches an epoch; with 2 micro-batches a step, a window does not cross an epoch (as in the Trainer),
    /// so an epoch is 9 steps: evals at 0, 9 and 18 (the last one after training), checkpoints 9 and 18.</summary>
    [Test]
    public void EpochStrategiesActAtEachEpochsEnd()
    {
        var dir = Shared.TempDir();
        var args = TrainArgs(dir, "--num-train-epochs", "2", "--gradient-accumulation-steps", "2", "--eval-data", Tiny("demo_eval.parquet"),
            "--eval-strategy", "epoch", "--save-strategy", "epoch");
        args[Array.IndexOf(args, "--per-device-train-batch-size") + 1] = "16";
        OrtloraOk(args);
        var metrics = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(metrics.Where(m => m["eval_loss"] is not null).Select(m => m["step"]!.GetValue<int>()), Is.EqualTo(new[] { 0, 9, 18 }));
        Assert.That(Directory.GetDirectories(dir, "checkpoint-*").Select(Path.GetFileName).Order(), Is.EqualTo(new[] { "checkpoint-18", "checkpoint-9" }));
    }

    /// <summary>--dataloader-drop-last: 263 rows in batches of 4 are 65 full batches and one of 3, left out: an epoch
    /// is 65 steps, and every batch trained has 4 rows. --logging-first-step logs step 1 besides every 20th and the last.</summary>
    [Test]
    public void DropLastAndLoggingFirstStep()
    {
        var dir = Shared.TempDir();
        var args = TrainArgs(dir, "--num-train-epochs", "1", "--dataloader-drop-last", "--logging-first-step");
        args[Array.IndexOf(args, "--logging-steps") + 1] = "20";
        OrtloraOk(args);
        var metrics = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        Assert.That(metrics.Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>()), Is.EqualTo(new[] { 1, 20, 40, 60, 65 }));
        var summary = metrics.Single(m => m["train_loss"] is not null);
        Assert.That(summary["train_samples_per_second"]!.GetValue<double>() * summary["train_runtime"]!.GetValue<double>(), Is.EqualTo(260).Within(1).Percent,
            "65 batches of 4 rows");
    }

    /// <summary>--optim takes the Trainer's names for the AdamW ortlora computes (the same adapter either way) and refuses
    /// another optimizer with the names it takes.</summary>
    [Test]
    public void OptimTakesTheTrainersNamesForAdamW()
    {
        var (torch, fused) = (Shared.TempDir(), Shared.TempDir());
        OrtloraOk(TrainArgs(torch, "--max-steps", "2", "--optim", "adamw_torch"));
        OrtloraOk(TrainArgs(fused, "--max-steps", "2", "--optim", "adamw_torch_fused"));
        var (a, b) = (PeftAdapter.Load(torch).Tensors, PeftAdapter.Load(fused).Tensors);
        foreach (var key in a.Keys) Assert.That(b[key].AsFloats(), Is.EqualTo(a[key].AsFloats()), key);
        var other = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "2", "--optim", "paged_adamw_8bit"));
        Assert.That(other.ExitCode, Is.Not.Zero);
        Assert.That(other.Error, Does.Contain("paged_adamw_8bit").And.Contain("adamw_torch_fused"));
    }

    /// <summary>--dataloader-drop-last drops the eval's partial last batch too, as the Trainer's eval dataloader does; each
    /// evaluation logs the Trainer's eval_runtime, eval_samples_per_second and eval_steps_per_second.</summary>
    [Test]
    public void DropLastAppliesToEvaluationToo()
    {
        long rows;
        using (var eval = Training.Data.ParquetDataset.Open(Tiny("demo_eval.parquet"))) rows = eval.RowCount;
        const int batch = 7;
        Assert.That(rows % batch, Is.Not.Zero, "the eval set ends in a partial batch");
        (long Samples, long Steps, double Loss) Eval(params string[] extra)
        {
            var dir = Shared.TempDir();
            var args = TrainArgs(dir, ["--eval-data", Tiny("demo_eval.parquet"), "--per-device-eval-batch-size", $"{batch}", "--max-steps", "1", .. extra]);
            OrtloraOk(args);
            var first = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).First(m => m["eval_loss"] is not null);
            double runtime = first["eval_runtime"]!.GetValue<double>();
            return ((long)Math.Round(first["eval_samples_per_second"]!.GetValue<double>() * runtime),
                (long)Math.Round(first["eval_steps_per_second"]!.GetValue<double>() * runtime), first["eval_loss"]!.GetValue<double>());
        }
        var all = Eval();
        var dropped = Eval("--dataloader-drop-last");
        Assert.That(all.Samples, Is.EqualTo(rows).Within(1).Percent);
        Assert.That(all.Steps, Is.EqualTo((rows + batch - 1) / batch));
        Assert.That(dropped.Samples, Is.EqualTo(rows / batch * batch).Within(1).Percent);
        Assert.That(dropped.Steps, Is.EqualTo(rows / batch));
        Assert.That(dropped.Loss, Is.Not.EqualTo(all.Loss).Within(1e-6), "the last rows are not scored");
    }

    // Instruction data (prompt masked) and plain text (every token labelled, so column 0 must not be counted).
    [TestCase("demo")]
    [TestCase("text")]
    public void GradientAccumulationEqualsOneLargeBatch(string data)
    {
        var big = Shared.TempDir();
        var small = Shared.TempDir();
        string[] WithData(string[] args)
        {
            if (data == "text") args[Array.IndexOf(args, "--data") + 1] = Shared.Require("data", "text_300.nulls.parquet");
            return [.. args, "--max-seq-length", "48"];
        }
        OrtloraOk(WithData(TrainArgs(big, "--max-steps", "3", "--max-grad-norm", "0")));
        var args = WithData(TrainArgs(small, "--max-steps", "3", "--max-grad-norm", "0", "--gradient-accumulation-steps", "2"));
        args[Array.IndexOf(args, "--per-device-train-batch-size") + 1] = "2";
        OrtloraOk(args);
        var a = PeftAdapter.Load(big).Tensors;
        var b = PeftAdapter.Load(small).Tensors;
        foreach (var key in a.Keys)
            Assert.That(Shared.MaxAbsDiff(a[key].AsFloats(), b[key].AsFloats()), Is.LessThan(2e-5f), key);
    }

    [Test]
    public void KilledRunResumesToTheSameAdapterBitForBit()
    {
        var straight = Shared.TempDir();
        OrtloraOk(TrainArgs(straight, "--max-steps", "10", "--save-steps", "3"));

        var killed = Shared.TempDir();
        var cli = Path.Combine(AppContext.BaseDirectory, "ortlora.dll");
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add(cli);
        foreach (var a in TrainArgs(killed, "--max-steps", "10", "--save-steps", "3")) start.ArgumentList.Add(a);
        using (var process = Process.Start(start)!)
        {
            var clock = Stopwatch.StartNew();
            while (!Directory.Exists(Path.Combine(killed, "checkpoint-3")) && !process.HasExited && clock.Elapsed < TimeSpan.FromMinutes(3))
                Thread.Sleep(20);
            Assert.That(process.HasExited, Is.False, "the run was still going when killed");
            process.Kill(entireProcessTree: true); // SIGKILL
            process.WaitForExit();
        }
        Assert.That(File.Exists(Path.Combine(killed, Lora.PeftAdapter.WeightsFile)), Is.False, "a killed run leaves no final adapter");
        OrtloraOk(TrainArgs(killed, "--max-steps", "10", "--save-steps", "3", "--resume-from-checkpoint"));
        var expected = File.ReadAllBytes(Path.Combine(straight, PeftAdapter.WeightsFile));
        Assert.That(File.ReadAllBytes(Path.Combine(killed, PeftAdapter.WeightsFile)), Is.EqualTo(expected));
        var lines = File.ReadAllLines(Path.Combine(killed, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();
        var steps = lines.Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>());
        Assert.That(steps, Is.EqualTo(Enumerable.Range(1, 10)), "metrics.jsonl has each step once after the resume");
        Assert.That(lines.Count(m => m["train_loss"] is not null), Is.EqualTo(1), "one closing summary: the killed run wrote none");
    }

    [Test]
    public void DivergingLossStopsWithOneMessageAndKeepsTheCheckpoints()
    {
        var dir = Shared.TempDir();
        var args = TrainArgs(dir, "--max-steps", "20", "--save-steps", "1", "--max-grad-norm", "0");
        args[Array.IndexOf(args, "--learning-rate") + 1] = "3e38";
        var result = Ortlora(args);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Match("loss is (NaN|∞|-∞|Infinity|-Infinity) at step [0-9]+"));
        Assert.That(result.Error, Does.Contain("checkpoint-"), "names the last checkpoint");
        Assert.That(Directory.Exists(Path.Combine(dir, "checkpoint-1")), "checkpoints before the divergence are kept");
        Assert.That(File.Exists(Path.Combine(dir, PeftAdapter.WeightsFile)), Is.False, "no final adapter from a diverged run");
    }

    [Test]
    public void BadInputsGiveOneMessageAndNoAdapter()
    {
        var dir = Shared.TempDir();
        var truncated = Path.Combine(dir, "truncated.parquet");
        var bytes = File.ReadAllBytes(Shared.Require("data", "alpaca_500.zstd.parquet"));
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        var cases = new (string Why, string[] Args, string Expect)[]
        {
            ("missing data", ["--data", Path.Combine(dir, "nope.parquet")], "nope.parquet"),
            ("truncated parquet", ["--data", truncated], "truncated.parquet"),
            ("wrong column", ["--data", Shared.Require("data", "text_300.nulls.parquet"), "--dataset-format", "text", "--text-column", "body"], "body"),
            ("tokenizer too big", ["--tokenizer", Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json")], "50257"),
        };
        foreach (var (why, extra, expect) in cases)
        {
            var output = Path.Combine(dir, why.Replace(' ', '_'));
            var args = TrainArgs(output, "--max-steps", "2").ToList();
            int at = args.IndexOf("--data");
            if (extra[0] == "--data") { args[at + 1] = extra[1]; args.AddRange(extra[2..]); }
            else args.AddRange(extra);
            var result = Ortlora([.. args]);
            Assert.That(result.ExitCode, Is.Not.EqualTo(0), why);
            Assert.That(result.Error, Does.Contain(expect), why);
            Assert.That(result.Error.Trim().Split('\n'), Has.Length.EqualTo(1), $"{why}: one message");
            Assert.That(File.Exists(Path.Combine(output, PeftAdapter.WeightsFile)), Is.False, why);
        }
    }
}
