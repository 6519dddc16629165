using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>inject → gradients → train step → merge → export on exports the PEFT fixtures do not cover (see
/// <see cref="Architectures"/>). Every check compares two independent computations: merged against unmerged logits,
/// re-injected exported adapter against the trained model, analytic gradients against finite differences of the
/// engine's own loss.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenArchitectureTests
{
    const int Batch = 2, Seq = 5, Past = 3;
    static readonly Architecture[] All = Architectures.All;

    static long[] Tokens(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (long)rng.Next(1, (int)Architectures.Vocab)).ToArray();
    }

    /// <summary>Row 1 is left-padded by two tokens, so masking matters; none for an architecture that takes no padding
    /// (GroupQueryAttention assumes right padding and leaves padded rows undefined).</summary>
    static long[] AttentionMask(int pastLength, Architecture arch) =>
        Enumerable.Range(0, Batch).SelectMany(b => Enumerable.Range(0, pastLength + Seq).Select(t => b == 1 && t < 2 && !arch.NoPadding ? 0L : 1L)).ToArray();

    /// <summary>Inference feeds; a cached model gets a non-empty past (random keys and values).</summary>
    public static Dictionary<string, HostTensor> Feeds(Architecture arch)
    {
        // GroupQueryAttention takes a past with more than one new token only for batch 1: GenAI exports get an empty one.
        int past = arch.Past && !arch.GenAi ? Past : 0;
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(Tokens(Batch * Seq, 1), Batch, Seq),
            ["attention_mask"] = HostTensor.Of(AttentionMask(past, arch), Batch, past + Seq),
        };
        if (arch.Int32Tokens)
            foreach (var name in feeds.Keys.ToList()) feeds[name] = new HostTensor(feeds[name].Int64s.Select(v => (int)v).ToArray(), feeds[name].Shape);
        if (arch.FloatMask) feeds["attention_mask"] = new HostTensor(feeds["attention_mask"].Int64s.Select(v => (float)v).ToArray(), feeds["attention_mask"].Shape);
        if (!arch.Past) return feeds;
        if (!arch.GenAi) feeds["position_ids"] = HostTensor.Of(Enumerable.Range(0, Batch * Seq).Select(i => (long)(past + i % Seq)).ToArray(), Batch, Seq);
        var rng = new Random(3);
        for (int l = 0; l < 2; l++)
            foreach (var kind in new[] { "key", "value" })
            {
                long[] shape = [Batch, arch.CacheHeads, past, arch.CacheHeadDim];
                var values = Enumerable.Range(0, (int)Tensors.ElementCount(shape)).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
                feeds[$"past_key_values.{l}.{kind}"] = arch.Name.Contains("fp16")
                    ? new HostTensor(values.Select(v => (Float16)v).ToArray(), shape) : new HostTensor(values, shape);
            }
        return feeds;
    }

    static float[] Logits(OnnxModel model, Architecture arch) => OrtRun.Run(model, Feeds(arch), ["logits"])["logits"].Floats;

    public static Training.Engine.Batch TrainBatch(Architecture arch)
    {
        var ids = Tokens(Batch * Seq, 2);
        var mask = AttentionMask(0, arch);
        var labels = ids.Select((t, i) => mask[i] == 0 ? -100 : t).ToArray();
        return new Training.Engine.Batch(ids, mask, labels, Batch, Seq);
    }

    /// <summary>fp16 weights round W + scale·B·A to 11 bits when merged; float32 weights keep it to 1e-4.</summary>
    static float MergeTolerance(Architecture arch) => arch.Name.Contains("fp16") ? 2e-2f : 1e-4f;

    [TestCaseSource(nameof(All))]
    public void AllLinearFindsThePeftModules(Architecture arch)
    {
        using var model = arch.Build();
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        Assert.That(lora.Adapters.Select(a => a.Module), Is.EquivalentTo(arch.Targets));
        Assert.That(lora.Adapters.Select(a => a.LoraA), Is.EquivalentTo(arch.Targets.Select(t => $"base_model.model.{t}.lora_A.weight")));
    }

    [TestCaseSource(nameof(All))]
    public void CanonicalVariantSplitsOnlyRealFusedLayers(Architecture arch)
    {
        using var model = arch.Build();
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, Variant = "canonical" });
        foreach (var module in arch.Targets)
        {
            var parts = lora.Adapters.Where(a => a.Module == module).Select(a => a.Part?.Size ?? -1).ToArray();
            var expected = arch.FusedParts.TryGetValue(module, out var p) ? p.Select(v => (long)v).ToArray() : [-1L];
            Assert.That(parts, Is.EqualTo(expected), module);
        }
    }

    [TestCaseSource(nameof(All))]
    public void MergeAndExportReproduceTheAdaptedLogits(Architecture arch)
    {
        foreach (var variant in arch.FusedParts.Count > 0 ? new[] { "performant", "canonical" } : ["performant"])
        {
            using var model = arch.Build();
            var before = Logits(model, arch);
            LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, LoraAlpha = 8, Variant = variant });
            Assert.That(Shared.MaxAbsDiff(Logits(model, arch), before), Is.LessThan(1e-5f), $"{variant}: B = 0 leaves the logits alone");
            LoraTestKit.RandomizeB(model, std: 0.3f);
            var adapted = Logits(model, arch);
            Assert.That(Shared.MaxAbsDiff(adapted, before), Is.GreaterThan(1e-2f), $"{variant}: random B changes the logits");

            var exported = AdapterExporter.Export(model);
            using var reloaded = arch.Build();
            LoraInjector.Inject(reloaded, exported);
            Assert.That(Shared.MaxAbsDiff(Logits(reloaded, arch), adapted), Is.LessThan(1e-4f), $"{variant}: exported adapter re-injected");

            // A GenAI builder export's packed qkv_proj takes the Hugging Face q_proj, k_proj, v_proj as parts (canonical).
            if (variant == (arch.GenAi && arch.FusedParts.Count > 0 ? "canonical" : "performant"))
                Assert.That(Shared.MaxAbsDiff(RuntimeAdapterLogits(arch, exported, new LoraConfig { TargetModules = ["all-linear"], R = 4, LoraAlpha = 8, Variant = variant }), adapted),
                    Is.LessThan(1e-4f), "as an ORT runtime adapter");

            int layers = LoraModel.Read(model)!.ByLayer().Count();
            LoraMerger.Merge(model);
            Assert.That(Shared.MaxAbsDiff(Logits(model, arch), adapted), Is.LessThan(MergeTolerance(arch)), $"{variant}: merged");
            Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(arch.MergedHistogram(layers)), $"{variant}: merged graph has the original's ops");
        }
    }

    /// <summary>The exported adapter saved as a PEFT directory and activated through ONNX Runtime's adapter API on a
    /// freshly injected (zero-B) model whose LoRA parameters are overridable inputs.</summary>
    /// <param name="asFile">through an .onnx_adapter file written from the directory (`adapters convert`)</param>
    internal static float[] RuntimeAdapterLogits(Architecture arch, PeftAdapter exported, LoraConfig? injected = null, bool asFile = false)
    {
        var dir = Shared.TempDir();
        try
        {
            exported.Save(dir);
            using var model = arch.Build();
            var lora = LoraInjector.Inject(model, injected ?? new LoraConfig { TargetModules = ["all-linear"], R = 4, LoraAlpha = 8 });
            Deploy.LoraRuntimeForm.MakeOverridable(model);
            using var session = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
            var path = dir;
            if (asFile)
            {
                path = Path.Combine(dir, "adapter.onnx_adapter");
                File.WriteAllBytes(path, Deploy.OnnxAdapterFile.Serialize(Deploy.RuntimeAdapters.FromPeftDirectory(dir, lora.Config.Scale)));
            }
            using var adapter = Deploy.RuntimeAdapters.Load(path, session, lora.Config.Scale);
            using var runOptions = new RunOptions();
            runOptions.AddActiveLoraAdapter(adapter);
            var feeds = Feeds(arch);
            var values = feeds.Values.Select(t => t.ToOrtValue()).ToList();
            try
            {
                using var outputs = session.Run(runOptions, feeds.Keys.ToList(), values, ["logits"]);
                return HostTensor.FromOrtValue(outputs[0]).Floats;
            }
            finally { foreach (var v in values) v.Dispose(); }
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [TestCaseSource(nameof(All))]
    public void GradientsMatchFiniteDifferencesAndAStepLowersTheLoss(Architecture arch)
    {
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f); // B = 0 would make every gradient of A zero
        if (!arch.Trainable)
        {
            var e = Assert.Throws<OrtLoraException>(() => TrainingGraph.Build(model));
            Assert.That(e!.Message, Does.Contain("opset"));
            return;
        }
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0),
            Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL));
        var batch = TrainBatch(arch);
        var (loss, grads) = session.ComputeGradients(batch);
        var start = session.GetParameters();
        Assert.That(session.EvalLoss(batch), Is.EqualTo(loss).Within(1e-5 * Math.Abs(loss)), "eval and gradient graphs agree on the loss");

        double LossAt(Func<string, int, double> offset)
        {
            session.SetParameters(start.ToDictionary(kv => kv.Key, kv => kv.Value.Select((v, i) => (float)(v + offset(kv.Key, i))).ToArray()));
            return session.EvalLoss(batch);
        }
        // Central differences of the float32 loss (noise ~3e-5) along unit directions: the gradient's own (largest
        // signal), the two largest components, and random directions through every parameter at once (small signal:
        // tolerance relative to the gradient's norm, which still catches an error of a few percent of it).
        double norm = Math.Sqrt(grads.Values.Sum(g => g.Sum(v => (double)v * v)));
        var checks = new List<(string What, Dictionary<string, double[]> D, double H, double Tolerance)>
            { ("the gradient", grads.ToDictionary(kv => kv.Key, kv => kv.Value.Select(v => v / norm).ToArray()), 1e-2, 1e-2 * norm) };
        foreach (var (name, index, g) in grads.SelectMany(kv => kv.Value.Select((g, i) => (kv.Key, i, g))).OrderByDescending(t => Math.Abs(t.g)).Take(2))
            checks.Add(($"{name}[{index}]", start.ToDictionary(kv => kv.Key, kv => kv.Value.Select((_, i) => kv.Key == name && i == index ? 1.0 : 0).ToArray()), 1e-2, 2e-4 + 1e-2 * Math.Abs(g)));
        var rng = new Random(5);
        for (int trial = 0; trial < 2; trial++)
        {
            var d = start.ToDictionary(kv => kv.Key, kv => kv.Value.Select(_ => rng.NextDouble() * 2 - 1).ToArray());
            double n = Math.Sqrt(d.Values.Sum(v => v.Sum(x => x * x)));
            checks.Add(($"random direction {trial}", d.ToDictionary(kv => kv.Key, kv => kv.Value.Select(x => x / n).ToArray()), 3e-2,
                (arch.HalfActivations ? 4e-3 : 1e-3) * norm));
        }
        foreach (var (what, d, h, tolerance) in checks)
        {
            double analytic = d.Sum(kv => kv.Value.Select((x, i) => x * grads[kv.Key][i]).Sum());
            double numeric = (LossAt((p, i) => h * d[p][i]) - LossAt((p, i) => -h * d[p][i])) / (2 * h);
            Assert.That(analytic, Is.EqualTo(numeric).Within(tolerance + 2e-2 * Math.Abs(numeric)), $"d loss along {what}");
        }

        session.SetParameters(start);
        for (int step = 0; step < 3; step++) session.Step(batch, learningRate: 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(loss - 1e-3), "three AdamW steps on the same batch lower its loss");
    }

    /// <summary>Gradient checkpointing changes where activations come from, not the numbers: on every export style, the
    /// loss and gradients equal those of the graph that stores all activations (to float32 reordering).</summary>
    [TestCaseSource(nameof(All))]
    public void CheckpointedGradientsEqualStoredOnes(Architecture arch)
    {
        if (!arch.Trainable) return; // covered above: a clear error
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var batch = TrainBatch(arch);
        (float Loss, Dictionary<string, float[]> Grads, int Segments) Gradients(bool checkpointing)
        {
            using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(),
                Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL, GradientCheckpointing: checkpointing));
            var (loss, grads) = session.ComputeGradients(batch);
            return (loss, grads, Autodiff.Checkpoints.CountSegments(session.Graph.Gradients.Graph));
        }
        var stored = Gradients(false);
        var recomputed = Gradients(true);
        TestContext.Out.WriteLine($"{arch.Name}: {recomputed.Segments} segments");
        Assert.That(recomputed.Loss, Is.EqualTo(stored.Loss).Within(1e-6 * Math.Abs(stored.Loss)));
        foreach (var (p, g) in stored.Grads)
            Assert.That(Shared.MaxAbsDiff(recomputed.Grads[p], g), Is.LessThanOrEqualTo(1e-5f * g.Max(Math.Abs) + 1e-9f), p);
    }

    /// <summary>lora_dropout puts a Dropout on each adapter's input: on fp16 activations, fused opset-23 ops and a
    /// cache export the step still runs and, with dropout, still lowers the loss measured without it.</summary>
    [TestCase("llama-fp16")]
    [TestCase("llama-opset23-attention-rotary-ops")]
    [TestCase("optimum-kv-cache")]
    public void StepsWithLoraDropoutLowerTheLoss(string name)
    {
        var arch = All.Single(a => a.Name == name);
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, LoraDropout = 0.1 });
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        Assert.That(session.Graph.Gradients.Graph.Node.Count(x => x.OpType == "Dropout"), Is.EqualTo(LoraModel.Read(model)!.Adapters.Count));
        var batch = TrainBatch(arch);
        float before = session.EvalLoss(batch);
        for (int step = 0; step < 3; step++) Assert.That(float.IsFinite(session.Step(batch, learningRate: 1e-2f)));
        Assert.That(session.EvalLoss(batch), Is.LessThan(before - 1e-3));
    }

    /// <summary>NEFTune finds the token embedding of every export style (through int32 inputs' Casts, GPT-2's reshaped
    /// ids, fp16 tables behind Casts): one noise input, added to the Gather of a [vocabulary, hidden] table, and steps
    /// with the noise lower the loss measured without it.</summary>
    [TestCaseSource(nameof(All))]
    public void NeftuneNoiseGoesOnTheTokenEmbedding(Architecture arch)
    {
        if (!arch.Trainable) return;
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), NeftuneNoiseAlpha: 5));
        var graph = session.Graph.Gradients.Graph;
        Assert.That(graph.Input.Count(i => i.Name == Training.Engine.NeftuneNoise.Input), Is.EqualTo(1));
        var add = graph.Node.Single(n => n.Name == "neftune/Add");
        var gather = graph.Node.Single(n => n.Output.Contains(add.Input[0]));
        Assert.That(gather.OpType, Is.EqualTo("Gather"));
        var tableName = graph.Node.SingleOrDefault(n => n.OpType == "Cast" && n.Output[0] == gather.Input[0])?.Input[0] ?? gather.Input[0];
        var table = graph.Input.Single(i => i.Name == tableName).Type.TensorType.Shape.Dim;
        Assert.That(table[0].DimValue, Is.EqualTo(Architectures.Vocab), "the table has a row per token");
        var batch = TrainBatch(arch);
        float before = session.EvalLoss(batch);
        for (int step = 0; step < 3; step++) Assert.That(float.IsFinite(session.Step(batch, learningRate: 1e-2f)));
        Assert.That(session.EvalLoss(batch), Is.LessThan(before - 1e-3));
    }
}
