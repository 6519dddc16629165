using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>Element types of a graph's values without running it: each node's output types from its inputs' types and
/// attributes, per the ONNX operator schemas of the standard ops that exports contain. Most ops return the type of their
/// first input; the table lists those that do not.</summary>
public static class ElementTypes
{
    static readonly HashSet<string> Comparisons = ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Not", "IsNaN", "IsInf"];
    /// <summary>The com.microsoft ops of ORT GenAI's builder whose outputs take the first input's type (statistics aside).</summary>
    static readonly HashSet<string> ContribLikeFirstInput = ["GroupQueryAttention", "RotaryEmbedding", "SkipSimplifiedLayerNormalization", "SkipLayerNormalization"];

    /// <summary>The element type of each output of <paramref name="n"/>, given its inputs' types.</summary>
    public static int[] Outputs(NodeProto n, Func<string, int> typeOf)
    {
        int In(int i) => i < n.Input.Count && n.Input[i] != "" ? typeOf(n.Input[i]) : 0;
        if (n.Domain == "com.microsoft" && ContribLikeFirstInput.Contains(n.OpType))
            // SkipLayerNormalization's mean and inv_std_var are float32
            return n.Output.Select((_, i) => n.OpType.StartsWith("Skip") && i is 1 or 2 ? (int)DT.Float : In(0)).ToArray();
        if (n.Domain is not ("" or "ai.onnx") || n.OpType.Contains("Quantize") && n.OpType != "DequantizeLinear" || n.OpType.EndsWith("Integer"))
            throw new OrtLoraException($"node '{n.Name}' ({n.Domain}:{n.OpType}): element types are known for standard float ops only");
        int first = n.OpType switch
        {
            "Cast" => (int)Attrs.Int(n, "to", 0),
            "CastLike" or "Where" => In(1),
            "OneHot" => In(2),
            "Shape" or "Size" or "NonZero" or "ArgMax" or "ArgMin" => (int)DT.Int64,
            _ when Comparisons.Contains(n.OpType) => (int)DT.Bool,
            "Constant" => ConstantType(n),
            "ConstantOfShape" => Attrs.Tensor(n, "value")?.DataType ?? (int)DT.Float,
            "RandomNormal" or "RandomUniform" => (int)Attrs.Int(n, "dtype", (int)DT.Float),
            "RandomNormalLike" or "RandomUniformLike" or "EyeLike" or "Bernoulli" => (int)Attrs.Int(n, "dtype", In(0)),
            "Multinomial" => (int)Attrs.Int(n, "dtype", (int)DT.Int32),
            "DequantizeLinear" => Attrs.Int(n, "output_dtype", 0) is var t and not 0 ? (int)t : In(1), // the scale's type
            _ => In(0),
        };
        var types = Enumerable.Repeat(first, n.Output.Count).ToArray();
        // second and later outputs of another type: masks, indices, and LayerNormalization's float32 statistics
        for (int i = 1; i < types.Length; i++)
            types[i] = n.OpType switch
            {
                "Dropout" => (int)DT.Bool,
                "TopK" or "Unique" or "MaxPool" => (int)DT.Int64,
                "LayerNormalization" => (int)Attrs.Int(n, "stash_type", (int)DT.Float),
                _ => first,
            };
        return types;
    }

    static int ConstantType(NodeProto n)
    {
        foreach (var a in n.Attribute)
            switch (a.Name)
            {
                case "value": return a.T.DataType;
                case "value_float" or "value_floats": return (int)DT.Float;
                case "value_int" or "value_ints": return (int)DT.Int64;
                case "value_string" or "value_strings": return (int)DT.String;
            }
        throw new OrtLoraException($"Constant node '{n.Name}' has no value attribute");
    }

    /// <summary>The type of every value of a graph: inputs and initializers as declared, node outputs inferred in
    /// order. Subgraphs (If, Loop) are not entered.</summary>
    public static Dictionary<string, int> Infer(GraphProto g)
    {
        var types = new Dictionary<string, int>();
        foreach (var t in g.Initializer) types[t.Name] = t.DataType;
        foreach (var i in g.Input) types[i.Name] = i.Type?.TensorType?.ElemType ?? 0;
        foreach (var n in g.Node)
        {
            var outputs = Outputs(n, v => types.GetValueOrDefault(v));
            for (int i = 0; i < n.Output.Count; i++) if (n.Output[i] != "") types[n.Output[i]] = outputs[i];
        }
        return types;
    }

    /// <summary>Element types a model names: its tensors, declared values and type attributes (Cast's to, dtype).</summary>
    public static HashSet<int> Mentioned(ModelProto model)
    {
        var g = model.Graph;
        var types = g.Initializer.Select(t => t.DataType).ToHashSet();
        foreach (var v in g.Input.Concat(g.Output).Concat(g.ValueInfo)) if (v.Type?.TensorType is { } t) types.Add(t.ElemType);
        foreach (var a in g.Node.SelectMany(n => n.Attribute))
        {
            if (a.T is { } t) types.Add(t.DataType);
            if (a.Name is "to" or "dtype") types.Add((int)a.I);
        }
        return types;
    }

    /// <summary>A copy of <paramref name="model"/> with every <paramref name="from"/> tensor, attribute and declared
    /// type made <paramref name="to"/> (values converted through float32). Used to run a bfloat16 graph's probe as
    /// float16 on CPU, where ONNX Runtime has float16 kernels (or casts to float32) but no bfloat16 ones.</summary>
    public static ModelProto Retype(ModelProto model, int from, int to)
    {
        var copy = model.Clone();
        var g = copy.Graph;
        void RetypeTensor(TensorProto t)
        {
            if (t.DataType != from) return;
            var values = Tensors.BytesToFloats(Tensors.InlineBytes(t), from);
            t.DataType = to;
            Tensors.SetRaw(t, Tensors.FloatsToBytes(values, to));
        }
        foreach (var t in g.Initializer) RetypeTensor(t);
        foreach (var n in g.Node)
            foreach (var a in n.Attribute)
            {
                if (a.T is { } t) RetypeTensor(t);
                if (a.Name is "to" or "dtype" && a.I == from) a.I = to;
            }
        foreach (var v in g.Input.Concat(g.Output).Concat(g.ValueInfo))
            if (v.Type?.TensorType is { } tt && tt.ElemType == from) tt.ElemType = to;
        return copy;
    }
}
