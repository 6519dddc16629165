using OrtLora.Lora;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>inspect: what it lists must agree with what PEFT built on the same model.</summary>
public class LoraInspectTests
{
    [TestCaseSource(typeof(LoraTestKit), nameof(LoraTestKit.Models))]
    public void ParameterCountMatchesThePeftAdapter(string arch, string file)
    {
        var output = OrtloraOk("inspect", Shared.Peft(arch, file), "--r", "4").Out;
        // The fixture adapter is PEFT's all-linear at r 4: its element count is the all-linear count at r 4.
        long peftElements = SafeTensors.Read(Shared.Peft(arch, "adapter/adapter_model.safetensors")).Values.Sum(t => t.ElementCount);
        Assert.That(output, Does.Contain($"all-linear {peftElements:N0}"));
        Assert.That(output, Does.Contain("lm_head").And.Contain("output head"));
        if (arch == "gpt2") Assert.That(output, Does.Match(@"transformer\.h\.0\.attn\.c_attn\s+Gemm\s+64\s+192\s+\[in,out\]\s+64\+64\+64"));
        // The embeddings PEFT adapts when named (lora_embedding_A [r, vocabulary] + lora_embedding_B [hidden, r]).
        var vocabulary = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"))["logits"].Shape[^1];
        Assert.That(output, Does.Contain($"{(arch == "gpt2" ? "transformer.wte" : "model.embed_tokens")} [{vocabulary}, 64] {4 * (vocabulary + 64):N0} params at r=4"));
        if (arch == "gpt2") Assert.That(output, Does.Contain("transformer.wpe [256, 64]"), "the position embedding, by name too");
    }

    [Test]
    public void InjectedModelListsItsAdapters()
    {
        var injected = Path.Combine(Shared.TempDir(), "injected.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", "model.torchscript.onnx"), "-o", injected, "--variant", "canonical", "--r", "2");
        var output = OrtloraOk("inspect", injected).Out;
        Assert.That(output, Does.Contain("9 linear layers"), "the adapters' own MatMuls are not layers to target");
        Assert.That(output, Does.Contain("LoRA adapters: 6, 1,536 parameters"));
        Assert.That(output, Does.Match(@"transformer\.h\.1\.attn\.c_attn\s+3/3 \[128:192\]\s+2\s+8"));
    }
}
