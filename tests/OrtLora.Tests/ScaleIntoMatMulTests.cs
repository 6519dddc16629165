using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Tests.Unseen;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>A product by a scalar constant read by a Gemm (through a Reshape) and a MatMul takes the scalar into them
/// (<see cref="ScaleIntoMatMul"/>): the same values, one Mul fewer; one read by two MatMuls stays. In training: LoRA's
/// scaling leaves every backward Mul, with the same gradients.</summary>
public class ScaleIntoMatMulTests
{
    /// <summary>g [2, 3, 4] times 2.5 (not a power of two, so a wrong alpha shows), read as LoRA's backward reads it: by
    /// a Gemm over rows (B's gradient) and by a MatMul (the gradient towards A); q times 0.125, read by two MatMuls.</summary>
    static Net Toy()
    {
        var n = new Net(18);
        n.Input("g", (int)DT.Float, 2, 3, 4);
        n.Input("h", (int)DT.Float, 6, 5);
        n.Input("q", (int)DT.Float, 3, 4);
        var scaled = n.Op("Mul", "g", n.F(2.5f));
        var rows = n.Op("Reshape", scaled, n.I(6, 4));
        n.Output(n.Op("Gemm", ["h", rows], ("transA", 1L)), "gradB");
        n.Output(n.Op("MatMul", scaled, n.Param("w", [4, 3], n.Random(12, 1))), "gradA");
        var attention = n.Op("Mul", "q", n.F(0.125f));
        n.Output(n.Op("MatMul", attention, n.Param("k", [4, 2], n.Random(8, 1))), "first");
        n.Output(n.Op("MatMul", n.Param("v", [5, 3], n.Random(15, 1)), attention), "second");
        return n;
    }

    [Test]
    public void TheScaleGoesIntoTheGemmAndAfterTheMatMulWithTheSameValues()
    {
        var net = Toy();
        using var before = net.Model();
        using var after = net.Model();
        var g = new GraphEditor(after.Graph);
        Assert.That(ScaleIntoMatMul.Apply(g), Is.EqualTo(1));
        var gemm = after.Graph.Node.Single(n => n.OpType == "Gemm");
        Assert.That(gemm.Attribute.Single(a => a.Name == "alpha").F, Is.EqualTo(2.5f));
        Assert.That(after.Graph.Node.Single(n => n.OpType == "Reshape").Input[0], Is.EqualTo("g"));
        var muls = after.Graph.Node.Where(n => n.OpType == "Mul").ToList();
        Assert.That(muls.Select(m => m.Input[0]), Does.Contain("q"), "attention's scale, read by two MatMuls, stays");
        Assert.That(muls, Has.Count.EqualTo(2));
        var afterMatMul = muls.Single(m => m.Input[0] != "q");
        Assert.That(g.Producer(afterMatMul.Input[0])!.OpType, Is.EqualTo("MatMul"), "the product is scaled, not its input");

        var rng = new Random(3);
        HostTensor Random(params long[] dims) => HostTensor.Of(Enumerable.Range(0, (int)dims.Aggregate(1L, (a, b) => a * b)).Select(_ => rng.NextSingle() - 0.5f).ToArray(), dims);
        var feeds = new Dictionary<string, HostTensor> { ["g"] = Random(2, 3, 4), ["h"] = Random(6, 5), ["q"] = Random(3, 4) };
        string[] outputs = ["gradB", "gradA", "first", "second"];
        var expected = OrtRun.Run(before, feeds, outputs);
        var actual = OrtRun.Run(after, feeds, outputs);
        foreach (var o in outputs)
            Assert.That(Shared.MaxAbsDiff(actual[o].Floats, expected[o].Floats), Is.LessThanOrEqualTo(1e-6f * expected[o].Floats.Max(Math.Abs)), o);
    }

    /// <summary>graphs/tiny with LoRA on every linear layer: B's gradient Gemms carry the LoRA scaling, the backward's
    /// Muls by it scale the small products towards A instead of the output gradients, and the gradients are those of
    /// the graph without the rewrite.</summary>
    [Test]
    public void LoraScalingLeavesTheBackwardWithTheSameGradients()
    {
        using var model = EngineFixtures.TinyWithLora();
        var options = new TrainingSessionOptions(new AdamWOptions());
        using var rewritten = new TrainingSession(model, options);
        TrainingSession plain;
        Environment.SetEnvironmentVariable("ORTLORA_SCALE_INTO_MATMUL", "0");
        try { plain = new TrainingSession(model, options); }
        finally { Environment.SetEnvironmentVariable("ORTLORA_SCALE_INTO_MATMUL", null); }
        using var _ = plain;

        static bool ScalesGradient(global::Onnx.NodeProto n) =>
            n.OpType == "Mul" && n.Name.StartsWith("grad/") && n.Input.Any(i => i.EndsWith("lora_scaling"));
        int adapters = rewritten.Graph.Parameters.Count / 2;
        Assert.That(plain.Graph.Gradients.Graph.Node.Count(ScalesGradient), Is.EqualTo(adapters), "one per adapter before");
        var after = new GraphEditor(rewritten.Graph.Gradients.Graph);
        Assert.That(after.Graph.Node.Where(ScalesGradient).Select(n => after.Producer(n.Input[0])?.OpType), Is.EqualTo(Enumerable.Repeat("MatMul", adapters)),
            "what scales now is the MatMul's [batch, sequence, r] product towards A, not the [batch, sequence, out] gradient");
        Assert.That(rewritten.Graph.Gradients.Graph.Node.Count(n => n.OpType == "Gemm" && n.Attribute.Any(a => a.Name == "alpha" && a.F != 1f)),
            Is.EqualTo(adapters), "B's gradient Gemms take the scaling");

        var rng = new Random(5);
        var ids = Enumerable.Range(0, 2 * 24).Select(_ => (long)rng.Next(1, 512)).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 24);
        var (lossPlain, gradsPlain) = plain.ComputeGradients(batch);
        var (lossRewritten, gradsRewritten) = rewritten.ComputeGradients(batch);
        Assert.That(lossRewritten, Is.EqualTo(lossPlain));
        foreach (var (p, grad) in gradsPlain)
            Assert.That(Shared.MaxAbsDiff(gradsRewritten[p], grad), Is.LessThanOrEqualTo(1e-6f * grad.Max(Math.Abs) + 1e-12f), p);
    }
}
