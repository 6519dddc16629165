using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>LoRA on the token embedding (PEFT's lora.Embedding) on every export style: tables in fp32, fp16 behind a
/// Cast and fully fp16, tied to the head or not, next to quantized linear layers, read by int32 ids.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenEmbeddingLoraTests
{
    static readonly Architecture[] All = Architectures.All;
    const int R = 2;
    const double Scale = 4.0 / R;

    static LoraConfig Config(Architecture arch) => new() { TargetModules = [UnseenChecks.Embedding(arch)], R = R, LoraAlpha = 4 };

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
}
