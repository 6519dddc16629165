using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>merge: W += scale·B·A must reproduce the unmerged model (and PEFT's merge_and_unload) and give back
/// the original topology.</summary>
public class LoraMergeTests
{
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void MergedPeftAdapterMatchesPeftAndOriginalTopology(string arch, string file)
    {
        var reference = Reference(arch);
        var dir = Shared.TempDir();
        var source = Shared.Peft(arch, file);
        var (injected, merged) = (Path.Combine(dir, "injected.onnx"), Path.Combine(dir, "merged.onnx"));
        OrtloraOk("inject", source, "-o", injected, "--init-from", Shared.Peft(arch, "adapter"));
        OrtloraOk("merge", injected, "-o", merged);
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), reference["logits_merged"].AsFloats()), Is.LessThan(1e-4f));
        Assert.That(Histogram(merged), Is.EqualTo(Histogram(source)));
        using var original = OnnxModel.Load(source);
        using var result = OnnxModel.Load(merged);
        Assert.That(result.Graph.Initializer.Select(t => t.Name), Is.EqualTo(original.Graph.Initializer.Select(t => t.Name)));
        Assert.That(result.Graph.Node.Select(n => n.Output.ToString()), Is.EqualTo(original.Graph.Node.Select(n => n.Output.ToString())),
            "every node writes its original output names again");
        Assert.That(result.Proto.MetadataProps, Is.EqualTo(original.Proto.MetadataProps), "ortlora.lora removed, the rest kept");
        Assert.That(result.Proto.OpsetImport, Is.EqualTo(original.Proto.OpsetImport));
    }

    /// <summary>`merge MODEL --adapter DIR`: PEFT's saved adapter folded into the plain export in one command gives PEFT's
    /// merge_and_unload logits and the original topology; an injected model with --adapter is one error.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void MergeTakesAPeftAdapterDirectory(string arch, string file)
    {
        var reference = Reference(arch);
        var source = Shared.Peft(arch, file);
        var merged = Path.Combine(Shared.TempDir(), "merged.onnx");
        Assert.That(OrtloraOk("merge", source, "--adapter", Shared.Peft(arch, "adapter"), "-o", merged).Out, Does.Contain("merged"));
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), reference["logits_merged"].AsFloats()), Is.LessThan(1e-4f));
        Assert.That(Histogram(merged), Is.EqualTo(Histogram(source)));
        var injected = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", source, "-o", injected);
        var twice = Ortlora("merge", injected, "--adapter", Shared.Peft(arch, "adapter"), "-o", Path.Combine(Shared.TempDir(), "x.onnx"));
        Assert.That((twice.ExitCode, twice.Error), Is.EqualTo((1, $"error: {injected}: the model already has LoRA adapters; --adapter merges a PEFT adapter into a plain model\n")));
    }

    [TestCase("model.dynamo.onnx", "performant")]
    [TestCase("model.dynamo.onnx", "canonical")]
    [TestCase("model.torchscript.onnx", "performant")]
    [TestCase("model.torchscript.onnx", "canonical")]
    public void FusedProjectionVariantsMergeToTheirOwnOutputs(string file, string variant)
    {
        var reference = Reference("gpt2");
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", file), "-o", injected, "--target-modules", "c_attn", "--variant", variant, "--r", "3");
        float[] unmerged;
        using (var model = OnnxModel.Load(injected))
        {
            var lora = LoraModel.Read(model)!;
            Assert.That(lora.Adapters, Has.Count.EqualTo(variant == "canonical" ? 6 : 2));
            if (variant == "canonical")
                Assert.That(lora.Adapters.Select(a => a.Part!.Size), Has.All.EqualTo(64), "q|k|v widths read from the Split");
            RandomizeB(model);
            unmerged = Logits(model, reference);
            Assert.That(Shared.MaxAbsDiff(unmerged, reference["logits_base"].AsFloats()), Is.GreaterThan(1e-2f), "B moves the output");
            model.Save(injected);
        }
        var merged = Path.Combine(dir, "merged.onnx");
        OrtloraOk("merge", injected, "-o", merged);
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), unmerged), Is.LessThan(1e-4f));
        Assert.That(Histogram(merged), Is.EqualTo(Histogram(Shared.Peft("gpt2", file))));
    }

    [Test]
    public void ExternalDataModelInjectsAndMergesWithSideFiles()
    {
        var reference = Reference("llama");
        var dir = Shared.TempDir();
        var source = Shared.Require("fixtures", "external-data", "llama", "model.onnx");
        var (injected, merged) = (Path.Combine(dir, "injected.onnx"), Path.Combine(dir, "merged.onnx"));
        OrtloraOk("inject", source, "-o", injected, "--init-from", Shared.Peft("llama", "adapter"));
        Assert.That(File.Exists(injected + ".data"), Is.True, "injected model keeps its tensors in a side file");
        Assert.That(Shared.MaxAbsDiff(Logits(injected, reference), reference["logits"].AsFloats()), Is.LessThan(1e-4f));
        OrtloraOk("merge", injected, "-o", merged);
        Assert.That(File.Exists(merged + ".data"), Is.True, "merged model keeps its tensors in a side file");
        Assert.That(new FileInfo(merged).Length, Is.LessThan(new FileInfo(merged + ".data").Length));
        using (var m = OnnxModel.Load(merged)) Assert.That(m.HasExternalData, Is.True);
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), reference["logits_merged"].AsFloats()), Is.LessThan(1e-4f));
        Assert.That(Histogram(merged), Is.EqualTo(Histogram(source)));
        Assert.That(Directory.GetFiles(dir).Where(f => f.Contains(".tmp")), Is.Empty, "no temp files left");
    }

    [Test]
    public void ExplicitlyTargetedTiedHeadMergesWithoutTouchingTheEmbedding()
    {
        // GPT-2's dynamo export reads model_.lm_head.weight for both the embedding (Gather) and the head (MatMul).
        var reference = Reference("gpt2");
        using var model = OnnxModel.Load(Shared.Peft("gpt2", "model.dynamo.onnx"));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["lm_head"], R = 2 });
        Assert.That(lora.Adapters.Single().Module, Is.EqualTo("lm_head"));
        RandomizeB(model);
        var unmerged = Logits(model, reference);
        Assert.That(Shared.MaxAbsDiff(unmerged, reference["logits_base"].AsFloats()), Is.GreaterThan(1e-2f));
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), unmerged), Is.LessThan(1e-4f));
        using var original = OnnxModel.Load(Shared.Peft("gpt2", "model.dynamo.onnx"));
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
    }

    [Test]
    public void RuntimeAdapterFormMergesBackToTheOriginalInputs()
    {
        // ONNX Runtime's runtime adapters need the LoRA parameters listed as graph inputs (with initializer defaults).
        var reference = Reference("llama");
        using var model = OnnxModel.Load(Shared.Peft("llama", "model.torchscript.onnx"));
        var inputs = model.Graph.Input.Select(i => i.Name).ToList();
        var lora = LoraInjector.Inject(model, PeftAdapter.Load(Shared.Peft("llama", "adapter")));
        foreach (var name in lora.Adapters.SelectMany(a => new[] { a.LoraA, a.LoraB }))
            model.Graph.Input.Add(new global::Onnx.ValueInfoProto { Name = name, Type = new global::Onnx.TypeProto { TensorType = new global::Onnx.TypeProto.Types.Tensor { ElemType = 1 } } });
        LoraMerger.Merge(model);
        Assert.That(model.Graph.Input.Select(i => i.Name), Is.EqualTo(inputs));
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), reference["logits_merged"].AsFloats()), Is.LessThan(1e-4f));
    }

    [Test]
    public void MergingAModelWithoutAdaptersIsAClearError()
    {
        var dir = Shared.TempDir();
        var output = Path.Combine(dir, "merged.onnx");
        var result = Ortlora("merge", Shared.Peft("llama", "model.dynamo.onnx"), "-o", output);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Contain("no LoRA adapters").And.Contain("model.dynamo.onnx"));
        Assert.That(Directory.GetFiles(dir), Is.Empty);
    }

    /// <summary>--safe-merge (PEFT's safe_merge): an adapter whose B holds a NaN is refused, naming its module, with no
    /// output written; a sound adapter merges as without it; without the check the broken one merges.</summary>
    [Test]
    public void SafeMergeRefusesABrokenAdapter()
    {
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "lora.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", injected, "--target-modules", "all-linear", "--r", "4");
        using (var model = OnnxModel.Load(injected))
        {
            RandomizeB(model, std: 0.3f);
            model.Save(Path.Combine(dir, "sound.onnx"));
            var b = model.Graph.Initializer.Single(t => t.Name == LoraModel.Read(model)!.Adapters.Single(a => a.Module == "model.layers.2.mlp.up_proj").LoraB);
            var values = model.ReadFloats(b);
            values[5] = float.NaN;
            Tensors.SetRaw(b, Tensors.FloatsToBytes(values, b.DataType));
            model.Save(Path.Combine(dir, "broken.onnx"));
        }
        var refused = Ortlora("merge", Path.Combine(dir, "broken.onnx"), "-o", Path.Combine(dir, "broken-merged.onnx"), "--safe-merge");
        Assert.That(refused.ExitCode, Is.EqualTo(1));
        Assert.That(refused.Error, Does.Contain("'model.layers.2.mlp.up_proj'").And.Contain("NaNs or infinities"));
        Assert.That(File.Exists(Path.Combine(dir, "broken-merged.onnx")), Is.False);
        OrtloraOk("merge", Path.Combine(dir, "broken.onnx"), "-o", Path.Combine(dir, "unchecked.onnx"));
        OrtloraOk("merge", Path.Combine(dir, "sound.onnx"), "-o", Path.Combine(dir, "safe.onnx"), "--safe-merge");
        OrtloraOk("merge", Path.Combine(dir, "sound.onnx"), "-o", Path.Combine(dir, "plain.onnx"));
        Assert.That(File.ReadAllBytes(Path.Combine(dir, "safe.onnx")), Is.EqualTo(File.ReadAllBytes(Path.Combine(dir, "plain.onnx"))));
    }
}
