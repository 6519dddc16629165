using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace OrtLora.Onnx;

/// <summary>A named host tensor for feeding or reading an ORT session: float, double or int64 data with a shape.</summary>
public sealed record HostTensor(Array Data, long[] Shape)
{
    public float[] Floats => (float[])Data;
    public long[] Int64s => (long[])Data;
    public double[] Doubles => (double[])Data;

    public static HostTensor Of(float[] data, params long[] shape) => new(data, shape);
    public static HostTensor Of(long[] data, params long[] shape) => new(data, shape);
    public static HostTensor Of(double[] data, params long[] shape) => new(data, shape);

    public OrtValue ToOrtValue() => Data switch
    {
        float[] f => OrtValue.CreateTensorValueFromMemory(f, Shape),
        long[] l => OrtValue.CreateTensorValueFromMemory(l, Shape),
        double[] d => OrtValue.CreateTensorValueFromMemory(d, Shape),
        int[] i => OrtValue.CreateTensorValueFromMemory(i, Shape),
        bool[] b => OrtValue.CreateTensorValueFromMemory(b, Shape),
        Float16[] h => OrtValue.CreateTensorValueFromMemory(h, Shape),
        _ => throw new ArgumentException($"unsupported host tensor type {Data.GetType()}"),
    };

    public static HostTensor FromOrtValue(OrtValue v)
    {
        var info = v.GetTensorTypeAndShape();
        var shape = info.Shape;
        return info.ElementDataType switch
        {
            TensorElementType.Float => new(v.GetTensorDataAsSpan<float>().ToArray(), shape),
            TensorElementType.Double => new(v.GetTensorDataAsSpan<double>().ToArray(), shape),
            TensorElementType.Int64 => new(v.GetTensorDataAsSpan<long>().ToArray(), shape),
            TensorElementType.Int32 => new(v.GetTensorDataAsSpan<int>().ToArray(), shape),
            TensorElementType.Bool => new(v.GetTensorDataAsSpan<bool>().ToArray(), shape),
            TensorElementType.Float16 => new(v.GetTensorDataAsSpan<Float16>().ToArray().Select(h => (float)h).ToArray(), shape),
            _ => throw new ArgumentException($"unsupported output type {info.ElementDataType}"),
        };
    }
}

/// <summary>One-shot runs of a model on the CPU: for tests, verification and small tools.</summary>
public static class OrtRun
{
    /// <summary>The session options of every graph ortlora runs. Weight-only quantized models (DequantizeLinear before
    /// MatMul) are fused by ONNX Runtime into MatMulNBits, whose default on CPU (accuracy level 4) quantizes the
    /// activations to int8: logits move by ~1e-2. Level 1 computes in float32 from the dequantized blocks, so a quantized
    /// model computes what its dequantized weights give, as PEFT's QLoRA does, and training, eval and merge agree.</summary>
    public static SessionOptions DefaultOptions(GraphOptimizationLevel level = GraphOptimizationLevel.ORT_ENABLE_ALL)
    {
        var options = new SessionOptions { GraphOptimizationLevel = level, LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        options.AddSessionConfigEntry("session.qdq_matmulnbits_accuracy_level", "1");
        ApplyDiagnostics(options, Environment.GetEnvironmentVariable("ORTLORA_ORT_LOG_LEVEL"), Environment.GetEnvironmentVariable("ORTLORA_ORT_CONFIG"),
            Environment.GetEnvironmentVariable("ORTLORA_MEMORY_PATTERN"));
        return options;
    }

    /// <summary>Diagnostics for a device whose provider misbehaves (docs/gpu.md), from the environment so that any
    /// command takes them: ORTLORA_ORT_LOG_LEVEL (0 verbose: ORT lists where each node runs) and ORTLORA_ORT_CONFIG
    /// ("key=value;..." session config entries, e.g. session.disable_cpu_ep_fallback=1, which turns a node placed on
    /// the CPU into a load error naming it) and ORTLORA_MEMORY_PATTERN (0 or 1: ORT's memory pattern, one planned block a
    /// shape, off or on; training sessions default to off, TrainingSessionOptions.MemoryPattern).</summary>
    public static void ApplyDiagnostics(SessionOptions options, string? logLevel, string? config, string? memoryPattern = null)
    {
        if (MemoryPattern(memoryPattern) is { } pattern) options.EnableMemoryPattern = pattern;
        if (logLevel is { Length: > 0 })
            options.LogSeverityLevel = int.TryParse(logLevel, out var level) && level is >= 0 and <= 4 ? (OrtLoggingLevel)level
                : throw new OrtLoraException($"ORTLORA_ORT_LOG_LEVEL: expected 0 (verbose) to 4 (fatal), got '{logLevel}'");
        foreach (var (key, value) in KeyValues(config, "ORTLORA_ORT_CONFIG")) options.AddSessionConfigEntry(key, value);
    }

    /// <summary>ORTLORA_MEMORY_PATTERN's value ("0" or "1") as a setting; null when it is not set.</summary>
    public static bool? MemoryPattern(string? value) => value switch
    {
        null or "" => null,
        "0" => false,
        "1" => true,
        _ => throw new OrtLoraException($"ORTLORA_MEMORY_PATTERN: expected 0 or 1, got '{value}'"),
    };

    /// <summary>"key=value;key=value" (spaces around each trimmed); <paramref name="source"/> names it in the error.</summary>
    public static IEnumerable<(string Key, string Value)> KeyValues(string? text, string source)
    {
        foreach (var entry in (text ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var keyValue = entry.Split('=', 2);
            if (keyValue.Length != 2 || keyValue[0].Trim().Length == 0) throw new OrtLoraException($"{source}: expected key=value, got '{entry}'");
            yield return (keyValue[0].Trim(), keyValue[1].Trim());
        }
    }

    /// <param name="fixedInputs">inputs that are OrtValues already (a training graph's frozen weights): not disposed</param>
    public static Dictionary<string, HostTensor> Run(OnnxModel model, IReadOnlyDictionary<string, HostTensor> feeds,
        IEnumerable<string>? outputs = null, GraphOptimizationLevel level = GraphOptimizationLevel.ORT_ENABLE_ALL,
        IReadOnlyDictionary<string, OrtValue>? fixedInputs = null)
    {
        using var options = DefaultOptions(level);
        using var session = new InferenceSession(model.ToBytes(), options);
        return Run(session, feeds, outputs, fixedInputs);
    }

    public static Dictionary<string, HostTensor> Run(InferenceSession session, IReadOnlyDictionary<string, HostTensor> feeds,
        IEnumerable<string>? outputs = null, IReadOnlyDictionary<string, OrtValue>? fixedInputs = null)
    {
        var names = (outputs ?? session.OutputNames).ToList();
        var inputValues = new Dictionary<string, OrtValue>();
        try
        {
            foreach (var (k, v) in feeds) if (session.InputNames.Contains(k)) inputValues[k] = v.ToOrtValue();
            var inputs = new Dictionary<string, OrtValue>(inputValues);
            foreach (var (k, v) in fixedInputs ?? new Dictionary<string, OrtValue>()) if (session.InputNames.Contains(k)) inputs[k] = v;
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, inputs, names);
            var dict = new Dictionary<string, HostTensor>();
            for (int i = 0; i < names.Count; i++) dict[names[i]] = HostTensor.FromOrtValue(results[i]);
            return dict;
        }
        finally { foreach (var v in inputValues.Values) v.Dispose(); }
    }
}
