using Google.Protobuf;
using Onnx;

namespace OrtLora.Onnx;

/// <summary>An ONNX model and where its external tensors live. Tensors stored in side files are read one at a
/// time on demand and streamed on save, so a model larger than 2 GB never passes through one protobuf buffer and
/// peak memory stays near the largest tensor.</summary>
public sealed class OnnxModel : IDisposable
{
    public ModelProto Proto { get; }
    public GraphProto Graph => Proto.Graph;
    /// <summary>Directory that external-data locations are relative to (null for models built in memory).</summary>
    public string? BaseDirectory { get; }
    /// <summary>Where the model was loaded from, for messages.</summary>
    public string Source { get; }

    /// <summary>Tensors whose bytes are computed when the model is saved (merge uses this so that only one merged
    /// weight is in memory at a time). Keyed by initializer name; the function gets the tensor's current bytes.</summary>
    readonly Dictionary<string, Func<byte[], byte[]>> _deferred = new();
    readonly Dictionary<string, FileStream> _openFiles = new();

    public OnnxModel(ModelProto proto, string? baseDirectory = null, string source = "<memory>")
    {
        Proto = proto;
        BaseDirectory = baseDirectory;
        Source = source;
    }

    public static OnnxModel Load(string path)
    {
        if (!File.Exists(path)) throw new OrtLoraException($"{path}: file not found");
        ModelProto proto;
        try
        {
            using var stream = File.OpenRead(path);
            proto = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new OrtLoraException($"{path}: not a valid ONNX model (protobuf parse failed: {e.Message}); is the file truncated?", e);
        }
        if (proto.Graph is null || proto.Graph.Node.Count == 0 || !proto.HasIrVersion)
            throw new OrtLoraException($"{path}: not an ONNX model (no ir_version or no graph nodes)");
        var model = new OnnxModel(proto, Path.GetDirectoryName(Path.GetFullPath(path)), path);
        foreach (var t in proto.Graph.Initializer)
            if (IsExternal(t)) model.CheckExternal(t);
        return model;
    }

    public int Opset(string domain = "")
    {
        foreach (var o in Proto.OpsetImport)
            if ((o.Domain ?? "") == domain || (domain == "" && o.Domain == "ai.onnx")) return (int)o.Version;
        return 0;
    }

    public static bool IsExternal(TensorProto t) => t.HasDataLocation && t.DataLocation == TensorProto.Types.DataLocation.External;

    static string ExternalKey(TensorProto t, string key) => t.ExternalData.FirstOrDefault(e => e.Key == key)?.Value ?? "";

    void CheckExternal(TensorProto t)
    {
        var file = ExternalPath(t);
        if (!File.Exists(file)) throw new OrtLoraException($"{Source}: tensor '{t.Name}' points to missing external data file '{file}'");
        long offset = long.TryParse(ExternalKey(t, "offset"), out var o) ? o : 0;
        long length = long.TryParse(ExternalKey(t, "length"), out var l) ? l : Tensors.ByteSize(t);
        if (offset + length > new FileInfo(file).Length)
            throw new OrtLoraException($"{Source}: tensor '{t.Name}' reaches past the end of '{file}' (truncated external data?)");
    }

    string ExternalPath(TensorProto t)
    {
        var location = ExternalKey(t, "location");
        if (BaseDirectory is null) throw new OrtLoraException($"{Source}: tensor '{t.Name}' has external data but the model has no directory");
        return Path.Combine(BaseDirectory, location);
    }

    /// <summary>The tensor's bytes in ONNX's little-endian raw layout, wherever they are stored.</summary>
    public byte[] ReadBytes(TensorProto t)
    {
        byte[] bytes;
        if (IsExternal(t))
        {
            var (fs, length) = SeekExternal(t);
            bytes = new byte[length];
            fs.ReadExactly(bytes);
        }
        else bytes = Tensors.InlineBytes(t);
        return _deferred.TryGetValue(t.Name, out var f) ? f(bytes) : bytes;
    }

    /// <summary>The side file of an external tensor, positioned at its bytes, and their length.</summary>
    (FileStream File, long Length) SeekExternal(TensorProto t)
    {
        var file = ExternalPath(t);
        if (!_openFiles.TryGetValue(file, out var fs)) _openFiles[file] = fs = File.OpenRead(file);
        long offset = long.TryParse(ExternalKey(t, "offset"), out var o) ? o : 0;
        long length = long.TryParse(ExternalKey(t, "length"), out var l) ? l : Tensors.ByteSize(t);
        fs.Seek(offset, SeekOrigin.Begin);
        return (fs, length);
    }

    /// <summary>Copies the tensor's bytes into <paramref name="destination"/>, which must be exactly their size: from
    /// the side file or the model's own buffer straight, with no array in between.</summary>
    public void ReadInto(TensorProto t, Span<byte> destination)
    {
        if (_deferred.ContainsKey(t.Name) || !IsExternal(t) && !t.HasRawData)
        {
            var bytes = ReadBytes(t);
            if (bytes.Length != destination.Length) throw SizeMismatch(t, bytes.Length, destination.Length);
            bytes.CopyTo(destination);
        }
        else if (IsExternal(t))
        {
            var (fs, length) = SeekExternal(t);
            if (length != destination.Length) throw SizeMismatch(t, length, destination.Length);
            fs.ReadExactly(destination);
        }
        else
        {
            if (t.RawData.Length != destination.Length) throw SizeMismatch(t, t.RawData.Length, destination.Length);
            t.RawData.Span.CopyTo(destination);
        }
    }

    OrtLoraException SizeMismatch(TensorProto t, long stored, long expected) =>
        new($"{Source}: tensor '{t.Name}' has {stored} bytes of data; its type and shape need {expected}");

    public float[] ReadFloats(TensorProto t) => Tensors.BytesToFloats(ReadBytes(t), t.DataType);

    /// <summary>True when the tensor's bytes are computed on read (<see cref="Defer"/>), not stored in the proto.</summary>
    public bool IsDeferred(string tensorName) => _deferred.ContainsKey(tensorName);

    public void Defer(string tensorName, Func<byte[], byte[]> transform)
    {
        if (_deferred.TryGetValue(tensorName, out var previous)) _deferred[tensorName] = b => transform(previous(b));
        else _deferred[tensorName] = transform;
    }

    /// <summary>Makes every initializer inline (raw_data), applying deferred transforms. For small models.</summary>
    public void Internalize()
    {
        foreach (var t in Graph.Initializer)
        {
            if (!IsExternal(t) && !_deferred.ContainsKey(t.Name)) continue;
            var bytes = ReadBytes(t);
            Tensors.SetRaw(t, bytes);
        }
        _deferred.Clear();
    }

    public bool HasExternalData => Graph.Initializer.Any(IsExternal);

    /// <summary>The bytes of a tensor of this model (or of a clone of its proto) that are not in the proto as they are
    /// read: in a side file or computed on read (<see cref="Defer"/>); null for a plain inline tensor.</summary>
    public byte[]? ReadIfNotInline(TensorProto t) => IsExternal(t) || _deferred.ContainsKey(t.Name) ? ReadBytes(t) : null;

    /// <summary>Makes inline the tensors of <paramref name="copy"/>, a clone of this model's proto, that are still in a
    /// side file or computed on read here, read as this model reads them. Tensors the copy retyped (converted in place)
    /// or added are its own already.</summary>
    public void InlineInto(ModelProto copy)
    {
        var originals = Graph.Initializer.GroupBy(t => t.Name).ToDictionary(g => g.Key, g => g.First());
        foreach (var t in copy.Graph.Initializer)
            if (originals.TryGetValue(t.Name, out var original) && original.DataType == t.DataType && ReadIfNotInline(t) is { } bytes)
                Tensors.SetRaw(t, bytes);
    }

    /// <summary>Serialized with every tensor inline, e.g. for an in-memory InferenceSession. Under protobuf's 2 GB only.</summary>
    public byte[] ToBytes() => InlineCopy().ToByteArray();

    /// <summary>A copy of the model with every tensor's bytes inline (external and deferred ones read in), in memory:
    /// never serialized, so any size (a 1.1B-parameter model's float32 weights are 4.4 GB, past protobuf's 2 GB).</summary>
    public ModelProto InlineCopy()
    {
        var clone = Proto.Clone();
        for (int i = 0; i < clone.Graph.Initializer.Count; i++)
        {
            var t = clone.Graph.Initializer[i];
            if (IsExternal(t) || _deferred.ContainsKey(t.Name)) Tensors.SetRaw(t, ReadBytes(Graph.Initializer[i]));
        }
        return clone;
    }

    /// <summary>Writes the model atomically (temp file, then rename). With <paramref name="externalData"/> (null: keep
    /// the source's choice, or switch to external data above 1.8 GB) tensors of at least
    /// <paramref name="sizeThreshold"/> bytes go to PATH.data beside it, streamed one at a time.</summary>
    public void Save(string path, bool? externalData = null, int sizeThreshold = 1024)
    {
        path = Path.GetFullPath(path);
        var dir = Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(dir);
        bool external = externalData ?? (HasExternalData || Graph.Initializer.Sum(t => Tensors.ByteSize(t)) > 1_800_000_000L);
        var dataName = Path.GetFileName(path) + ".data";
        var tmpModel = path + $".tmp{Environment.ProcessId}";
        var tmpData = Path.Combine(dir, dataName + $".tmp{Environment.ProcessId}");
        try
        {
            var clone = Proto.Clone();
            if (external)
            {
                using var data = new FileStream(tmpData, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
                for (int i = 0; i < clone.Graph.Initializer.Count; i++)
                {
                    var source = Graph.Initializer[i];
                    var target = clone.Graph.Initializer[i];
                    long size = Tensors.ByteSize(source);
                    if (size < sizeThreshold && !IsExternal(source))
                    {
                        if (_deferred.ContainsKey(source.Name)) Tensors.SetRaw(target, ReadBytes(source));
                        continue;
                    }
                    var bytes = ReadBytes(source);
                    long align = bytes.Length >= (1 << 20) ? 4096 : 64;
                    long pad = (align - data.Position % align) % align;
                    if (pad > 0) data.Write(new byte[pad]);
                    long offset = data.Position;
                    data.Write(bytes);
                    Tensors.SetExternal(target, dataName, offset, bytes.Length);
                }
            }
            else
            {
                for (int i = 0; i < clone.Graph.Initializer.Count; i++)
                {
                    var source = Graph.Initializer[i];
                    if (IsExternal(source) || _deferred.ContainsKey(source.Name))
                        Tensors.SetRaw(clone.Graph.Initializer[i], ReadBytes(source));
                }
            }
            using (var output = new FileStream(tmpModel, FileMode.Create, FileAccess.Write))
                clone.WriteTo(output);
            if (external) File.Move(tmpData, Path.Combine(dir, dataName), overwrite: true);
            else if (File.Exists(Path.Combine(dir, dataName)) && IsOwnStaleData(path)) File.Delete(Path.Combine(dir, dataName));
            File.Move(tmpModel, path, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmpModel)) File.Delete(tmpModel);
            if (File.Exists(tmpData)) File.Delete(tmpData);
        }
    }

    // An inline save over a path that previously had a side file: that side file is ours and now stale.
    static bool IsOwnStaleData(string path) => File.Exists(path);

    public void Dispose()
    {
        foreach (var f in _openFiles.Values) f.Dispose();
        _openFiles.Clear();
    }
}
