using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>LoRA and DoRA on the token embedding (PEFT's lora.Embedding and DoraEmbeddingLayer) on every export style:
/// tables in fp32, fp16 behind a Cast and fully fp16, tied to the head or not, next to quantized linear layers, read by
/// int32 ids.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenEmbeddingLoraTests
{
    static readonly Architecture[] All = Architectures.All;
    const int R = 2;
    const double Scale = 4.0 / R;

    static LoraConfig Config(Architecture arch, bool dora = false) => new() { TargetModules = [UnseenChecks.Embedding(arch)], R = R, LoraAlpha = 4, UseDora = dora };

    /// <summary>What training does to A, which starts at zero: random values, so every later check can fail.</summary>
    static void PerturbA(OnnxModel model, LoraAdapter adapter)
    {
        var rng = new Random(17);
        var t = model.Graph.Initializer.Single(i => i.Name == adapter.LoraA);
        Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(_ => (float)(rng.NextDouble() * 2 - 1) * 0.3f).ToArray(), t.DataType));
    }

    /// <summary>Inject adds A [r, vocabulary] = 0 and B [hidden, r] from N(0, 1), so the logits stay; with A moved, the
    /// model computes the original with its table plus scale·(B·A)ᵀ (PEFT's get_delta_weight, computed here by loops and
    /// written into a fresh copy of the model); export (PEFT's lora_embedding_A/B keys), re-inject, runtime adapters and
    /// merge give the same logits.</summary>
    [TestCaseSource(nameof(All))]
    public void EmbeddingAdapterComputesTheTablePlusItsDelta(Architecture arch)
    {
        using var model = arch.Build();
        var before = UnseenChecks.Logits(model, arch);
        var lora = LoraInjector.Inject(model, Config(arch));
        var adapter = lora.Adapters.Single();
        Assert.That(adapter.Embedding, Is.True);
        Assert.That((adapter.In, adapter.Out), Is.EqualTo((Architectures.Vocab, Architectures.Hidden)));
        Assert.That(Shared.MaxAbsDiff(UnseenChecks.Logits(model, arch), before), Is.LessThan(1e-6f), "A starts at zero");
        var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
        var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraB));
        Assert.That(a, Has.All.EqualTo(0f));
        double mean = b.Average(), std = Math.Sqrt(b.Average(v => (v - mean) * (v - mean)));
        Assert.That(Math.Abs(mean), Is.LessThan(0.3), $"B from N(0, 1): mean over {b.Length}");
        Assert.That(std, Is.InRange(0.7, 1.3), $"B from N(0, 1): standard deviation over {b.Length}");

        PerturbA(model, adapter);
        a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
        var trained = UnseenChecks.Logits(model, arch);
        Assert.That(Shared.MaxAbsDiff(trained, before), Is.GreaterThan(1e-2f), "the model reads the adapter");
        float tolerance = arch.Name.Contains("fp16") ? 2e-2f : 1e-4f;
        if (!UnseenChecks.TiedHead(arch)) // a tied head reads the original table: merge keeps a copy for it (checked below)
        {
            using var expected = arch.Build();
            var table = expected.Graph.Initializer.Single(t => t.Name == adapter.BaseWeight);
            var values = expected.ReadFloats(table);
            for (long token = 0; token < adapter.In; token++)
                for (long h = 0; h < adapter.Out; h++)
                {
                    double delta = 0;
                    for (int k = 0; k < R; k++) delta += b[h * R + k] * a[k * adapter.In + token];
                    values[token * adapter.Out + h] += (float)(Scale * delta);
                }
            Tensors.SetRaw(table, Tensors.FloatsToBytes(values, table.DataType));
            Assert.That(Shared.MaxAbsDiff(UnseenChecks.Logits(expected, arch), trained), Is.LessThan(tolerance), "the table plus scale·(B·A)ᵀ");
        }

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch), trained);
        var path = lora.Adapters.Single().Module;
        Assert.That(exported.Tensors.Keys, Is.EquivalentTo(new[] { $"base_model.model.{path}.lora_embedding_A", $"base_model.model.{path}.lora_embedding_B" }));
        Assert.That(exported.Tensors[$"base_model.model.{path}.lora_embedding_A"].Shape, Is.EqualTo(new long[] { R, Architectures.Vocab }));
        Assert.That(exported.Tensors[$"base_model.model.{path}.lora_embedding_B"].Shape, Is.EqualTo(new long[] { Architectures.Hidden, R }));
        if (UnseenChecks.TiedHead(arch))
            Assert.That(model.Graph.Initializer.Count(t => t.Name.StartsWith(adapter.BaseWeight)), Is.EqualTo(2), "merged: the head keeps the original table");
    }

    /// <summary>A's and B's gradients equal, to rounding, what the gradient G of the whole table gives by the chain rule
    /// (dA = scale·Bᵀ·Gᵀ, dB = scale·Gᵀ·Aᵀ), G computed by an independent path: the same model as modules_to_save, its
    /// table copy holding the table plus the adapter's delta. Central differences agree to a few percent (the step moves a
    /// whole token's embedding, so the loss curves within it). A's columns of tokens the batch does not contain get exactly
    /// zero, as in PEFT; three AdamW steps lower the loss.</summary>
    [TestCaseSource(nameof(All))]
    public void EmbeddingAdapterGradients(Architecture arch)
    {
        if (!arch.Trainable) return;
        using var model = arch.Build();
        var lora = LoraInjector.Inject(model, Config(arch));
        var adapter = lora.Adapters.Single();
        PerturbA(model, adapter); // B's gradient is zero while A is
        var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
        var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraB));
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0), Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new Training.Engine.TrainingSession(model, options);
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (loss, grads) = session.ComputeGradients(batch);
        var start = session.GetParameters();
        bool half = arch.Name.Contains("fp16");
        foreach (var parameter in new[] { adapter.LoraA, adapter.LoraB })
        {
            var g = grads[parameter];
            var (index, largest) = g.Select((v, i) => (i, v)).MaxBy(x => Math.Abs(x.v));
            Assert.That(Math.Abs(largest), Is.GreaterThan(1e-4f), parameter);
            double numeric = UnseenChecks.CentralDifference(session, start, batch, parameter, index, half ? 5e-2 : 1e-2);
            Assert.That(largest, Is.EqualTo(numeric).Within((arch.HalfActivations ? 2e-3 : 3e-4) + (half ? 6e-2 : 4e-2) * Math.Abs(numeric)), $"{parameter}[{index}]");
        }

        using var whole = arch.Build();
        var saved = LoraInjector.Inject(whole, new LoraConfig { TargetModules = ["all-linear"], R = R, LoraAlpha = 4, ModulesToSave = [UnseenChecks.Embedding(arch)] });
        var copy = whole.Graph.Initializer.Single(t => t.Name == saved.SavedModules.Single().Weight);
        long vocab = adapter.In, hidden = adapter.Out;
        var table = whole.ReadFloats(copy);
        for (long token = 0; token < vocab; token++)
            for (long h = 0; h < hidden; h++)
                table[token * hidden + h] += (float)(Scale * Enumerable.Range(0, R).Sum(k => (double)b[h * R + k] * a[k * vocab + token]));
        Tensors.SetRaw(copy, Tensors.FloatsToBytes(table, copy.DataType));
        using var wholeSession = new Training.Engine.TrainingSession(whole, options);
        var (wholeLoss, wholeGrads) = wholeSession.ComputeGradients(batch);
        Assert.That(wholeLoss, Is.EqualTo(loss).Within((half ? 1e-3 : 1e-5) * loss), "the same model");
        var rows = wholeGrads[copy.Name];
        var expectedA = new float[R * vocab];
        var expectedB = new float[hidden * R];
        for (int k = 0; k < R; k++)
            for (long token = 0; token < vocab; token++)
                for (long h = 0; h < hidden; h++)
                {
                    double g = Scale * rows[token * hidden + h];
                    expectedA[k * vocab + token] += (float)(g * b[h * R + k]);
                    expectedB[h * R + k] += (float)(g * a[k * vocab + token]);
                }
        foreach (var (parameter, expected) in new[] { (adapter.LoraA, expectedA), (adapter.LoraB, expectedB) })
            Assert.That(Shared.MaxAbsDiff(grads[parameter], expected), Is.LessThan((half ? 3e-2f : 1e-5f) * expected.Max(Math.Abs) + 1e-7f), parameter);

        var seen = batch.InputIds.ToHashSet();
        var gradA = grads[adapter.LoraA];
        for (long token = 0; token < vocab; token++)
            if (!seen.Contains(token))
                Assert.That(Enumerable.Range(0, R).Select(k => gradA[k * vocab + token]), Has.All.EqualTo(0f), $"token {token} (not in the batch)");
        Assert.That(seen.Count(t => Enumerable.Range(0, R).Any(k => gradA[k * vocab + t] != 0)), Is.GreaterThan(seen.Count / 2), "tokens in the batch");
        session.SetParameters(start);
        for (int step = 0; step < 3; step++) session.Step(batch, learningRate: 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(loss - 1e-3), "three AdamW steps lower the loss");
    }

    [Test]
    public void AllLinearLeavesTheEmbeddingAloneAndMistakesAreOneErrorEach()
    {
        var llama = All.Single(a => a.Name == "llama-opset23-rmsnorm");
        using (var model = llama.Build())
            Assert.That(LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"] }).Adapters.Where(a => a.Embedding), Is.Empty, "PEFT's all-linear");
        using (var model = llama.Build())
        {
            var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["embed_tokens", "q_proj"], R = 4 });
            Assert.That(lora.Adapters.Count(a => a.Embedding), Is.EqualTo(1));
            Assert.That(lora.Adapters.Count(a => !a.Embedding), Is.EqualTo(2));
        }
        foreach (var (config, message) in new (LoraConfig, string)[]
                 {
                     (new() { TargetModules = ["embed_tokens"], Init = "loftq" }, "module 'model.embed_tokens' is an embedding, and LoftQ quantizes linear layers only"),
                     (new() { TargetModules = ["embed_tokens"], TrainableTokenIndices = new() { [""] = [1, 2] } }, "module 'model.embed_tokens' has a LoRA adapter"),
                     (new() { TargetModules = ["embed_tokens"], ModulesToSave = ["embed_tokens"] }, "module 'model.embed_tokens' is both in target_modules and in modules_to_save"),
                 })
        {
            using var model = llama.Build();
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, config));
            Assert.That(e!.Message, Does.Contain(message));
        }
    }

    /// <summary>A PEFT adapter as save_pretrained writes it, and with PEFT's in-memory names (".default"), goes onto the
    /// embedding; an embedding's tensors on a linear layer are one error naming both.</summary>
    [Test]
    public void PeftEmbeddingAdaptersImport()
    {
        var llama = All.Single(a => a.Name == "llama-opset23-rmsnorm");
        var rng = new Random(5);
        float[] Random(long n) => Enumerable.Range(0, (int)n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        var (a, b) = (Random(R * Architectures.Vocab), Random(Architectures.Hidden * R));
        float[]? first = null;
        foreach (var suffix in new[] { "", ".default" })
        {
            var adapter = new PeftAdapter
            {
                Config = Config(llama),
                Tensors = new()
                {
                    ["base_model.model.model.embed_tokens.lora_embedding_A" + suffix] = SafeTensor.FromFloats([R, Architectures.Vocab], a),
                    ["base_model.model.model.embed_tokens.lora_embedding_B" + suffix] = SafeTensor.FromFloats([Architectures.Hidden, R], b),
                },
            };
            using var model = llama.Build();
            var lora = LoraInjector.Inject(model, adapter);
            Assert.That(lora.Adapters.Single().LoraA, Is.EqualTo("base_model.model.model.embed_tokens.lora_embedding_A"), "named as ortlora names it");
            var logits = UnseenChecks.Logits(model, llama);
            if (first is null) first = logits;
            else Assert.That(logits, Is.EqualTo(first), "both spellings give one model");
            Assert.That(AdapterExporter.Export(model).Tensors["base_model.model.model.embed_tokens.lora_embedding_A"].AsFloats(), Is.EqualTo(a));
        }
        var wrong = new PeftAdapter
        {
            Config = Config(llama),
            Tensors = new()
            {
                ["base_model.model.model.layers.0.self_attn.q_proj.lora_embedding_A"] = SafeTensor.FromFloats([R, Architectures.Hidden], Random(R * Architectures.Hidden)),
                ["base_model.model.model.layers.0.self_attn.q_proj.lora_embedding_B"] = SafeTensor.FromFloats([Architectures.Hidden, R], b),
            },
        };
        using (var model = llama.Build())
        {
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, wrong));
            Assert.That(e!.Message, Does.Contain("is an embedding's adapter, but 'model.layers.0.self_attn.q_proj'"));
        }
    }

    // DoRA on the token embedding (PEFT's DoraEmbeddingLayer). PEFT treats the table [vocabulary, hidden] as the
    // transposed weight of a linear layer: V = W + scale·(B·A)ᵀ, m [hidden] and the norm per hidden feature (a column of
    // the table), and the lookup becomes s ⊙ (W[ids] + scale·Aᵀ[ids]·Bᵀ) with s = m / ‖V‖.

    static float[] Floats(OnnxModel model, string name) => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == name));

    static void Set(OnnxModel model, string name, Func<float, int, float> value)
    {
        var t = model.Graph.Initializer.Single(i => i.Name == name);
        Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(value).ToArray(), t.DataType));
    }

    /// <summary>What training does: A away from zero, m away from ‖W‖.</summary>
    static void Move(OnnxModel model, LoraAdapter adapter)
    {
        var rng = new Random(17);
        Set(model, adapter.LoraA, (_, _) => (float)(rng.NextDouble() * 2 - 1) * 0.3f);
        Set(model, adapter.Magnitude!, (m, _) => m * (float)(0.7 + 0.6 * rng.NextDouble()));
    }

    /// <summary>m starts at the norms of the table's columns (B·A = 0), so the injected model is the original. Moved, the
    /// model computes the original with its table replaced by PEFT's merged weight s ⊙ (W + scale·(B·A)ᵀ), computed here
    /// by loops; export (lora_magnitude_vector beside lora_embedding_A/B), re-inject, runtime adapters and merge agree.</summary>
    [TestCaseSource(nameof(All))]
    public void EmbeddingDoraComputesTheNormalizedTable(Architecture arch)
    {
        using var model = arch.Build();
        var before = UnseenChecks.Logits(model, arch);
        var lora = LoraInjector.Inject(model, Config(arch, dora: true));
        var adapter = lora.Adapters.Single();
        Assert.That((adapter.Embedding, adapter.Magnitude), Is.EqualTo((true, $"base_model.model.{adapter.Module}.lora_magnitude_vector")));
        Assert.That(Shared.MaxAbsDiff(UnseenChecks.Logits(model, arch), before), Is.LessThan(arch.HalfActivations ? 2e-3f : 1e-5f), "m = ‖W‖, A = 0: the original");
        long vocab = adapter.In, hidden = adapter.Out;
        var w = Floats(model, adapter.BaseWeight);
        var m0 = Floats(model, adapter.Magnitude!);
        for (long h = 0; h < hidden; h++)
        {
            double column = Math.Sqrt(Enumerable.Range(0, (int)vocab).Sum(t => (double)w[t * hidden + h] * w[t * hidden + h]));
            Assert.That(m0[h], Is.EqualTo(column).Within(1e-5 * column), $"m[{h}] = ‖W[:, {h}]‖");
        }

        Move(model, adapter);
        var trained = UnseenChecks.Logits(model, arch);
        Assert.That(Shared.MaxAbsDiff(trained, before), Is.GreaterThan(1e-2f), "the model reads the adapter");
        if (!UnseenChecks.TiedHead(arch)) // a tied head reads the original table, and merge keeps a copy for it
        {
            var (a, b, m) = (Floats(model, adapter.LoraA), Floats(model, adapter.LoraB), Floats(model, adapter.Magnitude!));
            var v = new double[vocab * hidden];
            for (long t = 0; t < vocab; t++)
                for (long h = 0; h < hidden; h++)
                    v[t * hidden + h] = w[t * hidden + h] + Scale * Enumerable.Range(0, R).Sum(k => (double)b[h * R + k] * a[k * vocab + t]);
            var merged = new float[v.Length];
            for (long h = 0; h < hidden; h++)
            {
                double norm = Math.Sqrt(Enumerable.Range(0, (int)vocab).Sum(t => v[t * hidden + h] * v[t * hidden + h]));
                for (long t = 0; t < vocab; t++) merged[t * hidden + h] = (float)(m[h] / norm * v[t * hidden + h]);
            }
            using var expected = arch.Build();
            Set(expected, adapter.BaseWeight, (_, i) => merged[i]);
            Assert.That(Shared.MaxAbsDiff(UnseenChecks.Logits(expected, arch), trained), Is.LessThan(arch.Name.Contains("fp16") ? 2e-2f : 1e-4f), "m ⊙ V / ‖V‖");
        }

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch, dora: true), trained);
        Assert.That(exported.Config.UseDora);
        var path = lora.Adapters.Single().Module;
        Assert.That(exported.Tensors.Keys, Is.EquivalentTo(new[]
            { $"base_model.model.{path}.lora_embedding_A", $"base_model.model.{path}.lora_embedding_B", $"base_model.model.{path}.lora_magnitude_vector" }));
        Assert.That(exported.Tensors[$"base_model.model.{path}.lora_magnitude_vector"].Shape, Is.EqualTo(new long[] { hidden }));
    }

    /// <summary>Training treats ‖V‖ as a constant, as PEFT detaches it: the gradients of A, B and m equal those of the
    /// same model with the norm node replaced by its value, and those match central differences of the loss; three AdamW
    /// steps lower it.</summary>
    [TestCaseSource(nameof(All))]
    public void EmbeddingDoraGradientsTreatTheNormAsAConstant(Architecture arch)
    {
        if (!arch.Trainable) return;
        using var model = arch.Build();
        var adapter = LoraInjector.Inject(model, Config(arch, dora: true)).Adapters.Single();
        Move(model, adapter);
        using var frozenNorm = new OnnxModel(global::Onnx.ModelProto.Parser.ParseFrom(model.ToBytes()));
        var v = Floats(model, adapter.BaseWeight);
        LayerAdapter.Read(model, [adapter]).AddDeltaTo(v, adapter.Layout);
        var norm = Dora.OutputNorms(v, adapter.Layout, adapter.In, adapter.Out);
        frozenNorm.Graph.Node.Remove(frozenNorm.Graph.Node.Single(n => n.Output.Contains(adapter.WeightNorm!)));
        frozenNorm.Graph.Initializer.Add(Tensors.FromFloats(adapter.WeightNorm!, [adapter.Out], norm));

        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0), Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var detached = new Training.Engine.TrainingSession(model, options);
        using var constant = new Training.Engine.TrainingSession(frozenNorm, options);
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (loss, grads) = detached.ComputeGradients(batch);
        var (constantLoss, constantGrads) = constant.ComputeGradients(batch);
        bool half = arch.Name.Contains("fp16");
        Assert.That(constantLoss, Is.EqualTo(loss).Within(1e-6 * loss), "the same model");
        Assert.That(grads.Keys, Is.EquivalentTo(new[] { adapter.LoraA, adapter.LoraB, adapter.Magnitude! }));
        foreach (var (p, g) in grads)
            Assert.That(Shared.MaxAbsDiff(constantGrads[p], g), Is.LessThanOrEqualTo(1e-5f * g.Max(Math.Abs) + 1e-9f), p);

        var start = constant.GetParameters();
        foreach (var p in grads.Keys)
        {
            var (index, largest) = grads[p].Select((v, i) => (i, v)).MaxBy(x => Math.Abs(x.v));
            Assert.That(Math.Abs(largest), Is.GreaterThan(1e-5f), p);
            double numeric = UnseenChecks.CentralDifference(constant, start, batch, p, index, (half ? 5e-2 : 1e-2) * Math.Max(1, Math.Abs(start[p][index])));
            Assert.That(largest, Is.EqualTo(numeric).Within((arch.HalfActivations ? 2e-3 : 3e-4) + (half ? 6e-2 : 4e-2) * Math.Abs(numeric)), $"{p}[{index}]");
        }
        for (int step = 0; step < 3; step++) detached.Step(batch, learningRate: 1e-2f);
        Assert.That(detached.EvalLoss(batch), Is.LessThan(loss - 1e-3), "three AdamW steps lower the loss");
    }
}
