using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>Injection against PEFT's own numbers, on both exporters' output of both fixture architectures.</summary>
public class LoraInjectTests
{
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void InitFromPeftReproducesPeftLogits(string arch, string file)
    {
        var reference = Reference(arch);
        var output = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft(arch, file), "-o", output, "--init-from", Shared.Peft(arch, "adapter"));
        Assert.That(Shared.MaxAbsDiff(Logits(output, reference), reference["logits"].AsFloats()), Is.LessThan(1e-4f));
        // Sanity that the adapter matters at all: the reference moves the logits far beyond the tolerance.
        Assert.That(Shared.MaxAbsDiff(reference["logits"].AsFloats(), reference["logits_base"].AsFloats()), Is.GreaterThan(1e-2f));
        using var model = OnnxModel.Load(output);
        var adapter = PeftAdapter.Load(Shared.Peft(arch, "adapter"));
        var lora = LoraModel.Read(model)!;
        Assert.That(lora.Adapters.Select(a => a.LoraA), Is.EquivalentTo(adapter.Tensors.Keys.Where(k => k.EndsWith(".lora_A.weight"))));
        Assert.That(lora.Adapters.Select(a => a.Scale), Has.All.EqualTo(2.0), "lora_alpha 8 / r 4");
        Assert.That(lora.Config.R, Is.EqualTo(4));
        // The metadata speaks PEFT's names, so other tools can read it without ortlora.
        var json = model.Proto.MetadataProps.Single(p => p.Key == LoraModel.MetadataKey).Value;
        Assert.That(json, Does.Contain("\"lora_alpha\":8").And.Contain("\"target_modules\":[").And.Contain("\"lora_A\":\"base_model.model."));
    }

    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void DefaultInjectionLeavesLogitsUnchanged(string arch, string file)
    {
        var reference = Reference(arch);
        var source = Shared.Peft(arch, file);
        var output = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", source, "-o", output);
        Assert.That(Shared.MaxAbsDiff(Logits(output, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-5f));
        using var model = OnnxModel.Load(output);
        var lora = LoraModel.Read(model)!;
        // PEFT's defaults: q_proj,v_proj for Llama, c_attn for GPT-2; r 8, lora_alpha 16.
        string[] expected = arch == "llama" ? ["q_proj", "v_proj"] : ["c_attn"];
        Assert.That(lora.Adapters.Select(a => ModuleNames.LastSegment(a.Module)).Distinct(), Is.EquivalentTo(expected));
        Assert.That(lora.Adapters, Has.Count.EqualTo(2 * expected.Length), "two layers");
        Assert.That(lora.Adapters.Select(a => a.Scale), Has.All.EqualTo(2.0));
        using var original = OnnxModel.Load(source);
        Assert.That(model.Proto.OpsetImport, Is.EqualTo(original.Proto.OpsetImport));
        foreach (var a in lora.Adapters)
        {
            var A = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == a.LoraA));
            var B = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == a.LoraB));
            Assert.That(B, Has.All.EqualTo(0f), "B starts at zero");
            // PEFT: kaiming_uniform_(a=√5) on A [r, in] → U(-1/√in, 1/√in), variance bound²/3.
            double bound = 1 / Math.Sqrt(a.In), variance = A.Select(v => (double)v * v).Average();
            Assert.That(A.Max(Math.Abs), Is.LessThanOrEqualTo(bound).And.GreaterThan(0.9 * bound));
            Assert.That(variance, Is.EqualTo(bound * bound / 3).Within(25).Percent);
        }
    }

    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void AllLinearFindsTheLayersPeftAdapted(string arch, string file)
    {
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2 });
        // The fixture adapters were made with PEFT on every linear layer but the LM head: all-linear must agree.
        var peft = PeftAdapter.Load(Shared.Peft(arch, "adapter")).Modules();
        Assert.That(lora.Adapters.Select(a => a.LoraA), Is.EquivalentTo(peft.Select(m => m.KeyA)));
        Assert.That(lora.Adapters.Select(a => a.LoraB), Is.EquivalentTo(peft.Select(m => m.KeyB)));
        Assert.That(lora.Adapters.Select(a => (a.In, a.Out)), Is.EquivalentTo(peft.Select(m => (m.A.Shape[1], m.B.Shape[0]))));
    }

    [Test]
    public void OptionsReachTheModel()
    {
        var output = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.torchscript.onnx"), "-o", output, "--r", "16", "--lora-alpha", "8",
            "--use-rslora", "--target-modules", @".*\.mlp\.(gate|up)_proj", "--init-lora-weights", "gaussian", "--seed", "3", "--lora-dropout", "0.1");
        using var model = OnnxModel.Load(output);
        var lora = LoraModel.Read(model)!;
        Assert.That(lora.Adapters.Select(a => a.Module), Is.EquivalentTo(new[]
            { "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj" }));
        Assert.That(lora.Adapters.Select(a => a.Scale), Has.All.EqualTo(8 / Math.Sqrt(16)).Within(1e-12), "rsLoRA: alpha / sqrt(r)");
        Assert.That(lora.Config.LoraDropout, Is.EqualTo(0.1));
        var scale = model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].ScaleName);
        Assert.That(model.ReadFloats(scale), Is.EqualTo(new[] { 2f }));
        var A = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].LoraA));
        double std = Math.Sqrt(A.Select(v => (double)v * v).Average());
        Assert.That(std, Is.EqualTo(1.0 / 16).Within(10).Percent, "PEFT's gaussian init: N(0, 1/r)");
        Assert.That(lora.Config.ToPeftJson()["init_lora_weights"]!.GetValue<string>(), Is.EqualTo("gaussian"), "as PEFT records it");
    }

    /// <summary>--init-lora-weights orthogonal (PEFT's): A and B both dense, with B·A = 0, so the injected model computes
    /// the original while both factors get a gradient from the first step (B = 0 leaves A's at zero); canonical parts each
    /// get their own pair; an odd r is one error naming the module, as PEFT raises.</summary>
    [Test]
    public void OrthogonalInitIsDenseYetStartsUnchanged()
    {
        var reference = Reference("gpt2");
        var output = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", "model.dynamo.onnx"), "-o", output, "--r", "4", "--target-modules", "all-linear",
            "--variant", "canonical", "--init-lora-weights", "orthogonal", "--seed", "5");
        using var model = OnnxModel.Load(output);
        var lora = LoraModel.Read(model)!;
        Assert.That(lora.Config.ToPeftJson()["init_lora_weights"]!.GetValue<string>(), Is.EqualTo("orthogonal"), "as PEFT records it");
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-4f));
        foreach (var e in lora.Adapters)
        {
            var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == e.LoraA));
            var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == e.LoraB));
            long outDim = e.Part?.Size ?? e.Out;
            Assert.That((a.Count(v => v == 0), b.Count(v => v == 0)), Is.EqualTo((0, 0)), e.LoraA);
            double largest = 0, product = 0;
            for (long o = 0; o < outDim; o++)
                for (long i = 0; i < e.In; i++)
                {
                    double ba = 0, size = 0;
                    for (int k = 0; k < e.R; k++) { ba += (double)b[o * e.R + k] * a[k * e.In + i]; size += Math.Abs((double)b[o * e.R + k] * a[k * e.In + i]); }
                    (product, largest) = (Math.Max(product, Math.Abs(ba)), Math.Max(largest, size));
                }
            Assert.That(product, Is.LessThan(1e-6 * largest), $"{e.LoraA}: B·A = 0 (terms up to {largest:G3})");
        }
        using var session = new Training.Engine.TrainingSession(model, new Training.Engine.TrainingSessionOptions(new Autodiff.AdamWOptions()));
        var batch = Training.Engine.PeftParity.ReadBatch(reference);
        var (_, grads) = session.ComputeGradients(batch);
        foreach (var e in lora.Adapters)
        {
            Assert.That(grads[e.LoraA].Max(Math.Abs), Is.GreaterThan(1e-6f), e.LoraA);
            Assert.That(grads[e.LoraB].Max(Math.Abs), Is.GreaterThan(1e-6f), e.LoraB);
        }

        var error = Ortlora("inject", Shared.Peft("gpt2", "model.dynamo.onnx"), "-o", output, "--r", "4", "--rank-pattern", "c_fc=3", "--target-modules", "all-linear",
            "--init-lora-weights", "orthogonal");
        Assert.That(error.ExitCode, Is.Not.EqualTo(0));
        Assert.That(error.Error, Does.Contain("init_lora_weights orthogonal on 'transformer.h.0.mlp.c_fc' needs an even r (got 3)"));
    }

    /// <summary>--rank-pattern / --alpha-pattern (PEFT's rank_pattern, alpha_pattern): a name or a regex matched against
    /// the end of the module path gives that module its own r and lora_alpha; the exported config keeps the patterns, so
    /// PEFT builds the same shapes; a malformed pair is one error.</summary>
    [Test]
    public void RankAndAlphaPatternsGiveModulesTheirOwn()
    {
        var output = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", output, "--r", "4", "--lora-alpha", "8", "--target-modules", "q_proj,v_proj",
            "--rank-pattern", @"q_proj=8,layers\.1\.self_attn\.v_proj=2", "--alpha-pattern", "v_proj=6");
        using var model = OnnxModel.Load(output);
        var lora = LoraModel.Read(model)!;
        var byModule = lora.Adapters.ToDictionary(a => a.Module, a => (a.R, a.Scale));
        Assert.That(byModule["model.layers.0.self_attn.q_proj"], Is.EqualTo((8, 1.0)), "r 8, alpha 8");
        Assert.That(byModule["model.layers.0.self_attn.v_proj"], Is.EqualTo((4, 1.5)), "r 4, alpha 6");
        Assert.That(byModule["model.layers.1.self_attn.v_proj"], Is.EqualTo((2, 3.0)), "r 2, alpha 6");
        Assert.That(model.Graph.Initializer.Single(t => t.Name == ModuleNames.LoraAKey("model.layers.0.self_attn.q_proj")).Dims, Is.EqualTo(new long[] { 8, 64 }));
        var json = AdapterExporter.Export(model).Config.ToPeftJson();
        Assert.That(json["rank_pattern"]!.AsObject().Select(p => (p.Key, p.Value!.GetValue<int>())), Is.EquivalentTo(new[] { ("q_proj", 8), (@"layers\.1\.self_attn\.v_proj", 2) }));
        Assert.That(json["alpha_pattern"]!["v_proj"]!.GetValue<double>(), Is.EqualTo(6));
        foreach (var (option, bad) in new[] { ("--rank-pattern", "q_proj"), ("--rank-pattern", "q_proj=0"), ("--alpha-pattern", "(=2") })
        {
            var result = Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", output + ".bad", option, bad);
            Assert.That(result.ExitCode, Is.Not.Zero, bad);
            Assert.That(result.Error, Does.Contain(option + ": '"), bad);
        }
    }

    [Test]
    public void SameSeedSameAdapterOtherSeedOther()
    {
        float[] FirstA(int seed)
        {
            using var model = OnnxModel.Load(Shared.Peft("llama", "model.dynamo.onnx"));
            var lora = LoraInjector.Inject(model, new LoraConfig { Seed = seed });
            return model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].LoraA));
        }
        Assert.That(FirstA(1), Is.EqualTo(FirstA(1)));
        Assert.That(FirstA(1), Is.Not.EqualTo(FirstA(2)));
    }

    /// <summary>PEFT's layers_to_transform, layers_pattern and exclude_modules, on the fixture's module paths
    /// (model.layers.N.self_attn.q_proj ... for llama, transformer.h.N.attn.c_attn ... for gpt2).</summary>
    [TestCase("llama", "model.dynamo.onnx", new[] { 1 }, "", "", 7)]
    [TestCase("llama", "model.torchscript.onnx", new[] { 0 }, "layers", "down_proj", 6)]
    [TestCase("llama", "model.dynamo.onnx", new int[0], "", @".*\.layers\.0\..*", 7)]
    [TestCase("llama", "model.dynamo.onnx", new int[0], "", "o_proj,gate_proj", 10)]
    [TestCase("gpt2", "model.dynamo.onnx", new[] { 0 }, "h", "", 4)]
    [TestCase("gpt2", "model.torchscript.onnx", new[] { 1 }, "", "c_fc", 3)]
    public void LayersToTransformAndExcludeModulesSelectAsPeftDoes(string arch, string file, int[] layers, string pattern, string exclude, int expected)
    {
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        var config = new LoraConfig
        {
            TargetModules = ["all-linear"], R = 2, LayersToTransform = [.. layers],
            LayersPattern = pattern == "" ? [] : [pattern], ExcludeModules = Cli.LoraOptions.ParseTargets(exclude),
        };
        var lora = LoraInjector.Inject(model, config);
        var all = PeftAdapter.Load(Shared.Peft(arch, "adapter")).Modules().Select(m => m.Path).ToList(); // every linear layer but the head
        var expectedModules = all.Where(m =>
            (layers.Length == 0 || layers.Any(l => m.Contains($".{l}."))) &&
            !(exclude.Contains('*') ? m.StartsWith("model.layers.0.") : exclude.Split(',', StringSplitOptions.RemoveEmptyEntries).Any(e => m.EndsWith("." + e))));
        Assert.That(lora.Adapters.Select(a => a.Module), Is.EquivalentTo(expectedModules));
        Assert.That(lora.Adapters, Has.Count.EqualTo(expected));
    }

    [Test]
    public void LayerSelectionReachesPeftConfigAndNothingLeftIsOneError()
    {
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", injected, "--target-modules", "all-linear",
            "--layers-to-transform", "1", "--layers-pattern", "layers", "--exclude-modules", "k_proj,v_proj");
        OrtloraOk("export-adapter", injected, "-o", Path.Combine(dir, "adapter"));
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter", "adapter_config.json")))!;
        Assert.That(json["layers_to_transform"]!.AsArray().Select(n => n!.GetValue<int>()), Is.EqualTo(new[] { 1 }));
        Assert.That(json["layers_pattern"]!.GetValue<string>(), Is.EqualTo("layers"));
        Assert.That(json["exclude_modules"]!.AsArray().Select(n => n!.GetValue<string>()), Is.EqualTo(new[] { "k_proj", "v_proj" }));
        var back = LoraConfig.FromPeftJson(Path.Combine(dir, "adapter", "adapter_config.json"));
        Assert.That((back.LayersToTransform, back.LayersPattern, back.ExcludeModules), Is.EqualTo((new List<int> { 1 }, new List<string> { "layers" }, new List<string> { "k_proj", "v_proj" })));
        var exported = PeftAdapter.Load(Path.Combine(dir, "adapter")).Modules().Select(m => m.Path).ToList();
        Assert.That(exported, Has.All.StartWith("model.layers.1."));
        Assert.That(exported, Has.Count.EqualTo(5));

        // PEFT also writes a single int and a single regex string.
        var peftStyle = Path.Combine(dir, "peft_config.json");
        File.WriteAllText(peftStyle, """{"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"], "layers_to_transform": 0, "exclude_modules": ".*mlp.*"}""");
        var read = LoraConfig.FromPeftJson(peftStyle);
        Assert.That((read.LayersToTransform, read.ExcludeModules), Is.EqualTo((new List<int> { 0 }, new List<string> { ".*mlp.*" })));

        var none = Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", Path.Combine(dir, "none.onnx"), "--target-modules", "q_proj",
            "--layers-to-transform", "7");
        Assert.That(none.ExitCode, Is.Not.Zero);
        Assert.That(none.Error, Does.Contain("no linear layer matches target_modules [q_proj] in layers_to_transform [7]"));
        Assert.That(File.Exists(Path.Combine(dir, "none.onnx")), Is.False);
        var bad = Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", Path.Combine(dir, "bad.onnx"), "--layers-to-transform", "one");
        Assert.That(bad.ExitCode, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("--layers-to-transform: 'one' is not a layer index"));
    }
}
