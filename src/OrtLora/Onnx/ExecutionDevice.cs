using Microsoft.ML.OnnxRuntime;

namespace OrtLora.Onnx;

/// <summary>Puts a session on the requested device. CPU needs nothing. CUDA comes either from a GPU build of ONNX
/// Runtime (built with -p:OrtGpu=true, which references Microsoft.ML.OnnxRuntime.Gpu.Linux) through
/// AppendExecutionProvider_CUDA, or from a plugin execution provider library (--ep-library PATH) registered with
/// the environment, which works with any ORT build.</summary>
public static class ExecutionDevice
{
    static readonly Dictionary<string, string> Registered = new();

    /// <param name="cudaGraphs">CUDA's enable_cuda_graph: the session captures the kernels of a Run and replays them,
    /// which needs every input and output bound at a fixed address (<see cref="Training.Engine.FixedAddresses"/>)</param>
    public static void Configure(SessionOptions options, string device, string? epLibrary, int deviceId = 0, bool cudaGraphs = false)
    {
        var cudaOptions = CudaOptions(cudaGraphs, Environment.GetEnvironmentVariable("ORTLORA_CUDA_OPTIONS"));
        switch (device)
        {
            case "cpu":
                if (epLibrary is not null) throw new OrtLoraException("--ep-library is for --device cuda");
                return;
            case "cuda" when epLibrary is not null:
                AppendPlugin(options, epLibrary, "CUDA", cudaOptions);
                return;
            case "cuda":
                try
                {
                    using var cuda = new OrtCUDAProviderOptions();
                    cuda.UpdateOptions(new(cudaOptions) { ["device_id"] = deviceId.ToString(System.Globalization.CultureInfo.InvariantCulture) });
                    options.AppendExecutionProvider_CUDA(cuda);
                }
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

    /// <summary>The CUDA provider's options. The plugin got none when it was seen to work: only what is asked for, CUDA
    /// graphs and, from ORTLORA_CUDA_OPTIONS ("key=value;..."), any of the provider's own (e.g. use_tf32=0: float32
    /// matmuls without TF32, as PyTorch computes them by default, for PEFT's numbers).</summary>
    public static Dictionary<string, string> CudaOptions(bool cudaGraphs, string? extra)
    {
        var options = cudaGraphs ? new Dictionary<string, string> { ["enable_cuda_graph"] = "1" } : new Dictionary<string, string>();
        foreach (var (key, value) in OrtRun.KeyValues(extra, "ORTLORA_CUDA_OPTIONS")) options[key] = value;
        return options;
    }

    static void AppendPlugin(SessionOptions options, string library, string vendorHint, Dictionary<string, string> providerOptions)
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
        options.AppendExecutionProvider(env, [devices[0]], providerOptions);
    }
}
