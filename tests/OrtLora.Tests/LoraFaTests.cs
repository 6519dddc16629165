using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`--optim lorafa` (PEFT's create_lorafa_optimizer): A frozen, each B's clipped gradient projected by
/// (A·Aᵀ + δI)⁻¹/s², then LoraFAOptimizer's AdamW (√(1 − β2ᵗ) in the step size, eps 1e-6, decay after the update),
/// against that arithmetic written out here from the engine's own gradients.</summary>
public class LoraFaTests
{
    static Batch RandomBatch()
    {
        var rng = new Random(3);
        var ids = Enumerable.Range(0, 2 * 12).Select(_ => (long)rng.Next(1, 500)).ToArray();
        return new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 12);
    }

    [Test]
    public void TwoStepsAreLoraFaOptimizersArithmetic()
    {
        using var model = OnnxModel.Load(Tiny("model.onnx"));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 4, LoraAlpha = 8 });
        RandomizeB(model, std: 0.2f);
        const double lr = 1e-2, weightDecay = 0.1, maxGradNorm = 0.5;
        var options = LoraFa.Options(model, lora, weightDecay);
        using var session = new TrainingSession(model, new TrainingSessionOptions(options, HostUpdateFrom: long.MaxValue), LoraFa.Parameters(model));
        Assert.That(session.ParameterNames, Has.None.Contains("lora_A"), "A is frozen");
        Assert.That(session.ParameterNames, Has.Count.EqualTo(lora.Adapters.Count));

        // the projection undoes A·Aᵀ + δI, divided by the scale squared (s = 8/4)
        var first = lora.Adapters[0];
        var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == first.LoraA));
        var p = options.LoraFa!.Of(first.LoraB)!;
        int r = 4, n = a.Length / 4;
        for (int i = 0; i < r; i++)
            for (int j = 0; j < r; j++)
            {
                double sum = 0;
                for (int k = 0; k < r; k++)
                {
                    double aat = Enumerable.Range(0, n).Sum(c => (double)a[k * n + c] * a[j * n + c]) + (k == j ? 1e-8 : 0);
                    sum += p[i * r + k] * aat;
                }
                Assert.That(sum, Is.EqualTo(i == j ? 1 / 4.0 : 0).Within(1e-4), $"P·(A·Aᵀ + δI) [{i}, {j}]");
            }

        var batch = RandomBatch();
        var parameters = session.GetParameters();
        var m = parameters.ToDictionary(kv => kv.Key, kv => new double[kv.Value.Length]);
        var v = parameters.ToDictionary(kv => kv.Key, kv => new double[kv.Value.Length]);
        var expected = parameters.ToDictionary(kv => kv.Key, kv => kv.Value.Select(x => (double)x).ToArray());
        for (int step = 1; step <= 2; step++)
        {
            var (_, gradients) = session.ComputeGradients(batch);
            double norm = Math.Sqrt(gradients.Values.Sum(g => g.Sum(x => (double)x * x)));
            double coef = Math.Min(1, maxGradNorm / (norm + 1e-6));
            Assert.That(coef, Is.LessThan(1), "the gradients are clipped: the projection comes after");
            double stepSize = lr * Math.Sqrt(1 - Math.Pow(0.999, step)) / (1 - Math.Pow(0.9, step));
            foreach (var (name, grad) in gradients)
            {
                var projection = options.LoraFa.Of(name)!;
                int rows = grad.Length / r;
                for (int row = 0; row < rows; row++)
                    for (int col = 0; col < r; col++)
                    {
                        double g = 0;
                        for (int k = 0; k < r; k++) g += coef * grad[row * r + k] * projection[k * r + col];
                        int i = row * r + col;
                        m[name][i] = 0.9 * m[name][i] + 0.1 * g;
                        v[name][i] = 0.999 * v[name][i] + 0.001 * g * g;
                        expected[name][i] -= stepSize * m[name][i] / (Math.Sqrt(v[name][i]) + 1e-6);
                        expected[name][i] *= 1 - lr * weightDecay;
                    }
            }
            session.Step(batch, (float)lr, (float)maxGradNorm);
            foreach (var (name, values) in session.GetParameters())
            {
                double worst = values.Select((x, i) => Math.Abs(x - expected[name][i])).Max(), size = expected[name].Max(Math.Abs);
                Assert.That(worst, Is.LessThan(1e-5 * Math.Max(1, size)), $"{name} after step {step}");
            }
        }
    }

    /// <summary>Gradient accumulation takes the same LoRA-FA update: two micro-batches of one row each step as one batch of
    /// both (the apply graph projects the accumulated gradients).</summary>
    [Test]
    public void AccumulationStepsAsOneBatch()
    {
        using var model = OnnxModel.Load(Tiny("model.onnx"));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 4, LoraAlpha = 8 });
        RandomizeB(model, std: 0.2f);
        var options = new TrainingSessionOptions(LoraFa.Options(model, lora, 0.1), HostUpdateFrom: long.MaxValue);
        using var whole = new TrainingSession(model, options, LoraFa.Parameters(model));
        using var halves = new TrainingSession(model, options, LoraFa.Parameters(model));
        var batch = RandomBatch();
        Batch Row(int r) => new(batch.InputIds[(r * 12)..((r + 1) * 12)], batch.AttentionMask[(r * 12)..((r + 1) * 12)], batch.Labels[(r * 12)..((r + 1) * 12)], 1, 12);
        for (int step = 0; step < 2; step++)
        {
            whole.Step(batch, 1e-2f, 0.5f);
            halves.Accumulate(Row(0), 0.5f);
            halves.Accumulate(Row(1), 0.5f);
            halves.ApplyAccumulated(1e-2f, 0.5f);
        }
        var (a, b) = (whole.GetParameters(), halves.GetParameters());
        foreach (var (name, values) in a) Assert.That(Shared.MaxAbsDiff(values, b[name]), Is.LessThan(1e-5f), name);
        Assert.That(Shared.MaxAbsDiff(a[lora.Adapters[0].LoraB], model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].LoraB))), Is.GreaterThan(1e-3f), "B moved");
    }

    /// <summary>`train --optim lorafa`: the adapter's A tensors are the injected ones whatever the steps, the B tensors
    /// train; DoRA and LoRA+ are refused.</summary>
    [Test]
    public void TrainKeepsAAsInjected()
    {
        var (short_, long_) = (Shared.TempDir(), Shared.TempDir());
        string[] Args(string dir, int steps) => ["train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", dir, "--optim", "lorafa", "--max-steps", steps.ToString(),
            "--learning-rate", "2e-3", "--plain-log"];
        OrtloraOk(Args(short_, 1));
        OrtloraOk(Args(long_, 6));
        var (a, b) = (SafeTensors.Read(Path.Combine(short_, "adapter_model.safetensors")), SafeTensors.Read(Path.Combine(long_, "adapter_model.safetensors")));
        foreach (var (key, tensor) in a)
        {
            double diff = Shared.MaxAbsDiff(tensor.AsFloats(), b[key].AsFloats());
            if (key.Contains("lora_A")) Assert.That(diff, Is.Zero, key);
            else Assert.That(diff, Is.GreaterThan(0), key);
        }
        var dora = Ortlora([.. Args(Shared.TempDir(), 1), "--use-dora"]);
        Assert.That(dora.Error, Does.Contain("--optim lorafa").And.Contain("DoRA"));
        var plus = Ortlora([.. Args(Shared.TempDir(), 1), "--loraplus-lr-ratio", "16"]);
        Assert.That(plus.Error, Does.Contain("--loraplus-lr-ratio"));
    }
}
