using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The loss taken chunk by chunk through the lm_head: PEFT's loss and gradients on the fixtures, the same
/// training as the whole loss, and no [B, S, V] value left in the gradient graph.</summary>
public class EngineChunkedLossTests
{
    [TestCase("llama", "dynamo", false)] [TestCase("llama", "torchscript", false)]
    [TestCase("gpt2", "dynamo", false)] [TestCase("gpt2", "torchscript", true)]
    [TestCase("llama", "dynamo", true)]
    public void GradientsMatchPeft(string arch, string export, bool checkpointing)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = EngineFixtures.InjectedModel(arch, export);
        var batch = EngineFixtures.ReferenceBatch(reference);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: 4,
            GradientCheckpointing: checkpointing));
        Assert.That(session.Graph.Gradients.Graph.Node.Count(n => n.Name.Contains("/chunk3")), Is.GreaterThan(0), "the head runs in chunks");

        var (loss, grads) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-4), "loss");
        foreach (var p in session.ParameterNames)
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            Assert.That(Shared.MaxAbsDiff(grads[p], expected), Is.LessThanOrEqualTo(1e-4f * expected.Max(Math.Abs) + 1e-7f), $"grad of {p}");
        }
        Assert.That(session.EvalLoss(batch), Is.EqualTo(loss).Within(1e-5), "the eval graph (whole loss) agrees");
    }

    /// <summary>Steps with the chunked loss follow those with the whole loss, in float32 and with float16 loss scaling;
    /// a sequence shorter than the chunk count leaves chunks empty and still works; with label smoothing too (train and eval).</summary>
    [TestCase(ComputeType.Float32, 32, 0.0)] [TestCase(ComputeType.Float16, 32, 0.0)] [TestCase(ComputeType.Float32, 3, 0.0)]
    [TestCase(ComputeType.Float32, 32, 0.1)]
    public void TrainingStepsEqualThoseOfTheWholeLoss(ComputeType compute, int sequence, double smoothing)
    {
        using var model = EngineFixtures.TinyWithLora();
        LoraTestKit.RandomizeB(model, std: 0.1f);
        var rng = new Random(4);
        var ids = Enumerable.Range(0, 4 * sequence).Select(_ => (long)rng.Next(LlamaShape.Tiny.VocabSize)).ToArray();
        var labels = ids.Select((t, i) => i % 5 == 0 ? CausalLmLoss.IgnoreIndex : t).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), labels, 4, sequence);
        (Dictionary<string, float[]> Grads, float[] Losses) Train(int chunks)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01),
                Compute: compute, LossChunks: chunks, LabelSmoothing: smoothing));
            var grads = session.ComputeGradients(batch).Gradients;
            var losses = Enumerable.Range(0, 4).Select(_ => session.Step(batch, learningRate: 1e-3f, maxGradNorm: 1f)).ToArray();
            return (grads, [.. losses, session.EvalLoss(batch)]); // the eval loss after the steps, chunked or whole too
        }
        var whole = Train(1);
        var chunked = Train(8);
        bool half = compute == ComputeType.Float16;
        // float16: two of its ulps (2 × 9.8e-4) of the largest gradient, as ORT fuses the two graphs' float16 nodes
        // differently (measured 1.06e-3)
        foreach (var (p, g) in whole.Grads)
            Assert.That(Shared.MaxAbsDiff(chunked.Grads[p], g), Is.LessThanOrEqualTo((half ? 2e-3f : 1e-5f) * g.Max(Math.Abs)), $"grad of {p}");
        Assert.That(chunked.Losses, Is.EqualTo(whole.Losses).Within(half ? 2e-4 : 1e-5));
        Assert.That(chunked.Losses[^1], Is.LessThan(chunked.Losses[0]), "it trains");
    }

    /// <summary>The memory point: with the whole loss the gradient graph has several values of the logits' size and the
    /// eval graph two; with chunks neither has any (each chunk's are a quarter of the sequence).</summary>
    [Test]
    public void NoValueHasTheFullLogitsShape()
    {
        using var model = EngineFixtures.TinyWithLora();
        (int Gradients, int Eval) FullVocabValues(int chunks)
        {
            using var graph = TrainingGraph.Build(model, lossChunks: chunks);
            var feeds = EngineFixtures.SyntheticFeeds(graph, graph.Gradients, 2, 16);
            int Count(global::Onnx.ModelProto proto)
            {
                var types = ValueTable.Probe(proto, feeds, feeds, graph.Frozen.Values);
                long vocab = LlamaShape.Tiny.VocabSize;
                var values = proto.Graph.Node.SelectMany(n => n.Output).Where(o => types.Find(o) is { } t && t.ShapeA.Length == 3 && t.ShapeA[2] == vocab).ToList();
                Assert.That(values.All(v => types[v].ShapeA[1] == 16 / chunks), Is.True, $"{chunks} chunks: every vocabulary-sized value spans {16 / chunks} positions");
                return values.Count(v => types[v].ShapeA[1] == 16);
            }
            return (Count(graph.Gradients), Count(graph.Eval));
        }
        var whole = FullVocabValues(1);
        Assert.That(whole.Gradients, Is.GreaterThanOrEqualTo(4));
        Assert.That(whole.Eval, Is.GreaterThanOrEqualTo(2));
        Assert.That(FullVocabValues(4), Is.EqualTo((0, 0)));
    }
}
