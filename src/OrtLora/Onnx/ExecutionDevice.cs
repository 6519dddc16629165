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

    /// <summary>The CUDA provider's options: float32 matmuls without TF32 (use_tf32=0), CUDA graphs when asked, and from
    /// ORTLORA_CUDA_OPTIONS ("key=value;...") any of the provider's own on top. TF32 is off because PyTorch computes
    /// float32 matmuls without it by default (torch.backends.cuda.matmul.allow_tf32): with ORT's default (on) the four
    /// fixture exports missed PEFT's gradients by 1.3e-5 against a tolerance of 9.3e-7 and its AdamW step by 2e-2 on the
    /// GPU machine, without it they matched every row (2026-12-04). ORTLORA_CUDA_OPTIONS=use_tf32=1 turns it back on.</summary>
    public static Dictionary<string, string> CudaOptions(bool cudaGraphs, string? extra)
    {
        var options = new Dictionary<string, string> { ["use_tf32"] = "0" };
        if (cudaGraphs) options["enable_cuda_graph"] = "1";
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
