using Google.Protobuf;
using Onnx;
using AT = Onnx.AttributeProto.Types.AttributeType;

namespace OrtLora.Onnx;

/// <summary>Reading and making node attributes.</summary>
public static class Attrs
{
    public static AttributeProto? Find(NodeProto n, string name) => n.Attribute.FirstOrDefault(a => a.Name == name);
    public static long Int(NodeProto n, string name, long fallback) => Find(n, name) is { } a ? a.I : fallback;
    public static float Float(NodeProto n, string name, float fallback) => Find(n, name) is { } a ? a.F : fallback;
    public static string Str(NodeProto n, string name, string fallback) => Find(n, name) is { } a ? a.S.ToStringUtf8() : fallback;
    public static long[]? Ints(NodeProto n, string name) => Find(n, name) is { } a ? a.Ints.ToArray() : null;
    public static TensorProto? Tensor(NodeProto n, string name) => Find(n, name)?.T;

    /// <summary>An attribute from a C# value: long/int, float/double, string, long[]/int[], float[], TensorProto.</summary>
    public static AttributeProto Make(string name, object value)
    {
        var a = new AttributeProto { Name = name };
        switch (value)
        {
            case int i: a.Type = AT.Int; a.I = i; break;
            case long l: a.Type = AT.Int; a.I = l; break;
            case bool b: a.Type = AT.Int; a.I = b ? 1 : 0; break;
            case float f: a.Type = AT.Float; a.F = f; break;
            case double d: a.Type = AT.Float; a.F = (float)d; break;
            case string s: a.Type = AT.String; a.S = ByteString.CopyFromUtf8(s); break;
            case long[] ls: a.Type = AT.Ints; a.Ints.AddRange(ls); break;
            case int[] iss: a.Type = AT.Ints; a.Ints.AddRange(iss.Select(x => (long)x)); break;
            case float[] fs: a.Type = AT.Floats; a.Floats.AddRange(fs); break;
            case TensorProto t: a.Type = AT.Tensor; a.T = t; break;
            case GraphProto g: a.Type = AT.Graph; a.G = g; break;
            default: throw new ArgumentException($"attribute {name}: unsupported value {value?.GetType().Name}");
        }
        return a;
    }
}
