using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;

namespace OrtLora.Onnx;

/// <summary>Copies tensors between host and device memory with one-node Identity sessions on the training sessions'
/// device: IOBinding moves a bound input to where the kernel runs and its output to where it is bound. This works with
/// every execution provider, the classic CUDA one and plugin libraries alike (OrtEnv.CopyTensors only knows plugin
/// devices, and not host to host). One small session per element type, made when first needed.</summary>
public sealed class DeviceCopy : IDisposable
{
    readonly SessionOptions _options;
    readonly Dictionary<int, InferenceSession> _sessions = new();
    readonly RunOptions _run = new();

    /// <param name="options">the training sessions' options (same device); owned from here on</param>
    public DeviceCopy(SessionOptions options) => _options = options;

    public void Copy(OrtValue source, OrtValue destination)
    {
        int type = (int)source.GetTensorTypeAndShape().ElementDataType; // ORT's element types are ONNX's data types
        if (!_sessions.TryGetValue(type, out var session)) _sessions[type] = session = new InferenceSession(IdentityModel(type), _options);
        using var binding = session.CreateIoBinding();
        binding.BindInput("x", source);
        binding.BindOutput("y", destination);
        session.RunWithBinding(_run, binding);
    }

    static byte[] IdentityModel(int elementType)
    {
        var model = new ModelProto { IrVersion = 8, Graph = new GraphProto { Name = "copy" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        model.Graph.Node.Add(new NodeProto { OpType = "Identity", Name = "copy", Input = { "x" }, Output = { "y" } });
        var tensor = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elementType } };
        model.Graph.Input.Add(new ValueInfoProto { Name = "x", Type = tensor });
        model.Graph.Output.Add(new ValueInfoProto { Name = "y", Type = tensor });
        return model.ToByteArray();
    }

    public void Dispose()
    {
        foreach (var s in _sessions.Values) s.Dispose();
        _run.Dispose();
        _options.Dispose();
    }
}
