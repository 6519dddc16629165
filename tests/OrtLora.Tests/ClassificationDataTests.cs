using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using OrtLora.Training.Reward;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora classify`'s data and metrics: the classes run_glue.py finds in a label column, rows and text pairs
/// tokenized as tokenizer(text, text_pair, truncation=True) tokenizes them, show-data, and the GLUE metrics.</summary>
public class ClassificationDataTests
{
    static Training.Data.Batch Rows1(int[] classes, float[]? targets = null) =>
        new([.. classes.Select(_ => 1L)], [.. classes.Select(_ => 1L)], [.. classes.Select(c => (long)c)], classes.Length, 1, new DataPosition(0, 0), [])
        { Sequences = classes.Length, RowValues = targets ?? [] };

    static Dictionary<string, double> Report(ClassificationMetrics metrics)
    {
        var record = new JsonObject();
        metrics.Report(record, "eval_");
        return record.ToDictionary(kv => kv.Key, kv => (double)kv.Value!);
    }

    /// <summary>The GLUE metrics against values worked out by hand (sklearn's and scipy's definitions): binary F1 and
    /// MCC, the multiclass MCC, Pearson, and Spearman with tied ranks.</summary>
    [Test]
    public void MetricsAreGluesMetrics()
    {
        var binary = new ClassificationMetrics(ClassLabels.Of(2));
        binary.Add([0, 1, 1, 1, 0, 0], Rows1([0, 0, 1, 1, 1, 0]));
        var b = Report(binary);
        Assert.That(b["eval_accuracy"], Is.EqualTo(4.0 / 6).Within(1e-12));
        Assert.That(b["eval_f1"], Is.EqualTo(2.0 / 3).Within(1e-12)); // tp 2, fp 1, fn 1
        Assert.That(b["eval_matthews_correlation"], Is.EqualTo(1.0 / 3).Within(1e-12)); // (2·2 − 1·1) / √(3·3·3·3)
        var three = new ClassificationMetrics(ClassLabels.Of(3));
        three.Add([0, 1, 1, 0, 0, 2], Rows1([0, 1, 2, 0, 1, 2]));
        var t = Report(three);
        Assert.That(t.ContainsKey("eval_f1"), Is.False, "F1 of class 1 is for two classes");
        Assert.That(t["eval_matthews_correlation"], Is.EqualTo(12 / Math.Sqrt(22.0 * 24)).Within(1e-12)); // (4·6 − 12) / √((36 − 14)(36 − 12))
        var regression = new ClassificationMetrics(ClassLabels.Regression);
        regression.Add([1, 2, 3, 4], Rows1([0, 0, 0, 0], [1, 3, 2, 2]));
        var r = Report(regression);
        Assert.That(r["eval_pearson"], Is.EqualTo(1.0 / Math.Sqrt(5 * 2)).Within(1e-12));
        Assert.That(r["eval_spearmanr"], Is.EqualTo(1.5 / Math.Sqrt(5 * 4.5)).Within(1e-12)); // ranks of [1, 3, 2, 2]: 1, 4, 2.5, 2.5
        Assert.That(r.ContainsKey("eval_accuracy"), Is.False);
    }

    sealed class IntRow { public string? text { get; set; } public long? label { get; set; } }
    sealed class NameRow { public string? sentence { get; set; } public string? label { get; set; } }
    sealed class BoolRow { public string? text { get; set; } public bool label { get; set; } }
    sealed class FloatRow { public string? text { get; set; } public double label { get; set; } }

    /// <summary>run_glue.py's classes: integer labels are indices (num_labels the largest + 1, or --num-labels), names
    /// and booleans sorted; nulls are skipped; a label outside the classes, a float column, too few classes are one
    /// error each.</summary>
    [Test]
    public void ClassesAreFoundAsRunGlueFindsThem()
    {
        var ints = Shared.WriteParquet([new IntRow { text = "a", label = 3 }, new IntRow { text = "b", label = 0 }, new IntRow { text = "c", label = null }], "ints.parquet");
        using (var file = ParquetDataset.Open(ints, DatasetFormat.Classification))
        {
            var classes = ClassLabels.From(file);
            Assert.That((classes.Count, classes.Names), Is.EqualTo((4, (IReadOnlyList<string>?)null)));
            Assert.That(ClassLabels.From(file, numLabels: 6).Count, Is.EqualTo(6));
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file, numLabels: 3))!.Message, Does.Contain("label 3").And.Contain("ints.parquet"));
            Assert.That(file.ReadAll().Count(), Is.EqualTo(2), "the null label is skipped");
            Assert.That(Assert.Throws<OrtLoraException>(() => classes.Id("7", "ints.parquet", 5))!.Message, Does.Contain("row 5").And.Contain("'7'"));
        }
        var names = Shared.WriteParquet([new NameRow { sentence = "x", label = "pos" }, new NameRow { sentence = "y", label = "neg" }, new NameRow { sentence = "z", label = "neutral" }], "names.parquet");
        using (var file = ParquetDataset.Open(names, DatasetFormat.Classification))
        {
            Assert.That(file.ClassificationText, Is.EqualTo("sentence"), "GLUE's text column");
            var classes = ClassLabels.From(file);
            Assert.That(classes.Names, Is.EqualTo(new[] { "neg", "neutral", "pos" }));
            Assert.That(classes.Id("pos", names, 0), Is.EqualTo(2));
            Assert.That(ClassLabels.FromId2LabelJson(classes.Id2LabelJson(), "m").Names, Is.EqualTo(classes.Names));
            Assert.That(Assert.Throws<OrtLoraException>(() => classes.Id("great", names, 1))!.Message, Does.Contain("'great'").And.Contain("neg, neutral, pos"));
        }
        var bools = Shared.WriteParquet([new BoolRow { text = "a", label = true }, new BoolRow { text = "b", label = false }], "bools.parquet");
        using (var file = ParquetDataset.Open(bools, DatasetFormat.Classification))
            Assert.That(ClassLabels.From(file).Names, Is.EqualTo(new[] { "false", "true" }));
        // run_glue's is_regression: a float column, or num_labels 1; JSON Lines numbers that are not all integers
        var floats = Shared.WriteParquet([new FloatRow { text = "a", label = 1 }, new FloatRow { text = "b", label = 2 }], "floats.parquet");
        using (var file = ParquetDataset.Open(floats, DatasetFormat.Classification))
        {
            Assert.That(ClassLabels.From(file).IsRegression, Is.True, "a float column, integral values or not");
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file, numLabels: 2))!.Message, Does.Contain("regression"));
        }
        using (var file = ParquetDataset.Open(ints, DatasetFormat.Classification))
            Assert.That(ClassLabels.From(file, numLabels: 1).IsRegression, Is.True);
        using (var file = ParquetDataset.Open(names, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file, numLabels: 1))!.Message, Does.Contain("numeric labels").And.Contain("is not one"));
        var jsonl = Path.Combine(Shared.TempDir(), "scores.jsonl");
        File.WriteAllLines(jsonl, ["{\"text\": \"a\", \"label\": 3.8}", "{\"text\": \"b\", \"label\": 1}"]);
        using (var file = ParquetDataset.Open(jsonl, DatasetFormat.Classification))
        {
            var classes = ClassLabels.From(file);
            Assert.That(classes.IsRegression, Is.True);
            Assert.That(classes.Target("3.8", jsonl, 0), Is.EqualTo(3.8f));
            Assert.That(Assert.Throws<OrtLoraException>(() => classes.Target("NaN", jsonl, 4))!.Message, Does.Contain("row 4"));
        }
        var unlabelled = Shared.WriteParquet([new IntRow { text = "a", label = 1 }, new IntRow { text = "b", label = -1 }], "test.parquet");
        using (var file = ParquetDataset.Open(unlabelled, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file))!.Message, Does.Contain("label -1").And.Contain("test.parquet"));
        var ids = Shared.WriteParquet([new IntRow { text = "a", label = 1 }, new IntRow { text = "b", label = 7_000_000 }], "ids.parquet");
        using (var file = ParquetDataset.Open(ids, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file))!.Message, Does.Contain("label 7000000"));
        var one = Shared.WriteParquet([new IntRow { text = "a", label = 0 }], "one.parquet");
        using (var file = ParquetDataset.Open(one, DatasetFormat.Classification))
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file))!.Message, Does.Contain("at least 2 classes"));
    }

    /// <summary>Rows are tokenized as tokenizer(text, truncation=True, max_length): BOS where the tokenizer adds one
    /// (Llama 2's), the text cut so the whole fits; the class sits at the last token, -100 elsewhere.</summary>
    [Test]
    public void RowsAreTokenizedWithTheClassAtTheLastToken()
    {
        var text = "The movie was wonderful, and the music was even better than the story.";
        var path = Shared.WriteParquet([new NameRow { sentence = text, label = "pos" }, new NameRow { sentence = "Dull.", label = "neg" }], "rows.parquet");
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        using (var data = TrainingData.Open(path, llama, new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = 64 }))
        {
            var examples = data.FileExamples().Select(e => e.Example!).ToList();
            Assert.That(examples[0].InputIds, Is.EqualTo(new[] { llama.BosId!.Value }.Concat(llama.Encode(text))));
            Assert.That(examples[0].Labels[..^1], Is.All.EqualTo(-100));
            Assert.That((examples[0].Labels[^1], examples[1].Labels[^1]), Is.EqualTo((1, 0)), "neg 0, pos 1");
        }
        using (var data = TrainingData.Open(path, llama, new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = 5 }))
        {
            var cut = data.FileExamples().First().Example!;
            Assert.That(cut.InputIds, Is.EqualTo(new[] { llama.BosId!.Value }.Concat(llama.Encode(text).Take(4))));
            Assert.That(data.Describe(), Does.Contain("1 cut to 5 tokens").And.Contain("2 labels: 0 neg, 1 pos"));
        }
    }

    sealed class PairRow { public string? sentence1 { get; set; } public string? sentence2 { get; set; } public int label { get; set; } }

    /// <summary>GLUE's text pairs (sentence1/sentence2) as tokenizer(text, text_pair) encodes them: Llama 2's template
    /// BOS A BOS B, GPT-2's A B; truncation longest_first cuts the longer text, a tie the second.</summary>
    [Test]
    public void TextPairsAreEncodedAsTheTokenizerEncodesPairs()
    {
        string a = "The cat sat on the warm mat all afternoon long.", b = "A cat rested.";
        var path = Shared.WriteParquet([new PairRow { sentence1 = a, sentence2 = b, label = 1 }, new PairRow { sentence1 = "x", sentence2 = null, label = 0 }], "pairs.parquet");
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        int bos = llama.BosId!.Value;
        var (ia, ib) = (llama.Encode(a), llama.Encode(b));
        using (var data = TrainingData.Open(path, llama, new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = 64 }))
        {
            Assert.That(data.Train.ClassificationTextPair, Is.EqualTo("sentence2"));
            var examples = data.FileExamples().ToList();
            Assert.That(examples, Has.Count.EqualTo(1), "the row with a null sentence2 is skipped");
            Assert.That(examples[0].Example!.InputIds, Is.EqualTo(new[] { bos }.Concat(ia).Append(bos).Concat(ib)));
            Assert.That(examples[0].Example!.Labels[^1], Is.EqualTo(1));
        }
        int fit = ib.Length + 4 + 2; // room for b and 4 more tokens: both texts are cut
        using (var data = TrainingData.Open(path, llama, new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = fit }))
        {
            var ids = data.FileExamples().Single().Example!.InputIds;
            Assert.That(ids, Has.Length.EqualTo(fit));
            // longest_first: a loses tokens until it is as short as b, then b (a tie cuts the second) and a by turns
            int room = fit - 2, keptB = Math.Min(ib.Length, room / 2), keptA = room - keptB;
            Assert.That(keptB, Is.LessThan(ib.Length), "b is cut too");
            Assert.That(ids, Is.EqualTo(new[] { bos }.Concat(ia.Take(keptA)).Append(bos).Concat(ib.Take(keptB))));
        }
        var gpt2 = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        using (var data = TrainingData.Open(path, gpt2, new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = 64 }))
            Assert.That(data.FileExamples().Single().Example!.InputIds, Is.EqualTo(gpt2.Encode(a).Concat(gpt2.Encode(b))));
    }

    /// <summary>run_classification's text_column_names: the columns joined, in the order given, by text_column_delimiter
    /// into one text (no pair); a null in any of them skips the row; a missing column or another format is an error.</summary>
    [Test]
    public void TextColumnNamesJoinColumnsIntoOneText()
    {
        string a = "The cat sat on the warm mat.", b = "A cat rested.";
        var path = Shared.WriteParquet([new PairRow { sentence1 = a, sentence2 = b, label = 1 }, new PairRow { sentence1 = "x", sentence2 = null, label = 0 }], "joined.parquet");
        var gpt2 = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        var options = new DataOptions { Format = DatasetFormat.Classification, MaxSeqLength = 64, TextColumnNames = ["sentence2", "sentence1"], TextColumnDelimiter = " | " };
        using (var data = TrainingData.Open(path, gpt2, options))
        {
            Assert.That(data.Train.ClassificationTextPair, Is.Null, "joined, not a pair");
            var example = data.FileExamples().Single(); // the row with a null sentence2 is skipped
            Assert.That(example.Example!.InputIds, Is.EqualTo(gpt2.Encode(b + " | " + a)));
            Assert.That(example.Example.Labels[^1], Is.EqualTo(1));
        }
        Assert.That(Assert.Throws<OrtLoraException>(() => TrainingData.Open(path, gpt2, options with { TextColumnNames = ["sentence1", "premise"] }).Dispose())!.Message,
            Does.Contain("joined.parquet").And.Contain("'premise'").And.Contain("--text-column-names"));
        Assert.That(Assert.Throws<OrtLoraException>(() => TrainingData.Open(path, gpt2, options with { Format = DatasetFormat.Text }).Dispose())!.Message,
            Does.Contain("--text-column-names is for classification data"));
        var shown = OrtloraOk("show-data", path, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--dataset-format", "classification",
            "--text-column-names", "sentence2, sentence1", "--text-column-delimiter", " | ").Out;
        Assert.That(shown, Does.Contain(b + " | " + a));
    }

    /// <summary>`show-data --dataset-format classification` prints each row whole with its class; --dataset-text-field
    /// names another text column.</summary>
    [Test]
    public void ShowDataShowsEachRowsClass()
    {
        var path = Shared.WriteParquet([new NameRow { sentence = "The song was great.", label = "pos" }, new NameRow { sentence = "Dull.", label = "neg" }], "show.parquet");
        var shown = OrtloraOk("show-data", path, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--dataset-format", "classification",
            "--dataset-text-field", "sentence").Out;
        Assert.That(shown, Does.Contain("classification data (2 labels: 0 neg, 1 pos)"));
        Assert.That(shown, Does.Contain("row 0: ").And.Contain("label 1 (pos)\nThe song was great.".Replace("\n", Environment.NewLine)));
        Assert.That(shown, Does.Contain("label 0 (neg)"));
    }
}
