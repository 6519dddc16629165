using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The exported RMSNorms become SimplifiedLayerNormalization nodes before the backward
/// (<see cref="RmsNormAsOp"/>): every norm of the fixture exports and of graphs/tiny, none of their primitives left in
/// the training graph, the saved 1/σ read by the gradient, PEFT's numbers kept; a norm whose parts are read elsewhere
/// stays as exported.</summary>
public class RmsNormAsOpTests
{
    /// <summary>The forward rewrites on the fixture exports, in float32 and bf16: 2 layers × 2 norms + the final norm
    /// become the op (in bf16 the norms read the float32 cast of the residual); rotate_half of q and of k in each layer
    /// becomes a Split (<see cref="SlicesAsSplit"/>), so no Pad is left in the backward, and then one MatMul by a signed
    /// permutation (<see cref="RotateHalfAsMatMul"/>); PEFT's loss, gradients, AdamW step and trajectory, with and
    /// without that last step.</summary>
    [TestCase("llama", "dynamo")]
    [TestCase("llama", "torchscript")]
    public void TheForwardRewritesKeepPeftParity(string arch, string exporter)
    {
        using var model = EngineFixtures.InjectedModel(arch, exporter);
        foreach (var compute in new[] { ComputeType.Float32, ComputeType.BFloat16 })
        {
            using var graph = TrainingGraph.Build(model, compute: compute);
            var nodes = graph.Gradients.Graph.Node;
            var norms = nodes.Where(n => n.OpType == "SimplifiedLayerNormalization").ToList();
            Assert.That(norms, Has.Count.EqualTo(5), $"{compute}");
            Assert.That(nodes.Count(n => n.OpType is "Pow" or "Sqrt" or "Reciprocal"), Is.Zero, $"{compute}: no norm primitives, forward or backward");
            // (the first layer's input norm reads the embedding, frozen: no gradient goes through it)
            Assert.That(norms.Count(norm => nodes.Any(n => n.Name.StartsWith("grad/") && n.Input.Contains(norm.Output[1]))), Is.EqualTo(4),
                "each norm's backward reads its 1/σ");
            Assert.That(graph.Eval.Graph.Node.Count(n => n.OpType == "SimplifiedLayerNormalization"), Is.EqualTo(5), "eval computes the same forward");
            // rotate_half: its slices became a Split, and Split, Neg and Concat one MatMul by a ±1 permutation in half
            // when the graph computes in half
            var rotations = nodes.Where(n => n.OpType == "MatMul" && n.Name.EndsWith("/as_matmul")).ToList();
            Assert.That(rotations, Has.Count.EqualTo(4), $"{compute}: q's and k's rotate_half in 2 layers");
            int rotationType = graph.Gradients.Graph.Initializer.Single(t => t.Name == rotations[0].Input[1]).DataType;
            Assert.That(rotationType, Is.EqualTo(compute == ComputeType.BFloat16 ? (int)global::Onnx.TensorProto.Types.DataType.Bfloat16 : (int)global::Onnx.TensorProto.Types.DataType.Float));
            Assert.That(nodes.Count(n => n.OpType == "Split" && n.Name.EndsWith("/as_split")), Is.Zero, $"{compute}: no rotate_half Split left");
            Assert.That(nodes.Count(n => n.OpType == "Pad"), Is.Zero, $"{compute}: no slice gradient pads");
        }
        using (Shared.EnvironmentVariable("ORTLORA_ROTATE_HALF_MATMUL", "0"))
        {
            using var graph = TrainingGraph.Build(model);
            Assert.That(graph.Gradients.Graph.Node.Count(n => n.OpType == "Split" && n.Name.EndsWith("/as_split")), Is.EqualTo(4), "ORTLORA_ROTATE_HALF_MATMUL=0: the Splits stay");
            EngineFixtures.AssertPeftParity(model, arch, new TrainingSessionOptions(new AdamWOptions()));
        }
        EngineFixtures.AssertPeftParity(model, arch, new TrainingSessionOptions(new AdamWOptions()));
    }

    /// <summary>graphs/tiny has 4 layers' norms and the final one (kept as exported with ORTLORA_RMSNORM_OP=0). On a toy, the rewritten norm computes the exported
    /// one's values; with its 1/σ also a graph output, the norm is left as it was.</summary>
    [Test]
    public void TheOpComputesTheNormAndANormWhosePartsAreReadElsewhereStays()
    {
        using (var tiny = EngineFixtures.TinyWithLora())
        {
            using (var graph = TrainingGraph.Build(tiny))
                Assert.That(graph.Gradients.Graph.Node.Count(n => n.OpType == "SimplifiedLayerNormalization"), Is.EqualTo(9));
            using (Shared.EnvironmentVariable("ORTLORA_RMSNORM_OP", "0"))
            {
                using var exported = TrainingGraph.Build(tiny);
                Assert.That(exported.Gradients.Graph.Node.Count(n => n.OpType == "SimplifiedLayerNormalization"), Is.Zero, "ORTLORA_RMSNORM_OP=0");
            }
        }

        foreach (bool rstdReadElsewhere in new[] { false, true })
        {
            var net = new Unseen.Net(18);
            net.Input("x", (int)global::Onnx.TensorProto.Types.DataType.Float, "batch", 16);
            net.Output(net.RmsNorm("x", "norm.weight", 16), "y", "batch", 16);
            if (rstdReadElsewhere) net.Output(net.Proto.Graph.Node.Single(n => n.OpType == "Reciprocal").Output[0], "rstd", "batch", 1);
            using var before = net.Model();
            Dictionary<string, HostTensor> Feed(int batch) => new() { ["x"] = HostTensor.Of(Enumerable.Range(0, batch * 16).Select(i => MathF.Sin(i) * 3).ToArray(), batch, 16) };
            var types = ValueTable.Probe(before.Proto, Feed(2), Feed(3));
            using var after = net.Model();
            Assert.That(RmsNormAsOp.Apply(new GraphEditor(after.Graph), types), Is.EqualTo(rstdReadElsewhere ? 0 : 1));
            if (rstdReadElsewhere) continue;
            Assert.That(after.Graph.Node.Select(n => n.OpType), Is.EqualTo(new[] { "SimplifiedLayerNormalization", "Identity" }), "the norm, then the output");
            var expected = OrtRun.Run(before, Feed(4), ["y"])["y"].Floats;
            var actual = OrtRun.Run(after, Feed(4), ["y"])["y"].Floats;
            Assert.That(Shared.MaxAbsDiff(actual, expected), Is.LessThan(1e-6f * expected.Max(Math.Abs)));
        }
    }
}
