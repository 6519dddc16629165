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
    readonly Dictionary<(int Type, int Count), InferenceSession> _sessions = new();
    readonly RunOptions _run = new();

    /// <param name="options">the training sessions' options (same device); owned from here on</param>
    public DeviceCopy(SessionOptions options) => _options = options;

    public void Copy(OrtValue source, OrtValue destination) => CopyAll([(source, destination)]);

    /// <summary>Many copies in one Run per element type (one Identity node each): the per-Run cost of ORT, paid once,
    /// is what a step's copies of hundreds of state tensors would otherwise add up to.</summary>
    public void CopyAll(IReadOnlyList<(OrtValue Source, OrtValue Destination)> copies)
    {
        // ORT's element types are ONNX's data types
        foreach (var ofType in copies.GroupBy(c => (int)c.Source.GetTensorTypeAndShape().ElementDataType))
            CopyAll(ofType.Key, ofType.ToList());
    }

    void CopyAll(int type, List<(OrtValue Source, OrtValue Destination)> copies)
    {
        if (!_sessions.TryGetValue((type, copies.Count), out var session))
            _sessions[(type, copies.Count)] = session = new InferenceSession(IdentityModel(type, copies.Count), _options);
        using var binding = session.CreateIoBinding();
        for (int i = 0; i < copies.Count; i++)
        {
            binding.BindInput($"x{i}", copies[i].Source);
            binding.BindOutput($"y{i}", copies[i].Destination);
        }
        session.RunWithBinding(_run, binding);
    }

    static byte[] IdentityModel(int elementType, int count)
    {
        var model = new ModelProto { IrVersion = 8, Graph = new GraphProto { Name = "copy" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 17 });
        var tensor = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = elementType } };
        for (int i = 0; i < count; i++)
        {
            model.Graph.Node.Add(new NodeProto { OpType = "Identity", Name = $"copy{i}", Input = { $"x{i}" }, Output = { $"y{i}" } });
            model.Graph.Input.Add(new ValueInfoProto { Name = $"x{i}", Type = tensor });
            model.Graph.Output.Add(new ValueInfoProto { Name = $"y{i}", Type = tensor });
        }
        return model.ToByteArray();
    }

    public void Dispose()
    {
        foreach (var s in _sessions.Values) s.Dispose();
        _run.Dispose();
        _options.Dispose();
    }
}
