using InferenceSession = Microsoft.ML.OnnxRuntime.InferenceSession;
using OrtValue = Microsoft.ML.OnnxRuntime.OrtValue;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>KTO's loss on unpaired rows, on the engine (the shared batch and formula helpers are in EnginePreferenceLossTests.cs).</summary>
public partial class EnginePreferenceLossTests
{
    /// <summary>KTO (TRL's kto_loss): rows 0 and 1 examples (desirable, undesirable), rows 2 and 3 KL rows. The loss is
    /// the examples' mean of w·(1 − σ(β·role·(ratio − kl))), kl = max(0, the KL rows' mean ratio), against the formula on
    /// plain logits; its gradients (kl detached, as TRL detaches it) against central differences of a loss with kl held
    /// at its value; the chunked loss equals the whole one.</summary>
    [Test]
    public void KtoLossEqualsTrlsFormulaAndItsGradientsMatch()
    {
        var options = new PreferenceOptions(Beta, "kto", DesirableWeight: 1.0, UndesirableWeight: 1.5);
        float[] roles = [1, -1, 0, 0];
        var batch = PairBatch() with { Roles = roles };
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        using var chunked = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options, LossChunks: 3));
        Assert.That(session.Evaluate(batch).Loss, Is.EqualTo(0.5 * (1.0 + 1.5) / 2).Within(1e-6), "policy = reference: each example w·(1 − σ(0))");
        var reference = RowSums(model, batch);
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var moved = LoraValues(model, session);
        session.SetParameters(moved);
        chunked.SetParameters(moved);
        var policy = RowSums(model, batch);

        double Ratio(int row) => policy.Sums[row] - reference.Sums[row];
        double kl = Math.Max(0, (Ratio(2) + Ratio(3)) / 2);
        double ExampleLoss(int row, double w) => w * (1 - 1 / (1 + Math.Exp(-Beta * roles[row] * (Ratio(row) - kl))));
        double expected = (ExampleLoss(0, 1.0) + ExampleLoss(1, 1.5)) / 2;
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(Math.Abs(expected - 1.25), Is.GreaterThan(1e-3), "moved away from the reference");
        Assert.That(loss, Is.EqualTo(expected).Within(2e-5));
        Assert.That(session.Evaluate(batch).Loss, Is.EqualTo(expected).Within(2e-5));
        Assert.That(chunked.Evaluate(batch).Loss, Is.EqualTo(expected).Within(2e-5), "chunked");
        var (_, chunkedGradients) = chunked.ComputeGradients(batch);
        foreach (var (name, grad) in gradients)
            Assert.That(Shared.MaxAbsDiff(chunkedGradients[name], grad), Is.LessThan(1e-4 * grad.Max(x => Math.Abs(x)) + 1e-9), name);

        // kl is a constant to the gradient (TRL detaches it): the differences move the examples' rows and keep kl
        MatchCentralDifferences(session, moved, gradients, () =>
        {
            var rows = RowSumsOf(session, batch);
            double Moved(int row) => rows[row] - reference.Sums[row];
            double Example(int row, double w) => w * (1 - 1 / (1 + Math.Exp(-Beta * roles[row] * (Moved(row) - kl))));
            return (Example(0, 1.0) + Example(1, 1.5)) / 2;
        });
    }

    /// <summary>The rows' summed log-probabilities at the session's current parameters (from its eval graph).</summary>
    static float[] RowSumsOf(TrainingSession session, Batch batch)
    {
        session.Evaluate(batch with { ReferenceLogps = new float[batch.BatchSize] });
        return session.LastSequenceLogps;
    }
}
