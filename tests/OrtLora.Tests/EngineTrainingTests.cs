using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The engine's training modes beyond one plain step: accumulation, clipping, LoRA+, state round trips,
/// and gradients on an architecture the PEFT fixtures don't cover.</summary>
public class EngineTrainingTests
{
    static Dictionary<string, SafeTensor> Reference(string arch) => SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));

    /// <summary>ONNX Runtime's memory pattern is off unless the options or ORTLORA_MEMORY_PATTERN ask for it (on the CPU
    /// it doubled what a step's values take: TrainingSessionOptions.MemoryPattern); training is the same either way.</summary>
    [Test]
    public void TheMemoryPatternIsOffUnlessAskedFor()
    {
        using var model = EngineFixtures.TinyWithLora();
        var options = new TrainingSessionOptions(new AdamWOptions());
        var ids = Enumerable.Range(0, 2 * 16).Select(i => (long)(i * 7 % 500 + 1)).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 16);
        using var off = new TrainingSession(model, options);
        using var on = new TrainingSession(model, options with { MemoryPattern = true });
        Assert.That((off.MemoryPattern, on.MemoryPattern), Is.EqualTo((false, true)));
        for (int step = 0; step < 2; step++)
            Assert.That(on.Step(batch, 1e-2f, maxGradNorm: 1f), Is.EqualTo(off.Step(batch, 1e-2f, maxGradNorm: 1f)), $"step {step}");
        using (Shared.EnvironmentVariable("ORTLORA_MEMORY_PATTERN", "1"))
        using (var fromEnvironment = new TrainingSession(model, options)) Assert.That(fromEnvironment.MemoryPattern, Is.True);
        using (Shared.EnvironmentVariable("ORTLORA_MEMORY_PATTERN", "0"))
        using (var fromEnvironment = new TrainingSession(model, options with { MemoryPattern = true })) Assert.That(fromEnvironment.MemoryPattern, Is.False);
        using (Shared.EnvironmentVariable("ORTLORA_MEMORY_PATTERN", "yes"))
            Assert.That(Assert.Throws<OrtLoraException>(() => new TrainingSession(model, options).Dispose())!.Message, Does.Contain("ORTLORA_MEMORY_PATTERN"));
    }

    static Batch Row(Batch b, int row)
    {
        int s = b.SequenceLength;
        long[] Take(long[] a) => a.AsSpan(row * s, s).ToArray();
        return new Batch(Take(b.InputIds), Take(b.AttentionMask), Take(b.Labels), 1, s);
    }

    static int CountedTokens(Batch b) => Enumerable.Range(0, b.BatchSize)
        .Sum(r => Enumerable.Range(1, b.SequenceLength - 1).Count(t => b.Labels[r * b.SequenceLength + t] != -100));

    /// <summary>Two micro-batches weighted by their share of the counted tokens (the Hugging Face Trainer's
    /// num_items_in_batch normalization) give exactly the step on the whole batch.</summary>
    [Test]
    public void AccumulatingMicroBatchesEqualsOneStepOnTheirUnion()
    {
        var batch = PeftParity.ReadBatch(Reference("llama"));
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        using var whole = new TrainingSession(model, options);
        using var parts = new TrainingSession(model, options);
        for (int step = 0; step < 2; step++)
        {
            var loss = whole.Step(batch, 1e-2f, maxGradNorm: 1f);
            int total = CountedTokens(batch);
            float accumulated = 0;
            foreach (var row in new[] { Row(batch, 0), Row(batch, 1) })
            {
                float share = (float)CountedTokens(row) / total;
                accumulated += share * parts.Accumulate(row, share);
            }
            parts.ApplyAccumulated(1e-2f, maxGradNorm: 1f);
            Assert.That(accumulated, Is.EqualTo(loss).Within(1e-5), "token-weighted micro-batch losses average to the batch loss");
            Assert.That(parts.LastGradNorm, Is.EqualTo(whole.LastGradNorm).Within(1e-6 + 1e-5 * whole.LastGradNorm));
        }
        var (a, b) = (whole.GetParameters(), parts.GetParameters());
        foreach (var p in whole.ParameterNames) Assert.That(Shared.MaxAbsDiff(a[p], b[p]), Is.LessThan(1e-5f), p); // the step tolerance: sums in another order
        Assert.That(parts.OptimizerStep, Is.EqualTo(2));
    }

    /// <summary>The GPU's code path on the CPU: state and frozen weights allocated by the session's allocator and copied in
    /// and out by DeviceCopy train bit for bit like host memory, through steps, accumulation, eval and a state round trip.</summary>
    [Test]
    public void StateInSessionMemoryTrainsExactlyLikeHostArrays()
    {
        var batch = PeftParity.ReadBatch(Reference("llama"));
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        using var host = new TrainingSession(model, options);
        using var device = new TrainingSession(model, options with { StateInSessionMemory = true });
        foreach (var s in new[] { host, device })
        {
            s.Step(batch, 1e-2f, maxGradNorm: 1f);
            s.Accumulate(Row(batch, 0), 0.5f);
            s.Accumulate(Row(batch, 1), 0.5f);
            s.ApplyAccumulated(1e-2f);
            s.SetOptimizerState(s.GetOptimizerState());
            s.SetParameters(s.GetParameters());
            s.Step(batch, 1e-2f);
        }
        Assert.That(host.StateOnDevice, Is.False);
        Assert.That(device.StateOnDevice, Is.True);
        Assert.That(host.Graph.Frozen.OnDeviceCount, Is.Zero);
        Assert.That(device.Graph.Frozen.OnDeviceCount, Is.EqualTo(device.Graph.Frozen.Values.Count).And.GreaterThan(10), "every frozen weight moved");
        Assert.That(device.EvalLoss(batch), Is.EqualTo(host.EvalLoss(batch)));
        var (a, b) = (host.GetParameters(), device.GetParameters());
        foreach (var p in host.ParameterNames) Assert.That(b[p], Is.EqualTo(a[p]), p);
        var (ma, mb) = (host.GetOptimizerState(), device.GetOptimizerState());
        foreach (var k in ma.Keys) Assert.That(mb[k].Data, Is.EqualTo(ma[k].Data), k);
    }

    /// <summary>Graphs loaded for their batch shape train like the shape-agnostic ones, and a batch of another shape
    /// (a single row, then the whole batch again) reloads them.</summary>
    [Test]
    public void StaticShapesTrainLikeDynamicOnesAcrossBatchShapes()
    {
        var batch = PeftParity.ReadBatch(Reference("llama"));
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        using var dynamic = new TrainingSession(model, options);
        using var fixedShapes = new TrainingSession(model, options with { StaticShapes = true, StateInSessionMemory = true });
        foreach (var b in new[] { batch, Row(batch, 0), batch })
        {
            var (expected, actual) = (dynamic.Step(b, 1e-2f, maxGradNorm: 1f), fixedShapes.Step(b, 1e-2f, maxGradNorm: 1f));
            Assert.That(actual, Is.EqualTo(expected).Within(1e-6f * Math.Abs(expected)));
            Assert.That(fixedShapes.EvalLoss(b), Is.EqualTo(dynamic.EvalLoss(b)).Within(1e-6f * Math.Abs(expected)));
        }
        var (a, c) = (dynamic.GetParameters(), fixedShapes.GetParameters());
        foreach (var p in dynamic.ParameterNames) Assert.That(Shared.MaxAbsDiff(a[p], c[p]), Is.LessThan(1e-6f), p);
    }

    /// <summary>Clipping and the LoRA+ learning-rate ratio against AdamW's first step written out on the host in float64:
    /// g' = g·min(1, c/(‖g‖ + 1e-6)); p ← p(1 − lr·k·wd) − lr·k·g'/(|g'| + ε) with k the parameter's multiplier.
    /// In float16 compute the step unscales the gradients a bundle at a time and verify's gradients a parameter at a
    /// time: the same update.</summary>
    [TestCase(ComputeType.Float32)]
    [TestCase(ComputeType.Float16)]
    public void ClippingAndLoraPlusFollowTorchOnTheFirstStep(ComputeType compute)
    {
        var batch = PeftParity.ReadBatch(Reference("gpt2"));
        using var model = EngineFixtures.InjectedModel("gpt2", "torchscript");
        const double lr = 1e-3, wd = 0.01, ratio = 16;
        var adamw = new AdamWOptions(WeightDecay: wd, LrMultiplier: p => p.EndsWith(".lora_B.weight") ? ratio : 1);
        using var session = new TrainingSession(model, new TrainingSessionOptions(adamw, Compute: compute));
        var start = session.GetParameters();
        var (_, grads) = session.ComputeGradients(batch);
        double norm = Math.Sqrt(grads.Values.Sum(g => g.Sum(x => (double)x * x)));
        double maxNorm = norm / 3;
        session.Step(batch, (float)lr, (float)maxNorm);
        Assert.That(session.LastGradNorm, Is.EqualTo(norm).Within(1e-5 * norm), "grad_norm is the norm before clipping");
        double coef = Math.Min(1, maxNorm / (norm + 1e-6));
        var after = session.GetParameters();
        foreach (var p in session.ParameterNames)
        {
            double k = p.EndsWith(".lora_B.weight") ? ratio : 1;
            for (int i = 0; i < after[p].Length; i++)
            {
                double g = grads[p][i] * coef;
                double expected = start[p][i] * (1 - lr * k * wd) - lr * k * g / (Math.Abs(g) + 1e-8);
                Assert.That(after[p][i], Is.EqualTo(expected).Within(2e-6 + lr * k * 1e-8 * 1e-6 / Math.Pow(Math.Abs(g) + 1e-8, 2)), $"{p}[{i}]");
            }
        }
    }

    [Test]
    public void CheckpointStateRoundTripsAndEvalMatchesTraining()
    {
        var reference = Reference("llama");
        var batch = PeftParity.ReadBatch(reference);
        using var model = EngineFixtures.InjectedModel("llama", "torchscript");
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        using var first = new TrainingSession(model, options);
        for (int i = 0; i < 3; i++) first.Step(PeftParity.ReadBatch(reference, "traj.", i), 5e-3f);
        using var resumed = new TrainingSession(model, options);
        resumed.SetParameters(first.GetParameters());
        resumed.SetOptimizerState(first.GetOptimizerState());
        Assert.That(resumed.OptimizerStep, Is.EqualTo(3));
        Assert.That(resumed.EvalLoss(batch), Is.EqualTo(first.EvalLoss(batch)));
        Assert.That(resumed.ComputeGradients(batch).Loss, Is.EqualTo(first.EvalLoss(batch)).Within(1e-6));
        var (a, b) = (first.Step(batch, 5e-3f), resumed.Step(batch, 5e-3f));
        Assert.That(b, Is.EqualTo(a));
        foreach (var (p, v) in first.GetParameters()) Assert.That(resumed.GetParameters()[p], Is.EqualTo(v), p);
    }

    /// <summary>A LLaMA-style graph from ortlora's own builder (not a PyTorch export: different op patterns, tied
    /// embeddings, all-linear targets): gradients against central differences of the forward-only loss.</summary>
    [Test]
    public void GradientsOnAnUnseenArchitectureMatchFiniteDifferences()
    {
        using var model = OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"], Seed = 3 });
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        var rng = new Random(5);
        var values = session.GetParameters();
        foreach (var p in session.ParameterNames.Where(p => p.EndsWith(".lora_B.weight")))
            values[p] = values[p].Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
        session.SetParameters(values);
        const int b = 2, s = 9;
        var ids = Enumerable.Range(0, b * s).Select(_ => (long)rng.Next(512)).ToArray();
        var mask = Enumerable.Repeat(1L, b * s).ToArray();
        mask[^1] = mask[^2] = 0;
        var labels = ids.Select((t, i) => mask[i] == 0 || i % s < 2 ? -100L : t).ToArray();
        var batch = new Batch(ids, mask, labels, b, s);
        var (_, grads) = session.ComputeGradients(batch);
        const float h = 1e-2f;
        foreach (var p in session.ParameterNames.Where((_, i) => i % 5 == 0))
        {
            int k = Enumerable.Range(0, grads[p].Length).MaxBy(i => Math.Abs(grads[p][i]));
            float LossAt(float delta)
            {
                var shifted = (float[])values[p].Clone();
                shifted[k] += delta;
                session.SetParameters(new Dictionary<string, float[]> { [p] = shifted });
                return session.EvalLoss(batch);
            }
            double numeric = (LossAt(h) - LossAt(-h)) / (2.0 * h);
            session.SetParameters(new Dictionary<string, float[]> { [p] = values[p] });
            Assert.That(grads[p][k], Is.EqualTo(numeric).Within(2e-4 + 0.03 * Math.Abs(numeric)), $"d loss / d {p}[{k}]");
        }
    }

    /// <summary>A batch with no counted token (all labels -100) gives loss 0 and zero gradients, not NaN: Hugging Face
    /// would divide by zero and poison the adapter.</summary>
    [Test]
    public void ABatchWithoutCountedTokensGivesZeroLossAndGradients()
    {
        var batch = PeftParity.ReadBatch(Reference("gpt2"));
        batch = batch with { Labels = batch.Labels.Select(_ => -100L).ToArray() };
        using var model = EngineFixtures.InjectedModel("gpt2", "dynamo");
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        var (loss, grads) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(0f));
        Assert.That(grads.Values.SelectMany(g => g), Is.All.EqualTo(0f));
    }

    /// <summary>Batch and sequence sizes unlike the probe runs' (1×1, one long sequence, left padding) run, and the
    /// training graph's loss equals the forward-only graph's.</summary>
    [TestCase("llama", "torchscript")] [TestCase("gpt2", "dynamo")]
    public void AnyBatchShapeRunsAndAgreesWithEval(string arch, string export)
    {
        using var model = EngineFixtures.InjectedModel(arch, export);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        var rng = new Random(2);
        foreach (var (b, s, leftPad) in new[] { (1, 1, 0), (1, 40, 0), (3, 11, 4) })
        {
            var ids = Enumerable.Range(0, b * s).Select(_ => (long)rng.Next(320)).ToArray();
            var mask = Enumerable.Range(0, b * s).Select(i => i % s < leftPad && i / s == 0 ? 0L : 1L).ToArray();
            var labels = ids.Select((t, i) => mask[i] == 0 ? -100L : t).ToArray();
            var batch = new Batch(ids, mask, labels, b, s);
            var (loss, grads) = session.ComputeGradients(batch);
            Assert.That(loss, Is.EqualTo(session.EvalLoss(batch)).Within(1e-5), $"{b}×{s}");
            Assert.That(grads.Values.SelectMany(g => g).All(float.IsFinite), Is.True, $"{b}×{s}");
        }
    }

    [Test]
    public void AnOpWithoutARuleOnThePathIsAnErrorNamingIt()
    {
        var error = Assert.Throws<OrtLoraException>(() =>
            GradCheck.Check((g, x) => g.Node("CumSum", [x[0], g.Ints(0)]), [GradCheck.X("x", 3, 2)]));
        Assert.That(error!.Message, Does.Contain("CumSum").And.Contain("node 'CumSum'"));
    }

    /// <summary>Training-mode Dropout (PEFT's lora_dropout): the gradient flows through the kept elements, scaled by
    /// 1/(1 − ratio); checked within one run, since the mask is random.</summary>
    [Test]
    public void TrainingModeDropoutGradientUsesTheMask()
    {
        string y = "", grad = "";
        var outputs = GradCheck.RunOnce((g, x) =>
        {
            var ratio = g.Floats([], 0.25);
            var training = g.Editor.Unique("training");
            g.Editor.AddInitializer(Tensors.Scalar(training, 1, (int)global::Onnx.TensorProto.Types.DataType.Bool));
            return y = g.Node("Dropout", [x[0], ratio, training]);
        }, [GradCheck.X("x", 4, 50)], (int)global::Onnx.TensorProto.Types.DataType.Float, out grad);
        var dropped = outputs[y].Floats;
        var dx = outputs[grad].Floats;
        Assert.That(dropped.Count(v => v == 0), Is.InRange(10, 90), "about a quarter dropped");
        for (int i = 0; i < dropped.Length; i++)
            Assert.That(dx[i], Is.EqualTo(dropped[i] == 0 ? 0 : (2 * dropped[i] + 0.3) / 0.75).Within(1e-5), $"[{i}]");
    }
}

public class AutodiffNoSilentZeroTests
{
    /// <summary>Clip's bounds have no rule: when a parameter reaches one, the build stops instead of dropping it.</summary>
    [Test]
    public void AGradientARuleDoesNotGiveIsAnErrorNotAZero()
    {
        var error = Assert.Throws<OrtLoraException>(() =>
            GradCheck.Check((g, x) => g.Node("Clip", [x[0], x[1]]), [GradCheck.X("x", 3, 2), GradCheck.X("low")]));
        Assert.That(error!.Message, Does.Contain("Clip rule gives no gradient for input 1"));
    }
}
