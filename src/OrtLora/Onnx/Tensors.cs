using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using Google.Protobuf;
using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>Conversions between TensorProto and plain arrays (ONNX stores tensor bytes little-endian).</summary>
public static class Tensors
{
    public static int ElementSize(int dataType) => (DT)dataType switch
    {
        DT.Float or DT.Int32 or DT.Uint32 => 4,
        DT.Double or DT.Int64 or DT.Uint64 or DT.Complex64 => 8,
        DT.Float16 or DT.Bfloat16 or DT.Int16 or DT.Uint16 => 2,
        DT.Uint8 or DT.Int8 or DT.Bool or DT.Float8E4M3Fn or DT.Float8E4M3Fnuz or DT.Float8E5M2 or DT.Float8E5M2Fnuz => 1,
        DT.Complex128 => 16,
        _ => 0,
    };

    /// <summary>float32, float16, bfloat16 or float64.</summary>
    public static bool IsFloat(int dataType) => (DT)dataType is DT.Float or DT.Float16 or DT.Bfloat16 or DT.Double;

    public static long ElementCount(IEnumerable<long> dims) => dims.Aggregate(1L, (a, b) => a * b);

    /// <summary>A row-major [rows, cols] matrix as [cols, rows].</summary>
    public static float[] Transpose(float[] m, long rows, long cols)
    {
        var t = new float[m.Length];
        for (long i = 0; i < rows; i++)
            for (long j = 0; j < cols; j++) t[j * rows + i] = m[i * cols + j];
        return t;
    }

    public static long ByteSize(TensorProto t)
    {
        if (t.HasRawData) return t.RawData.Length;
        if ((DT)t.DataType is DT.Int4 or DT.Uint4) return (ElementCount(t.Dims) + 1) / 2; // two to a byte
        return ElementCount(t.Dims) * Math.Max(1, ElementSize(t.DataType));
    }

    /// <summary>Bytes of a tensor stored in the model file itself (raw_data or the typed repeated fields).</summary>
    public static byte[] InlineBytes(TensorProto t)
    {
        if (t.HasRawData) return t.RawData.ToByteArray();
        switch ((DT)t.DataType)
        {
            case DT.Float: return MemoryMarshal.AsBytes(t.FloatData.ToArray().AsSpan()).ToArray();
            case DT.Double: return MemoryMarshal.AsBytes(t.DoubleData.ToArray().AsSpan()).ToArray();
            case DT.Int64: return MemoryMarshal.AsBytes(t.Int64Data.ToArray().AsSpan()).ToArray();
            case DT.Uint64 or DT.Uint32: return MemoryMarshal.AsBytes(t.Uint64Data.Select(v => (uint)v).ToArray().AsSpan()).ToArray();
            case DT.Int32: return MemoryMarshal.AsBytes(t.Int32Data.ToArray().AsSpan()).ToArray();
            case DT.Float16 or DT.Bfloat16 or DT.Int16 or DT.Uint16:
                return MemoryMarshal.AsBytes(t.Int32Data.Select(v => (ushort)v).ToArray().AsSpan()).ToArray();
            case DT.Int8 or DT.Uint8 or DT.Bool or DT.Int4 or DT.Uint4: // 4-bit: one packed byte per int32
                return t.Int32Data.Select(v => (byte)v).ToArray();
            default: throw new OrtLoraException($"tensor '{t.Name}': unsupported data type {(DT)t.DataType}");
        }
    }

    public static void SetRaw(TensorProto t, byte[] bytes) => SetRaw(t, ByteString.CopyFrom(bytes));

    public static void SetRaw(TensorProto t, ByteString bytes)
    {
        t.FloatData.Clear(); t.DoubleData.Clear(); t.Int32Data.Clear(); t.Int64Data.Clear(); t.Uint64Data.Clear();
        t.ExternalData.Clear();
        t.ClearDataLocation();
        t.RawData = bytes;
    }

    public static void SetExternal(TensorProto t, string location, long offset, long length)
    {
        t.FloatData.Clear(); t.DoubleData.Clear(); t.Int32Data.Clear(); t.Int64Data.Clear(); t.Uint64Data.Clear();
        t.ClearRawData();
        t.ExternalData.Clear();
        t.ExternalData.Add(new StringStringEntryProto { Key = "location", Value = location });
        t.ExternalData.Add(new StringStringEntryProto { Key = "offset", Value = offset.ToString() });
        t.ExternalData.Add(new StringStringEntryProto { Key = "length", Value = length.ToString() });
        t.DataLocation = TensorProto.Types.DataLocation.External;
    }

    // Loops and TensorPrimitives' vectorized conversions, not LINQ: a 1.1B-parameter model converts 4.4 GB here, which
    // LINQ's per-element delegates and intermediate arrays made take minutes.
    public static float[] BytesToFloats(byte[] bytes, int dataType)
    {
        switch ((DT)dataType)
        {
            case DT.Float: return MemoryMarshal.Cast<byte, float>(bytes).ToArray();
            case DT.Float16:
            {
                var halves = MemoryMarshal.Cast<byte, Half>(bytes);
                var floats = new float[halves.Length];
                TensorPrimitives.ConvertToSingle(halves, floats);
                return floats;
            }
            case DT.Bfloat16:
            {
                var bits = MemoryMarshal.Cast<byte, ushort>(bytes);
                var floats = new float[bits.Length];
                for (int i = 0; i < bits.Length; i++) floats[i] = BitConverter.Int32BitsToSingle(bits[i] << 16);
                return floats;
            }
            case DT.Double:
            {
                var doubles = MemoryMarshal.Cast<byte, double>(bytes);
                var floats = new float[doubles.Length];
                for (int i = 0; i < doubles.Length; i++) floats[i] = (float)doubles[i];
                return floats;
            }
            default: throw new OrtLoraException($"cannot read {(DT)dataType} tensor as float");
        }
    }

    public static byte[] FloatsToBytes(ReadOnlySpan<float> values, int dataType)
    {
        switch ((DT)dataType)
        {
            case DT.Float: return MemoryMarshal.AsBytes(values).ToArray();
            case DT.Float16:
            {
                var bytes = new byte[values.Length * 2L];
                TensorPrimitives.ConvertToHalf(values, MemoryMarshal.Cast<byte, Half>(bytes.AsSpan()));
                return bytes;
            }
            case DT.Bfloat16:
            {
                var bytes = new byte[values.Length * 2L];
                var bits = MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
                for (int i = 0; i < values.Length; i++) bits[i] = FloatToBf16(values[i]);
                return bytes;
            }
            case DT.Double:
            {
                var bytes = new byte[values.Length * 8L];
                var doubles = MemoryMarshal.Cast<byte, double>(bytes.AsSpan());
                for (int i = 0; i < values.Length; i++) doubles[i] = values[i];
                return bytes;
            }
            default: throw new OrtLoraException($"cannot write float values as {(DT)dataType}");
        }
    }

    /// <summary>Round-to-nearest-even, as PyTorch converts float32 to bfloat16.</summary>
    public static ushort FloatToBf16(float f)
    {
        uint bits = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FC0;
        uint rounding = 0x7FFF + ((bits >> 16) & 1);
        return (ushort)((bits + rounding) >> 16);
    }

    public static TensorProto FromFloats(string name, long[] dims, ReadOnlySpan<float> values, int dataType = (int)DT.Float)
    {
        var t = new TensorProto { Name = name, DataType = dataType };
        t.Dims.AddRange(dims);
        t.RawData = ByteString.CopyFrom(FloatsToBytes(values, dataType));
        return t;
    }

    public static TensorProto FromInt64(string name, long[] dims, ReadOnlySpan<long> values)
    {
        var t = new TensorProto { Name = name, DataType = (int)DT.Int64 };
        t.Dims.AddRange(dims);
        t.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values));
        return t;
    }

    public static TensorProto FromDoubles(string name, long[] dims, ReadOnlySpan<double> values)
    {
        var t = new TensorProto { Name = name, DataType = (int)DT.Double };
        t.Dims.AddRange(dims);
        t.RawData = ByteString.CopyFrom(MemoryMarshal.AsBytes(values));
        return t;
    }

    /// <summary>A scalar (rank 0) constant of the given element type.</summary>
    public static TensorProto Scalar(string name, double value, int dataType)
    {
        var t = new TensorProto { Name = name, DataType = dataType };
        byte[] bytes = (DT)dataType switch
        {
            DT.Float => BitConverter.GetBytes((float)value),
            DT.Double => BitConverter.GetBytes(value),
            DT.Float16 => BitConverter.GetBytes((Half)value),
            DT.Bfloat16 => BitConverter.GetBytes(FloatToBf16((float)value)),
            DT.Int64 => BitConverter.GetBytes((long)value),
            DT.Int32 => BitConverter.GetBytes((int)value),
            DT.Bool => [(byte)(value != 0 ? 1 : 0)],
            _ => throw new OrtLoraException($"no scalar constant of type {(DT)dataType}"),
        };
        t.RawData = ByteString.CopyFrom(bytes);
        return t;
    }

    public static long[] ReadInt64s(byte[] bytes, int dataType) => (DT)dataType switch
    {
        DT.Int64 => MemoryMarshal.Cast<byte, long>(bytes).ToArray(),
        DT.Int32 => MemoryMarshal.Cast<byte, int>(bytes).ToArray().Select(v => (long)v).ToArray(),
        _ => throw new OrtLoraException($"cannot read {(DT)dataType} tensor as integers"),
    };
}
