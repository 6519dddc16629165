using System.Runtime.InteropServices;
using Google.FlatBuffers;

namespace OrtLora.Deploy;

/// <summary>ONNX Runtime's own adapter file (.onnx_adapter), read by <c>OrtLoraAdapter.Create</c>: a FlatBuffer with
/// file identifier "TORT" whose root table is, in ORT's schema (onnxruntime/lora/adapter_format/adapter_schema.fbs),
/// <c>Adapter { format_version:int; adapter_version:int; model_version:int; parameters:[Parameter]; }</c> and
/// <c>Parameter { name:string; dims:[int64]; data_type:TensorDataType(int32); raw_data:[uint8] (force_align: 8); }</c>.
/// Written with the FlatBufferBuilder API by hand (no flatc); the field slots below follow the schema's order.</summary>
public static class OnnxAdapterFile
{
    public const string FileIdentifier = "TORT";
    /// <summary>ORT's kAdapterFormatVersion: the only version ORT 1.2x/1.3x accepts.</summary>
    public const int FormatVersion = 1;
    /// <summary>TensorDataType.FLOAT in ORT's schema (the same numbering as ONNX's TensorProto.DataType).</summary>
    const int FloatDataType = 1;

    // Field slots (index in declaration order) of the two tables.
    const int AdapterFormatVersionSlot = 0, AdapterVersionSlot = 1, ModelVersionSlot = 2, ParametersSlot = 3;
    const int ParamNameSlot = 0, ParamDimsSlot = 1, ParamDataTypeSlot = 2, ParamRawDataSlot = 3;

    /// <summary>The file's bytes for float32 parameters (name → values and shape), in name order.</summary>
    public static byte[] Serialize(IReadOnlyDictionary<string, (float[] Values, long[] Shape)> parameters,
        int adapterVersion = 0, int modelVersion = 0)
    {
        var builder = new FlatBufferBuilder(1024 + parameters.Values.Sum(p => p.Values.Length * 4 + 64));
        var offsets = new List<Offset<Table>>();
        foreach (var (name, (values, shape)) in parameters.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            if (shape.Aggregate(1L, (a, b) => a * b) != values.Length)
                throw new OrtLoraException($"adapter parameter '{name}': shape [{string.Join(",", shape)}] does not hold {values.Length} values");
            offsets.Add(WriteParameter(builder, name, shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray()));
        }
        var parametersVector = builder.CreateVectorOfTables(offsets.ToArray());
        builder.StartTable(4);
        builder.AddInt(AdapterFormatVersionSlot, FormatVersion, 0);
        builder.AddInt(AdapterVersionSlot, adapterVersion, 0);
        builder.AddInt(ModelVersionSlot, modelVersion, 0);
        builder.AddOffset(ParametersSlot, parametersVector.Value, 0);
        builder.Finish(builder.EndTable(), FileIdentifier);
        return builder.SizedByteArray();
    }

    static Offset<Table> WriteParameter(FlatBufferBuilder builder, string name, long[] shape, byte[] raw)
    {
        // Children first: FlatBuffers are built back to front and a table may only point at finished objects.
        var nameOffset = builder.CreateString(name);
        builder.StartVector(sizeof(long), shape.Length, sizeof(long));
        for (int i = shape.Length - 1; i >= 0; i--) builder.AddLong(shape[i]);
        var dimsOffset = builder.EndVector();
        builder.StartVector(1, raw.Length, 8); // the schema's force_align: 8, so ORT can view the bytes as floats in place
        builder.Add(new ArraySegment<byte>(raw));
        var dataOffset = builder.EndVector();
        builder.StartTable(4);
        builder.AddOffset(ParamNameSlot, nameOffset.Value, 0);
        builder.AddOffset(ParamDimsSlot, dimsOffset.Value, 0);
        builder.AddInt(ParamDataTypeSlot, FloatDataType, 0);
        builder.AddOffset(ParamRawDataSlot, dataOffset.Value, 0);
        return new Offset<Table>(builder.EndTable());
    }

    /// <summary>Writes the file atomically (temp file, then rename).</summary>
    public static void Write(string path, IReadOnlyDictionary<string, (float[] Values, long[] Shape)> parameters,
        int adapterVersion = 0, int modelVersion = 0)
    {
        var bytes = Serialize(parameters, adapterVersion, modelVersion);
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + $".tmp{Environment.ProcessId}";
        try
        {
            File.WriteAllBytes(tmp, bytes);
            File.Move(tmp, full, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }

    /// <summary>Reads back float32 parameters (for checks and round trips; ORT itself is the real reader).</summary>
    public static Dictionary<string, (float[] Values, long[] Shape)> Read(string path)
    {
        if (!File.Exists(path)) throw new OrtLoraException($"{path}: file not found");
        var bb = new ByteBuffer(File.ReadAllBytes(path));
        if (bb.Length < 8 || !Table.__has_identifier(bb, FileIdentifier))
            throw new OrtLoraException($"{path}: not an ONNX Runtime adapter file (no \"{FileIdentifier}\" identifier)");
        var adapter = new Table(bb.GetInt(bb.Position) + bb.Position, bb);
        int formatVersion = IntField(adapter, AdapterFormatVersionSlot);
        if (formatVersion != FormatVersion)
            throw new OrtLoraException($"{path}: adapter format version {formatVersion} is not supported (expected {FormatVersion})");
        var result = new Dictionary<string, (float[], long[])>();
        int vector = FieldOffset(adapter, ParametersSlot);
        if (vector == 0) return result;
        int count = adapter.__vector_len(vector), start = adapter.__vector(vector);
        for (int i = 0; i < count; i++)
        {
            var parameter = new Table(adapter.__indirect(start + i * 4), bb);
            var name = parameter.__string(FieldOffset(parameter, ParamNameSlot) + parameter.bb_pos);
            if (IntField(parameter, ParamDataTypeSlot) != FloatDataType)
                throw new OrtLoraException($"{path}: parameter '{name}' is not float32");
            var dims = parameter.__vector_as_array<long>(VtableOffset(ParamDimsSlot)) ?? [];
            var raw = parameter.__vector_as_array<byte>(VtableOffset(ParamRawDataSlot)) ?? [];
            result[name] = (MemoryMarshal.Cast<byte, float>(raw).ToArray(), dims);
        }
        return result;
    }

    static int VtableOffset(int slot) => 4 + 2 * slot;
    static int FieldOffset(Table t, int slot) => t.__offset(VtableOffset(slot));
    static int IntField(Table t, int slot) => FieldOffset(t, slot) is var o && o != 0 ? t.bb.GetInt(t.bb_pos + o) : 0;
}
