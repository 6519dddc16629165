using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The frozen base weights are held once, outside the graphs, and every session of a TrainingSession reads
/// that one copy in place.</summary>
public class EngineSharedWeightsTests
{
    [Test]
    public void TrainingGraphsCarryNoWeightBytes()
    {
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        using var graph = TrainingGraph.Build(model);
        var weights = model.Graph.Initializer.Where(t => SharedInitializers.IsWeight(t) && !TrainingGraph.IsTrainable(t.Name)).ToList();
        Assert.That(weights, Is.Not.Empty);
        Assert.That(graph.Frozen.Values.Keys, Is.EquivalentTo(weights.Select(t => t.Name)));
        Assert.That(graph.Frozen.TotalBytes, Is.EqualTo(weights.Sum(t => Tensors.ByteSize(t))));
        var protos = new Dictionary<string, global::Onnx.ModelProto>
        {
            ["eval"] = graph.Eval, ["gradients"] = graph.Gradients,
            ["step"] = graph.BuildStep(new AdamWOptions()), ["accumulate"] = graph.BuildAccumulate(),
        };
        foreach (var (name, proto) in protos)
        {
            // none of the model's weights; a constant the rewrites make may be weight-sized (rotate_half's d×d matrix)
            Assert.That(proto.Graph.Initializer.Where(SharedInitializers.IsWeight).Select(t => t.Name), Is.SubsetOf(new[] { "rotate_half_matrix" }), name);
            Assert.That(proto.Graph.Input.Select(i => i.Name), Is.SupersetOf(weights.Select(t => t.Name)), name);
            // what is left: the graph's structure and small constants, a fraction of the weights' bytes
            Assert.That(proto.Graph.Initializer.Sum(t => Tensors.ByteSize(t)), Is.LessThan(graph.Frozen.TotalBytes / 10), name);
        }
    }

    /// <summary>Zeroing the shared buffers after every session has run once changes what each of them computes: none
    /// holds a copy. With every weight matrix zero the logits are zero, so each loss is ln(vocabulary).</summary>
    [Test]
    public void EverySessionReadsTheOneCopyInPlace()
    {
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        var batch = EngineFixtures.ReferenceBatch(reference);
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        long vocab = model.Graph.Output[0].Type.TensorType.Shape.Dim.Last().DimValue;
        Assert.That(vocab, Is.GreaterThan(1));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        float expected = reference["loss"].AsFloats()[0];
        Assert.That(session.EvalLoss(batch), Is.EqualTo(expected).Within(1e-4));
        Assert.That(session.ComputeGradients(batch).Loss, Is.EqualTo(expected).Within(1e-4));
        Assert.That(session.Accumulate(batch, 1f), Is.EqualTo(expected).Within(1e-4));
        Assert.That(session.Step(batch, 1e-3f), Is.EqualTo(expected).Within(1e-4));

        foreach (var value in session.Graph.Frozen.Values.Values) value.GetTensorMutableDataAsSpan<byte>().Clear();
        float uniform = (float)Math.Log(vocab);
        Assert.That(uniform, Is.Not.EqualTo(expected).Within(1e-2), "a random model is near, not at, the uniform loss");
        Assert.That(session.EvalLoss(batch), Is.EqualTo(uniform).Within(1e-5), "eval");
        Assert.That(session.ComputeGradients(batch).Loss, Is.EqualTo(uniform).Within(1e-5), "gradients");
        Assert.That(session.Accumulate(batch, 1f), Is.EqualTo(uniform).Within(1e-5), "accumulate");
        Assert.That(session.Step(batch, 1e-3f), Is.EqualTo(uniform).Within(1e-5), "step");
    }

    /// <summary>Weights computed on read (the generator's lazy weights, the path of big generated models) reach the
    /// shared buffers, and the small tensors left in the graph are filled in: the same losses as the eager model.</summary>
    [Test]
    public void LazyWeightsTrainLikeEagerOnes()
    {
        var config = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"] };
        var ids = Enumerable.Range(0, 32).Select(i => (long)(i * 37 % 500)).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, 32).ToArray(), ids, 2, 16);
        float[] Losses(bool lazy)
        {
            using var model = LlamaGraph.Build(LlamaShape.Tiny, GraphsRequest.DefaultSeed, new LlamaOptions(LazyWeights: lazy));
            LoraInjector.Inject(model, config);
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
            return [session.EvalLoss(batch), session.Step(batch, 1e-2f), session.EvalLoss(batch)];
        }
        var eager = Losses(false);
        Assert.That(eager[2], Is.LessThan(eager[0]), "the step lowers the loss");
        Assert.That(Losses(true), Is.EqualTo(eager));
    }
}
