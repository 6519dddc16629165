using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>export-adapter writes what PEFT reads: same keys, same bytes, a config that gives every module its rank and scale.</summary>
public class LoraExportTests
{
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void PeftAdapterRoundTripsByteForByte(string arch, string file)
    {
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "injected.onnx");
        var exported = Path.Combine(dir, "exported");
        OrtloraOk("inject", Shared.Peft(arch, file), "-o", injected, "--init-from", Shared.Peft(arch, "adapter"));
        OrtloraOk("export-adapter", injected, "-o", exported);
        var original = SafeTensors.Read(Shared.Peft(arch, "adapter/adapter_model.safetensors"));
        var back = SafeTensors.Read(Path.Combine(exported, "adapter_model.safetensors"));
        Assert.That(back.Keys, Is.EquivalentTo(original.Keys));
        foreach (var (key, tensor) in original)
        {
            Assert.That(back[key].DType, Is.EqualTo(tensor.DType), key);
            Assert.That(back[key].Shape, Is.EqualTo(tensor.Shape), key);
            Assert.That(back[key].Data, Is.EqualTo(tensor.Data), key);
        }
        var config = LoraConfig.FromPeftJson(Path.Combine(exported, "adapter_config.json"));
        var peftConfig = LoraConfig.FromPeftJson(Shared.Peft(arch, "adapter/adapter_config.json"));
        Assert.That((config.R, config.LoraAlpha, config.FanInFanOut, config.UseRslora),
            Is.EqualTo((peftConfig.R, peftConfig.LoraAlpha, peftConfig.FanInFanOut, peftConfig.UseRslora)));
        Assert.That(config.TargetModules, Is.EquivalentTo(peftConfig.TargetModules));
        Assert.That(config.RankPattern, Is.Empty);
        Assert.That(config.AlphaPattern, Is.Empty);
    }

    [TestCase("model.dynamo.onnx")]
    [TestCase("model.torchscript.onnx")]
    public void CanonicalAdapterExportsAsOneExactPeftAdapter(string file)
    {
        var reference = Reference("gpt2");
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", file), "-o", injected, "--target-modules", "c_attn,c_fc", "--variant", "canonical", "--r", "2");
        float[] trained;
        using (var model = OnnxModel.Load(injected))
        {
            RandomizeB(model);
            trained = Logits(model, reference);
            model.Save(injected);
        }
        var exported = Path.Combine(dir, "exported");
        OrtloraOk("export-adapter", injected, "-o", exported);
        var adapter = PeftAdapter.Load(exported);
        // c_attn: 3 parts of rank 2 → one rank-6 adapter, lora_alpha scaled to keep alpha/r = 16/2; c_fc: plain r 2.
        Assert.That(adapter.Config.RankPattern, Is.EqualTo(new Dictionary<string, int>
            { ["transformer.h.0.attn.c_attn"] = 6, ["transformer.h.1.attn.c_attn"] = 6 }));
        Assert.That(adapter.Config.AlphaPattern.Values, Has.All.EqualTo(48.0));
        Assert.That(adapter.Tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].Shape, Is.EqualTo(new long[] { 192, 6 }));
        Assert.That(adapter.Tensors.Keys, Has.None.Contains("part"));
        var reinjected = Path.Combine(dir, "reinjected.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", file), "-o", reinjected, "--init-from", exported);
        Assert.That(Shared.MaxAbsDiff(Logits(reinjected, reference), trained), Is.LessThan(1e-4f));
    }

    [Test]
    public void FreshAdapterUsesPeftKeys()
    {
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.torchscript.onnx"), "-o", injected, "--target-modules", "all-linear", "--r", "4");
        OrtloraOk("export-adapter", injected, "-o", Path.Combine(dir, "exported"));
        var exported = SafeTensors.Read(Path.Combine(dir, "exported", "adapter_model.safetensors"));
        var peft = SafeTensors.Read(Shared.Peft("llama", "adapter/adapter_model.safetensors"));
        Assert.That(exported.Keys, Is.EquivalentTo(peft.Keys));
        foreach (var (key, t) in peft) Assert.That(exported[key].Shape, Is.EqualTo(t.Shape), key);
    }
}
