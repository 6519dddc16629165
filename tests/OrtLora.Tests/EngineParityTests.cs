using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The training engine against Hugging Face PEFT on the fixtures: loss, every gradient, one AdamW step,
/// a 20-step trajectory, with the tolerances of fixtures/README.md.</summary>
public class EngineParityTests
{
    [TestCase("llama", "dynamo")] [TestCase("llama", "torchscript")]
    [TestCase("gpt2", "dynamo")] [TestCase("gpt2", "torchscript")]
    public void LossGradientsAndOneStepMatchPeft(string arch, string export)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = EngineFixtures.InjectedModel(arch, export);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01), Optimization: Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_DISABLE_ALL));
        var batch = EngineFixtures.ReferenceBatch(reference);
        Assert.That(session.ParameterNames, Has.Count.EqualTo(reference.Keys.Count(k => k.StartsWith("grad."))));

        var (loss, grads) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-4), "loss");
        foreach (var p in session.ParameterNames)
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            float tolerance = 1e-4f * expected.Max(Math.Abs) + 1e-7f;
            Assert.That(Shared.MaxAbsDiff(grads[p], expected), Is.LessThanOrEqualTo(tolerance), $"grad of {p}");
        }

        var stepLoss = session.Step(batch, learningRate: 1e-2f);
        Assert.That(stepLoss, Is.EqualTo(loss).Within(1e-5), "the step graph computes the same loss");
        var after = session.GetParameters();
        foreach (var p in session.ParameterNames)
        {
            var expected = reference["step1." + EngineFixtures.ReferenceName(p)].AsFloats();
            int worst = Enumerable.Range(0, expected.Length).MaxBy(i => Math.Abs(after[p][i] - expected[i]));
            var refGrad = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats()[worst];
            Assert.That(Shared.MaxAbsDiff(after[p], expected), Is.LessThanOrEqualTo(1e-5f),
                $"AdamW step of {p}: worst at [{worst}], gradient there {grads[p][worst]:E3} (PEFT {refGrad:E3})");
        }
    }

    [TestCase("llama", "dynamo")] [TestCase("llama", "torchscript")]
    [TestCase("gpt2", "dynamo")] [TestCase("gpt2", "torchscript")]
    public void TwentyStepTrajectoryMatchesPeft(string arch, string export)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = EngineFixtures.InjectedModel(arch, export);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0)));
        var expected = reference["traj.loss"].AsFloats();
        for (int step = 0; step < expected.Length; step++)
        {
            var loss = session.Step(EngineFixtures.ReferenceBatch(reference, "traj.", step % 4), learningRate: 5e-3f);
            Assert.That(loss, Is.EqualTo(expected[step]).Within(1e-3), $"loss at step {step}");
        }
    }
}
