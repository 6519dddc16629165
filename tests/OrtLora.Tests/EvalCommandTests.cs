using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora eval`: the loss `train` reports on its eval data, recomputed from the model files alone.</summary>
public class EvalCommandTests
{
    static double EvalLoss(params string[] args) => Eval(args).Loss;

    static (double Loss, double Accuracy) Eval(params string[] args)
    {
        var result = OrtloraOk(["eval", .. args]);
        var match = Regex.Match(result.Out, @"eval_loss (\d+\.\d+)  perplexity (\d+\.\d+)  mean_token_accuracy (\d\.\d+)  \((\d+) tokens scored");
        Assert.That(match.Success, result.Out);
        double loss = double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
        Assert.That(double.Parse(match.Groups[2].Value, CultureInfo.InvariantCulture), Is.EqualTo(Math.Exp(loss)).Within(0.01).Percent);
        Assert.That(int.Parse(match.Groups[4].Value), Is.GreaterThan(100));
        return (loss, double.Parse(match.Groups[3].Value, CultureInfo.InvariantCulture));
    }

    /// <summary>The base model gives train's step-0 eval loss; the merged model train's last one (the eval printed to 4
    /// decimals); the batch size changes nothing (token-weighted).</summary>
    [Test]
    public void EvalReproducesTheLossesTrainReported()
    {
        var dir = Shared.TempDir();
        OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--target-modules", "all-linear", "--r", "4", "--per-device-train-batch-size", "4", "--learning-rate", "5e-3",
            "--max-steps", "10", "--eval-steps", "10", "--plain-log", "--merge", "-o", dir);
        var evals = EvalLosses(dir);
        Assert.That(evals, Has.Length.EqualTo(2));
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet")), Is.EqualTo(evals[0]).Within(1e-4));
        var merged = Path.Combine(dir, "merged", "model.onnx");
        var (trained, accuracy) = Eval(merged, "--data", Tiny("demo_eval.parquet"));
        Assert.That(trained, Is.EqualTo(evals[1]).Within(1e-4));
        // TRL's eval_mean_token_accuracy, logged by train and printed by eval, from the same model.
        var logged = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["eval_mean_token_accuracy"] is not null).Select(m => m["eval_mean_token_accuracy"]!.GetValue<double>()).ToArray();
        Assert.That(logged, Has.Length.EqualTo(2));
        Assert.That(accuracy, Is.EqualTo(logged[1]).Within(1e-4));
        Assert.That(logged[1], Is.GreaterThan(logged[0]), "training raised it");
        var training = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["loss"] is not null && m["step"] is not null).Select(m => m["mean_token_accuracy"]!.GetValue<double>()).ToArray();
        Assert.That(training, Is.Not.Empty.And.All.InRange(0.0, 1.0), "the training steps' accuracy, logged with their loss");
        Assert.That(trained, Is.LessThan(evals[0] - 1));
        Assert.That(EvalLoss(merged, "--data", Tiny("demo_eval.parquet"), "--per-device-eval-batch-size", "3"), Is.EqualTo(trained).Within(1e-5));
        // Padded to one shape with static-shape graphs (how eval runs on the GPU machine's plugin): the same numbers.
        string[] padded = ["--data", Tiny("demo_eval.parquet"), "--pad-to-max-length", "--max-seq-length", "128"];
        Assert.That(Eval([merged, .. padded]), Is.EqualTo((trained, accuracy)));
        Assert.That(OrtloraOk(["eval", merged, .. padded]).Out, Does.Contain("every batch padded to [8, 128]; graphs loaded for that shape"));
        // The base model with the trained adapter directory, injected in memory.
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--adapter", dir), Is.EqualTo(trained).Within(1e-4));
        var injected = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", injected);
        var twice = Ortlora("eval", injected, "--data", Tiny("demo_eval.parquet"), "--tokenizer", Path.GetDirectoryName(Tiny("model.onnx"))!, "--adapter", dir);
        Assert.That(twice.ExitCode, Is.Not.Zero);
        Assert.That(twice.Error, Does.Contain("already has LoRA adapters; --adapter is for a plain (or merged) model"));
    }

    [Test]
    public void BadInputIsOneError()
    {
        var missing = Ortlora("eval", Tiny("model.onnx"), "--data", Path.Combine(Shared.TempDir(), "none.parquet"));
        Assert.That(missing.ExitCode, Is.Not.Zero);
        Assert.That(missing.Error, Does.Contain("none.parquet"));
        var column = Ortlora("eval", Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--dataset-format", "text", "--text-column", "nope");
        Assert.That(column.ExitCode, Is.Not.Zero);
        Assert.That(column.Error, Does.Contain("nope"));
        var batch = Ortlora("eval", Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--per-device-eval-batch-size", "0");
        Assert.That(batch.ExitCode, Is.Not.Zero);
        Assert.That(batch.Error, Does.Contain("--per-device-eval-batch-size"));
    }
}
