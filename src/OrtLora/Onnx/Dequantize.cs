using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>ONNX's DequantizeLinear on the host, for weights stored quantized (weight-only QDQ models, as ONNX Runtime's
/// quantizers write them: int8/uint8 per tensor or per channel, int4/uint4 in blocks): y = (x − zero_point) · scale,
/// per tensor (a scalar scale), per axis (a 1-D scale along <c>axis</c>) or per block (a scale of x's rank whose
/// <c>axis</c> dimension counts blocks of <c>block_size</c>).</summary>
public static class Dequantize
{
    public static bool IsQuantizedType(int dataType) => (DT)dataType is DT.Int8 or DT.Uint8 or DT.Int4 or DT.Uint4 or DT.Int16 or DT.Uint16;

    /// <summary>The element type DequantizeLinear gives: output_dtype (opset 23) or the scale's.</summary>
    public static int OutputType(NodeProto dq, GraphEditor g) =>
        Attrs.Int(dq, "output_dtype", 0) is var t and not 0 ? (int)t
        : g.Initializer(dq.Input[1])?.DataType ?? g.Graph.Input.FirstOrDefault(i => i.Name == dq.Input[1])?.Type?.TensorType?.ElemType ?? (int)DT.Float;

    /// <summary>The float values of a DequantizeLinear whose inputs are initializers, in the quantized tensor's layout.</summary>
    public static float[] Run(OnnxModel model, GraphEditor g, NodeProto dq) => Later(model, g, dq)();

    /// <summary>As <see cref="Run"/>, the scales and zero points read now and the integers and floats when asked: merge
    /// writes one dequantized weight at a time.</summary>
    public static Func<float[]> Later(OnnxModel model, GraphEditor g, NodeProto dq)
    {
        TensorProto Initializer(string name) => g.Initializer(name)
            ?? throw new OrtLoraException($"{model.Source}: DequantizeLinear '{dq.Name}' reads '{name}', which is not an initializer");
        var x = Initializer(dq.Input[0]);
        var scale = model.ReadFloats(Initializer(dq.Input[1]));
        var zero = dq.Input.Count > 2 && dq.Input[2] != "" ? Integers(model, Initializer(dq.Input[2])) : null;
        var (name, type) = (x.Name, x.DataType); // x's bytes are read when asked (merge may drop x from the graph by then)
        var dims = x.Dims.ToArray();
        int rank = dims.Length;
        long axis = Attrs.Int(dq, "axis", 1);
        if (axis < 0) axis += rank;
        long block = Attrs.Int(dq, "block_size", 0);
        var strides = new long[rank];
        for (int d = rank - 1, s = 1; d >= 0; s *= (int)dims[d], d--) strides[d] = s;
        return () =>
        {
            var q = Integers(model.Source, name, type, Tensors.ElementCount(dims), model.ReadBytes(x));
            var result = new float[q.Length];
            for (long i = 0; i < q.Length; i++)
            {
                long index = ScaleIndex(i, dims, strides, axis, block, scale.Length);
                result[i] = (q[i] - (zero?[index] ?? 0)) * scale[index];
            }
            return result;
        };
    }

    /// <summary>Which scale (and zero point) element x's element <paramref name="i"/> uses.</summary>
    static long ScaleIndex(long i, long[] dims, long[] strides, long axis, long block, long scales)
    {
        if (scales == 1) return 0;
        long along = i / strides[axis] % dims[axis];
        if (block == 0) return along; // per axis
        // Per block: the scale has x's shape with dims[axis] replaced by the number of blocks.
        long index = 0, stride = 1;
        for (int d = dims.Length - 1; d >= 0; d--)
        {
            long coordinate = i / strides[d] % dims[d];
            long size = d == axis ? (dims[d] + block - 1) / block : dims[d];
            index += (d == axis ? along / block : coordinate) * stride;
            stride *= size;
        }
        return index;
    }

    /// <summary>The integers of a quantized tensor: 4-bit types packed two per byte, low nibble first.</summary>
    static int[] Integers(OnnxModel model, TensorProto t) =>
        Integers(model.Source, t.Name, t.DataType, Tensors.ElementCount(t.Dims), model.ReadBytes(t));

    /// <summary>The integers of <paramref name="n"/> values of a quantized type in their ONNX bytes.</summary>
    internal static int[] Integers(string source, string name, int dataType, long n, byte[] bytes)
    {
        if (bytes.Length < ((DT)dataType is DT.Int4 or DT.Uint4 ? (n + 1) / 2 : n * Tensors.ElementSize(dataType)))
            throw new OrtLoraException($"{source}: quantized tensor '{name}' holds {bytes.Length} bytes, too few for its shape");
        var values = new int[n];
        switch ((DT)dataType)
        {
            case DT.Int8: for (long i = 0; i < n; i++) values[i] = (sbyte)bytes[i]; break;
            case DT.Uint8: for (long i = 0; i < n; i++) values[i] = bytes[i]; break;
            case DT.Int16: for (long i = 0; i < n; i++) values[i] = BitConverter.ToInt16(bytes, (int)(2 * i)); break;
            case DT.Uint16: for (long i = 0; i < n; i++) values[i] = BitConverter.ToUInt16(bytes, (int)(2 * i)); break;
            case DT.Int4 or DT.Uint4:
                bool signed = dataType == (int)DT.Int4;
                for (long i = 0; i < n; i++)
                {
                    int nibble = (bytes[i / 2] >> (int)(4 * (i % 2))) & 0xF;
                    values[i] = signed && nibble >= 8 ? nibble - 16 : nibble;
                }
                break;
            default: throw new OrtLoraException($"{source}: tensor '{name}' is {(DT)dataType}, not a quantized integer type");
        }
        return values;
    }
}
