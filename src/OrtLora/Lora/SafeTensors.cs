using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Lora;

/// <summary>One tensor of a safetensors file: dtype as safetensors names it (F32, F16, BF16, F64, I64, I32, ...),
/// shape, and little-endian bytes.</summary>
public sealed record SafeTensor(string DType, long[] Shape, byte[] Data)
{
    public float[] AsFloats() => DType switch
    {
        "F32" => MemoryMarshal.Cast<byte, float>(Data).ToArray(),
        "F64" => MemoryMarshal.Cast<byte, double>(Data).ToArray().Select(d => (float)d).ToArray(),
        "F16" => MemoryMarshal.Cast<byte, Half>(Data).ToArray().Select(h => (float)h).ToArray(),
        "BF16" => MemoryMarshal.Cast<byte, ushort>(Data).ToArray().Select(b => BitConverter.Int32BitsToSingle(b << 16)).ToArray(),
        _ => throw new OrtLoraException($"safetensors dtype {DType} is not a float type"),
    };

    public long[] AsInt64s() => DType switch
    {
        "I64" => MemoryMarshal.Cast<byte, long>(Data).ToArray(),
        "I32" => MemoryMarshal.Cast<byte, int>(Data).ToArray().Select(v => (long)v).ToArray(),
        _ => throw new OrtLoraException($"safetensors dtype {DType} is not an integer type"),
    };

    public static SafeTensor FromFloats(long[] shape, float[] values) => new("F32", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
    public static SafeTensor FromInt64s(long[] shape, long[] values) => new("I64", shape, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
    public long ElementCount => Shape.Aggregate(1L, (a, b) => a * b);
}

/// <summary>The safetensors format: an 8-byte little-endian header length, a JSON header mapping names to
/// {dtype, shape, data_offsets}, then the bytes. Written by hand (no package), as PEFT writes it.</summary>
public static class SafeTensors
{
    static readonly Dictionary<string, int> DTypeSizes = new()
    {
        ["F64"] = 8, ["F32"] = 4, ["F16"] = 2, ["BF16"] = 2, ["I64"] = 8, ["I32"] = 4, ["I16"] = 2, ["I8"] = 1,
        ["U8"] = 1, ["BOOL"] = 1, ["U16"] = 2, ["U32"] = 4, ["U64"] = 8,
    };

    public static Dictionary<string, SafeTensor> Read(string path) => Read(path, out _);

    public static Dictionary<string, SafeTensor> Read(string path, out Dictionary<string, string> metadata)
    {
        if (!File.Exists(path)) throw new OrtLoraException($"{path}: file not found");
        using var fs = File.OpenRead(path);
        var lengthBytes = new byte[8];
        if (fs.Read(lengthBytes) != 8) throw new OrtLoraException($"{path}: not a safetensors file (shorter than its header)");
        long headerLength = BinaryPrimitives.ReadInt64LittleEndian(lengthBytes);
        if (headerLength <= 0 || headerLength > 100_000_000 || 8 + headerLength > fs.Length)
            throw new OrtLoraException($"{path}: not a safetensors file (bad header length {headerLength})");
        var headerBytes = new byte[headerLength];
        fs.ReadExactly(headerBytes);
        JsonObject header;
        try { header = JsonNode.Parse(headerBytes)!.AsObject(); }
        catch (JsonException e) { throw new OrtLoraException($"{path}: not a safetensors file (header is not JSON: {e.Message})"); }
        metadata = new();
        var result = new Dictionary<string, SafeTensor>();
        long dataStart = 8 + headerLength;
        foreach (var (name, node) in header)
        {
            if (name == "__metadata__")
            {
                foreach (var (k, v) in node!.AsObject()) metadata[k] = v?.ToString() ?? "";
                continue;
            }
            var dtype = node!["dtype"]!.GetValue<string>();
            var shape = node["shape"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
            var offsets = node["data_offsets"]!.AsArray().Select(x => x!.GetValue<long>()).ToArray();
            long length = offsets[1] - offsets[0];
            if (!DTypeSizes.TryGetValue(dtype, out var size)) throw new OrtLoraException($"{path}: tensor '{name}' has unsupported dtype {dtype}");
            if (length != shape.Aggregate(1L, (a, b) => a * b) * size || dataStart + offsets[1] > fs.Length)
                throw new OrtLoraException($"{path}: tensor '{name}' has inconsistent size or lies past the end of the file (truncated?)");
            var data = new byte[length];
            fs.Seek(dataStart + offsets[0], SeekOrigin.Begin);
            fs.ReadExactly(data);
            result[name] = new SafeTensor(dtype, shape, data);
        }
        return result;
    }

    /// <summary>Writes atomically (temp file, then rename); keys in sorted order like the Python writer.</summary>
    public static void Write(string path, IReadOnlyDictionary<string, SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        long offset = 0;
        var names = tensors.Keys.OrderBy(k => k, StringComparer.Ordinal).ToList();
        foreach (var name in names)
        {
            var t = tensors[name];
            header[name] = new JsonObject
            {
                ["dtype"] = t.DType,
                ["shape"] = new JsonArray(t.Shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + t.Data.Length),
            };
            offset += t.Data.Length;
        }
        var headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - headerBytes.Length % 8) % 8; // the header is padded with spaces to 8-byte alignment
        var full = new byte[headerBytes.Length + pad];
        headerBytes.CopyTo(full, 0);
        for (int i = headerBytes.Length; i < full.Length; i++) full[i] = (byte)' ';
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var tmp = path + $".tmp{Environment.ProcessId}";
        try
        {
            using (var fs = new FileStream(tmp, FileMode.Create, FileAccess.Write))
            {
                var len = new byte[8];
                BinaryPrimitives.WriteInt64LittleEndian(len, full.Length);
                fs.Write(len);
                fs.Write(full);
                foreach (var name in names) fs.Write(tensors[name].Data);
            }
            File.Move(tmp, path, overwrite: true);
        }
        finally { if (File.Exists(tmp)) File.Delete(tmp); }
    }
}
