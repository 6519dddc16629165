using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

public class OnnxIoTests
{
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void BaseModelReproducesPeftBaseLogits(string arch, string file)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        var logits = OrtRun.Run(model, Shared.Feeds(reference))["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(logits, reference["logits_base"].AsFloats()), Is.LessThan(1e-4f));
    }

    [Test]
    public void ExternalDataLoadsAndSavesBothWays()
    {
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        using var model = OnnxModel.Load(Shared.Require("fixtures", "external-data", "llama", "model.onnx"));
        Assert.That(model.HasExternalData, Is.True);
        var dir = Shared.TempDir();
        var externalPath = Path.Combine(dir, "ext.onnx");
        model.Save(externalPath);
        Assert.That(File.Exists(externalPath + ".data"), Is.True, "side file kept on save");
        Assert.That(new FileInfo(externalPath).Length, Is.LessThan(new FileInfo(externalPath + ".data").Length));
        var inlinePath = Path.Combine(dir, "inline.onnx");
        model.Save(inlinePath, externalData: false);
        Assert.That(File.Exists(inlinePath + ".data"), Is.False);
        foreach (var path in new[] { externalPath, inlinePath })
        {
            using var reloaded = OnnxModel.Load(path);
            var logits = OrtRun.Run(reloaded, Shared.Feeds(reference))["logits"].Floats;
            Assert.That(Shared.MaxAbsDiff(logits, reference["logits_base"].AsFloats()), Is.LessThan(1e-4f), path);
        }
        Assert.That(Directory.GetFiles(dir).Where(f => f.Contains(".tmp")), Is.Empty, "no temp files left");
    }

    [Test]
    public void RoundTripKeepsMetadataOpsetsAndUnknownFields()
    {
        var path = Shared.Peft("gpt2", "model.dynamo.onnx");
        using var model = OnnxModel.Load(path);
        var dir = Shared.TempDir();
        var copy = Path.Combine(dir, "copy.onnx");
        model.Save(copy, externalData: false);
        Assert.That(File.ReadAllBytes(copy), Is.EqualTo(File.ReadAllBytes(path)), "byte-identical re-serialization");
    }

    [Test]
    public void TruncatedAndForeignFilesGiveOneClearMessage()
    {
        var dir = Shared.TempDir();
        var truncated = Path.Combine(dir, "truncated.onnx");
        var bytes = File.ReadAllBytes(Shared.Peft("llama", "model.dynamo.onnx"));
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<OrtLoraException>(() => OnnxModel.Load(truncated))!;
        Assert.That(e.Message, Does.Contain(truncated));
        var text = Path.Combine(dir, "notes.onnx");
        File.WriteAllText(text, "this is not a model\n");
        e = Assert.Throws<OrtLoraException>(() => OnnxModel.Load(text))!;
        Assert.That(e.Message, Does.Contain("not").And.Contain(text));
    }

    [Test]
    public void SafeTensorsRoundTrip()
    {
        var dir = Shared.TempDir();
        var path = Path.Combine(dir, "t.safetensors");
        var tensors = new Dictionary<string, SafeTensor>
        {
            ["b"] = SafeTensor.FromFloats([2, 3], [1, 2, 3, 4, 5, 6.5f]),
            ["a"] = SafeTensor.FromInt64s([2], [7, -100]),
        };
        SafeTensors.Write(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var back = SafeTensors.Read(path, out var meta);
        Assert.That(meta["format"], Is.EqualTo("pt"));
        Assert.That(back["b"].AsFloats(), Is.EqualTo(new[] { 1, 2, 3, 4, 5, 6.5f }));
        Assert.That(back["b"].Shape, Is.EqualTo(new long[] { 2, 3 }));
        Assert.That(back["a"].AsInt64s(), Is.EqualTo(new long[] { 7, -100 }));
        var peft = SafeTensors.Read(Shared.Peft("llama", "adapter/adapter_model.safetensors"));
        Assert.That(peft["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].Shape, Is.EqualTo(new long[] { 4, 64 }));
    }
}

public class ExecutionDeviceTests
{
    [Test]
    public void CudaWithoutAGpuBuildOrLibraryIsAClearError()
    {
        using var options = new Microsoft.ML.OnnxRuntime.SessionOptions();
        var e = Assert.Throws<OrtLoraException>(() => ExecutionDevice.Configure(options, "cuda", null))!;
        Assert.That(e.Message, Does.Contain("--ep-library"));
        e = Assert.Throws<OrtLoraException>(() => ExecutionDevice.Configure(options, "cuda", "/nonexistent/libonnxruntime_providers_cuda.so"))!;
        Assert.That(e.Message, Does.Contain("/nonexistent/libonnxruntime_providers_cuda.so").And.Contain("not found"));
        e = Assert.Throws<OrtLoraException>(() => ExecutionDevice.Configure(options, "tpu", null))!;
        Assert.That(e.Message, Does.Contain("tpu"));
    }

    [Test]
    public void DiagnosticConfigEntriesReachTheSession()
    {
        var bytes = File.ReadAllBytes(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"));
        // An entry ORT acts on at load: the model is read as ORT format, which an ONNX file is not.
        using (var options = OrtRun.DefaultOptions())
        {
            OrtRun.ApplyDiagnostics(options, "3", " session.load_model_format = ORT ;");
            Assert.That(options.LogSeverityLevel, Is.EqualTo(Microsoft.ML.OnnxRuntime.OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR));
            Assert.Throws<Microsoft.ML.OnnxRuntime.OnnxRuntimeException>(() => new Microsoft.ML.OnnxRuntime.InferenceSession(bytes, options).Dispose());
        }
        using (var options = OrtRun.DefaultOptions())
        {
            OrtRun.ApplyDiagnostics(options, "0", "session.disable_cpu_ep_fallback=1");
            Assert.That(options.LogSeverityLevel, Is.EqualTo(Microsoft.ML.OnnxRuntime.OrtLoggingLevel.ORT_LOGGING_LEVEL_VERBOSE));
            // Without a device provider every node lands on the CPU provider, which this entry refuses at load: on a
            // GPU the same error means some node fell back (docs/gpu.md).
            var e = Assert.Throws<Microsoft.ML.OnnxRuntime.OnnxRuntimeException>(() => new Microsoft.ML.OnnxRuntime.InferenceSession(bytes, options).Dispose())!;
            Assert.That(e.Message, Does.Contain("fallback to CPU EP has been explicitly disabled"));
        }
        using var plain = OrtRun.DefaultOptions();
        Assert.That(Assert.Throws<OrtLoraException>(() => OrtRun.ApplyDiagnostics(plain, null, "session.disable_cpu_ep_fallback"))!.Message,
            Does.Contain("ORTLORA_ORT_CONFIG").And.Contain("key=value"));
        Assert.That(Assert.Throws<OrtLoraException>(() => OrtRun.ApplyDiagnostics(plain, "verbose", null))!.Message,
            Does.Contain("ORTLORA_ORT_LOG_LEVEL"));
        Assert.That(plain.EnableMemoryPattern, Is.True);
        OrtRun.ApplyDiagnostics(plain, null, null, "0");
        Assert.That(plain.EnableMemoryPattern, Is.False);
        Assert.That(Assert.Throws<OrtLoraException>(() => OrtRun.ApplyDiagnostics(plain, null, null, "off"))!.Message,
            Does.Contain("ORTLORA_MEMORY_PATTERN"));
    }

    /// <summary>DeviceCopy.CopyAll: tensors of several shapes copied in one Run, each into its own destination, and a
    /// second call of the same count reusing the session.</summary>
    [Test]
    public void CopyAllCopiesEveryTensorInOneRun()
    {
        using var copy = new DeviceCopy(OrtRun.DefaultOptions());
        float[][] sources = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]];
        long[][] shapes = [[3], [1, 2], [2, 3]];
        var destinations = sources.Select(s => new float[s.Length]).ToArray();
        for (int round = 0; round < 2; round++)
        {
            var values = sources.Select((s, i) => (Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(s, shapes[i]),
                Microsoft.ML.OnnxRuntime.OrtValue.CreateTensorValueFromMemory(destinations[i], shapes[i]))).ToList();
            copy.CopyAll(values);
            for (int i = 0; i < sources.Length; i++) Assert.That(destinations[i], Is.EqualTo(sources[i]), $"round {round}, tensor {i}");
            foreach (var (a, b) in values) { a.Dispose(); b.Dispose(); }
            foreach (var s in sources) for (int j = 0; j < s.Length; j++) s[j] += 100;
        }
    }

    /// <summary>The CUDA provider's options: float32 without TF32, as PyTorch; CUDA graphs when asked;
    /// ORTLORA_CUDA_OPTIONS entries on top (the later wins); a malformed entry is one error naming the variable.</summary>
    [Test]
    public void CudaOptionsAreTorchsFloat32AndWhatIsAskedFor()
    {
        Assert.That(ExecutionDevice.CudaOptions(false, null), Is.EqualTo(new Dictionary<string, string> { ["use_tf32"] = "0" }));
        Assert.That(ExecutionDevice.CudaOptions(true, null), Is.EqualTo(new Dictionary<string, string> { ["use_tf32"] = "0", ["enable_cuda_graph"] = "1" }));
        Assert.That(ExecutionDevice.CudaOptions(true, " use_tf32 = 1 ;enable_cuda_graph=0"),
            Is.EqualTo(new Dictionary<string, string> { ["enable_cuda_graph"] = "0", ["use_tf32"] = "1" }));
        Assert.That(Assert.Throws<OrtLoraException>(() => ExecutionDevice.CudaOptions(false, "use_tf32"))!.Message,
            Does.Contain("ORTLORA_CUDA_OPTIONS").And.Contain("key=value"));
    }
}
