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

    /// <summary>The memory options verified end to end: loss, gradients, the AdamW step and the 20-step trajectory all
    /// within PEFT's tolerances (verify exits 2 when any row fails).</summary>
    [TestCase("llama")] [TestCase("gpt2")]
    public void CheckpointingAndTheChunkedLossPassEveryRow(string arch)
    {
        var output = Path.Combine(Shared.TempDir(), "ours.safetensors");
        var result = LoraTestKit.Ortlora("verify", Shared.Peft(arch, "model.dynamo.onnx"),
            "--init-from", Path.GetDirectoryName(Shared.Peft(arch, "adapter/adapter_config.json"))!,
            "--reference", Shared.Peft(arch, "reference.safetensors"), "-o", output, "--gradient-checkpointing", "--loss-chunks", "4");
        Assert.That(result.ExitCode, Is.EqualTo(0), result.Out + result.Error);
        var ours = SafeTensors.Read(output);
        Assert.That(ours["traj.loss"].AsFloats(), Has.Length.EqualTo(SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"))["traj.loss"].AsFloats().Length));
    }

    /// <summary>--static-shapes (how verify runs on the CUDA plugin, which crashes on dynamic-shape graphs): graphs loaded
    /// for the reference batch's shape still pass every row, on the export whose rotary bounds are computed at run time.</summary>
    [Test]
    public void StaticShapesPassEveryRow()
    {
        var output = Path.Combine(Shared.TempDir(), "ours.safetensors");
        var result = LoraTestKit.Ortlora("verify", Shared.Peft("llama", "model.torchscript.onnx"),
            "--init-from", Path.GetDirectoryName(Shared.Peft("llama", "adapter/adapter_config.json"))!,
            "--reference", Shared.Peft("llama", "reference.safetensors"), "-o", output, "--static-shapes");
        Assert.That(result.ExitCode, Is.EqualTo(0), result.Out + result.Error);
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        Assert.That(Math.Abs(SafeTensors.Read(output)["loss"].AsFloats()[0] - reference["loss"].AsFloats()[0]), Is.LessThan(1e-4));
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

    /// <summary>The GPU session's check: verify runs where it is told, at the optimization level it is told (basic: no
    /// com.microsoft fusions) and still matches PEFT; a missing EP library is one clear error and no output.</summary>
    [Test]
    public void VerifyTakesTheDeviceAndOptimizationLevel()
    {
        var dir = Shared.TempDir();
        string[] Args(string output, params string[] more) => ["verify", Shared.Peft("gpt2", "model.dynamo.onnx"),
            "--init-from", Path.GetDirectoryName(Shared.Peft("gpt2", "adapter/adapter_config.json"))!,
            "--reference", Shared.Peft("gpt2", "reference.safetensors"), "-o", output, .. more];
        var basic = LoraTestKit.Ortlora(Args(Path.Combine(dir, "basic.safetensors"), "--graph-optimization-level", "basic"));
        Assert.That(basic.ExitCode, Is.EqualTo(0), basic.Error + basic.Out);
        var reference = SafeTensors.Read(Shared.Peft("gpt2", "reference.safetensors"));
        var ours = SafeTensors.Read(Path.Combine(dir, "basic.safetensors"));
        Assert.That(Math.Abs(ours["loss"].AsFloats()[0] - reference["loss"].AsFloats()[0]), Is.LessThan(1e-4));

        var missing = Path.Combine(dir, "no-such-provider.so");
        var cuda = LoraTestKit.Ortlora(Args(Path.Combine(dir, "cuda.safetensors"), "--device", "cuda", "--ep-library", missing));
        Assert.That(cuda.ExitCode, Is.EqualTo(1));
        Assert.That(cuda.Error, Does.Contain(missing).And.Contain("not found"));
        Assert.That(File.Exists(Path.Combine(dir, "cuda.safetensors")), Is.False);
    }
}
