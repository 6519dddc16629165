using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>Large parameters (modules_to_save weights) updated in place by the host (<see cref="HostAdamW"/>) follow the
/// graph's AdamW: the same parameters and moments after steps with clipping, weight decay and a LoRA+ learning-rate
/// ratio, with and without gradient accumulation, and with float16's loss scaling.</summary>
public class EngineHostAdamWTests
{
    static OnnxModel Injected()
    {
        var model = OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"], ModulesToSave = ["lm_head"] });
        LoraTestKit.RandomizeB(model, std: 0.05f);
        return model;
    }

    static Batch MicroBatch(int seed)
    {
        var rng = new Random(seed);
        var ids = Enumerable.Range(0, 2 * 24).Select(_ => (long)rng.Next(512)).ToArray();
        return new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 24);
    }

    /// <summary>Optimizer steps (each of two accumulated micro-batches, or one batch) with each session, then its state.</summary>
    static (Dictionary<string, float[]> Parameters, Dictionary<string, SafeTensor> Moments, float GradNorm) Train(long hostUpdateFrom, bool accumulate,
        ComputeType compute, int steps)
    {
        using var model = Injected();
        var adamW = new AdamWOptions(WeightDecay: 0.01, LrMultiplier: p => p.EndsWith(".lora_B.weight") ? 4 : 1, Decays: p => !p.Contains("layers.0."));
        using var session = new TrainingSession(model, new TrainingSessionOptions(adamW, Compute: compute, HostUpdateFrom: hostUpdateFrom));
        for (int step = 0; step < steps; step++)
        {
            if (!accumulate) session.Step(MicroBatch(step), learningRate: 2e-3f, maxGradNorm: 0.5f);
            else
            {
                session.Accumulate(MicroBatch(2 * step), 0.5f);
                session.Accumulate(MicroBatch(2 * step + 1), 0.5f);
                session.ApplyAccumulated(learningRate: 2e-3f, maxGradNorm: 0.5f);
            }
        }
        Assert.That(session.OptimizerStep, Is.EqualTo(steps));
        return (session.GetParameters(), session.GetOptimizerState(), session.LastGradNorm);
    }

    /// <remarks>After one step the two agree to the last bit or two (the global norm is summed in another order). Later
    /// steps start from parameters an ulp apart, and AdamW's normalized update magnifies that where a moment nearly cancels,
    /// so three steps agree to a few parts in a million. float16 takes one step: there the next forward, rounded to 11
    /// bits, would magnify it beyond that.</remarks>
    [TestCase(false, ComputeType.Float32, 1)]
    [TestCase(true, ComputeType.Float32, 1)]
    [TestCase(false, ComputeType.Float32, 3)]
    [TestCase(true, ComputeType.Float32, 3)]
    [TestCase(false, ComputeType.Float16, 1)]
    public void HostUpdatesFollowTheGraphs(bool accumulate, ComputeType compute, int steps)
    {
        var graph = Train(long.MaxValue, accumulate, compute, steps);
        var host = Train(1, accumulate, compute, steps); // every parameter on the host
        var head = "base_model.model.lm_head.modules_to_save.default.weight";
        Assert.That(graph.Parameters.Keys, Does.Contain(head));
        float tolerance = steps == 1 ? 1e-7f : 3e-6f;
        Assert.That(host.GradNorm, Is.EqualTo(graph.GradNorm).Within(10 * tolerance * graph.GradNorm));
        Assert.That(graph.GradNorm, Is.GreaterThan(0.5f), "clipped");
        foreach (var (name, expected) in graph.Parameters)
        {
            using var original = Injected();
            var start = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == name));
            Assert.That(Shared.MaxAbsDiff(expected, start), Is.GreaterThan(1e-4f), $"{name} moved");
            Assert.That(Shared.MaxAbsDiff(host.Parameters[name], expected), Is.LessThan(tolerance * Math.Max(1, expected.Max(Math.Abs))), name);
        }
        foreach (var (key, expected) in graph.Moments.Where(kv => kv.Key.StartsWith("exp_avg")))
        {
            var e = expected.AsFloats();
            Assert.That(Shared.MaxAbsDiff(host.Moments[key].AsFloats(), e), Is.LessThan(10 * tolerance * e.Max(Math.Abs) + 1e-12f), key);
        }
    }
}
