using System.Text.Json.Nodes;
using OrtLora.Lora;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora train` with the Trainer's evaluation-driven options (--load-best-model-at-end,
/// --early-stopping-patience/threshold), the eval batch size and the Adam hyperparameters.</summary>
public class TrainBestModelTests
{
    static string[] TrainArgs(string output, params string[] extra) =>
    [
        "train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--target-modules", "q_proj,v_proj,down_proj", "--r", "4",
        "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--logging-steps", "1", "--plain-log", "-o", output, .. extra,
    ];

    static List<JsonNode> Metrics(string dir) =>
        File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList();

    static List<(int Step, double Loss)> Evals(string dir) =>
        Metrics(dir).Where(m => m["eval_loss"] is not null).Select(m => (m["step"]!.GetValue<int>(), m["eval_loss"]!.GetValue<double>())).ToList();

    /// <summary>Trained on Alpaca and evaluated on the demo's questions, the eval loss of tiny falls, then wanders. With
    /// patience 3 the run stops where transformers' EarlyStoppingCallback would (recomputed here from the logged evals),
    /// and the adapter written is the one of the best evaluation: byte for byte the checkpoint saved at that step. A run
    /// resumed from a checkpoint after the best one stops at the same step with the same adapter, so the best parameters
    /// and the patience counter travel in the checkpoint.</summary>
    [Test]
    public void EarlyStoppingStopsWhereTheCallbackWouldAndTheBestAdapterIsWritten()
    {
        var dir = Shared.TempDir();
        string[] args = [.. TrainArgs(dir, "--max-steps", "40", "--eval-steps", "2", "--save-steps", "2", "--lr-scheduler-type", "constant",
            "--eval-data", Tiny("demo_eval.parquet"), "--max-seq-length", "64", "--early-stopping-patience", "3", "--load-best-model-at-end")];
        args[Array.IndexOf(args, "--data") + 1] = Shared.Require("data", "alpaca_500.zstd.parquet");
        args[Array.IndexOf(args, "--learning-rate") + 1] = "1e-2";
        var result = OrtloraOk(args);

        var inTraining = Evals(dir).Where(e => e.Step > 0).ToList(); // step 0 is the baseline, never the best model
        int predictedStop = -1, counter = 0;
        double bestSoFar = double.PositiveInfinity;
        foreach (var (step, loss) in inTraining)
        {
            if (loss < bestSoFar) { bestSoFar = loss; counter = 0; } else counter++;
            if (counter >= 3) { predictedStop = step; break; }
        }
        Assert.That(predictedStop, Is.InRange(8, 38), "this run stops early: " + string.Join(", ", inTraining));
        var steps = Metrics(dir).Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>()).ToList();
        Assert.That(steps[^1], Is.EqualTo(predictedStop));
        Assert.That(inTraining[^1].Step, Is.EqualTo(predictedStop), "no second eval at the stopping step");
        Assert.That(result.Out, Does.Contain($"early stopping at step {predictedStop}"));

        var best = inTraining.MinBy(e => e.Loss);
        var record = Metrics(dir).Single(m => m["best_global_step"] is not null);
        Assert.That(record["best_global_step"]!.GetValue<int>(), Is.EqualTo(best.Step));
        Assert.That(record["best_metric"]!.GetValue<double>(), Is.EqualTo(best.Loss));
        var adapter = File.ReadAllBytes(Path.Combine(dir, PeftAdapter.WeightsFile));
        Assert.That(adapter, Is.EqualTo(File.ReadAllBytes(Path.Combine(dir, $"checkpoint-{best.Step}", PeftAdapter.WeightsFile))));
        Assert.That(adapter, Is.Not.EqualTo(File.ReadAllBytes(Path.Combine(dir, $"checkpoint-{predictedStop}", PeftAdapter.WeightsFile))));

        // Resume from the checkpoint after the best one (its patience counter is 1).
        File.Delete(Path.Combine(dir, PeftAdapter.WeightsFile));
        OrtloraOk([.. args, "--resume-from-checkpoint", Path.Combine(dir, $"checkpoint-{best.Step + 2}")]);
        Assert.That(File.ReadAllBytes(Path.Combine(dir, PeftAdapter.WeightsFile)), Is.EqualTo(adapter));
        Assert.That(Metrics(dir).Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>()).Last(), Is.EqualTo(predictedStop));
    }

    /// <summary>An improvement must exceed --early-stopping-threshold to restart the patience: with a threshold of 100
    /// nothing after the first eval (which sets the best) counts, so patience 2 stops at the third eval. The eval batch size changes how the eval data is cut,
    /// not its token-weighted loss.</summary>
    [Test]
    public void ThresholdAndEvalBatchSize()
    {
        var wide = Shared.TempDir();
        OrtloraOk(TrainArgs(wide, "--max-steps", "10", "--lr-scheduler-type", "constant", "--eval-steps", "1", "--eval-data", Tiny("demo_eval.parquet"),
            "--early-stopping-patience", "2", "--early-stopping-threshold", "100", "--per-device-eval-batch-size", "3"));
        Assert.That(Metrics(wide).Where(m => m["loss"] is not null).Select(m => m["step"]!.GetValue<int>()), Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(File.Exists(Path.Combine(wide, PeftAdapter.WeightsFile)), "an early-stopped run writes its adapter");

        var narrow = Shared.TempDir();
        OrtloraOk(TrainArgs(narrow, "--max-steps", "3", "--lr-scheduler-type", "constant", "--eval-steps", "1", "--eval-data", Tiny("demo_eval.parquet")));
        Assert.That(Evals(wide).Select(e => e.Loss), Is.EqualTo(Evals(narrow).Select(e => e.Loss)).Within(1e-5));
        Assert.That(Evals(wide).Select(e => e.Step), Is.EqualTo(new[] { 0, 1, 2, 3 }));

        var bad = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "2", "--load-best-model-at-end"));
        Assert.That(bad.ExitCode, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("--eval-data"));
    }

    /// <summary>--metric-for-best-model with a higher-is-better metric (the Trainer's greater_is_better default for a
    /// name that does not end in loss): a classifier keeps the evaluation with the highest eval_accuracy, taking the
    /// first of equal ones, and reports that evaluation's eval_loss; --greater-is-better false turns the order round;
    /// a metric the evaluations lack is one error before training, naming those they have.</summary>
    [Test]
    public void MetricForBestModelCanBeHigherIsBetter()
    {
        var work = Shared.TempDir();
        var rng = new Random(3);
        string[] words = ["good", "bad", "fine"];
        var data = Path.Combine(work, "classes.jsonl");
        File.WriteAllLines(data, Enumerable.Range(0, 48).Select(_ => rng.Next(3)).Select(c => new JsonObject { ["text"] = $"It was {words[c]}.", ["label"] = c }.ToJsonString()));
        string[] Args(string dir, params string[] extra) => ["classify", Tiny("model.onnx"), "--data", data, "--eval-split", "0.25", "-o", dir, "--max-steps", "12",
            "--eval-steps", "2", "--learning-rate", "3e-3", "--plain-log", "--load-best-model-at-end", .. extra];
        (int Step, double Accuracy, double Loss)[] Evaluations(string dir) => [.. Metrics(dir).Where(m => m["eval_accuracy"] is not null && m["step"]!.GetValue<int>() > 0)
            .Select(m => (m["step"]!.GetValue<int>(), m["eval_accuracy"]!.GetValue<double>(), m["eval_loss"]!.GetValue<double>()))];
        int BestStep(string dir) => Metrics(dir).Single(m => m["best_global_step"] is not null)["best_global_step"]!.GetValue<int>();

        var highest = Path.Combine(work, "highest");
        var run = OrtloraOk(Args(highest, "--metric-for-best-model", "accuracy"));
        var evals = Evaluations(highest);
        var expected = evals.First(e => e.Accuracy == evals.Max(x => x.Accuracy));
        Assert.That(evals.Select(e => e.Accuracy).Distinct().Count(), Is.GreaterThan(1), "the accuracies differ: " + string.Join(", ", evals));
        Assert.That(expected.Step, Is.LessThan(evals[^1].Step), "an earlier evaluation is the best: " + string.Join(", ", evals));
        Assert.That(BestStep(highest), Is.EqualTo(expected.Step));
        Assert.That(run.Out, Does.Contain($"loaded the best model: step {expected.Step}, eval_accuracy"));
        Assert.That(evals.Count(e => e.Accuracy == expected.Accuracy), Is.GreaterThan(1), "ties: the first is kept");

        var lowest = Path.Combine(work, "lowest");
        OrtloraOk(Args(lowest, "--metric-for-best-model", "eval_accuracy", "--greater-is-better", "false"));
        var lowEvals = Evaluations(lowest);
        var lowExpected = lowEvals.First(e => e.Accuracy == lowEvals.Min(x => x.Accuracy));
        Assert.That(BestStep(lowest), Is.EqualTo(lowExpected.Step));
        Assert.That(lowExpected.Step, Is.Not.EqualTo(expected.Step));

        var missing = Ortlora(Args(Path.Combine(work, "missing"), "--metric-for-best-model", "f1"));
        Assert.That(missing.ExitCode, Is.Not.Zero);
        Assert.That(missing.Error, Does.Contain("--metric-for-best-model f1").And.Contain("eval_accuracy").And.Contain("eval_matthews_correlation"));
        Assert.That(Directory.Exists(Path.Combine(work, "missing", "checkpoint-2")), Is.False, "refused before training");
    }

    /// <summary>--adam-epsilon reaches AdamW: from B = 0 the first step moves each element of B by lr·g/(|g| + eps)
    /// (bias-corrected moments are g and g²): lr to rounding with the default 1e-8 wherever g is not tiny, under lr/2
    /// everywhere with eps = 1 (|g| is far below 1 here). --adam-beta1 0 changes the second step.</summary>
    [Test]
    public void AdamHyperparametersReachTheOptimizer()
    {
        float[] Bs(string dir) => PeftAdapter.Load(dir).Tensors.Where(t => t.Key.Contains("lora_B")).SelectMany(t => t.Value.AsFloats()).ToArray();
        var plain = Shared.TempDir();
        OrtloraOk(TrainArgs(plain, "--max-steps", "1", "--max-grad-norm", "0"));
        var epsilon = Shared.TempDir();
        OrtloraOk(TrainArgs(epsilon, "--max-steps", "1", "--max-grad-norm", "0", "--adam-epsilon", "1"));
        Assert.That(Bs(plain).Max(Math.Abs), Is.EqualTo(5e-3f).Within(1e-6f));
        Assert.That(Bs(plain).Count(b => Math.Abs(Math.Abs(b) - 5e-3f) < 1e-6f), Is.GreaterThan(Bs(plain).Length / 2));
        Assert.That(Bs(epsilon).Max(Math.Abs), Is.LessThan(2.5e-3f).And.GreaterThan(0f));

        var twoSteps = Shared.TempDir();
        OrtloraOk(TrainArgs(twoSteps, "--max-steps", "2", "--max-grad-norm", "0", "--lr-scheduler-type", "constant"));
        var beta = Shared.TempDir();
        OrtloraOk(TrainArgs(beta, "--max-steps", "2", "--max-grad-norm", "0", "--lr-scheduler-type", "constant", "--adam-beta1", "0"));
        Assert.That(Shared.MaxAbsDiff(Bs(twoSteps), Bs(beta)), Is.GreaterThan(1e-5f));
        var refused = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--adam-beta2", "1"));
        Assert.That(refused.Error, Does.Contain("--adam-beta1 and --adam-beta2 must be in [0, 1)"));
    }

    /// <summary>--label-smoothing-factor reaches the loss: the step-0 eval (the same model) differs from the plain
    /// cross-entropy's, and training lowers it; 1 is refused.</summary>
    [Test]
    public void LabelSmoothingReachesTheLoss()
    {
        double[] EvalLosses(params string[] extra)
        {
            var dir = Shared.TempDir();
            OrtloraOk(TrainArgs(dir, ["--max-steps", "4", "--eval-data", Tiny("demo_eval.parquet"), .. extra]));
            return Evals(dir).Select(e => e.Loss).ToArray();
        }
        var plain = EvalLosses();
        var smoothed = EvalLosses("--label-smoothing-factor", "0.1");
        Assert.That(Math.Abs(smoothed[0] - plain[0]), Is.GreaterThan(1e-3));
        Assert.That(smoothed[^1], Is.LessThan(smoothed[0]));
        Assert.That(Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--label-smoothing-factor", "1")).Error, Does.Contain("--label-smoothing-factor"));
    }
}
