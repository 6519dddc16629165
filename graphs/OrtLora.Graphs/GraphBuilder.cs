using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Graphs;

/// <summary>Writes nodes the way PyTorch's TorchScript exporter names them (<c>/model/layers.0/self_attn/q_proj/MatMul</c>,
/// outputs <c>..._output_0</c>), so a reader or a target finder can tell which module a node belongs to.
/// Small constants are Constant nodes, shared by value; parameters are initializers.</summary>
public sealed class GraphBuilder(GraphEditor editor)
{
    readonly Dictionary<string, string> _constants = new();
    public GraphEditor Editor { get; } = editor;

    /// <summary>Adds node <paramref name="op"/> under module path <paramref name="scope"/>; returns its first output.</summary>
    public string Op(string scope, string op, string[] inputs, params (string Name, object Value)[] attributes)
    {
        var name = Editor.Unique($"{scope}/{op}");
        return Editor.Add(op, inputs, name, [Editor.Unique(name + "_output_0")], "", attributes);
    }

    /// <summary>A node with a chosen output name (graph outputs such as <c>logits</c>).</summary>
    public string OpTo(string output, string scope, string op, string[] inputs, params (string Name, object Value)[] attributes)
        => Editor.Add(op, inputs, Editor.Unique($"{scope}/{op}"), [output], "", attributes);

    public string Int64s(params long[] values) =>
        Constant($"i64:{string.Join(',', values)}", Tensors.FromInt64("", [values.Length], values));

    public string Int64Scalar(long value) =>
        Constant($"i64s:{value}", Tensors.Scalar("", value, (int)DT.Int64));

    public string FloatScalar(float value) =>
        Constant($"f32s:{BitConverter.SingleToInt32Bits(value)}", Tensors.Scalar("", value, (int)DT.Float));

    public string Floats(string name, float[] values) =>
        Constant($"f32:{name}", Tensors.FromFloats("", [values.Length], values));

    string Constant(string key, TensorProto value)
    {
        if (_constants.TryGetValue(key, out var output)) return output;
        var name = Editor.Unique($"/Constant");
        value.Name = "";
        output = Editor.Add("Constant", [], name, [Editor.Unique(name + "_output_0")], "", ("value", value));
        return _constants[key] = output;
    }

    public static ValueInfoProto Value(string name, DT type, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is string param ? new TensorShapeProto.Types.Dimension { DimParam = param }
                                            : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(d) });
        return new ValueInfoProto
        {
            Name = name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } },
        };
    }
}
