using GraphOptimizationLevel = Microsoft.ML.OnnxRuntime.GraphOptimizationLevel;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>The DPO loss on every export style the fixtures do not cover (fp16 weights and activations, Gemm layers,
/// fused projections, opset-23 ops, cache inputs, quantized bases, GenAI builder models): the batch's two rows as one
/// pair, the model its own reference.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenPreferenceTests
{
    static readonly Architecture[] All = Architectures.All;

    /// <summary>The loss starts at ln 2; its gradient along itself matches central differences; three steps lower it.</summary>
    [TestCaseSource(nameof(All))]
    public void DpoStartsAtLogTwoAndItsStepsLowerTheLoss(Architecture arch)
    {
        if (!arch.Trainable) return; // a clear error, tested with the causal-LM loss
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f); // the reference too: A gets a gradient from the start
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL,
            Preference: new PreferenceOptions(0.5)));
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (loss, grads) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(Math.Log(2)).Within(1e-5), "the model is its own reference");

        var start = session.GetParameters();
        double norm = Math.Sqrt(grads.Values.Sum(g => g.Sum(v => (double)v * v)));
        Assert.That(norm, Is.GreaterThan(1e-6));
        double LossAlongGradient(double h)
        {
            session.SetParameters(start.ToDictionary(kv => kv.Key, kv => kv.Value.Select((v, i) => (float)(v + h * grads[kv.Key][i] / norm)).ToArray()));
            return session.EvalLoss(batch);
        }
        const double step = 1e-2;
        double numeric = (LossAlongGradient(step) - LossAlongGradient(-step)) / (2 * step);
        Assert.That(norm, Is.EqualTo(numeric).Within((arch.HalfActivations ? 4e-2 : 1e-2) * norm + 2e-4), "d loss along the gradient is its norm");

        session.SetParameters(start);
        for (int i = 0; i < 3; i++) Assert.That(float.IsFinite(session.Step(batch, learningRate: 1e-2f)));
        Assert.That(session.EvalLoss(batch), Is.LessThan(loss - 1e-3));
        Assert.That(session.LastSequenceLogps[0] - session.LastReferenceLogps[0], Is.GreaterThan(session.LastSequenceLogps[1] - session.LastReferenceLogps[1]),
            "the chosen row gained on the rejected one");
    }
}
