using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training.Reward;

/// <summary>A classifier's prediction for each row of its eval data, as run_glue.py's do_predict writes them (one line a
/// row): JSON Lines with the file row, the label, the predicted class's name and the classes' probabilities (softmax of
/// the logits); a regression's predicted value. The model runs as exported (no training graph), on the batches the
/// evaluation scored.</summary>
public static class ClassifierPredictions
{
    public static void Write(OnnxModel model, TrainingData data, ClassLabels classes, string path)
    {
        var proto = model.Proto.Clone();
        Engine.TrainingGraph.TakeInt64BatchInputs(proto, new GraphEditor(proto.Graph)); // int32 tokens, float masks: fed as int64
        using var runnable = new OnnxModel(proto, source: model.Source);
        using var options = OrtRun.DefaultOptions();
        using var session = new InferenceSession(runnable.ToBytes(), options);
        var inputs = session.InputNames.ToList();
        var temporary = path + ".tmp";
        try
        {
            using (var writer = new StreamWriter(temporary))
                foreach (var batch in data.EvalBatches())
                {
                    var logits = OrtRun.Run(session, Trainer.ToEngine(batch).Feeds(inputs), ["logits"])["logits"].Floats;
                    for (int row = 0; row < batch.Sequences; row++)
                        writer.WriteLine(Line(batch, row, logits.AsSpan(row * classes.Count, classes.Count), classes).ToJsonString());
                }
            File.Move(temporary, path, overwrite: true);
        }
        finally { if (File.Exists(temporary)) File.Delete(temporary); }
    }

    static JsonObject Line(Data.Batch batch, int row, ReadOnlySpan<float> logits, ClassLabels classes)
    {
        var line = new JsonObject { ["row"] = batch.Rows[row] };
        if (classes.IsRegression)
        {
            line["label"] = batch.RowValues[row];
            line["prediction"] = logits[0];
            return line;
        }
        int label = (int)batch.Labels[Array.FindIndex(batch.Labels, row * batch.SeqLength, batch.SeqLength, l => l != ExampleEncoder.IgnoreIndex)];
        float max = float.NegativeInfinity;
        foreach (var z in logits) max = Math.Max(max, z);
        var exp = new double[logits.Length];
        for (int c = 0; c < logits.Length; c++) exp[c] = Math.Exp(logits[c] - max);
        double sum = exp.Sum();
        int predicted = Array.IndexOf(exp, exp.Max());
        line["label"] = classes.Name(label);
        line["prediction"] = classes.Name(predicted);
        line["probabilities"] = new JsonObject(Enumerable.Range(0, logits.Length).Select(c => KeyValuePair.Create(classes.Name(c), (JsonNode?)Math.Round(exp[c] / sum, 6))));
        return line;
    }
}
