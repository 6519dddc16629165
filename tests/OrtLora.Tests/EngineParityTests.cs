using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
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
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01)));
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
            var refGrad = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            var noise = FirstStepNoise(refGrad, learningRate: 1e-2);
            for (int i = 0; i < expected.Length; i++)
                Assert.That(after[p][i], Is.EqualTo(expected[i]).Within(1e-5 + noise[i]),
                    $"AdamW step of {p}[{i}]: gradient {grads[p][i]:E3}, PEFT's {refGrad[i]:E3}");
        }
    }

    /// <summary>How much float32 rounding in a gradient can move Adam's first step, per element. The first step is
    /// lr·g/(|g| + ε): where |g| is near ε it is ill-conditioned, and a gradient error at float32's resolution of the
    /// tensor (2e-7·max|g|, below the gradient tolerance) moves it by lr·ε·δ/(|g| + ε)². On the gpt2 fixture one
    /// element has |g| = 6e-8; float64 evaluation of the same graph gives 6.51e-8 there, PyTorch's float32 6.26e-8.</summary>
    static double[] FirstStepNoise(float[] grad, double learningRate, double epsilon = 1e-8)
    {
        double delta = 2e-7 * grad.Max(Math.Abs);
        return grad.Select(g => learningRate * epsilon * delta / Math.Pow(Math.Abs(g) + epsilon, 2)).ToArray();
    }

    /// <summary>The optimizer alone, strictly: PEFT's own gradients through ortlora's AdamW graph give PEFT's step.</summary>
    [TestCase("llama")] [TestCase("gpt2")]
    public void AdamWGraphMatchesTorchOnReferenceGradients(string arch)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = EngineFixtures.InjectedModel(arch, "dynamo");
        using var graph = TrainingGraph.Build(model);
        var apply = graph.BuildApply(new AdamWOptions(WeightDecay: 0.01));
        var feeds = new Dictionary<string, HostTensor>
        {
            [TrainingGraph.LearningRate] = HostTensor.Of([1e-2f]), [TrainingGraph.Step] = HostTensor.Of([1f]),
            [TrainingGraph.MaxGradNorm] = HostTensor.Of([0f]),
        };
        foreach (var p in graph.Parameters)
        {
            var shape = graph.ParameterShapes[p];
            var zeros = new float[graph.InitialValues[p].Length];
            feeds[p] = HostTensor.Of(graph.InitialValues[p], shape);
            feeds[TrainingGraph.AccumulatorOf(p)] = HostTensor.Of(reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats(), shape);
            feeds[TrainingGraph.ExpAvgOf(p)] = HostTensor.Of(zeros, shape);
            feeds[TrainingGraph.ExpAvgSqOf(p)] = HostTensor.Of(zeros, shape);
        }
        var outputs = OrtRun.Run(new OnnxModel(apply), feeds);
        foreach (var p in graph.Parameters)
            Assert.That(Shared.MaxAbsDiff(outputs[TrainingGraph.Updated(p)].Floats, reference["step1." + EngineFixtures.ReferenceName(p)].AsFloats()),
                Is.LessThanOrEqualTo(1e-6f), p);
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

    /// <summary>A model whose weights live in a side file (as every model over 2 GB) trains the same. Its weights go from
    /// the file to the shared buffers one tensor at a time; the graphs the sessions load need no side file.</summary>
    [Test]
    public void ExternalDataModelGivesTheSameGradients()
    {
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        using var model = OnnxModel.Load(Shared.Require("fixtures", "external-data", "llama", "model.onnx"));
        Assert.That(model.HasExternalData, Is.True);
        LoraInjector.Inject(model, PeftAdapter.Load(Path.GetDirectoryName(Shared.Peft("llama", "adapter/adapter_config.json"))!));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        Assert.That(session.Graph.Frozen.TotalBytes, Is.GreaterThan(new FileInfo(Shared.Require("fixtures", "external-data", "llama", "model.onnx.data")).Length / 2));
        Assert.That(session.Graph.Gradients.Graph.Initializer.Where(OnnxModel.IsExternal), Is.Empty);
        var (loss, grads) = session.ComputeGradients(EngineFixtures.ReferenceBatch(reference));
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-4));
        foreach (var p in session.ParameterNames)
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            Assert.That(Shared.MaxAbsDiff(grads[p], expected), Is.LessThanOrEqualTo(1e-4f * expected.Max(Math.Abs) + 1e-7f), p);
        }
    }
}
