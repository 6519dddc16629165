using Microsoft.ML.OnnxRuntime;

namespace OrtLora.Onnx;

/// <summary>Puts a session on the requested device. CPU needs nothing. CUDA comes either from a GPU build of ONNX
/// Runtime (built with -p:OrtGpu=true, which references Microsoft.ML.OnnxRuntime.Gpu.Linux) through
/// AppendExecutionProvider_CUDA, or from a plugin execution provider library (--ep-library PATH) registered with
/// the environment, which works with any ORT build.</summary>
public static class ExecutionDevice
{
    static readonly Dictionary<string, string> Registered = new();

    public static void Configure(SessionOptions options, string device, string? epLibrary, int deviceId = 0)
    {
        switch (device)
        {
            case "cpu":
                if (epLibrary is not null) throw new OrtLoraException("--ep-library is for --device cuda");
                return;
            case "cuda" when epLibrary is not null:
                AppendPlugin(options, epLibrary, "CUDA");
                return;
            case "cuda":
                try { options.AppendExecutionProvider_CUDA(deviceId); }
                catch (Exception e) when (e is OnnxRuntimeException or EntryPointNotFoundException)
                {
                    throw new OrtLoraException("--device cuda: this ONNX Runtime build has no CUDA execution provider " +
                        $"({e.Message.Split('\n')[0]}). Pass --ep-library PATH/libonnxruntime_providers_cuda.so, or build with -p:OrtGpu=true", e);
                }
                return;
            default:
                throw new OrtLoraException($"--device {device}: expected cpu or cuda");
        }
    }

    static void AppendPlugin(SessionOptions options, string library, string vendorHint)
    {
        if (!File.Exists(library)) throw new OrtLoraException($"{library}: execution provider library not found");
        var env = OrtEnv.Instance();
        var full = Path.GetFullPath(library);
        lock (Registered)
        {
            if (!Registered.ContainsKey(full))
            {
                var name = "ortlora_ep_" + Registered.Count;
                try { env.RegisterExecutionProviderLibrary(name, full); }
                catch (OnnxRuntimeException e) { throw new OrtLoraException($"{library}: ONNX Runtime could not load it as an execution provider ({e.Message})", e); }
                Registered[full] = name;
            }
        }
        var devices = env.GetEpDevices().Where(d => d.EpName.Contains(vendorHint, StringComparison.OrdinalIgnoreCase)).ToList();
        if (devices.Count == 0)
            throw new OrtLoraException($"{library}: loaded, but it reports no {vendorHint} device (is there a GPU and its driver?)");
        options.AppendExecutionProvider(env, [devices[0]], new Dictionary<string, string>());
    }
}
