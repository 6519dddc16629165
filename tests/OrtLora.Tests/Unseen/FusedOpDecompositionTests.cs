using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests.Unseen;

/// <summary>The primitive-op form of ONNX Attention (used for gradients) against ONNX Runtime's own Attention kernel:
/// same Y and present key/value for 4-D and 3-D inputs, grouped KV heads, past keys/values, causal masking aligned to
/// the end, bool and additive masks, softcap.</summary>
public class FusedOpDecompositionTests
{
    const int B = 2, QHeads = 4, KvHeads = 2, S = 3, Past = 2, D = 8;

    static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    [TestCase(false, true, false, false, 0f)]
    [TestCase(false, false, true, true, 0f)]
    [TestCase(false, true, true, false, 0f)]
    [TestCase(true, true, true, true, 0f)]
    [TestCase(true, false, false, false, 5f)]
    public void PrimitivesMatchOnnxRuntimesAttention(bool threeD, bool causal, bool past, bool boolMask, float softcap)
    {
        var n = new Net(23);
        int total = S + (past ? Past : 0);
        var feeds = new Dictionary<string, HostTensor>();
        void In(string name, int seed, params long[] shape)
        {
            n.Input(name, (int)DT.Float, shape.Cast<object>().ToArray());
            feeds[name] = HostTensor.Of(Random((int)Tensors.ElementCount(shape), seed), shape);
        }
        if (threeD) { In("q", 1, B, S, QHeads * D); In("k", 2, B, S, KvHeads * D); In("v", 3, B, S, KvHeads * D); }
        else { In("q", 1, B, QHeads, S, D); In("k", 2, B, KvHeads, S, D); In("v", 3, B, KvHeads, S, D); }
        var inputs = new List<string> { "q", "k", "v", "" };
        if (boolMask)
        {
            // random, but every query keeps key 0 (a fully masked row is where the two forms may legitimately differ)
            var rng = new Random(4);
            var values = Enumerable.Range(0, B * S * total).Select(i => i % total == 0 || rng.Next(3) > 0).ToArray();
            n.Input("mask", (int)DT.Bool, B, 1, S, total);
            feeds["mask"] = new HostTensor(values, [B, 1, S, total]);
            inputs[3] = "mask";
        }
        else if (!causal) { In("mask", 5, B, 1, S, total); inputs[3] = "mask"; }
        if (past) { In("past_key", 6, B, KvHeads, Past, D); In("past_value", 7, B, KvHeads, Past, D); inputs.AddRange(["past_key", "past_value"]); }
        var attributes = new List<(string, object)> { ("is_causal", causal ? 1L : 0L) };
        if (threeD) attributes.AddRange([("q_num_heads", (long)QHeads), ("kv_num_heads", (long)KvHeads)]);
        if (softcap > 0) attributes.Add(("softcap", softcap));
        string[] outputs = past ? ["y", "present_key", "present_value"] : ["y"];
        n.G.Add("Attention", inputs, name: "attention", outputs: outputs, attributes: attributes.ToArray());
        foreach (var o in outputs) n.Proto.Graph.Output.Add(new ValueInfoProto { Name = o });

        using var fused = n.Model();
        var expected = OrtRun.Run(fused, feeds, outputs);
        var types = ValueTable.Probe(fused.Proto, feeds, feeds);
        var editor = new GraphEditor(fused.Proto.Graph);
        Assert.That(FusedOpDecomposition.Applies(editor));
        FusedOpDecomposition.Apply(editor, types);
        Assert.That(fused.Graph.Node.Any(x => x.OpType == "Attention"), Is.False);
        var actual = OrtRun.Run(fused, feeds, outputs);
        foreach (var o in outputs)
        {
            Assert.That(actual[o].Shape, Is.EqualTo(expected[o].Shape), o);
            Assert.That(Shared.MaxAbsDiff(actual[o].Floats, expected[o].Floats), Is.LessThan(1e-5f), o);
        }
    }

    [TestCase(false, false, 0L)]
    [TestCase(false, true, 0L)]
    [TestCase(true, false, 4L)]
    [TestCase(true, true, 4L)]
    public void RotaryPrimitivesMatchOnnxRuntimesRotaryEmbedding(bool threeD, bool interleaved, long rotaryDim)
    {
        const int maxPosition = 16;
        var n = new Net(23);
        long[] shape = threeD ? [B, S, QHeads * D] : [B, QHeads, S, D];
        long half = (rotaryDim > 0 ? rotaryDim : D) / 2;
        n.Input("x", (int)DT.Float, shape.Cast<object>().ToArray());
        n.Input("cos", (int)DT.Float, maxPosition, half);
        n.Input("sin", (int)DT.Float, maxPosition, half);
        n.Input("position_ids", (int)DT.Int64, B, S);
        var angles = Random(maxPosition * (int)half, 8).Select(a => a * 3).ToArray();
        var feeds = new Dictionary<string, HostTensor>
        {
            ["x"] = HostTensor.Of(Random((int)Tensors.ElementCount(shape), 9), shape),
            ["cos"] = HostTensor.Of(angles.Select(MathF.Cos).ToArray(), maxPosition, half),
            ["sin"] = HostTensor.Of(angles.Select(MathF.Sin).ToArray(), maxPosition, half),
            ["position_ids"] = HostTensor.Of(new long[] { 0, 1, 2, 7, 3, 15 }, B, S),
        };
        var attributes = new List<(string, object)> { ("interleaved", interleaved ? 1L : 0L) };
        if (threeD) attributes.Add(("num_heads", (long)QHeads));
        if (rotaryDim > 0) attributes.Add(("rotary_embedding_dim", rotaryDim));
        n.G.Add("RotaryEmbedding", ["x", "cos", "sin", "position_ids"], name: "rope", outputs: ["y"], attributes: attributes.ToArray());
        n.Proto.Graph.Output.Add(new ValueInfoProto { Name = "y" });

        using var fused = n.Model();
        var expected = OrtRun.Run(fused, feeds, ["y"])["y"];
        var editor = new GraphEditor(fused.Proto.Graph);
        FusedOpDecomposition.Apply(editor, ValueTable.Probe(fused.Proto, feeds, feeds));
        Assert.That(fused.Graph.Node.Any(x => x.OpType == "RotaryEmbedding"), Is.False);
        var actual = OrtRun.Run(fused, feeds, ["y"])["y"];
        Assert.That(actual.Shape, Is.EqualTo(expected.Shape));
        Assert.That(Shared.MaxAbsDiff(actual.Floats, expected.Floats), Is.LessThan(1e-5f));
        Assert.That(Shared.MaxAbsDiff(actual.Floats, feeds["x"].Floats), Is.GreaterThan(1e-2f), "the rotation does something");
    }
}
