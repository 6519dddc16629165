using System.Text.Json.Nodes;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora quantize` (WeightQuantizer) and training on its output, QLoRA-style.</summary>
public class LoraQuantizeTests
{
    /// <summary>Every linear layer but the tied head is stored quantized and still found under its PEFT name; each
    /// dequantized weight is within half a quantization step of the float one (its own scale); the model's logits stay
    /// near the float model's (relative RMS error; random weights make these worst cases).</summary>
    [TestCase(4, 0.3)] [TestCase(8, 0.03)]
    public void QuantizedWeightsRoundToTheirGridAndKeepTheLayers(int bits, double logitTolerance)
    {
        using var floats = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        using var model = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        int quantized = WeightQuantizer.Apply(model, bits);
        var before = LinearLayers.Find(new GraphEditor(floats.Graph)).Where(l => !l.Tied).ToList();
        Assert.That(quantized, Is.EqualTo(before.Count).And.EqualTo(28));
        var g = new GraphEditor(model.Graph);
        var after = LinearLayers.Find(g);
        Assert.That(after.Select(l => l.Module), Is.EquivalentTo(LinearLayers.Find(new GraphEditor(floats.Graph)).Select(l => l.Module)));
        Assert.That(GraphEditor.OpHistogram(model.Graph).GetValueOrDefault("Transpose"), Is.LessThan(GraphEditor.OpHistogram(floats.Graph)["Transpose"] - 27),
            "weights read through a Transpose are stored transposed");
        foreach (var layer in after.Where(l => l.Dequantize is not null))
        {
            var original = before.Single(l => l.Module == layer.Module);
            var w = floats.ReadFloats(new GraphEditor(floats.Graph).Initializer(original.Weight)!);
            var dq = Dequantize.Run(model, g, layer.Dequantize!);
            // The float weight is [out, in] (dynamo), the quantized one [in, out]: compare element by element.
            var scales = model.ReadFloats(g.Initializer(layer.Dequantize!.Input[1])!);
            float worst = 0;
            for (long o = 0; o < layer.Out; o++)
                for (long i = 0; i < layer.In; i++)
                    worst = Math.Max(worst, Math.Abs(w[o * layer.In + i] - dq[i * layer.Out + o]));
            Assert.That(worst, Is.LessThanOrEqualTo(scales.Max() * 0.5001f), layer.Module);
            Assert.That(worst, Is.GreaterThan(0), "quantized, not copied");
        }
        var reference = OrtRun.Run(floats, TinyFeeds(), ["logits"])["logits"].Floats;
        var logits = OrtRun.Run(model, TinyFeeds(), ["logits"])["logits"].Floats;
        double Rms(IEnumerable<double> v) => Math.Sqrt(v.Average(x => x * x));
        double relative = Rms(logits.Zip(reference, (a, b) => (double)a - b)) / Rms(reference.Select(x => (double)x));
        TestContext.Out.WriteLine($"{bits} bits: logits' RMS error {relative:P2} of their RMS");
        Assert.That(relative, Is.LessThan(logitTolerance).And.GreaterThan(logitTolerance / 100));
        Assert.That(model.Opset(), Is.EqualTo(bits == 4 ? 21 : LlamaGraph.Opset), "4-bit types need opset 21");
    }

    /// <summary>The backward widens its own copy of each quantized weight (after the layer's output gradient): the
    /// forward's DequantizeLinear feeds only the forward MatMul, so ONNX Runtime frees (or fuses) it at once.</summary>
    [Test]
    public void TheBackwardDequantizesItsOwnWeights()
    {
        using var model = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        WeightQuantizer.Apply(model, 4);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        using var graph = TrainingGraph.Build(model);
        var g = new GraphEditor(graph.Gradients.Graph);
        var dequantizers = graph.Gradients.Graph.Node.Where(n => n.OpType == "DequantizeLinear").ToList();
        var forward = dequantizers.Where(n => !n.Name.Contains("rewiden")).ToList();
        var backward = dequantizers.Where(n => n.Name.Contains("rewiden")).ToList();
        Assert.That(forward, Has.Count.EqualTo(28));
        Assert.That(backward, Has.Count.EqualTo(25), "every layer but layer 0's q, k, v, whose input needs no gradient");
        foreach (var dq in forward)
            Assert.That(g.Consumers(dq.Output[0]).Select(c => c.OpType), Is.EqualTo(new[] { "MatMul" }), dq.Name);
        foreach (var dq in backward)
            Assert.That(g.Producer(dq.Input[1])!.Name, Does.StartWith("grad/rewiden/Add"), "the scale waits for the gradient");
    }

    /// <summary>As a user runs it: quantize the embedded model to 4 bits, train all-linear adapters on it, merge. The
    /// merged model (dequantized weights plus the deltas) scores what the adapter on the quantized base scores, and
    /// training lowered the eval loss about as much as on the float model.</summary>
    [Test]
    public void QuantizeTrainMergeEval()
    {
        string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);
        var dir = Shared.TempDir();
        foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json", "config.json" }) File.Copy(Tiny(f), Path.Combine(dir, f));
        var quantized = Path.Combine(dir, "model.onnx");
        var result = OrtloraOk("quantize", Tiny("model.onnx"), "-o", quantized, "--bits", "4");
        Assert.That(result.Out, Does.Contain("28 linear layers in 4 bits"));
        Assert.That(new FileInfo(quantized).Length, Is.LessThan(new FileInfo(Tiny("model.onnx")).Length / 3));
        Assert.That(OrtloraOk("inspect", quantized).Out, Does.Contain("model.layers.0.self_attn.q_proj  MatMul  128  128  [in,out] uint4/32"));
        string[] Train(string model, string output) => ["train", model, "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--tokenizer", Path.GetDirectoryName(Tiny("vocab.json"))!, "--target-modules", "all-linear", "--r", "8", "--learning-rate", "5e-3",
            "--max-steps", "20", "--plain-log", "-o", output];
        var q = Path.Combine(dir, "q");
        OrtloraOk([.. Train(quantized, q), "--merge"]);
        var f32 = Path.Combine(dir, "f");
        OrtloraOk(Train(Tiny("model.onnx"), f32));
        var (qe, fe) = (EvalLosses(q), EvalLosses(f32));
        Assert.That(qe[0], Is.EqualTo(fe[0]).Within(0.05), "the quantized base scores near the float one");
        Assert.That(qe[^1], Is.LessThan(qe[0] - 4), "it trains");
        Assert.That(qe[^1], Is.EqualTo(fe[^1]).Within(0.3), "about as well as on float weights");
        string Eval(params string[] args) => OrtloraOk(["eval", .. args, "--data", Tiny("demo_eval.parquet"), "--tokenizer", Path.GetDirectoryName(Tiny("vocab.json"))!]).Out.Split("  ")[0];
        var merged = Path.Combine(q, "merged", "model.onnx");
        Assert.That(Eval(merged), Is.EqualTo(Eval(quantized, "--adapter", q)));
        Assert.That(Eval(merged), Is.EqualTo($"eval_loss {qe[^1]:F4}"));
        Assert.That(GraphEditor.OpHistogram(OnnxModel.Load(merged).Graph).GetValueOrDefault("DequantizeLinear"), Is.Zero, "merged layers hold float weights");

        var refused = Ortlora("quantize", Tiny("model.onnx"), "-o", Path.Combine(dir, "x.onnx"), "--bits", "4", "--block-size", "24");
        Assert.That(refused.ExitCode, Is.Not.Zero);
        Assert.That(refused.Error, Does.Contain("block size 24"));
        Assert.That(File.Exists(Path.Combine(dir, "x.onnx")), Is.False);
    }

    /// <summary>Activations quantized too (static QDQ: QuantizeLinear + DequantizeLinear on a layer's input): no gradient
    /// goes through the rounding, and the error says which models train.</summary>
    [Test]
    public void ActivationQuantizationIsRefusedWithTheWayOut()
    {
        using var model = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        var g = new GraphEditor(model.Graph);
        var down = LinearLayers.Find(g).First(l => l.Module.EndsWith("layers.1.mlp.down_proj"));
        var scale = g.AddInitializer(Tensors.Scalar(g.Unique("act_scale"), 0.05, (int)global::Onnx.TensorProto.Types.DataType.Float));
        var q = g.Add("QuantizeLinear", [down.Input, scale], name: "act/QuantizeLinear");
        var dq = g.Add("DequantizeLinear", [q, scale], name: "act/DequantizeLinear");
        g.ReplaceUses(down.Input, dq, g.Producer(q)!);
        g.TopologicalSort();
        var error = Assert.Throws<OrtLoraException>(() => Training.Engine.TrainingGraph.Build(model).Dispose());
        Assert.That(error!.Message, Does.Contain("QuantizeLinear").And.Contain("weights only are quantized"));
    }
}
