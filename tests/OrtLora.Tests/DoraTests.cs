using Onnx;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>DoRA (--use-dora, PEFT's use_dora) on the four fixture exports, which between them store weights [out, in]
/// behind a Transpose, pre-transposed [in, out], as GPT-2's Conv1D, and in Gemm with the bias inside.</summary>
public class DoraTests
{
    static string Injected(string arch, string file, params string[] extra)
    {
        var output = Path.Combine(Shared.TempDir(), "dora.onnx");
        OrtloraOk(["inject", Shared.Peft(arch, file), "-o", output, "--use-dora", "--target-modules", "all-linear", .. extra]);
        return output;
    }

    /// <summary>m starts at ‖W‖ per output feature and B at zero: the injected model computes the original logits.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void InjectedDoraComputesTheOriginal(string arch, string file)
    {
        var reference = Reference(arch);
        var path = Injected(arch, file);
        Assert.That(Shared.MaxAbsDiff(Logits(path, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-5f));
        using var model = OnnxModel.Load(path);
        var lora = LoraModel.Read(model)!;
        Assert.That(lora.Config.UseDora);
        foreach (var a in lora.Adapters)
        {
            Assert.That(a.Magnitude, Is.EqualTo(ModuleNames.MagnitudeKey(a.Module)));
            Assert.That(a.WeightNorm, Is.Not.Null);
            var m = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == a.Magnitude));
            var w = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == a.BaseWeight));
            // ‖W[o, :]‖ written out for this layout, independently of Dora.OutputNorms.
            var expected = Enumerable.Range(0, (int)a.Out).Select(o => Math.Sqrt(Enumerable.Range(0, (int)a.In)
                .Sum(i => Math.Pow(a.Layout == WeightLayout.OutIn ? w[o * a.In + i] : w[i * a.Out + o], 2)))).ToArray();
            Assert.That(m.Select(v => (double)v), Is.EqualTo(expected).Within(1e-5).Percent, a.Module);
        }
    }

    /// <summary>With random B and a perturbed m, the graph's s·(x·W + scale·x·Aᵀ·Bᵀ) and merge's W ← s ⊙ (W + scale·B·A)
    /// agree, and the merged model has the original's topology.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void MergedDoraEqualsUnmerged(string arch, string file)
    {
        var reference = Reference(arch);
        var path = Injected(arch, file);
        using (var model = OnnxModel.Load(path))
        {
            RandomizeB(model, std: 0.3f);
            var rng = new Random(5);
            foreach (var a in LoraModel.Read(model)!.Adapters)
            {
                var t = model.Graph.Initializer.Single(i => i.Name == a.Magnitude);
                Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v * (float)(0.7 + 0.6 * rng.NextDouble())).ToArray(), t.DataType));
            }
            model.Save(path);
        }
        var unmerged = Logits(path, reference);
        Assert.That(Shared.MaxAbsDiff(unmerged, reference["logits_base"].AsFloats()), Is.GreaterThan(1e-2f), "the adapter changes the model");
        var merged = Path.Combine(Shared.TempDir(), "merged.onnx");
        OrtloraOk("merge", path, "-o", merged);
        float max = unmerged.Max(Math.Abs);
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), unmerged), Is.LessThan(2e-5f * max));
        Assert.That(Histogram(merged), Is.EqualTo(Histogram(Shared.Peft(arch, file))));
        using var mergedModel = OnnxModel.Load(merged);
        Assert.That(mergedModel.Graph.Initializer.Select(t => t.Name), Has.None.Contains("lora_"), "no LoRA or DoRA tensor left");
    }

    /// <summary>Training treats ‖W + scale·B·A‖ as a constant (PEFT detaches it): the gradients equal those of the same
    /// model with the norm replaced by its value, and those match central differences of the loss.</summary>
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void DoraGradientsTreatTheNormAsAConstant(string arch, string file)
    {
        var batch = PeftParity.ReadBatch(Reference(arch));
        using var model = OnnxModel.Load(Injected(arch, file));
        RandomizeB(model, std: 0.3f);
        var lora = LoraModel.Read(model)!;
        using var frozenNorm = OnnxModel.Load(Injected(arch, file));
        foreach (var t in model.Graph.Initializer.Where(t => t.Name.Contains(".lora_B.")))
            frozenNorm.Graph.Initializer.Single(i => i.Name == t.Name).RawData = t.RawData;
        // The norm of each adapter, computed on the host, as a constant in place of the ReduceL2 node.
        foreach (var a in lora.Adapters)
        {
            var adapter = LayerAdapter.Read(model, [a]);
            var w = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == a.BaseWeight));
            adapter.AddDeltaTo(w, a.Layout);
            var norms = Dora.OutputNorms(w, a.Layout, a.In, a.Out);
            var node = frozenNorm.Graph.Node.Single(n => n.Output.Contains(a.WeightNorm!));
            frozenNorm.Graph.Node.Remove(node);
            frozenNorm.Graph.Initializer.Add(Tensors.FromFloats(a.WeightNorm!, [a.Out], norms));
        }
        var options = new TrainingSessionOptions(new AdamWOptions());
        using var detached = new TrainingSession(model, options);
        using var constant = new TrainingSession(frozenNorm, options);
        var (loss, grads) = detached.ComputeGradients(batch);
        var (constantLoss, constantGrads) = constant.ComputeGradients(batch);
        Assert.That(constantLoss, Is.EqualTo(loss).Within(1e-6 * Math.Abs(loss)));
        Assert.That(grads.Keys, Has.Some.EndsWith(".lora_magnitude_vector"), "m is trained");
        foreach (var (p, g) in grads)
            Assert.That(Shared.MaxAbsDiff(constantGrads[p], g), Is.LessThanOrEqualTo(1e-5f * g.Max(Math.Abs) + 1e-9f), p);

        // Central differences of the loss on the constant-norm model, at the largest gradient entries of m, A and B.
        var start = constant.GetParameters();
        foreach (var suffix in new[] { ".lora_magnitude_vector", ".lora_A.weight", ".lora_B.weight" })
        {
            var (p, i) = grads.Where(kv => kv.Key.EndsWith(suffix))
                .SelectMany(kv => kv.Value.Select((v, i) => (kv.Key, i, Math.Abs(v)))).MaxBy(x => x.Item3) is var best ? (best.Key, best.i) : default;
            double eps = 1e-2 * Math.Max(1, Math.Abs(start[p][i]));
            double LossAt(double delta)
            {
                var moved = start.ToDictionary(kv => kv.Key, kv => (float[])kv.Value.Clone());
                moved[p][i] = (float)(start[p][i] + delta);
                constant.SetParameters(moved);
                return constant.EvalLoss(batch);
            }
            double numeric = (LossAt(eps) - LossAt(-eps)) / (2 * eps);
            Assert.That(grads[p][i], Is.EqualTo(numeric).Within(0.02 * Math.Abs(numeric) + 1e-4), $"{p}[{i}]");
        }
    }

    /// <summary>Train with --use-dora, export in PEFT's format (use_dora, lora_magnitude_vector keys without ".weight"),
    /// re-inject the export into the plain model: the same logits; merged: the same again.</summary>
    [Test]
    public void DoraTrainsExportsAndReimports()
    {
        var dir = Shared.TempDir();
        string Tiny(string f) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", f);
        var result = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--use-dora", "--target-modules", "q_proj,v_proj,down_proj", "--r", "4", "--per-device-train-batch-size", "4",
            "--learning-rate", "5e-3", "--max-steps", "8", "--eval-steps", "8", "--plain-log", "--merge", "-o", dir);
        var evals = System.Text.RegularExpressions.Regex.Matches(result.Out, @"eval_loss (\d+\.\d+)").Select(m => double.Parse(m.Groups[1].Value)).ToList();
        Assert.That(evals, Has.Count.EqualTo(2));
        Assert.That(evals[1], Is.LessThan(evals[0] - 1), "DoRA trains");

        var adapter = PeftAdapter.Load(dir);
        Assert.That(adapter.Config.UseDora);
        var magnitudes = adapter.Tensors.Keys.Where(k => k.EndsWith(".lora_magnitude_vector")).ToList();
        Assert.That(magnitudes, Has.Count.EqualTo(12), "q_proj, v_proj and down_proj of 4 layers");
        Assert.That(magnitudes, Does.Contain("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"));
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That(json["use_dora"]!.GetValue<bool>());

        // The trained m moved away from ‖W‖.
        using var fresh = OnnxModel.Load(Tiny("model.onnx"));
        var injected = LoraInjector.Inject(fresh, adapter);
        Assert.That(injected.Adapters.Select(a => a.Magnitude), Is.EquivalentTo(magnitudes));
        var ids = Enumerable.Range(0, 24).Select(i => (long)(i * 37 % 500)).ToArray();
        var feeds = new Dictionary<string, HostTensor> { ["input_ids"] = HostTensor.Of(ids, [2, 12]), ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, 24).ToArray(), [2, 12]) };
        var reinjected = OrtRun.Run(fresh, feeds)["logits"].Floats;
        using var merged = OnnxModel.Load(Path.Combine(dir, "merged", "model.onnx"));
        var mergedLogits = OrtRun.Run(merged, feeds)["logits"].Floats;
        using var original = OnnxModel.Load(Tiny("model.onnx"));
        var originalLogits = OrtRun.Run(original, feeds)["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(reinjected, originalLogits), Is.GreaterThan(0.1f), "the trained adapter changes the model");
        Assert.That(Shared.MaxAbsDiff(mergedLogits, reinjected), Is.LessThan(1e-4f * reinjected.Max(Math.Abs)));
    }

    /// <summary>The ways of running a step (float16 compute, gradient checkpointing, fixed addresses) train a DoRA model
    /// as the plain float32 step does.</summary>
    [Test]
    public void DoraTrainsAlikeUnderEveryEngineOption()
    {
        var batch = PeftParity.ReadBatch(Reference("llama"));
        using var model = OnnxModel.Load(Injected("llama", "model.dynamo.onnx"));
        float[] Losses(TrainingSessionOptions options)
        {
            using var session = new TrainingSession(model, options);
            var losses = Enumerable.Range(0, 4).Select(_ => session.Step(batch, 1e-2f, maxGradNorm: 1f)).ToList();
            losses.Add(session.EvalLoss(batch)); // after the steps
            return [.. losses];
        }
        var plain = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01));
        var expected = Losses(plain);
        Assert.That(expected[^1], Is.LessThan(expected[0] - 0.05), "it trains: " + string.Join(", ", expected));
        Assert.That(Losses(plain with { GradientCheckpointing = true }), Is.EqualTo(expected).Within(1e-5));
        Assert.That(Losses(plain with { CudaGraphs = true }), Is.EqualTo(expected).Within(1e-6));
        Assert.That(Losses(plain with { Compute = ComputeType.Float16 }), Is.EqualTo(expected).Within(2e-3));
    }

    /// <summary>A DoRA model made overridable (--runtime-adapters) serves an exported DoRA adapter through ONNX Runtime's
    /// adapter API: m is one more overridden initializer.</summary>
    [Test]
    public void RuntimeAdaptersCarryTheMagnitude()
    {
        var dir = Shared.TempDir();
        var reference = Reference("llama");
        var baseModel = Injected("llama", "model.dynamo.onnx", "--runtime-adapters");
        var trained = Injected("llama", "model.dynamo.onnx");
        using (var model = OnnxModel.Load(trained))
        {
            RandomizeB(model, std: 0.3f);
            foreach (var t in model.Graph.Initializer.Where(t => t.Name.EndsWith(".lora_magnitude_vector")))
                Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v * 1.3f).ToArray(), t.DataType));
            model.Save(trained);
        }
        var adapterFile = Path.Combine(dir, "dora.onnx_adapter");
        OrtloraOk("export-adapter", trained, "--format", "onnx-adapter", "-o", adapterFile);
        // The same adapter through PEFT's format: export-adapter, then adapters convert.
        var peftDir = Path.Combine(dir, "peft");
        OrtloraOk("export-adapter", trained, "-o", peftDir);
        var converted = Path.Combine(dir, "converted.onnx_adapter");
        OrtloraOk("adapters", "convert", peftDir, "-o", converted);
        using var options = OrtRun.DefaultOptions();
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(baseModel, options);
        var expected = Logits(trained, reference);
        Assert.That(Shared.MaxAbsDiff(expected, reference["logits_base"].AsFloats()), Is.GreaterThan(1e-2f));
        foreach (var file in new[] { adapterFile, converted })
        {
            using var adapter = Microsoft.ML.OnnxRuntime.OrtLoraAdapter.Create(file, null);
            var inputs = Shared.Feeds(reference).ToDictionary(f => f.Key, f => f.Value.ToOrtValue());
            using var run = new Microsoft.ML.OnnxRuntime.RunOptions();
            run.AddActiveLoraAdapter(adapter);
            using var outputs = session.Run(run, inputs, ["logits"]);
            foreach (var v in inputs.Values) v.Dispose();
            Assert.That(Shared.MaxAbsDiff(outputs[0].GetTensorDataAsSpan<float>().ToArray(), expected), Is.LessThan(1e-5f), file);
        }
    }

    /// <summary>With lora_dropout, PEFT's DoRA term reads the base layer on the dropped-out input; the training graph adds
    /// that copy of each base layer. At a dropout ratio of 1e-7 (no element dropped in practice) the gradients, through the
    /// copies, equal those without dropout, in float32 and in float16 (where the copy casts to and from half).</summary>
    [TestCase(ComputeType.Float32, 1e-5)]
    [TestCase(ComputeType.Float16, 1e-3)] // half rounding of x·(1 + 1e-7)
    public void DropoutFeedsDorasBaseTermThroughACopyOfTheLayer(ComputeType compute, double tolerance)
    {
        var batch = PeftParity.ReadBatch(Reference("llama"));
        using var plain = OnnxModel.Load(Injected("llama", "model.dynamo.onnx"));
        using var withDropout = OnnxModel.Load(Injected("llama", "model.dynamo.onnx", "--lora-dropout", "1e-7"));
        RandomizeB(plain, std: 0.3f);
        RandomizeB(withDropout, std: 0.3f);
        var options = new TrainingSessionOptions(new AdamWOptions(), Compute: compute);
        using var a = new TrainingSession(plain, options);
        using var b = new TrainingSession(withDropout, options);
        var copies = b.Graph.Gradients.Graph.Node.Where(n => n.Name.EndsWith("/dropout_base")).ToList();
        Assert.That(copies, Has.Count.EqualTo(14), "one copy of each adapted layer");
        Assert.That(copies.Select(n => n.OpType), Has.All.EqualTo("MatMul"));
        if (compute == ComputeType.Float16)
            Assert.That(b.Graph.Gradients.Graph.Node.Count(n => n.OpType == "Cast" && (n.Name.EndsWith("/lora/dropout_base/Cast_x") || n.Name.EndsWith("/lora/dropout_base/Cast_y"))), Is.EqualTo(28), "half in, float32 out");
        var (lossA, gradsA) = a.ComputeGradients(batch);
        var (lossB, gradsB) = b.ComputeGradients(batch);
        Assert.That(lossB, Is.EqualTo(lossA).Within(1e-5 * Math.Abs(lossA)));
        foreach (var (p, g) in gradsA)
            Assert.That(Shared.MaxAbsDiff(gradsB[p], g), Is.LessThanOrEqualTo(tolerance * g.Max(Math.Abs) + 1e-9f), p);
    }

    [Test]
    public void WhatDoraDoesNotCoverIsOneErrorEach()
    {
        var dir = Shared.TempDir();
        var canonical = Ortlora("inject", Shared.Peft("gpt2", "model.dynamo.onnx"), "-o", Path.Combine(dir, "a.onnx"), "--use-dora", "--variant", "canonical");
        Assert.That(canonical.ExitCode, Is.Not.Zero);
        Assert.That(canonical.Error, Does.Contain("DoRA on 'transformer.h.0.attn.c_attn'").And.Contain("--variant performant"));
        Assert.That(Directory.GetFiles(dir), Is.Empty, "no partial output");
        var exported = Path.Combine(Shared.TempDir(), "adapter");
        OrtloraOk("export-adapter", Injected("llama", "model.dynamo.onnx"), "-o", exported);
        var combine = Ortlora("adapters", "combine", exported + ":0.5", exported + ":0.5", "-o", Path.Combine(dir, "c"));
        Assert.That(combine.ExitCode, Is.Not.Zero);
        Assert.That(combine.Error, Does.Contain("a DoRA adapter (use_dora)"));
        Assert.That(Directory.Exists(Path.Combine(dir, "c")), Is.False);
    }
}
