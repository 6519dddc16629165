using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training.Reward;

/// <summary>A classifier's prediction for each row of a data file, as run_glue.py's do_predict writes them (one line a
/// row): JSON Lines with the file row, the row's label where it has one, the predicted class's name and the classes'
/// probabilities (softmax of the logits); a regression's predicted value; a multi-label classifier's predicted classes
/// and each class's own probability (sigmoid). Rows need no label (a test split's), so the
/// file is read here, tokenized as training tokenizes it, and the model runs as exported (no training graph).</summary>
public static class ClassifierPredictions
{
    /// <returns>the rows predicted</returns>
    public static int Write(OnnxModel model, string dataPath, TextTokenizer tokenizer, ClassLabels classes, DataOptions options, string path)
    {
        using var file = ParquetDataset.Open(dataPath, DatasetFormat.Classification, options.TextColumn, labelsOptional: true, options.LabelColumn, options.TextColumnNames, options.TextColumnDelimiter);
        return Predict(model, file, tokenizer, options, path, (chunk, writer, run) =>
        {
            // right padding (Batching.Pad), as the classifier reads each row's last non-pad token
            var logits = run([.. chunk.Select(r => Unlabelled(r.Index, r.Record))]).Logits;
            for (int r = 0; r < chunk.Length; r++)
                writer.WriteLine(Line(chunk[r].Index, (ClassificationRecord)chunk[r].Record, logits.AsSpan(r * classes.Count, classes.Count), classes).ToJsonString());
        });

        Sequence Unlabelled(long index, DataRecord record)
        {
            var row = record as ClassificationRecord ?? throw new OrtLoraException($"{dataPath}: row {index} is not a classification row");
            var ids = ClassificationTokens.Encode(tokenizer, row.Text, row.TextPair, options.MaxSeqLength).Ids;
            return new Sequence(ids, [.. ids.Select(_ => ExampleEncoder.IgnoreIndex)], index + 1, [index]);
        }
    }

    /// <summary>A token classifier's predictions, as run_ner.py's do_predict writes them (a line a row, a tag a word):
    /// JSON Lines with the file row, the words, their labels where the row has them, and each word's predicted class
    /// (its first token's arg-max; null for a word cut away by --max-length).</summary>
    /// <returns>the rows predicted</returns>
    public static int WriteTokens(OnnxModel model, string dataPath, TextTokenizer tokenizer, ClassLabels classes, DataOptions options, string path)
    {
        using var file = ParquetDataset.Open(dataPath, DatasetFormat.TokenClassification, options.TextColumn, labelsOptional: true, options.LabelColumn, options.TextColumnNames, options.TextColumnDelimiter);
        return Predict(model, file, tokenizer, options, path, (chunk, writer, run) =>
        {
            var rows = chunk.Select(r => (r.Index, Row: (TokenClassificationRecord)r.Record,
                Encoded: TokenClassificationTokens.Encode(tokenizer, ((TokenClassificationRecord)r.Record).Words, null, options.MaxSeqLength))).ToList();
            var (logits, length) = run([.. rows.Select(r => new Sequence(r.Encoded.Ids, r.Encoded.Labels, r.Index + 1, [r.Index]))]);
            for (int r = 0; r < rows.Count; r++)
            {
                var predicted = rows[r].Encoded.WordStarts.Select(start => start < 0 ? null
                    : (JsonNode?)classes.Name(ArgMax(logits.AsSpan((r * length + start) * classes.Count, classes.Count))));
                var line = new JsonObject { ["row"] = rows[r].Index, ["tokens"] = new JsonArray([.. rows[r].Row.Words.Select(w => (JsonNode?)w)]) };
                if (rows[r].Row.Labels.Count > 0) line["labels"] = new JsonArray([.. rows[r].Row.Labels.Select(l => (JsonNode?)l)]);
                line["predictions"] = new JsonArray([.. predicted]);
                writer.WriteLine(line.ToJsonString());
            }
        });
    }

    /// <summary>Runs the model as exported over the file's rows, EvalBatchSize a batch, and writes what
    /// <paramref name="write"/> makes of each batch's logits to <paramref name="path"/>, whole or not at all.</summary>
    /// <param name="write">a batch's rows, the writer, and the run: sequences in, the logits and the padded length out</param>
    /// <returns>the rows predicted</returns>
    static int Predict(OnnxModel model, ParquetDataset file, TextTokenizer tokenizer, DataOptions options, string path,
        Action<(long Index, DataRecord Record)[], StreamWriter, Func<List<Sequence>, (float[] Logits, int Length)>> write)
    {
        var proto = model.Proto.Clone();
        Engine.TrainingGraph.TakeInt64BatchInputs(proto, new GraphEditor(proto.Graph)); // int32 tokens, float masks: fed as int64
        using var runnable = new OnnxModel(proto, source: model.Source);
        using var sessionOptions = OrtRun.DefaultOptions();
        using var session = new InferenceSession(runnable.ToBytes(), sessionOptions);
        var inputs = session.InputNames.ToList();
        (float[], int) Run(List<Sequence> sequences)
        {
            var batch = Trainer.ToEngine(Batching.Pad(sequences, tokenizer.PadId, epoch: 0));
            return (OrtRun.Run(session, batch.Feeds(inputs), ["logits"])["logits"].Floats, batch.SequenceLength);
        }
        var temporary = path + ".tmp";
        int written = 0;
        try
        {
            using (var writer = new StreamWriter(temporary))
                foreach (var chunk in file.ReadAll().Chunk(Math.Max(1, options.EvalBatchSize)))
                {
                    write(chunk, writer, Run);
                    written += chunk.Length;
                }
            File.Move(temporary, path, overwrite: true);
        }
        finally { if (File.Exists(temporary)) File.Delete(temporary); }
        return written;
    }

    static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    static JsonObject Line(long row, ClassificationRecord record, ReadOnlySpan<float> logits, ClassLabels classes)
    {
        var label = record.Label;
        var line = new JsonObject { ["row"] = row };
        if (classes.IsMultiLabel)
        {
            // each class its own sigmoid; predicted where the logit is above 0 (probability above 0.5), as run_classification
            if (record.LabelSet is { } set) line["labels"] = new JsonArray([.. set.Select(l => (JsonNode?)l)]);
            var chosen = new JsonArray();
            for (int c = 0; c < logits.Length; c++) if (logits[c] > 0) chosen.Add(classes.Name(c));
            line["predictions"] = chosen;
            var sigmoid = new double[logits.Length];
            for (int c = 0; c < logits.Length; c++) sigmoid[c] = 1 / (1 + Math.Exp(-logits[c]));
            line["probabilities"] = new JsonObject(Enumerable.Range(0, logits.Length).Select(c => KeyValuePair.Create(classes.Name(c), (JsonNode?)Math.Round(sigmoid[c], 6))));
            return line;
        }
        if (classes.IsRegression)
        {
            if (label != "") line["label"] = double.TryParse(label, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) ? value : label;
            line["prediction"] = logits[0];
            return line;
        }
        float max = float.NegativeInfinity;
        foreach (var z in logits) max = Math.Max(max, z);
        var exp = new double[logits.Length];
        for (int c = 0; c < logits.Length; c++) exp[c] = Math.Exp(logits[c] - max);
        double sum = exp.Sum();
        if (label != "") line["label"] = label;
        line["prediction"] = classes.Name(Array.IndexOf(exp, exp.Max()));
        line["probabilities"] = new JsonObject(Enumerable.Range(0, logits.Length).Select(c => KeyValuePair.Create(classes.Name(c), (JsonNode?)Math.Round(exp[c] / sum, 6))));
        return line;
    }
}
