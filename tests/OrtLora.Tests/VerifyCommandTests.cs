using OrtLora.Lora;

namespace OrtLora.Tests;

public class VerifyCommandTests
{
    [Test]
    public void VerifyWritesEveryReferenceQuantityUnderItsNameAndPasses()
    {
        var dir = Shared.TempDir();
        var output = Path.Combine(dir, "ours.safetensors");
        var result = LoraTestKit.Ortlora("verify", Shared.Peft("llama", "model.torchscript.onnx"),
            "--init-from", Path.GetDirectoryName(Shared.Peft("llama", "adapter/adapter_config.json"))!,
            "--reference", Shared.Peft("llama", "reference.safetensors"), "-o", output);
        Assert.That(result.ExitCode, Is.EqualTo(0), result.Error);
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        var ours = SafeTensors.Read(output);
        var expectedKeys = reference.Keys.Where(k => k == "loss" || k == "traj.loss" || k.StartsWith("grad.") || k.StartsWith("step1."));
        Assert.That(ours.Keys, Is.EquivalentTo(expectedKeys));
        foreach (var (key, t) in ours) Assert.That(t.Shape, Is.EqualTo(reference[key].Shape), key);
        Assert.That(Math.Abs(ours["loss"].AsFloats()[0] - reference["loss"].AsFloats()[0]), Is.LessThan(1e-4));
    }

    [Test]
    public void AReferenceForAnotherModelIsOneClearErrorAndNoOutput()
    {
        var dir = Shared.TempDir();
        var output = Path.Combine(dir, "ours.safetensors");
        var result = LoraTestKit.Ortlora("verify", Shared.Peft("llama", "model.dynamo.onnx"),
            "--init-from", Path.GetDirectoryName(Shared.Peft("llama", "adapter/adapter_config.json"))!,
            "--reference", Shared.Peft("gpt2", "reference.safetensors"), "-o", output);
        Assert.That(result.ExitCode, Is.EqualTo(1));
        Assert.That(result.Error, Does.Contain("reference has no 'grad."));
        Assert.That(File.Exists(output), Is.False);
    }
}
