using Onnx;
using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>Gradient checkpointing: the same loss and gradients (PEFT's, on the fixtures), with the backward reading
/// recomputed values instead of the forward's activations.</summary>
public class EngineCheckpointingTests
{
    [TestCase("llama", "dynamo")] [TestCase("llama", "torchscript")]
    [TestCase("gpt2", "dynamo")] [TestCase("gpt2", "torchscript")]
    public void GradientsMatchPeftAndTheStoredActivationGraph(string arch, string export)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = EngineFixtures.InjectedModel(arch, export);
        var batch = EngineFixtures.ReferenceBatch(reference);
        using var stored = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        using var recomputed = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), GradientCheckpointing: true));
        Assert.That(Checkpoints.CountSegments(recomputed.Graph.Gradients.Graph), Is.GreaterThanOrEqualTo(1), "segments recomputed");

        var (loss, grads) = recomputed.ComputeGradients(batch);
        var (storedLoss, storedGrads) = stored.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-4), "loss");
        Assert.That(loss, Is.EqualTo(storedLoss).Within(1e-6), "loss without checkpointing");
        foreach (var p in recomputed.ParameterNames)
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            float scale = expected.Max(Math.Abs);
            Assert.That(Shared.MaxAbsDiff(grads[p], expected), Is.LessThanOrEqualTo(1e-4f * scale + 1e-7f), $"grad of {p} against PEFT");
            Assert.That(Shared.MaxAbsDiff(grads[p], storedGrads[p]), Is.LessThanOrEqualTo(1e-6f * scale + 1e-9f), $"grad of {p} without checkpointing");
        }
    }

    /// <summary>Gradients and training steps (clipping, AdamW, fp16 loss scaling) equal those of the graph that stores
    /// the activations.</summary>
    [TestCase(ComputeType.Float32)] [TestCase(ComputeType.Float16)]
    public void TrainingStepsEqualThoseThatStoreActivations(ComputeType compute)
    {
        using var model = EngineFixtures.TinyWithLora();
        LoraTestKit.RandomizeB(model, std: 0.1f);
        var rng = new Random(2);
        var ids = Enumerable.Range(0, 4 * 32).Select(_ => (long)rng.Next(LlamaShape.Tiny.VocabSize)).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 4, 32);
        (Dictionary<string, float[]> Grads, float[] Losses, Dictionary<string, float[]> Parameters) Train(bool checkpointing)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01),
                Compute: compute, GradientCheckpointing: checkpointing));
            var grads = session.ComputeGradients(batch).Gradients;
            var losses = Enumerable.Range(0, 4).Select(_ => session.Step(batch, learningRate: 1e-3f, maxGradNorm: 1f)).ToArray();
            return (grads, losses, session.GetParameters());
        }
        var stored = Train(false);
        var recomputed = Train(true);
        // float16 activations: ORT fuses the forward differently once the backward no longer reads its intermediates,
        // which moves float16 roundings; the tolerances are a fifth of those fp16 training meets against PEFT's float32
        // (measured 1.1e-3 of the largest gradient since q and k rotate in float16, as Hugging Face's do)
        bool half = compute == ComputeType.Float16;
        foreach (var (p, g) in stored.Grads)
            Assert.That(Shared.MaxAbsDiff(recomputed.Grads[p], g), Is.LessThanOrEqualTo((half ? 2e-3f : 1e-5f) * g.Max(Math.Abs)), $"grad of {p}");
        Assert.That(recomputed.Losses, Is.EqualTo(stored.Losses).Within(half ? 2e-4 : 1e-5));
        Assert.That(recomputed.Losses[^1], Is.LessThan(recomputed.Losses[0] - 0.01), "it trains");
        if (half) return; // Adam's first steps are ill-conditioned where |g| is tiny: the parameters are compared in float32
        foreach (var (p, v) in stored.Parameters)
            Assert.That(Shared.MaxAbsDiff(recomputed.Parameters[p], v), Is.LessThanOrEqualTo(1e-5f), p);
    }

    /// <summary>What the backward keeps of the forward: the batch-sized forward values that gradient nodes read. With
    /// checkpointing, only the segment inputs and the values of the last segment (lm_head, loss) remain.</summary>
    [Test]
    public void TheBackwardReadsFewerForwardActivations()
    {
        using var model = EngineFixtures.TinyWithLora();
        using var stored = TrainingGraph.Build(model);
        using var recomputed = TrainingGraph.Build(model, gradientCheckpointing: true);
        int segments = Checkpoints.CountSegments(recomputed.Gradients.Graph);
        Assert.That(segments, Is.GreaterThanOrEqualTo(LlamaShape.Tiny.NumHiddenLayers - 1), "about a segment per layer or more");

        var storedReads = ForwardActivationsReadByBackward(stored);
        var recomputedReads = ForwardActivationsReadByBackward(recomputed);
        TestContext.Out.WriteLine($"{segments} segments; forward activations the backward reads: {storedReads.Count} → {recomputedReads.Count}");
        Assert.That(recomputedReads, Has.Count.LessThan(storedReads.Count / 3));
    }

    /// <summary>Forward values of rank ≥ 3 (batch-sized: [B, S, ...]) that nodes of the backward read.</summary>
    static HashSet<string> ForwardActivationsReadByBackward(TrainingGraph graph)
    {
        var forward = graph.Eval.Graph.Node.Where(n => n.OpType != "Shape").SelectMany(n => n.Output).ToHashSet();
        var g = graph.Gradients.Graph;
        var backward = g.Node.Where(n => n.Name.StartsWith("grad/") || n.Name.StartsWith("checkpoint/") || n.Name.EndsWith("/recompute"));
        var ranks = RanksFromEval(graph);
        return backward.SelectMany(n => n.Input).Where(i => forward.Contains(i) && ranks.GetValueOrDefault(i) >= 3).ToHashSet();
    }

    static Dictionary<string, int> RanksFromEval(TrainingGraph graph)
    {
        var proto = graph.Eval.Clone();
        var table = ValueTable.Probe(proto, EngineFixtures.SyntheticFeeds(graph, proto, 2, 5), EngineFixtures.SyntheticFeeds(graph, proto, 2, 5), graph.Frozen.Values);
        return proto.Graph.Node.SelectMany(n => n.Output).Where(o => table.Find(o) is not null).Distinct().ToDictionary(o => o, o => table.Rank(o));
    }

    /// <summary>The zero a recomputation waits through stays 0 where a float16 sum would overflow (2,000 × 1,000 is
    /// past 65,504, and 0·∞ is NaN), and for an empty tensor.</summary>
    [TestCase(2000)] [TestCase(0)]
    public void OrderingZeroIsZeroForLargeHalfTensors(int length)
    {
        const int fp16 = (int)TensorProto.Types.DataType.Float16, fp32 = (int)TensorProto.Types.DataType.Float;
        var model = new ModelProto { IrVersion = 8, Graph = new GraphProto { Name = "order" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        foreach (var (name, type, n) in new[] { ("x", fp16, length), ("y", fp32, 3) })
            model.Graph.Input.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor
                { ElemType = type, Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimValue = n } } } } } });
        var g = new GraphEditor(model.Graph);
        g.Add("Add", ["y", Ordering.ZeroAfter(g, [("x", fp16), ("y", fp32)], fp32)], name: "out", outputs: ["out"]);
        model.Graph.Output.Add(new ValueInfoProto { Name = "out" });
        using var onnx = new OnnxModel(model);
        var outputs = OrtRun.Run(onnx, new Dictionary<string, HostTensor>
        {
            ["x"] = new HostTensor(Enumerable.Repeat((Microsoft.ML.OnnxRuntime.Float16)1000f, length).ToArray(), [length]),
            ["y"] = HostTensor.Of([1f, 2f, 3f], 3),
        });
        Assert.That(outputs["out"].Floats, Is.EqualTo(new[] { 1f, 2f, 3f }));
    }

    /// <summary>Training-mode LoRA dropout draws a new mask each run: the recomputation must apply the forward's.</summary>
    [Test]
    public void RecomputedDropoutUsesTheForwardMask()
    {
        using var model = EngineFixtures.TinyWithLora();
        using var graph = TrainingGraph.Build(model, loraDropout: 0.5, gradientCheckpointing: true);
        var proto = graph.Gradients.Clone();
        var pairs = proto.Graph.Node.Where(n => n.OpType == "Dropout").Select(n => n.Output[0])
            .Where(y => proto.Graph.Node.Any(n => n.Output.Contains(y + "/recompute"))).ToList();
        Assert.That(pairs, Has.Count.GreaterThan(4), "recomputed dropouts");
        foreach (var y in pairs)
        {
            proto.Graph.Output.Add(new ValueInfoProto { Name = y });
            proto.Graph.Output.Add(new ValueInfoProto { Name = y + "/recompute" });
        }
        var feeds = EngineFixtures.SyntheticFeeds(graph, proto, 2, 16);
        feeds[TrainingGraph.Labels] = HostTensor.Of(Enumerable.Repeat(1L, 32).ToArray(), [2, 16]);
        using var withOutputs = new OnnxModel(proto);
        var outputs = OrtRun.Run(withOutputs, feeds, fixedInputs: graph.Frozen.Values);
        foreach (var y in pairs)
        {
            var forward = outputs[y].Floats;
            Assert.That(forward.Count(v => v == 0), Is.GreaterThan(forward.Length / 4), $"{y} drops about half");
            Assert.That(Shared.MaxAbsDiff(outputs[y + "/recompute"].Floats, forward), Is.LessThanOrEqualTo(1e-6f), y);
        }
    }
}
