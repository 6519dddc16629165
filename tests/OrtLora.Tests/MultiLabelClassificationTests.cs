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

/// <summary>Multi-label classification (`ortlora classify` on lists of labels: run_classification.py's multi-label
/// data, problem_type multi_label_classification): BCEWithLogits against each row's multi-hot classes on plain runs of
/// the classifier, its gradients against central differences, the data's lists, the metrics, and the command end to end.</summary>
public class MultiLabelClassificationTests
{
    const int Rows = 4, Length = 10, Classes = 3;
    static readonly int[] RowLengths = [10, 7, 9, 4];
    static readonly float[] RowTargets = [1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1];

    static OnnxModel InjectedClassifier(string path)
    {
        var model = OnnxModel.Load(path);
        SequenceClassifier.FromCausalLm(model, padId: 0, 0.02, seed: 1, numLabels: Classes);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, ModulesToSave = [SequenceClassifier.ScoreModule], TaskType = "SEQ_CLS" });
        RandomizeB(model, std: 0.3f);
        var score = model.Graph.Initializer.Single(t => ModulesToSave.IsWeight(t.Name));
        var rng = new Random(5);
        Tensors.SetRaw(score, Tensors.FloatsToBytes(model.ReadFloats(score).Select(_ => (float)(rng.NextDouble() - 0.5) * 4).ToArray(), score.DataType));
        return model;
    }

    /// <summary>Four right-padded rows, each marked at its last token (label 0), their classes multi-hot in the row
    /// values; <paramref name="rows"/> &gt; 4 adds filler rows (one attended pad, no label, classes all 1 to be ignored).</summary>
    static Batch MultiLabelBatch(int rows = Rows, int vocab = 500)
    {
        var rng = new Random(11);
        var ids = new long[rows * Length];
        var mask = new long[rows * Length];
        var labels = Enumerable.Repeat(-100L, rows * Length).ToArray();
        for (int row = 0; row < Rows; row++)
        {
            for (int t = 0; t < RowLengths[row]; t++) { ids[row * Length + t] = rng.Next(1, vocab); mask[row * Length + t] = 1; }
            labels[row * Length + RowLengths[row] - 1] = 0;
        }
        for (int row = Rows; row < rows; row++) mask[row * Length] = 1;
        return new Batch(ids, mask, labels, rows, Length) { RowValues = [.. RowTargets, .. Enumerable.Repeat(1f, (rows - Rows) * Classes)] };
    }

    /// <summary>torch's BCEWithLogitsLoss (mean over rows and classes), and the rows whose every class is right.</summary>
    static (double Loss, int Right) Bce(float[] logits)
    {
        double loss = 0;
        int right = 0;
        for (int row = 0; row < Rows; row++)
        {
            bool all = true;
            for (int c = 0; c < Classes; c++)
            {
                double z = logits[row * Classes + c], t = RowTargets[row * Classes + c];
                loss += (-t * Math.Log(1 / (1 + Math.Exp(-z))) - (1 - t) * Math.Log(1 - 1 / (1 + Math.Exp(-z)))) / (Rows * Classes);
                all &= z > 0 == t > 0.5;
            }
            right += all ? 1 : 0;
        }
        return (loss, right);
    }

    [Test]
    public void LossIsBceWithLogitsAndGradientsMatchCentralDifferences()
    {
        using var model = InjectedClassifier(Tiny("model.onnx"));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true, MultiLabel: true));
        Assert.That(session.Graph.BatchInputs, Has.Member(ClassificationLoss.MultiLabelTargetsInput));
        var batch = MultiLabelBatch();
        var logits = ClassificationTests.PlainLogits(model, batch);
        var (expected, right) = Bce(logits);
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));
        Assert.That(Math.Abs(expected - Math.Log(2)), Is.GreaterThan(1e-2), "the head is not at chance");
        Assert.That(correct, Is.EqualTo(right));
        Assert.That(session.LastSequenceLogps, Is.EqualTo(logits.Select(z => z > 0 ? 1f : 0f)), "each row's classes predicted, multi-hot");
        Assert.That(session.Evaluate(MultiLabelBatch(rows: Rows + 2)).Loss, Is.EqualTo(loss).Within(1e-6), "filler rows count for nothing");
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var (_, gradients) = session.ComputeGradients(batch);
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains("score"), step: 1e-3f);
        Assert.That(Assert.Throws<OrtLoraException>(() => new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: 0.1, Classification: true, MultiLabel: true)))!.Message,
            Does.Contain("BCE"));
    }

    static IEnumerable<Unseen.Architecture> UnseenExports() => Unseen.Architectures.All.Where(a => a.Trainable);

    /// <summary>Every trainable export style of the Unseen set trains as a multi-label classifier: finite loss, a head
    /// gradient, and a loss that falls in 5 steps.</summary>
    [TestCaseSource(nameof(UnseenExports))]
    public void EveryExportStyleTrainsMultiLabel(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        SequenceClassifier.FromCausalLm(model, padId: 0, initializerRange: 0.5, seed: 1, numLabels: Classes);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, ModulesToSave = [SequenceClassifier.ScoreModule] });
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Classification: true, MultiLabel: true));
        var batch = MultiLabelBatch(vocab: (int)Unseen.Architectures.Vocab) is var b && b.SequenceLength > 6 ? ClassificationTests.Shorten(b, 6, Rows, _ => 0) : b;
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(double.IsFinite(loss), Is.True);
        Assert.That(gradients.Where(kv => kv.Key.Contains("score")).Sum(kv => kv.Value.Sum(x => (double)x * x)), Is.GreaterThan(0));
        for (int i = 0; i < 5; i++) session.Step(batch, 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(0.9 * loss));
    }

    /// <summary>run_classification's multi-label metric (f1, micro over every row's every class) and sklearn's subset
    /// accuracy, against values worked out by hand.</summary>
    [Test]
    public void MetricsAreMicroF1AndSubsetAccuracy()
    {
        var metrics = new ClassificationMetrics(ClassLabels.Of(3, multiLabel: true));
        // true {0, 2}, {}, {1}; predicted {0}, {1}, {1}: tp 2, fp 1, fn 1; one row exactly right
        var batch = new Training.Data.Batch([1, 1, 1], [1, 1, 1], [0, 0, 0], 3, 1, new DataPosition(0, 0), []) { Sequences = 3, RowValues = [1, 0, 1, 0, 0, 0, 0, 1, 0] };
        metrics.Add([1, 0, 0, 0, 1, 0, 0, 1, 0], batch);
        var record = new JsonObject();
        metrics.Report(record, "eval_");
        Assert.That((double)record["eval_f1"]!, Is.EqualTo(2 * 2.0 / (2 * 2 + 1 + 1)).Within(1e-12));
        Assert.That((double)record["eval_accuracy"]!, Is.EqualTo(1.0 / 3).Within(1e-12));
    }

    sealed class IdsRow { public string? text { get; set; } public List<long?>? labels { get; set; } }
    sealed class NamesRow { public string? text { get; set; } public List<string>? label { get; set; } }
    sealed class MultiHotRow { public string? text { get; set; } public List<double>? labels { get; set; } }
    sealed class MixedRow { public string? text { get; set; } public string? labels { get; set; } }

    /// <summary>A list-typed label column is multi-label: integer lists are class indices, name lists sorted names,
    /// float lists multi-hot; an empty list is a row with no class; a null list skips the row; soft or ragged multi-hot
    /// lists, and a file mixing lists with single labels, are one error each.</summary>
    [Test]
    public void ListsOfLabelsAreMultiLabel()
    {
        var ids = Shared.WriteParquet([new IdsRow { text = "a", labels = [0, 3] }, new IdsRow { text = "b", labels = [] }, new IdsRow { text = "c", labels = null }], "ids.parquet");
        using (var file = ParquetDataset.Open(ids, DatasetFormat.Classification))
        {
            Assert.That(file.LabelIsList, Is.True);
            var classes = ClassLabels.From(file);
            Assert.That((classes.IsMultiLabel, classes.Count, classes.ProblemType), Is.EqualTo((true, 4, "multi_label_classification")));
            var rows = file.ReadAll().Select(r => (ClassificationRecord)r.Record).ToList();
            Assert.That(rows, Has.Count.EqualTo(2), "the null list is skipped, the empty one kept");
            Assert.That(classes.Targets(rows[0].LabelSet!, file.Path, 0), Is.EqualTo(new float[] { 1, 0, 0, 1 }));
            Assert.That(classes.Targets(rows[1].LabelSet!, file.Path, 1), Is.EqualTo(new float[4]));
        }
        var names = Shared.WriteParquet([new NamesRow { text = "a", label = ["sports", "food"] }, new NamesRow { text = "b", label = ["music"] }], "names.parquet");
        using (var file = ParquetDataset.Open(names, DatasetFormat.Classification))
            Assert.That(ClassLabels.From(file).ToString(), Is.EqualTo("3 labels (multi-label): 0 food, 1 music, 2 sports"));
        // multi-hot floats (run_classification's multi_labels_to_ids, stored): num_labels is their length, even where no row has the last class
        var multiHot = Shared.WriteParquet([new MultiHotRow { text = "a", labels = [1.0, 0.0, 0.0] }, new MultiHotRow { text = "b", labels = [0.0, 1.0, 0.0] }], "multihot.parquet");
        using (var file = ParquetDataset.Open(multiHot, DatasetFormat.Classification))
        {
            var classes = ClassLabels.From(file);
            Assert.That((classes.IsMultiLabel, classes.Count), Is.EqualTo((true, 3)));
            var rows = file.ReadAll().Select(r => (ClassificationRecord)r.Record).ToList();
            Assert.That(classes.Targets(rows[1].LabelSet!, file.Path, 1), Is.EqualTo(new float[] { 0, 1, 0 }));
        }
        var soft = Shared.WriteParquet([new MultiHotRow { text = "a", labels = [0.5, 0.0] }], "soft.parquet");
        using (var file = ParquetDataset.Open(soft, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => file.ReadAll().ToList())!.Message, Does.Contain("soft.parquet: row 0").And.Contain("0 or 1"));
        var ragged = Shared.WriteParquet([new MultiHotRow { text = "a", labels = [1.0, 0.0] }, new MultiHotRow { text = "b", labels = [1.0] }], "ragged.parquet");
        using (var file = ParquetDataset.Open(ragged, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => file.ReadAll().ToList())!.Message, Does.Contain("ragged.parquet: row 1").And.Contain("other rows have 2"));
        var dir = Shared.TempDir();
        var mixed = Path.Combine(dir, "mixed.jsonl");
        File.WriteAllLines(mixed, [new JsonObject { ["text"] = "a", ["labels"] = new JsonArray("x", "y") }.ToJsonString(), new JsonObject { ["text"] = "b", ["labels"] = "x" }.ToJsonString()]);
        using (var file = ParquetDataset.Open(mixed, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file))!.Message, Does.Contain("1 rows hold lists of labels and 1 one label"));
    }

    /// <summary>Texts naming up to three topics, each topic a class of its own (["sports", "food"]), as JSON Lines.</summary>
    static string TopicData(string dir, string name, int rows, int seed)
    {
        var topics = new (string Name, string[] Words)[] { ("sports", ["football", "tennis", "soccer"]), ("music", ["guitar", "piano", "song"]), ("food", ["pizza", "pasta", "salad"]) };
        var rng = new Random(seed);
        var path = Path.Combine(dir, name);
        File.WriteAllLines(path, Enumerable.Range(0, rows).Select(_ =>
        {
            var chosen = topics.Where(_ => rng.NextDouble() < 0.45).ToList();
            var words = chosen.Select(t => t.Words[rng.Next(3)]).OrderBy(_ => rng.Next()).ToList();
            return new JsonObject { ["text"] = $"Today we talked about {(words.Count == 0 ? "nothing" : string.Join(" and ", words))}.",
                ["labels"] = new JsonArray([.. chosen.Select(t => (JsonNode?)t.Name)]) }.ToJsonString();
        }));
        return path;
    }

    /// <summary>`ortlora classify` on lists of topics: a multi-label classifier whose micro f1 ends over 0.95; the merged
    /// config.json says multi_label_classification; the merged model and the base with the adapter evaluate as training
    /// did; --predictions lists each row's classes, whose exact matches are the subset accuracy.</summary>
    [Test]
    public void ClassifyTrainsAMultiLabelClassifier()
    {
        var dir = Shared.TempDir();
        var train = TopicData(dir, "train.jsonl", 240, seed: 1);
        var eval = TopicData(dir, "eval.jsonl", 60, seed: 2);
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("classify", Tiny("model.onnx"), "--data", train, "--eval-data", eval, "-o", output, "--target-modules", "all-linear",
            "--num-train-epochs", "3", "--learning-rate", "2e-3", "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("3 labels (multi-label): 0 food, 1 music, 2 sports"));
        var evals = File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That((double)evals[0]["eval_accuracy"]!, Is.LessThan(0.5));
        Assert.That((double)evals[^1]["eval_f1"]!, Is.GreaterThan(0.95));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan(0.2 * (double)evals[0]["eval_loss"]!));
        var mergedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "merged", "config.json")))!;
        Assert.That((string?)mergedConfig["problem_type"], Is.EqualTo("multi_label_classification"));
        double last = (double)evals[^1]["eval_loss"]!, accuracy = (double)evals[^1]["eval_accuracy"]!;
        var merged = Path.Combine(output, "merged", "model.onnx");
        ClassificationTests.AssertEvaluationsMatch([["eval", merged, "--data", eval], ["eval", Tiny("model.onnx"), "--adapter", output, "--data", eval]],
            last, "eval_accuracy", accuracy, 1e-9, "60 rows classified");
        var predictions = Path.Combine(Shared.TempDir(), "predictions.jsonl");
        OrtloraOk("eval", merged, "--data", eval, "--predictions", predictions);
        var lines = File.ReadAllLines(predictions).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(lines.Count(l => l["labels"]!.AsArray().Select(n => (string?)n).Order().SequenceEqual(l["predictions"]!.AsArray().Select(n => (string?)n).Order())) / 60.0,
            Is.EqualTo(accuracy).Within(1e-9));
        foreach (var line in lines)
            Assert.That(line["probabilities"]!.AsObject().Where(p => (double)p.Value! > 0.5).Select(p => p.Key), Is.EquivalentTo(line["predictions"]!.AsArray().Select(n => (string?)n)));
    }
}
