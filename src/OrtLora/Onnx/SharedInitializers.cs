using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx;

namespace OrtLora.Onnx;

/// <summary>A model's frozen weights, held once in native memory as OrtValues that every session of the model reads
/// in place. <see cref="Extract"/> takes them out of a graph: each becomes a graph input of the same name, type and
/// shape, bound with IOBinding on every run (<see cref="Bind"/>). So the sessions of one model share one copy of the
/// weights, the graph protos carry no weight bytes (fast to load, no 2 GB protobuf limit), and the bytes are read
/// from the model one tensor at a time wherever they are stored.
/// <para>Why graph inputs rather than SessionOptions.AddInitializer: ORT accepts a shared initializer only in place of
/// an initializer that still has its data in the graph (raw bytes, or an external file that exists), and without a
/// prepacked-weights container every session would still keep its own prepacked copy of each MatMul weight.</para></summary>
public sealed class SharedInitializers : IDisposable
{
    /// <summary>Float tensors of at least this size are weights. Smaller constants (shapes, axes, scalars) stay in the
    /// graph, where ORT folds them and autodiff reads their values.</summary>
    public const long MinBytes = 1024;

    readonly Dictionary<string, OrtValue> _values = new();
    readonly Dictionary<string, IntPtr> _hostBuffers = new();

    public IReadOnlyDictionary<string, OrtValue> Values => _values;
    public long TotalBytes { get; private set; }

    public static bool IsWeight(TensorProto t) =>
        Tensors.IsFloat(t.DataType) && Tensors.ByteSize(t) >= MinBytes;

    /// <summary>Moves every weight initializer of <paramref name="graph"/> (a copy of <paramref name="model"/>'s graph)
    /// into native memory and declares each as a graph input instead. The other initializers are made inline, so the
    /// graph needs no side file to load.</summary>
    public static SharedInitializers Extract(OnnxModel model, GraphProto graph)
    {
        var inputs = new HashSet<string>(graph.Input.Select(i => i.Name));
        var shared = new SharedInitializers();
        try
        {
            var remaining = new List<TensorProto>();
            foreach (var t in graph.Initializer)
            {
                // An initializer that is also a graph input is a default the caller may override: not frozen.
                if (!IsWeight(t) || inputs.Contains(t.Name))
                {
                    if (OnnxModel.IsExternal(t) || model.IsDeferred(t.Name)) Tensors.SetRaw(t, model.ReadBytes(t));
                    remaining.Add(t);
                    continue;
                }
                shared.Add(model, t);
                graph.Input.Add(InputFor(t));
            }
            graph.Initializer.Clear();
            graph.Initializer.AddRange(remaining);
            return shared;
        }
        catch
        {
            shared.Dispose();
            throw;
        }
    }

    /// <summary>Binds each shared weight that <paramref name="session"/> takes as an input.</summary>
    public void Bind(OrtIoBinding binding, InferenceSession session)
    {
        foreach (var name in session.InputNames)
            if (_values.TryGetValue(name, out var value)) binding.BindInput(name, value);
    }

    /// <summary>Moves the named weights into memory from <paramref name="allocator"/> (a device's), freeing their host
    /// buffers: on a GPU the sessions then read the weights where they run instead of copying them every step.</summary>
    public void MoveTo(IEnumerable<string> names, OrtAllocator allocator, DeviceCopy copy)
    {
        foreach (var name in names.ToList())
        {
            var host = _values[name];
            var info = host.GetTensorTypeAndShape();
            var moved = OrtValue.CreateAllocatedTensorValue(allocator, info.ElementDataType, info.Shape);
            copy.Copy(host, moved);
            _values[name] = moved;
            host.Dispose();
            if (_hostBuffers.Remove(name, out var buffer)) unsafe { NativeMemory.AlignedFree((void*)buffer); }
            OnDeviceCount++;
        }
    }

    /// <summary>How many weights <see cref="MoveTo"/> moved out of host memory.</summary>
    public int OnDeviceCount { get; private set; }

    unsafe void Add(OnnxModel model, TensorProto t)
    {
        long size = Tensors.ElementCount(t.Dims) * Tensors.ElementSize(t.DataType);
        if (size > int.MaxValue) throw new OrtLoraException($"{model.Source}: tensor '{t.Name}' is over 2 GB; ortlora reads tensors of up to 2 GB each");
        // 64-byte alignment, as ORT's own CPU allocator gives its kernels.
        var buffer = (IntPtr)NativeMemory.AlignedAlloc((nuint)Math.Max(1, size), 64);
        _hostBuffers[t.Name] = buffer;
        model.ReadInto(t, new Span<byte>((void*)buffer, (int)size));
        // ONNX's data type numbers are ORT's TensorElementType numbers.
        _values[t.Name] = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, (TensorElementType)t.DataType, t.Dims.ToArray(), buffer, size);
        TotalBytes += size;
    }

    static ValueInfoProto InputFor(TensorProto t)
    {
        var shape = new TensorShapeProto();
        foreach (var d in t.Dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto { Name = t.Name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = t.DataType, Shape = shape } } };
    }

    public void Dispose()
    {
        foreach (var v in _values.Values) v.Dispose();
        _values.Clear();
        unsafe { foreach (var b in _hostBuffers.Values) NativeMemory.AlignedFree((void*)b); }
        _hostBuffers.Clear();
    }
}
