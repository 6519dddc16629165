using System.Text.Json.Nodes;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using OrtLora.Training.Reward;
using static OrtLora.Tests.LoraTestKit;
using Batch = OrtLora.Training.Engine.Batch;

namespace OrtLora.Tests;

/// <summary>Sequence classification (`ortlora classify`: AutoModelForSequenceClassification with num_labels &gt; 1 and
/// the Trainer, PEFT's SEQ_CLS): the head [num_labels, hidden] on a causal LM export, the cross-entropy
/// (<see cref="ClassificationLoss"/>) against its formula on plain runs of the classifier, its gradients against central
/// differences, the data's classes and tokens, and the command end to end.</summary>
public class ClassificationTests
{
    const int Rows = 4, Length = 10, Classes = 3;
    static readonly int[] RowClasses = [0, 2, 1, 2];
    static readonly int[] RowLengths = [10, 7, 9, 4];

    static OnnxModel InjectedClassifier(string path, long padId, int classes = Classes)
    {
        var model = OnnxModel.Load(path);
        SequenceClassifier.FromCausalLm(model, padId, 0.02, seed: 1, numLabels: classes);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, ModulesToSave = [SequenceClassifier.ScoreModule], TaskType = "SEQ_CLS" });
        RandomizeB(model, std: 0.3f);
        var score = model.Graph.Initializer.Single(t => ModulesToSave.IsWeight(t.Name));
        var rng = new Random(5);
        Tensors.SetRaw(score, Tensors.FloatsToBytes(model.ReadFloats(score).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), score.DataType));
        return model;
    }

    /// <summary>Four rows of different lengths, right-padded with <paramref name="pad"/>, each row's class at its last
    /// token and -100 elsewhere, as `classify` labels them; <paramref name="rows"/> &gt; 4 adds filler rows.</summary>
    static Batch ClassBatch(long pad, int rows = Rows, int vocab = 500)
    {
        var rng = new Random(11);
        var ids = Enumerable.Repeat(pad, rows * Length).ToArray();
        var mask = new long[rows * Length];
        var labels = Enumerable.Repeat(-100L, rows * Length).ToArray();
        for (int row = 0; row < Rows; row++)
        {
            for (int t = 0; t < RowLengths[row]; t++) { ids[row * Length + t] = rng.Next(1, vocab); mask[row * Length + t] = 1; }
            labels[row * Length + RowLengths[row] - 1] = RowClasses[row];
        }
        for (int row = Rows; row < rows; row++) mask[row * Length] = 1; // filler rows: one attended pad token, no label
        return new Batch(ids, mask, labels, rows, Length);
    }

    /// <summary>Each `ortlora eval` run prints training's last eval_loss and <paramref name="metric"/> (within
    /// <paramref name="tolerance"/>), and <paramref name="says"/>.</summary>
    internal static void AssertEvaluationsMatch(IEnumerable<string[]> runs, double loss, string metric, double value, double tolerance, string says)
    {
        foreach (var args in runs)
        {
            var result = OrtloraOk(args).Out;
            double Value(string key) => double.Parse(result.Split(key + " ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            Assert.That(Value("eval_loss"), Is.EqualTo(loss).Within(2e-4), string.Join(' ', args));
            Assert.That(Value(metric), Is.EqualTo(value).Within(tolerance), string.Join(' ', args));
            Assert.That(result, Does.Contain(says));
        }
    }

    /// <summary>The model's logits for the batch, run as exported (no training graph).</summary>
    internal static float[] PlainLogits(OnnxModel model, Batch batch)
    {
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape), ["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape),
        };
        if (model.Graph.Input.Any(i => i.Name == "position_ids"))
            feeds["position_ids"] = HostTensor.Of(Enumerable.Range(0, batch.InputIds.Length).Select(i => (long)(i % batch.SequenceLength)).ToArray(), batch.Shape);
        return OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
    }

    /// <summary>transformers' CrossEntropyLoss over the rows, with the Trainer's LabelSmoother when ε &gt; 0:
    /// (1 − ε)·nll + ε·mean over the classes of −log p.</summary>
    static (double Loss, int Right) CrossEntropy(float[] logits, double smoothing)
    {
        double loss = 0;
        int right = 0;
        for (int row = 0; row < Rows; row++)
        {
            var z = logits.AsSpan(row * Classes, Classes).ToArray().Select(v => (double)v).ToArray();
            double max = z.Max(), logSum = max + Math.Log(z.Sum(v => Math.Exp(v - max)));
            var logp = z.Select(v => v - logSum).ToArray();
            loss += ((1 - smoothing) * -logp[RowClasses[row]] + smoothing * -logp.Average()) / Rows;
            right += Array.IndexOf(z, z.Max()) == RowClasses[row] ? 1 : 0;
        }
        return (loss, right);
    }

    [TestCase(0.0)]
    [TestCase(0.1)]
    public void LossAndAccuracyEqualTheCrossEntropyOfPlainLogits(double smoothing)
    {
        using var model = InjectedClassifier(Tiny("model.onnx"), padId: 511);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: smoothing, Classification: true));
        var batch = ClassBatch(511);
        var logits = PlainLogits(model, batch);
        Assert.That(logits, Has.Length.EqualTo(Rows * Classes));
        var (expected, right) = CrossEntropy(logits, smoothing);
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));
        Assert.That(Math.Abs(expected - Math.Log(Classes)), Is.GreaterThan(1e-2), "the head separates the classes");
        Assert.That(correct, Is.EqualTo(right));
        Assert.That(right, Is.InRange(1, Rows - 1), "some rows right, some wrong: the count is tested");
    }

    [TestCase(0.0)]
    [TestCase(0.1)]
    public void GradientsMatchCentralDifferences(double smoothing)
    {
        using var model = InjectedClassifier(Tiny("model.onnx"), padId: 511);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: smoothing, Classification: true));
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var batch = ClassBatch(511);
        var (_, gradients) = session.ComputeGradients(batch);
        Assert.That(gradients.Keys, Has.Some.Contains("score"));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains("score"));
    }

    /// <summary>The fixtures' real exports turned into 3-class classifiers: the backward runs through each exporter's
    /// attention and GPT-2's fused c_attn to the head, and matches central differences.</summary>
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void RealExportsTrainAsClassifiers(string arch, string file)
    {
        using var model = InjectedClassifier(Shared.Peft(arch, file), padId: 0);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true));
        var batch = ClassBatch(0, vocab: 300);
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(CrossEntropy(PlainLogits(model, batch), 0).Loss).Within(1e-5 * Math.Max(1, loss)));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains(".h.0.") || p.Contains("score"), step: 1e-3f);
    }

    /// <summary>A batch padded to a fixed shape ends in filler rows: they change neither the loss, nor the rows counted
    /// right, nor the gradients.</summary>
    [Test]
    public void FillerRowsCountForNothing()
    {
        using var model = InjectedClassifier(Tiny("model.onnx"), padId: 511);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true));
        var (loss, gradients) = session.ComputeGradients(ClassBatch(511));
        var (paddedLoss, paddedGradients) = session.ComputeGradients(ClassBatch(511, rows: Rows + 2));
        Assert.That(paddedLoss, Is.EqualTo(loss).Within(1e-6));
        foreach (var (name, g) in gradients) Assert.That(Shared.MaxAbsDiff(paddedGradients[name], g), Is.LessThan(1e-6), name);
        Assert.That(session.Evaluate(ClassBatch(511, rows: Rows + 2)).CorrectTokens, Is.EqualTo(session.Evaluate(ClassBatch(511)).CorrectTokens));
    }

    static IEnumerable<Unseen.Architecture> UnseenExports() => Unseen.Architectures.All.Where(a => a.Trainable);

    /// <summary>Every trainable export style of the Unseen set (fused projections, Gemm heads, KV caches, opset-23
    /// attention, ORT GenAI builder graphs, float16 weights or activations, quantized heads, int32 tokens) turns into a
    /// 3-class classifier whose logits are [batch, 3], whose head gets a gradient and whose loss falls in 5 steps.</summary>
    [TestCaseSource(nameof(UnseenExports))]
    public void EveryExportStyleTrainsAsAClassifier(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        SequenceClassifier.FromCausalLm(model, padId: 0, initializerRange: 0.5, seed: 1, numLabels: Classes);
        Assert.That(SequenceClassifier.NumLabels(model), Is.EqualTo(Classes));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, ModulesToSave = [SequenceClassifier.ScoreModule] });
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true));
        var batch = ClassBatch(0, vocab: (int)Unseen.Architectures.Vocab) is var b && b.SequenceLength > 6 ? Shorten(b, 6, Rows, r => RowClasses[r]) : b;
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(double.IsFinite(loss), Is.True);
        Assert.That(gradients.Where(kv => kv.Key.Contains("score")).Sum(kv => kv.Value.Sum(x => (double)x * x)), Is.GreaterThan(0));
        for (int i = 0; i < 5; i++) session.Step(batch, 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(0.9 * loss));
    }

    /// <summary>The batch's first <paramref name="length"/> positions, each of its first <paramref name="rows"/> rows'
    /// label (<paramref name="labelOf"/>) moved to its last kept token; the row values kept.</summary>
    internal static Batch Shorten(Batch batch, int length, int rows, Func<int, long> labelOf)
    {
        long[] Take(long[] values) => [.. Enumerable.Range(0, batch.BatchSize).SelectMany(r => values.Skip(r * batch.SequenceLength).Take(length))];
        var mask = Take(batch.AttentionMask);
        var labels = Enumerable.Repeat(-100L, batch.BatchSize * length).ToArray();
        for (int r = 0; r < rows; r++)
            labels[r * length + (int)mask.Skip(r * length).Take(length).Sum() - 1] = labelOf(r);
        return new Batch(Take(batch.InputIds), mask, labels, batch.BatchSize, length) { RowValues = batch.RowValues };
    }

    /// <summary>A regression (num_labels 1): the loss is the mean squared error to each row's target, fed per row, and
    /// its gradients match central differences; filler rows count for nothing.</summary>
    [Test]
    public void RegressionIsTheMeanSquaredError()
    {
        using var model = InjectedClassifier(Tiny("model.onnx"), padId: 511, classes: 1);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true));
        Assert.That(session.Graph.BatchInputs, Has.Member(ClassificationLoss.TargetsInput));
        float[] targets = [0.5f, -1.25f, 2, 0.75f];
        var batch = ClassBatch(511) is var b ? b with { Labels = [.. b.Labels.Select(l => l == -100 ? l : 0)], RowValues = targets } : null!;
        var outputs = PlainLogits(model, batch);
        double expected = Enumerable.Range(0, Rows).Average(r => (outputs[r] - targets[r]) * (double)(outputs[r] - targets[r]));
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));
        Assert.That(correct, Is.Zero, "a regression has no class to be right about");
        Assert.That(session.LastSequenceLogps, Is.EqualTo(outputs).Within(1e-5), "the predictions are the outputs");
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var (_, gradients) = session.ComputeGradients(batch);
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains("score"));
        var padded = ClassBatch(511, rows: Rows + 2) is var pb ? pb with { Labels = [.. pb.Labels.Select(l => l == -100 ? l : 0)], RowValues = [.. targets, 9, 9] } : null!;
        Assert.That(session.Evaluate(padded).Loss, Is.EqualTo(loss).Within(1e-6), "filler rows' targets count for nothing");
        Assert.That(Assert.Throws<OrtLoraException>(() => new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: 0.1, Classification: true)))!.Message,
            Does.Contain("regression"));
    }

    /// <summary>Three-class data a word decides ("The game was awful." is negative), as JSON Lines with label names.</summary>
    static string SentimentData(string dir, string name, int rows, int seed)
    {
        string[][] words = [["good", "great", "lovely", "wonderful"], ["bad", "awful", "terrible", "boring"], ["okay", "average", "fine", "plain"]];
        string[] labels = ["positive", "negative", "neutral"], things = ["movie", "book", "meal", "song", "game", "show"];
        var rng = new Random(seed);
        var path = Path.Combine(dir, name);
        File.WriteAllLines(path, Enumerable.Range(0, rows).Select(_ =>
        {
            int c = rng.Next(3);
            return new JsonObject { ["text"] = $"The {things[rng.Next(things.Length)]} was {words[c][rng.Next(4)]}.", ["label"] = labels[c] }.ToJsonString();
        }));
        return path;
    }

    /// <summary>`ortlora classify` on the embedded tiny model: the causal LM becomes a 3-class classifier whose adapters
    /// and head learn the task (eval accuracy from chance to over 0.95), the adapter is PEFT's SEQ_CLS form with a score
    /// [3, hidden], the merged folder's config.json names the classes, and the merged classifier, the base with the
    /// adapter and the adapter merged by `merge --adapter` all evaluate as training's last evaluation.</summary>
    [Test]
    public void ClassifyTrainsMergesAndEvaluates()
    {
        var dir = Shared.TempDir();
        var train = SentimentData(dir, "train.jsonl", 240, seed: 1);
        var eval = SentimentData(dir, "eval.jsonl", 60, seed: 2);
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("classify", Tiny("model.onnx"), "--data", train, "--eval-data", eval, "-o", output, "--target-modules", "all-linear",
            "--num-train-epochs", "2", "--learning-rate", "2e-3", "--eval-steps", "30", "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("score head [3, hidden]").And.Contain("3 labels: 0 negative, 1 neutral, 2 positive"));
        var records = File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var evals = records.Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That((double)evals[0]["eval_accuracy"]!, Is.LessThan(0.6), "a fresh head is near chance");
        Assert.That((double)evals[^1]["eval_accuracy"]!, Is.GreaterThan(0.95));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan(0.5 * (double)evals[0]["eval_loss"]!));
        Assert.That(evals.Any(r => r.ContainsKey("perplexity")), Is.False, "a classifier's loss has no perplexity");

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.That((string?)config["task_type"], Is.EqualTo("SEQ_CLS"));
        var score = SafeTensors.Read(Path.Combine(output, "adapter_model.safetensors"))["base_model.model.score.weight"];
        Assert.That(score.Shape[0], Is.EqualTo(3));
        var merged = Path.Combine(output, "merged", "model.onnx");
        var mergedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "merged", "config.json")))!;
        Assert.That((string?)mergedConfig["id2label"]!["2"], Is.EqualTo("positive"));
        Assert.That((int?)mergedConfig["label2id"]!["negative"], Is.EqualTo(0));

        double last = (double)evals[^1]["eval_loss"]!, accuracy = (double)evals[^1]["eval_accuracy"]!;
        var mergedAgain = Path.Combine(Shared.TempDir(), "model.onnx");
        OrtloraOk("merge", Tiny("model.onnx"), "--adapter", output, "-o", mergedAgain);
        foreach (var file in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" }) File.Copy(Tiny(file), Path.Combine(Path.GetDirectoryName(mergedAgain)!, file));
        AssertEvaluationsMatch([["eval", merged, "--data", eval], ["eval", Tiny("model.onnx"), "--adapter", output, "--data", eval], ["eval", mergedAgain, "--data", eval]],
            last, "eval_accuracy", accuracy, 1e-9, "60 rows classified");
        var generate = Ortlora("generate", merged, "--prompt", "Hello");
        Assert.That(generate.Error, Does.Contain("sequence classifier"));

        // run_glue's do_predict: each row's label, predicted class and probabilities, which agree with the accuracy
        var predictions = Path.Combine(Shared.TempDir(), "predictions.jsonl");
        Assert.That(OrtloraOk("eval", merged, "--data", eval, "--predictions", predictions).Out, Does.Contain("predictions: " + predictions));
        var lines = File.ReadAllLines(predictions).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(lines.Select(l => (int)l["row"]!), Is.EqualTo(Enumerable.Range(0, 60)));
        Assert.That(lines.Count(l => (string?)l["label"] == (string?)l["prediction"]) / 60.0, Is.EqualTo(accuracy).Within(1e-9));
        foreach (var line in lines)
        {
            var probabilities = line["probabilities"]!.AsObject();
            Assert.That(probabilities.Select(p => p.Key), Is.EqualTo(new[] { "negative", "neutral", "positive" }));
            Assert.That(probabilities.Sum(p => (double)p.Value!), Is.EqualTo(1).Within(1e-5));
            Assert.That(probabilities.MaxBy(p => (double)p.Value!).Key, Is.EqualTo((string?)line["prediction"]));
        }
        // a test split: the same texts without a label column, or labelled -1 as datasets mark unlabelled rows; predicted, not scored
        var texts = File.ReadAllLines(eval).Select(l => JsonNode.Parse(l)!["text"]!.GetValue<string>()).ToList();
        var unlabelled = Path.Combine(Shared.TempDir(), "test.jsonl");
        File.WriteAllLines(unlabelled, texts.Select(t => new JsonObject { ["text"] = t }.ToJsonString()));
        var glueTest = Path.Combine(Shared.TempDir(), "glue_test.jsonl");
        File.WriteAllLines(glueTest, texts.Select(t => new JsonObject { ["text"] = t, ["label"] = -1 }.ToJsonString()));
        foreach (var test in new[] { unlabelled, glueTest })
        {
            var testPredictions = Path.Combine(Shared.TempDir(), "test_predictions.jsonl");
            Assert.That(OrtloraOk("eval", merged, "--data", test, "--predictions", testPredictions).Out, Does.Contain("60 rows predicted, without labels"));
            var predicted = File.ReadAllLines(testPredictions).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
            Assert.That(predicted.Select(l => (string?)l["prediction"]), Is.EqualTo(lines.Select(l => (string?)l["prediction"])), test);
            Assert.That(predicted.Any(l => l.ContainsKey("label")), Is.EqualTo(test == glueTest), "a -1 label is written as it is");
        }
        var unscored = Ortlora("eval", merged, "--data", unlabelled);
        Assert.That(unscored.Error, Does.Contain("no labels to score").And.Contain("--predictions"));
        var causal = Ortlora("eval", Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--predictions", Path.Combine(Shared.TempDir(), "p.jsonl"));
        Assert.That(causal.Error, Does.Contain("--predictions").And.Contain("a causal LM"));
    }

    sealed class ScoredPairRow { public string? sentence1 { get; set; } public string? sentence2 { get; set; } public double label { get; set; } }

    /// <summary>`ortlora classify` on STS-B-shaped data (sentence pairs, a float score): a regression whose held-out
    /// Pearson correlation ends over 0.95; the merged config.json says regression; the merged model and the base with
    /// the adapter evaluate as training's last evaluation, with no --dataset-format needed.</summary>
    [Test]
    public void ClassifyTrainsARegressionOnSentencePairs()
    {
        var words = new Dictionary<string, double> { ["awful"] = 0.5, ["bad"] = 1.5, ["okay"] = 2.5, ["good"] = 3.5, ["great"] = 4.5 };
        string Write(string name, int rows, int seed)
        {
            var rng = new Random(seed);
            return Shared.WriteParquet(Enumerable.Range(0, rows).Select(_ => words.ElementAt(rng.Next(words.Count)))
                .Select(w => new ScoredPairRow { sentence1 = $"The meal was {w.Key}.", sentence2 = "How good was it?", label = w.Value }).ToList(), name);
        }
        var (train, eval) = (Write("train.parquet", 160, 1), Write("eval.parquet", 40, 2));
        Assert.That(OrtloraOk("show-data", train, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--dataset-format", "classification", "--rows", "4").Out,
            Does.Contain("regression (num_labels 1)").And.Match("tokens, target [0-9.]+\\s+The meal was"));
        var output = Shared.TempDir();
        var run = OrtloraOk("classify", Tiny("model.onnx"), "--data", train, "--eval-data", eval, "-o", output, "--target-modules", "all-linear",
            "--num-train-epochs", "3", "--learning-rate", "2e-3", "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("regression (num_labels 1)").And.Contain("score head [1, hidden]"));
        var evals = File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That((double)evals[^1]["eval_pearson"]!, Is.GreaterThan(0.95));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan(0.1 * (double)evals[0]["eval_loss"]!));
        Assert.That(evals[^1].ContainsKey("eval_accuracy"), Is.False);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "merged", "config.json")))!;
        Assert.That((string?)config["problem_type"], Is.EqualTo("regression"));
        Assert.That((string?)config["id2label"]!["0"], Is.EqualTo("LABEL_0"));
        double last = (double)evals[^1]["eval_loss"]!, pearson = (double)evals[^1]["eval_pearson"]!;
        AssertEvaluationsMatch([["eval", Path.Combine(output, "merged", "model.onnx"), "--data", eval], ["eval", Tiny("model.onnx"), "--adapter", output, "--data", eval]],
            last, "eval_pearson", pearson, 1e-4, "40 rows scored");
        var predictions = Path.Combine(output, "predictions.jsonl");
        OrtloraOk("eval", Path.Combine(output, "merged", "model.onnx"), "--data", eval, "--predictions", predictions);
        var lines = File.ReadAllLines(predictions).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(lines, Has.Count.EqualTo(40));
        double mse = lines.Average(l => Math.Pow((double)l["prediction"]! - (double)l["label"]!, 2));
        Assert.That(mse, Is.EqualTo(last).Within(1e-4), "the predictions' squared error is the eval loss");
    }

    /// <summary>A classifier's run resumes from a checkpoint byte for byte (the head is in the checkpoint), also with
    /// EVA, which reads every attended token of a classifier's rows (their one label marks no tokens); gradient
    /// accumulation weighs micro-batches by rows, so two micro-batches of 4 rows give one batch of 8's step.</summary>
    [Test]
    public void ResumesAndAccumulatesByRows()
    {
        var data = SentimentData(Shared.TempDir(), "train.jsonl", 40, seed: 4);
        string[] Args(string dir, params string[] extra) => ["classify", Tiny("model.onnx"), "--data", data, "-o", dir, "--max-steps", "4",
            "--save-steps", "2", "--learning-rate", "2e-3", "--plain-log", .. extra];
        AssertResumedRunEndsLikeStraight(dir => Args(dir), "checkpoint-4");
        var (eva, _) = AssertResumedRunEndsLikeStraight(dir => Args(dir, "--init-lora-weights", "eva", "--per-device-train-batch-size", "16"), "checkpoint-4");
        Assert.That((string?)JsonNode.Parse(File.ReadAllText(Path.Combine(eva, "adapter_config.json")))!["init_lora_weights"], Is.EqualTo("eva"));

        var (whole, halves) = (Shared.TempDir(), Shared.TempDir());
        string[] Once(string dir, params string[] extra) => ["classify", Tiny("model.onnx"), "--data", data, "-o", dir, "--max-steps", "1", "--learning-rate", "2e-3",
            "--plain-log", "--dataloader-drop-last", .. extra];
        OrtloraOk(Once(whole, "--per-device-train-batch-size", "8"));
        OrtloraOk(Once(halves, "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"));
        var (a, b) = (SafeTensors.Read(Path.Combine(whole, "adapter_model.safetensors")), SafeTensors.Read(Path.Combine(halves, "adapter_model.safetensors")));
        foreach (var (name, tensor) in a)
            Assert.That(Shared.MaxAbsDiff(tensor.AsFloats(), b[name].AsFloats()), Is.LessThan(1e-5), name);
    }

    /// <summary>A one-token row holds its class in column 0, which the causal LM's count of scored tokens leaves out: a
    /// classifier's evaluation and accumulation count rows instead.</summary>
    [Test]
    public void OneTokenRowsCount()
    {
        var dir = Shared.TempDir();
        var data = Path.Combine(dir, "letters.jsonl");
        File.WriteAllLines(data, "abcdefghij".Select((c, i) => new JsonObject { ["text"] = c.ToString(), ["label"] = i % 2 }.ToJsonString()));
        var tokenizer = TokenizerLoader.Load(Tiny(""));
        Assert.That("abcdefghij".Select(c => tokenizer.Encode(c.ToString()).Length), Is.All.EqualTo(1), "each row one token");
        var output = Path.Combine(dir, "out");
        OrtloraOk("classify", Tiny("model.onnx"), "--data", data, "--eval-data", data, "-o", output, "--max-steps", "2", "--merge", "--plain-log",
            "--per-device-train-batch-size", "5");
        var evals = File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That(evals, Has.Count.EqualTo(2));
        Assert.That((double)evals[^1]["eval_accuracy"]!, Is.InRange(0.0, 1.0));
        Assert.That(double.IsFinite((double)evals[^1]["eval_loss"]!), Is.True);
        Assert.That(OrtloraOk("eval", Path.Combine(output, "merged", "model.onnx"), "--data", data).Out, Does.Contain("10 rows classified"));
    }

    [Test]
    public void MisuseIsOneClearError()
    {
        var dir = Shared.TempDir();
        var data = SentimentData(dir, "train.jsonl", 12, seed: 3);
        var sft = Ortlora("classify", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "a"), "--max-steps", "1");
        Assert.That(sft.ExitCode, Is.Not.Zero);
        Assert.That(sft.Error, Does.Contain("demo.parquet").And.Contain("no text column"));
        var asSft = Ortlora("train", Tiny("model.onnx"), "--data", data, "--dataset-format", "classification", "-o", Path.Combine(dir, "b"), "--max-steps", "1");
        Assert.That(asSft.Error, Does.Contain("ortlora classify"));
        var fewer = Ortlora("classify", Tiny("model.onnx"), "--data", data, "-o", Path.Combine(dir, "c"), "--num-labels", "2", "--max-steps", "1");
        Assert.That(fewer.Error, Does.Contain("3 label names").And.Contain("--num-labels is 2"));
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", injected);
        var again = Ortlora("classify", injected, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--data", data, "-o", Path.Combine(dir, "d"), "--max-steps", "1");
        Assert.That(again.Error, Does.Contain("plain export"));
        var causalEval = Ortlora("eval", Tiny("model.onnx"), "--data", data, "--dataset-format", "classification");
        Assert.That(causalEval.Error, Does.Contain("a causal LM").And.Contain("ortlora classify"));
        using var causal = OnnxModel.Load(Tiny("model.onnx"));
        LoraInjector.Inject(causal, new LoraConfig { R = 2 });
        var error = Assert.Throws<OrtLoraException>(() => new TrainingSession(causal, new TrainingSessionOptions(new AdamWOptions(), Classification: true)))!;
        Assert.That(error.Message, Does.Contain("num_labels").And.Contain("a causal LM"));
        foreach (var sub in new[] { "a", "b", "c", "d" }) Assert.That(Directory.Exists(Path.Combine(dir, sub, "merged")), Is.False);
    }
}
