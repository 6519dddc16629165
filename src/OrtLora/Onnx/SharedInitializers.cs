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
    /// graph needs no side file to load.
    /// <para>A matrix read only through Transposes (the dynamo export's <c>x · Transpose(W)</c>) is stored transposed
    /// (the input keeps the weight's name, with the swapped shape) and the Transposes go: as an initializer ORT would have folded them, as a graph input it
    /// would transpose the whole weight on every run and keep the copy for the backward.</para></summary>
    public static SharedInitializers Extract(OnnxModel model, GraphProto graph)
    {
        var inputs = new HashSet<string>(graph.Input.Select(i => i.Name));
        // A quantized weight's scales stay initializers, as its integers do: ONNX Runtime fuses DequantizeLinear + MatMul
        // into MatMulNBits only over constants.
        var quantization = graph.Node.Where(n => n.OpType == "DequantizeLinear").SelectMany(n => n.Input).ToHashSet();
        // only the weights that become shared inputs lose their Transposes: an overridable default (a runtime adapter's
        // A) stays as it is read
        var transposedOnly = ReadOnlyTransposed(graph).Where(w => !inputs.Contains(w.Key) && !quantization.Contains(w.Key)).ToDictionary();
        var shared = new SharedInitializers();
        try
        {
            var remaining = new List<TensorProto>();
            foreach (var t in graph.Initializer)
            {
                // An initializer that is also a graph input is a default the caller may override: not frozen.
                if (!IsWeight(t) || inputs.Contains(t.Name) || quantization.Contains(t.Name))
                {
                    if (OnnxModel.IsExternal(t) || model.IsDeferred(t.Name)) Tensors.SetRaw(t, model.ReadBytes(t));
                    remaining.Add(t);
                    continue;
                }
                bool transpose = transposedOnly.ContainsKey(t.Name);
                shared.Add(model, t, transpose);
                graph.Input.Add(InputFor(t, transpose));
            }
            graph.Initializer.Clear();
            graph.Initializer.AddRange(remaining);
            var editor = new GraphEditor(graph);
            foreach (var (weight, transposes) in transposedOnly)
                foreach (var node in transposes)
                {
                    editor.ReplaceUses(node.Output[0], weight);
                    editor.RemoveNode(node);
                }
            return shared;
        }
        catch
        {
            shared.Dispose();
            throw;
        }
    }

    /// <summary>The shared weights that <paramref name="session"/> takes as inputs, to bind.</summary>
    public IEnumerable<(string Name, OrtValue Value)> InputsOf(InferenceSession session)
    {
        foreach (var name in session.InputNames)
            if (_values.TryGetValue(name, out var value)) yield return (name, value);
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

    /// <summary>Weight initializers of rank 2 whose every reader is a Transpose swapping the two axes (and not a graph
    /// output), with those Transposes.</summary>
    static Dictionary<string, IReadOnlyList<NodeProto>> ReadOnlyTransposed(GraphProto graph)
    {
        var editor = new GraphEditor(graph);
        bool Swaps(NodeProto n) => n.OpType == "Transpose" && n.Domain is "" or "ai.onnx" && n.Input.Count == 1
            && (Attrs.Ints(n, "perm") ?? [1, 0]) is [1, 0] && !editor.IsGraphOutput(n.Output[0]);
        var result = new Dictionary<string, IReadOnlyList<NodeProto>>();
        foreach (var t in graph.Initializer.Where(t => t.Dims.Count == 2 && IsWeight(t) && !editor.IsGraphOutput(t.Name)))
            if (editor.Consumers(t.Name) is { Count: > 0 } readers && readers.All(Swaps)) result[t.Name] = readers;
        return result;
    }

    unsafe void Add(OnnxModel model, TensorProto t, bool transpose)
    {
        long size = Tensors.ElementCount(t.Dims) * Tensors.ElementSize(t.DataType);
        if (size > int.MaxValue) throw new OrtLoraException($"{model.Source}: tensor '{t.Name}' is over 2 GB; ortlora reads tensors of up to 2 GB each");
        // 64-byte alignment, as ORT's own CPU allocator gives its kernels.
        var buffer = (IntPtr)NativeMemory.AlignedAlloc((nuint)Math.Max(1, size), 64);
        _hostBuffers[t.Name] = buffer;
        model.ReadInto(t, new Span<byte>((void*)buffer, (int)size));
        var dims = t.Dims.ToArray();
        if (transpose)
        {
            Transpose2D((byte*)buffer, dims[0], dims[1], Tensors.ElementSize(t.DataType));
            dims = [dims[1], dims[0]];
        }
        // ONNX's data type numbers are ORT's TensorElementType numbers.
        _values[t.Name] = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, (TensorElementType)t.DataType, dims, buffer, size);
        TotalBytes += size;
    }

    /// <summary>Transposes a [rows, cols] matrix in place (through a copy), in 32×32 tiles for the cache.</summary>
    static unsafe void Transpose2D(byte* data, long rows, long cols, int elementSize)
    {
        long size = rows * cols * elementSize;
        var copy = (byte*)NativeMemory.Alloc((nuint)size);
        try
        {
            Buffer.MemoryCopy(data, copy, size, size);
            const int tile = 32;
            for (long r0 = 0; r0 < rows; r0 += tile)
                for (long c0 = 0; c0 < cols; c0 += tile)
                    for (long r = r0; r < Math.Min(r0 + tile, rows); r++)
                        for (long c = c0; c < Math.Min(c0 + tile, cols); c++)
                        {
                            byte* from = copy + (r * cols + c) * elementSize, to = data + (c * rows + r) * elementSize;
                            switch (elementSize)
                            {
                                case 4: *(uint*)to = *(uint*)from; break;
                                case 2: *(ushort*)to = *(ushort*)from; break;
                                case 8: *(ulong*)to = *(ulong*)from; break;
                                default: Buffer.MemoryCopy(from, to, elementSize, elementSize); break;
                            }
                        }
        }
        finally { NativeMemory.Free(copy); }
    }

    static ValueInfoProto InputFor(TensorProto t, bool transposed)
    {
        var shape = new TensorShapeProto();
        foreach (var d in transposed ? t.Dims.Reverse() : t.Dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
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
