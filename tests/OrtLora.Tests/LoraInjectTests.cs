using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Injection against PEFT's own numbers on both exporters' output of both fixture architectures.</summary>
public class LoraInjectTests
{
    public static readonly object[] Models =
    [
        new object[] { "llama", "model.dynamo.onnx" },
        new object[] { "llama", "model.torchscript.onnx" },
        new object[] { "gpt2", "model.dynamo.onnx" },
        new object[] { "gpt2", "model.torchscript.onnx" },
    ];

    static float[] Logits(OnnxModel model, Dictionary<string, SafeTensor> reference) =>
        OrtRun.Run(model, Shared.Feeds(reference))["logits"].Floats;

    [TestCaseSource(nameof(Models))]
    public void InitFromPeftReproducesPeftLogits(string arch, string file)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        var adapter = PeftAdapter.Load(Shared.Peft(arch, "adapter"));
        var lora = LoraInjector.Inject(model, adapter);
        Assert.That(lora.Adapters, Has.Count.EqualTo(adapter.Tensors.Count / 2), "one adapter per PEFT module");
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), reference["logits"].AsFloats()), Is.LessThan(1e-4f));
        var back = LoraModel.Read(model)!;
        Assert.That(back.Adapters.Select(a => a.LoraA), Is.EquivalentTo(adapter.Tensors.Keys.Where(k => k.EndsWith("lora_A.weight"))));
    }

    [TestCaseSource(nameof(Models))]
    public void DefaultInjectionLeavesLogitsUnchanged(string arch, string file)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        var config = new LoraConfig { TargetModules = ["all-linear"] };
        var lora = LoraInjector.Inject(model, config);
        // The fixture adapters target every linear layer but the head, so all-linear must find the same modules.
        var peftModules = PeftAdapter.Load(Shared.Peft(arch, "adapter")).Modules().Select(m => m.Path);
        Assert.That(lora.Adapters.Select(a => a.Module), Is.EquivalentTo(peftModules));
        Assert.That(lora.Adapters.Select(a => a.LoraA), Is.EquivalentTo(PeftAdapter.Load(Shared.Peft(arch, "adapter")).Modules().Select(m => m.KeyA)));
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-5f));
    }
}
