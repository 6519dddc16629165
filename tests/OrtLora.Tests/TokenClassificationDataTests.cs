using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using OrtLora.Training.Reward;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>Token classification data and metrics: list columns read as pyarrow writes them (nullable elements or
/// not, null and empty lists), JSON arrays, datasets' ClassLabel names, words tokenized as run_ner.py tokenizes them
/// (is_split_into_words with a word's leading space, the first token labelled), and seqeval's metrics.</summary>
public class TokenClassificationDataTests
{
    sealed class NullableRow { public List<string?>? tokens { get; set; } public List<long?>? ner_tags { get; set; } }
    sealed class RequiredRow { public List<string>? words { get; set; } public List<int>? tags { get; set; } }

    static List<TokenClassificationRecord?> Rows(string path, out ParquetDataset file)
    {
        file = ParquetDataset.Open(path, DatasetFormat.TokenClassification);
        var rows = new List<TokenClassificationRecord?>();
        for (int g = 0; g < file.RowGroupCount; g++) rows.AddRange(file.ReadRowGroup(g).Cast<TokenClassificationRecord?>());
        return rows;
    }

    /// <summary>Lists with nullable elements (pyarrow's default) and required ones; a null list, an empty list and a
    /// null word skip their row (counted as null or empty), the others keep every word and label in order.</summary>
    [Test]
    public void ListColumnsAreReadWithTheirNullsAndEmptyLists()
    {
        var nullable = Shared.WriteParquet(new[]
        {
            new NullableRow { tokens = ["EU", "rejects", "German", "call"], ner_tags = [3, 0, 7, 0] },
            new NullableRow { tokens = null, ner_tags = null },
            new NullableRow { tokens = [], ner_tags = [] },
            new NullableRow { tokens = ["Peter", null], ner_tags = [1, 2] },
            new NullableRow { tokens = ["Blackburn"], ner_tags = [1] },
        }, "nullable.parquet");
        var rows = Rows(nullable, out var file);
        using (file)
        {
            Assert.That(rows.Select(r => r is null), Is.EqualTo(new[] { false, true, true, true, false }));
            Assert.That(rows[0]!.Words, Is.EqualTo(new[] { "EU", "rejects", "German", "call" }));
            Assert.That(rows[0]!.Labels, Is.EqualTo(new[] { "3", "0", "7", "0" }));
            Assert.That(rows[4]!.Words, Is.EqualTo(new[] { "Blackburn" }));
            Assert.That(file.Summary, Is.EqualTo(new DataSummary(5, 1, 2)));
            Assert.That(file.WordsColumn, Is.EqualTo("tokens"));
            Assert.That(file.LabelColumn, Is.EqualTo("ner_tags"));
            Assert.That(file.DeclaredClassNames("ner_tags"), Is.Null, "no datasets metadata");
            var classes = ClassLabels.From(file);
            Assert.That(classes.Count, Is.EqualTo(8), "integer tags are indices: the largest + 1");
        }
        var required = Shared.WriteParquet(new[]
        {
            new RequiredRow { words = ["a", "b"], tags = [0, 1] }, new RequiredRow { words = [], tags = [] }, new RequiredRow { words = ["c"], tags = [2] },
        }, "required.parquet");
        rows = Rows(required, out file);
        using (file)
        {
            Assert.That(rows.Select(r => r?.Words.Count ?? -1), Is.EqualTo(new[] { 2, -1, 1 }));
            Assert.That(rows[2]!.Labels, Is.EqualTo(new[] { "2" }));
            Assert.That((file.WordsColumn, file.LabelColumn), Is.EqualTo(("words", "tags")));
        }
        // many rows in several row groups: each group's levels start afresh
        var many = Enumerable.Range(0, 2500).Select(i => new NullableRow { tokens = [.. Enumerable.Range(0, i % 4 + 1).Select(w => $"w{i}.{w}")], ner_tags = [.. Enumerable.Range(0, i % 4 + 1).Select(w => (long?)(w % 3))] });
        var path = Path.Combine(Shared.TempDir(), "many.parquet");
        Parquet.Serialization.ParquetSerializer.SerializeAsync(many, path, new Parquet.ParquetOptions { RowGroupSize = 1000 }).GetAwaiter().GetResult();
        rows = Rows(path, out file);
        using (file)
        {
            Assert.That(file.RowGroupCount, Is.GreaterThan(1));
            Assert.That(rows, Has.Count.EqualTo(2500));
            Assert.That(rows[2003]!.Words, Is.EqualTo(new[] { "w2003.0", "w2003.1", "w2003.2", "w2003.3" }));
            Assert.That(rows[2003]!.Labels, Is.EqualTo(new[] { "0", "1", "2", "0" }));
        }
    }

    /// <summary>datasets' to_parquet keeps the features in the schema's "huggingface" metadata: a Sequence (or List) of
    /// ClassLabel names the tags, as run_ner takes features[label].names; JSON Lines arrays give names, sorted.</summary>
    [Test]
    public void ClassLabelNamesComeFromTheFileAndNamesAreSorted()
    {
        var dir = Shared.TempDir();
        var parquet = TokenClassificationTests.NerData(dir, "ner.parquet", 10, seed: 1);
        using (var file = ParquetDataset.Open(parquet, DatasetFormat.TokenClassification))
        {
            Assert.That(file.DeclaredClassNames("ner_tags"), Is.EqualTo(new[] { "O", "B-PER", "I-PER", "B-LOC", "I-LOC" }));
            var classes = ClassLabels.From(file);
            Assert.That(classes.Names, Is.EqualTo(new[] { "O", "B-PER", "I-PER", "B-LOC", "I-LOC" }));
            Assert.That(classes.Id("3", file.Path, 0), Is.EqualTo(3), "indices stay indices");
            Assert.That(classes.Id("B-LOC", file.Path, 0), Is.EqualTo(3), "a name finds its index");
            Assert.That(classes.Inside(1), Is.EqualTo(2), "B-PER's later tokens are I-PER");
            Assert.That(classes.Inside(0), Is.EqualTo(0));
            Assert.That(Assert.Throws<OrtLoraException>(() => ClassLabels.From(file, numLabels: 7))!.Message, Does.Contain("ClassLabel names 5 classes"));
        }
        var jsonl = TokenClassificationTests.NerData(dir, "ner.jsonl", 30, seed: 1);
        using (var file = ParquetDataset.Open(jsonl, DatasetFormat.TokenClassification))
            Assert.That(ClassLabels.From(file).Names, Is.EqualTo(new[] { "B-LOC", "B-PER", "I-LOC", "I-PER", "O" }));
        // a sequence classifier's ClassLabel too (GLUE's files carry theirs)
        var glue = Path.Combine(dir, "glue.parquet");
        var features = new JsonObject { ["info"] = new JsonObject { ["features"] = new JsonObject { ["label"] = new JsonObject { ["names"] = new JsonArray("negative", "positive"), ["_type"] = "ClassLabel" } } } };
        Parquet.Serialization.ParquetSerializer.SerializeAsync(new[] { new GlueRow { sentence = "fine", label = 1 }, new GlueRow { sentence = "bad", label = 0 } }, glue,
            customMetadata: new Dictionary<string, string> { ["huggingface"] = features.ToJsonString() }).GetAwaiter().GetResult();
        using (var file = ParquetDataset.Open(glue, DatasetFormat.Classification))
            Assert.That(ClassLabels.From(file).ToString(), Is.EqualTo("2 labels: 0 negative, 1 positive"));
    }

    sealed class GlueRow { public string? sentence { get; set; } public long label { get; set; } }

    /// <summary>tokenizer(words, is_split_into_words=True): each word encoded as it reads after a space, so the words'
    /// tokens are the sentence's (GPT-2 with add_prefix_space, Llama 2's SentencePiece word prefix); a word's first
    /// token holds its class, the rest -100 (or I-X with label_all_tokens), BOS -100; max_length cuts at the end.</summary>
    [Test]
    public void WordsAreTokenizedAsRunNerTokenizesThem()
    {
        string[] words = ["Peter", "Tchaikovsky", "visited", "Ouagadougou", "yesterday"];
        var classes = ClassLabels.Of(5, ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]);
        int[] labels = [1, 2, 0, 3, 0];
        var gpt2 = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        foreach (var (tokenizer, sentence) in new[] { (gpt2, " " + string.Join(" ", words)), (llama, string.Join(" ", words)) })
        {
            var (ids, tags, starts, cut) = TokenClassificationTokens.Encode(tokenizer, words, labels, 64, classes: classes);
            int offset = tokenizer.AddsBos ? 1 : 0;
            Assert.That(ids[offset..], Is.EqualTo(tokenizer.Encode(sentence)), tokenizer.Kind);
            Assert.That(cut, Is.False);
            if (tokenizer.AddsBos) Assert.That((ids[0], tags[0]), Is.EqualTo((tokenizer.BosId!.Value, -100)));
            Assert.That(starts.Select(s => tags[s]), Is.EqualTo(labels), "each word's first token holds its class");
            Assert.That(tags.Count(t => t != -100), Is.EqualTo(words.Length));
            var (_, all, _, _) = TokenClassificationTokens.Encode(tokenizer, words, labels, 64, labelAllTokens: true, classes: classes);
            for (int w = 0; w < words.Length; w++)
            {
                int end = w + 1 < words.Length ? starts[w + 1] : ids.Length;
                Assert.That(all[(starts[w] + 1)..end], Has.All.EqualTo(classes.Inside(labels[w])), $"{tokenizer.Kind}: '{words[w]}'");
            }
            Assert.That(ids.Length - offset, Is.GreaterThan(words.Length), $"{tokenizer.Kind}: some word is several tokens");
            var (short_, shortTags, shortStarts, shortCut) = TokenClassificationTokens.Encode(tokenizer, words, labels, offset + 3, classes: classes);
            Assert.That(short_, Has.Length.EqualTo(offset + 3));
            Assert.That(shortCut, Is.True);
            Assert.That(shortStarts.Last(), Is.EqualTo(-1), "a word cut away is not scored");
            Assert.That(shortTags.Count(t => t != -100), Is.EqualTo(shortStarts.Count(s => s >= 0)));
        }
    }

    static Training.Data.Batch Tagged(int[][] predicted, int[][] truth, out int[] predictions)
    {
        int length = truth.Max(r => r.Length) + 1; // an unlabelled token first, padding after
        var labels = Enumerable.Repeat(-100L, truth.Length * length).ToArray();
        predictions = new int[truth.Length * length];
        for (int r = 0; r < truth.Length; r++)
            for (int t = 0; t < truth[r].Length; t++)
            {
                labels[r * length + 1 + t] = truth[r][t];
                predictions[r * length + 1 + t] = predicted[r][t];
            }
        return new Training.Data.Batch(new long[labels.Length], new long[labels.Length], labels, truth.Length, length, new DataPosition(0, 0), []) { Sequences = truth.Length };
    }

    static Dictionary<string, double> Report(IClassifierMetrics metrics)
    {
        var record = new JsonObject();
        metrics.Report(record, "eval_");
        return record.ToDictionary(kv => kv.Key, kv => (double)kv.Value!);
    }

    /// <summary>seqeval's README example and get_entities' readings (IOB2, an I- after O opening a chunk, a type
    /// change closing one), micro-averaged over the rows' labelled tokens only.</summary>
    [Test]
    public void MetricsAreSeqevals()
    {
        Assert.That(TokenClassificationMetrics.Entities([["B-PER", "I-PER", "O", "B-LOC"]]), Is.EquivalentTo(new[] { ("PER", 0, 1), ("LOC", 3, 3) }));
        Assert.That(TokenClassificationMetrics.Entities([["I-PER", "I-PER", "O"]]), Is.EquivalentTo(new[] { ("PER", 0, 1) }));
        Assert.That(TokenClassificationMetrics.Entities([["B-PER", "I-LOC", "B-LOC", "B-LOC"]]), Is.EquivalentTo(new[] { ("PER", 0, 0), ("LOC", 1, 1), ("LOC", 2, 2), ("LOC", 3, 3) }));
        Assert.That(TokenClassificationMetrics.Entities([["B-PER"], ["I-PER"]]), Is.EquivalentTo(new[] { ("PER", 0, 0), ("PER", 2, 2) }), "rows end their chunks");

        // y_true = [[O, O, O, B-MISC, I-MISC, I-MISC, O], [B-PER, I-PER, O]]; y_pred = [[O, O, B-MISC, I-MISC, I-MISC, I-MISC, O], [B-PER, I-PER, O]]
        var classes = ClassLabels.Of(5, ["O", "B-MISC", "I-MISC", "B-PER", "I-PER"]);
        int[][] truth = [[0, 0, 0, 1, 2, 2, 0], [3, 4, 0]], predicted = [[0, 0, 1, 2, 2, 2, 0], [3, 4, 0]];
        var metrics = new TokenClassificationMetrics(classes);
        var batch = Tagged(predicted, truth, out var predictions);
        metrics.Add([.. predictions.Select(p => (float)p)], batch);
        var m = Report(metrics);
        Assert.That(m["eval_precision"], Is.EqualTo(0.5).Within(1e-12));
        Assert.That(m["eval_recall"], Is.EqualTo(0.5).Within(1e-12));
        Assert.That(m["eval_f1"], Is.EqualTo(0.5).Within(1e-12));
        Assert.That(m["eval_accuracy"], Is.EqualTo(0.8).Within(1e-12));
        // nothing predicted: precision and f1 0 (seqeval's zero_division); classes without names: accuracy alone
        var none = new TokenClassificationMetrics(classes);
        none.Add(new float[predictions.Length], batch);
        var n = Report(none);
        Assert.That((n["eval_precision"], n["eval_recall"], n["eval_f1"]), Is.EqualTo((0.0, 0.0, 0.0)));
        var indices = new TokenClassificationMetrics(ClassLabels.Of(5));
        indices.Add([.. predictions.Select(p => (float)p)], batch);
        Assert.That(Report(indices).Keys, Is.EquivalentTo(new[] { "eval_accuracy" }));
    }
}
