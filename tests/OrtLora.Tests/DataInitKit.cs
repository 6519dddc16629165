using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>What the tests of the inits that read the training data (EVA, CorDA) share: graphs/tiny injected with the
/// init, its demo data, and a plain ONNX Runtime run that reads one adapter's layer input, independent of the code
/// under test.</summary>
public static class DataInitKit
{
    public static string Injected(string init, params string[] options)
    {
        var path = Path.Combine(Shared.TempDir(), "lora.onnx");
        OrtloraOk(["inject", Tiny("model.onnx"), "-o", path, "--target-modules", "all-linear", "--init-lora-weights", init, .. options]);
        return path;
    }

    public static TrainingData DemoData() => TrainingData.Open(Tiny("demo.parquet"), TokenizerLoader.Load(Tiny("")),
        new DataOptions { BatchSize = 8, MaxSeqLength = 128, Seed = 42 });

    public static float[] Values(OnnxModel model, string name) => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == name));

    /// <summary>For each batch of the first epoch: the batch and the adapter's layer input [batch·sequence·in] flat, as
    /// the model computes it (the input of the MatMul with Aᵀ, made a graph output).</summary>
    public static IEnumerable<(Batch Batch, float[] Input)> LayerInputs(OnnxModel model, LoraAdapter adapter, TrainingData data)
    {
        var proto = model.Proto.Clone();
        var transpose = proto.Graph.Node.Single(n => n.OpType == "Transpose" && n.Input[0] == adapter.LoraA);
        var input = proto.Graph.Node.Single(n => n.OpType == "MatMul" && n.Input.Contains(transpose.Output[0])).Input[0];
        proto.Graph.Output.Add(new ValueInfoProto { Name = input });
        using var probe = new OnnxModel(proto, source: "probe");
        using var options = OrtRun.DefaultOptions();
        using var session = new InferenceSession(probe.ToBytes(), options);
        foreach (var batch in data.Batches(new DataPosition(0, 0)))
            yield return (batch, OrtRun.Run(session, batch.ToFeeds(withLabels: false), [input])[input].Floats);
    }
}

