using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>DoRA on the token embedding (PEFT's DoraEmbeddingLayer) on every export style. PEFT treats the table
/// [vocabulary, hidden] as the transposed weight of a linear layer: V = W + scale·(B·A)ᵀ, m [hidden] and the norm per
/// hidden feature (a column of the table), and the lookup becomes s ⊙ (W[ids] + scale·Aᵀ[ids]·Bᵀ) with s = m / ‖V‖.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenEmbeddingDoraTests
{
    static readonly Architecture[] All = Architectures.All;
    const int R = 2;
    const double Scale = 4.0 / R;

    static LoraConfig Config(Architecture arch) => new() { TargetModules = [UnseenChecks.Embedding(arch)], R = R, LoraAlpha = 4, UseDora = true };

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
        var lora = LoraInjector.Inject(model, Config(arch));
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

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch), trained);
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
        var adapter = LoraInjector.Inject(model, Config(arch)).Adapters.Single();
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
