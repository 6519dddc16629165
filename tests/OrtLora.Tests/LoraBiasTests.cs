using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>--lora-bias (PEFT's lora_bias): B's own bias, inside the scale, trained with the adapters, merged into the
/// layer's bias. On the GPT-2 fixture's TorchScript export, whose layers (Gemm, fused c_attn) all have biases, most of
/// them one shared initializer behind Identity nodes (equal zeros, deduplicated); its dynamo export has dropped them.</summary>
public class LoraBiasTests
{
    static LoraConfig Config(string variant = "performant") =>
        new() { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"], Variant = variant, LoraBias = true };

    static void RandomizeBiases(OnnxModel model, LoraModel lora, float std)
    {
        var rng = new Random(21);
        foreach (var name in lora.Adapters.Select(a => a.LoraBias!))
        {
            var t = model.Graph.Initializer.Single(i => i.Name == name);
            Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(_ => (float)(rng.NextDouble() * 2 - 1) * std).ToArray(), t.DataType));
        }
    }

    /// <summary>Zero at first, so the model is the original; moved, the export (PEFT's lora_B.bias keys) re-injected,
    /// activated as a runtime adapter, and merged (the layer's bias += scale·b) all give the moved logits, and the merged
    /// graph has the original's ops.</summary>
    [TestCase("model.torchscript.onnx", "performant")]
    [TestCase("model.torchscript.onnx", "canonical")]
    public void LoraBiasExportsAndMergesIntoTheLayersBias(string file, string variant)
    {
        var reference = Reference("gpt2");
        using var model = OnnxModel.Load(Shared.Peft("gpt2", file));
        var histogram = GraphEditor.OpHistogram(model.Graph);
        var lora = LoraInjector.Inject(model, Config(variant));
        Assert.That(lora.Adapters.All(a => a.LoraBias is not null && a.BaseBias is not null), "every GPT-2 layer has a bias");
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-4f), "b starts at zero");
        RandomizeB(model, std: 0.05f);
        var adaptersOnly = Logits(model, reference);
        RandomizeBiases(model, lora, 0.3f);
        var trained = Logits(model, reference);
        Assert.That(Shared.MaxAbsDiff(trained, adaptersOnly), Is.GreaterThan(1e-2f), "the model reads the biases");

        var exported = AdapterExporter.Export(model);
        Assert.That(exported.Config.LoraBias, Is.True);
        Assert.That(exported.Config.ToPeftJson()["lora_bias"]!.GetValue<bool>(), Is.True);
        var biasKeys = exported.Tensors.Keys.Where(ModuleNames.IsLoraBias).ToList();
        Assert.That(biasKeys, Has.Count.EqualTo(lora.ByLayer().Count()), "one per module, a fused layer's parts side by side");
        Assert.That(exported.Tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.bias"].Shape, Is.EqualTo(new long[] { 192 }));

        using (var reloaded = OnnxModel.Load(Shared.Peft("gpt2", file)))
        {
            LoraInjector.Inject(reloaded, exported);
            Assert.That(Shared.MaxAbsDiff(Logits(reloaded, reference), trained), Is.LessThan(1e-5f), "re-injected");
        }
        var dir = Shared.TempDir();
        exported.Save(dir);
        if (variant == "performant") // a canonical adapter exports as one rank-3r adapter on c_attn, not the parts' inputs
        using (var fresh = OnnxModel.Load(Shared.Peft("gpt2", file)))
        {
            var freshLora = LoraInjector.Inject(fresh, Config());
            Deploy.LoraRuntimeForm.MakeOverridable(fresh);
            using var session = new InferenceSession(fresh.ToBytes(), OrtRun.DefaultOptions());
            using var adapter = Deploy.RuntimeAdapters.Load(dir, session, freshLora.Config.Scale);
            using var runOptions = new RunOptions();
            runOptions.AddActiveLoraAdapter(adapter);
            var feeds = Shared.Feeds(reference);
            var values = feeds.Values.Select(t => t.ToOrtValue()).ToList();
            using var outputs = session.Run(runOptions, feeds.Keys.ToList(), values, ["logits"]);
            Assert.That(Shared.MaxAbsDiff(HostTensor.FromOrtValue(outputs[0]).Floats, trained), Is.LessThan(1e-5f), "runtime adapter");
            foreach (var v in values) v.Dispose();
        }
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), trained), Is.LessThan(1e-4f), "merged");
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(histogram));
        Assert.That(model.Graph.Initializer.Count(t => t.Name.Contains(".bias.merged")), Is.GreaterThan(0), "a shared bias is copied for each layer");
    }

    /// <summary>b's gradient is scale times the gradient of the layer's own bias (both add to the layer's output, one
    /// inside the scale), which --bias all computes by another path: the same numbers to rounding. On the unseen export
    /// styles whose layers have biases of their own (Qwen2's q/k/v MatMul + Add, OPT's Gemm, GPT-NeoX's).</summary>
    [TestCase("qwen2", 6)]
    [TestCase("opt-gemm", 12)]
    [TestCase("gpt-neox", 8)]
    public void LoraBiasGradientIsScaleTimesTheLayersBiasGradient(string name, int biased)
    {
        var arch = Unseen.Architectures.All.Single(a => a.Name == name);
        var batch = Unseen.UnseenArchitectureTests.TrainBatch(arch);
        var options = new TrainingSessionOptions(new AdamWOptions(), Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL);
        Dictionary<string, float[]> Gradients(LoraConfig config)
        {
            using var model = arch.Build();
            LoraInjector.Inject(model, config);
            RandomizeB(model, std: 0.3f);
            using var session = new Training.Engine.TrainingSession(model, options);
            return session.ComputeGradients(batch).Gradients;
        }
        var withLoraBias = Gradients(Config());
        var withBias = Gradients(new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"], Bias = "all" });
        int compared = 0;
        foreach (var (key, gradient) in withLoraBias.Where(kv => ModuleNames.IsLoraBias(kv.Key)))
        {
            var layerBias = TrainedBiases.PeftKey(key[ModuleNames.PeftKeyPrefix.Length..^".lora_B.bias".Length]);
            if (!withBias.TryGetValue(layerBias, out var own)) continue; // a layer without a bias
            var expected = own.Select(v => v * 2f).ToArray(); // scale = 8 / 4
            Assert.That(Shared.MaxAbsDiff(gradient, expected), Is.LessThan(1e-5f * expected.Max(Math.Abs) + 1e-8f), key);
            compared++;
            // A key bias moves every score of a query alike, which softmax ignores: k_proj's gradient is zero, rounding aside.
            if (!key.Contains("k_proj")) Assert.That(expected.Max(Math.Abs), Is.GreaterThan(1e-5f), key);
        }
        Assert.That(compared, Is.EqualTo(biased), "the biased layers");
    }

    /// <summary>A model whose layers have no bias takes lora_bias and trains it, but cannot merge it (PEFT raises there
    /// too); what lora_bias does not go with is one error each.</summary>
    [Test]
    public void WhatLoraBiasCannotDoIsOneErrorEach()
    {
        var injected = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", injected, "--r", "4", "--lora-alpha", "8", "--target-modules", "all-linear", "--lora-bias");
        using (var model = OnnxModel.Load(injected))
        {
            var lora = LoraModel.Read(model)!;
            Assert.That(lora.Config.LoraBias, Is.True);
            Assert.That(lora.Adapters.Select(a => a.LoraBias), Has.All.Not.Null);
            Assert.That(lora.Adapters.Select(a => a.BaseBias), Has.All.Null);
            using (var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions())))
                Assert.That(session.ParameterNames.Count(ModuleNames.IsLoraBias), Is.EqualTo(lora.Adapters.Count), "trainable");
            var e = Assert.Throws<OrtLoraException>(() => LoraMerger.Merge(model));
            Assert.That(e!.Message, Does.Contain("has a lora_bias but its layer has no bias to merge it into"));
        }
        foreach (var (change, message) in new (Action<LoraConfig>, string)[]
                 {
                     (c => c.UseDora = true, "does not go with DoRA"),
                     (c => c.Bias = "all", "does not go with bias 'all'"),
                     (c => c.TargetModules = ["embed_tokens"], "lora_bias is for linear layers"),
                 })
        {
            using var model = OnnxModel.Load(Shared.Peft("llama", "model.dynamo.onnx"));
            var config = Config();
            change(config);
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, config));
            Assert.That(e!.Message, Does.Contain(message));
        }
    }
}
