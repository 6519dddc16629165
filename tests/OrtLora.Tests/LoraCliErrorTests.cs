using OrtLora.Lora;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>Bad input through the CLI: one clear message naming the file, exit code 1, and no output file.</summary>
public class LoraCliErrorTests
{
    string _dir = "";
    string Output => Path.Combine(_dir, "out", "model.onnx");

    [SetUp]
    public void CreateDir() => _dir = Shared.TempDir();

    void AssertFails(CliResult result, params string[] messageParts)
    {
        Assert.That(result.ExitCode, Is.EqualTo(1), result.Out + result.Error);
        var lines = result.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(1), "one message");
        Assert.That(lines[0], Does.StartWith("error: "));
        foreach (var part in messageParts) Assert.That(lines[0], Does.Contain(part));
        var outDir = Path.Combine(_dir, "out");
        Assert.That(Directory.Exists(outDir) ? Directory.GetFiles(outDir) : [], Is.Empty, "no output written");
    }

    [Test]
    public void NotAnOnnxFile()
    {
        var text = Path.Combine(_dir, "notes.onnx");
        File.WriteAllText(text, "name,value\n1,2\n");
        AssertFails(Ortlora("inject", text, "-o", Output), text, "not");
    }

    [Test]
    public void TruncatedModel()
    {
        var truncated = Path.Combine(_dir, "truncated.onnx");
        var bytes = File.ReadAllBytes(Shared.Peft("gpt2", "model.torchscript.onnx"));
        File.WriteAllBytes(truncated, bytes[..(bytes.Length * 2 / 3)]);
        AssertFails(Ortlora("inject", truncated, "-o", Output), truncated);
    }

    [Test]
    public void MissingExternalDataFile()
    {
        var model = Path.Combine(_dir, "model.onnx");
        File.Copy(Shared.Require("fixtures", "external-data", "llama", "model.onnx"), model);
        AssertFails(Ortlora("merge", model, "-o", Output), "model.onnx.data");
    }

    [Test]
    public void NoMatchingTarget()
    {
        var model = Shared.Peft("llama", "model.dynamo.onnx");
        AssertFails(Ortlora("inject", model, "-o", Output, "--target-modules", "c_attn,query_key_value"), model, "c_attn", "q_proj");
    }

    [Test]
    public void AdapterOfAnotherArchitecture()
    {
        var adapter = Shared.Peft("gpt2", "adapter");
        AssertFails(Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", Output, "--init-from", adapter),
            "adapter_model.safetensors", "transformer.h.0");
    }

    [Test]
    public void AdapterShapesThatDoNotFit()
    {
        var adapterDir = Path.Combine(_dir, "adapter");
        Directory.CreateDirectory(adapterDir);
        File.Copy(Shared.Peft("llama", "adapter/adapter_config.json"), Path.Combine(adapterDir, "adapter_config.json"));
        var tensors = SafeTensors.Read(Shared.Peft("llama", "adapter/adapter_model.safetensors"));
        const string key = "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight";
        tensors[key] = SafeTensor.FromFloats([4, 64], new float[4 * 64]); // down_proj reads 176 features, not 64
        SafeTensors.Write(Path.Combine(adapterDir, "adapter_model.safetensors"), tensors);
        AssertFails(Ortlora("inject", Shared.Peft("llama", "model.torchscript.onnx"), "-o", Output, "--init-from", adapterDir),
            Path.Combine(adapterDir, "adapter_model.safetensors"), key, "[4, 64]", "[4, 176]");
    }

    [Test]
    public void NotAnAdapterDirectory()
    {
        AssertFails(Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", Output, "--init-from", _dir), _dir, "adapter_config.json");
    }

    [Test]
    public void OptionsTheAdapterFixesAreRefusedWithInitFrom()
    {
        var adapter = Shared.Peft("llama", "adapter");
        AssertFails(Ortlora("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", Output, "--init-from", adapter, "--r", "8"),
            "--r", "--init-from", adapter);
    }

    [Test]
    public void InjectingTwice()
    {
        var once = Path.Combine(_dir, "once.onnx");
        OrtloraOk("inject", Shared.Peft("llama", "model.dynamo.onnx"), "-o", once);
        AssertFails(Ortlora("inject", once, "-o", Output), once, "already has LoRA adapters");
    }

    [Test]
    public void ExportWithoutAdapters()
    {
        var model = Shared.Peft("gpt2", "model.dynamo.onnx");
        var result = Ortlora("export-adapter", model, "-o", Path.Combine(_dir, "out"));
        AssertFails(result, model, "no LoRA adapters");
    }
}
