using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>Attention's probabilities recomputed in the backward (<see cref="Checkpoints.Attention"/>): one segment a
/// layer, the same training (to float rounding: ORT fuses the recomputed nodes on their own), PEFT's numbers on the
/// fixture exports, and the probabilities no longer among what the step keeps.</summary>
public class RecomputeAttentionTests
{
    [Test]
    public void TinyTrainsTheSameWithoutKeepingTheProbabilities()
    {
        using var model = EngineFixtures.TinyWithLora();
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        using var kept = new TrainingSession(model, options);
        using var recomputed = new TrainingSession(model, options with { RecomputeAttention = true });
        Assert.That(Checkpoints.CountSegments(recomputed.Graph.Gradients.Graph), Is.EqualTo(4), "one segment a layer");
        Assert.That(Checkpoints.CountSegments(kept.Graph.Gradients.Graph), Is.Zero);

        var rng = new Random(5);
        Batch Next()
        {
            var ids = Enumerable.Range(0, 2 * 24).Select(_ => (long)rng.Next(1, 512)).ToArray();
            return new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 24);
        }
        var first = Next();
        var (lossKept, gradsKept) = kept.ComputeGradients(first);
        var (lossRecomputed, gradsRecomputed) = recomputed.ComputeGradients(first);
        Assert.That(lossRecomputed, Is.EqualTo(lossKept).Within(1e-6));
        foreach (var (p, g) in gradsKept)
            Assert.That(Shared.MaxAbsDiff(gradsRecomputed[p], g), Is.LessThanOrEqualTo(1e-5f * g.Max(Math.Abs) + 1e-9f), p);
        for (int step = 0; step < 3; step++)
        {
            var batch = Next();
            Assert.That(recomputed.Step(batch, 5e-3f, maxGradNorm: 1f), Is.EqualTo(kept.Step(batch, 5e-3f, maxGradNorm: 1f)).Within(1e-5), $"step {step}");
        }

        // At the peak of a step, no Softmax output is alive any more.
        long Softmax(TrainingSession s)
        {
            var step = s.Graph.WithBatchShape(s.Graph.BuildStep(new AdamWOptions()), 4, 128);
            var estimate = MemoryEstimate.Of(step, StaticShapes.Infer(step), ValueTable.ElemTypes(s.Graph.BuildStep(new AdamWOptions()), s.Graph.Frozen.Values));
            TestContext.Out.WriteLine($"peak {estimate.PeakBytes / 1048576.0:F1} MiB at {estimate.PeakNode.Name}: " + string.Join(", ", estimate.LiveAtPeak.Where(v => v.Producer.OpType == "Softmax").Select(v => v.Producer.Name)));
            return estimate.LiveAtPeak.Where(v => v.Producer.OpType == "Softmax").Sum(v => v.Bytes);
        }
        Assert.That(Softmax(kept), Is.EqualTo(4L * 4 * 4 * 128 * 128 * sizeof(float)), "4 layers' [4, 4, 128, 128] probabilities");
        Assert.That(Softmax(recomputed), Is.Zero);
    }

    /// <summary>PEFT's loss, gradients, AdamW step and 20-step trajectory with the probabilities recomputed, on an export
    /// of each exporter and architecture (GPT-2's attention is fused differently from LLaMA's).</summary>
    [TestCase("llama", "dynamo")]
    [TestCase("llama", "torchscript")]
    [TestCase("gpt2", "dynamo")]
    [TestCase("gpt2", "torchscript")]
    public void PeftParityHoldsWithAttentionRecomputed(string arch, string exporter)
    {
        using var model = EngineFixtures.InjectedModel(arch, exporter);
        var options = new TrainingSessionOptions(new AdamWOptions(), RecomputeAttention: true);
        using (var session = new TrainingSession(model, options))
            Assert.That(Checkpoints.CountSegments(session.Graph.Gradients.Graph), Is.GreaterThanOrEqualTo(2), "a segment a layer");
        EngineFixtures.AssertPeftParity(model, arch, options);
    }
}
