using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>The token embedding of an exported causal LM: what NEFTune adds noise to and what trainable tokens without a
/// module name (PEFT's list form of trainable_token_indices) apply to.</summary>
public static class TokenEmbedding
{
    /// <summary>The Gather that reads rows of a 2-D table (an initializer, or a frozen weight fed as an input) with ids
    /// computed from input_ids by Casts and reshapes; its table's element type and width.</summary>
    public static (NodeProto Gather, int ElemType, long Hidden)? Find(GraphEditor g)
    {
        var ids = new HashSet<string> { "input_ids" };
        foreach (var n in g.Graph.Node)
        {
            if (n.OpType is "Cast" or "Reshape" or "Unsqueeze" or "Squeeze" or "Flatten" && n.Input.Count > 0 && ids.Contains(n.Input[0]))
                ids.Add(n.Output[0]);
            if (n.OpType != "Gather" || n.Input.Count < 2 || !ids.Contains(n.Input[1]) || Attrs.Int(n, "axis", 0) != 0) continue;
            // The table, possibly stored in another type behind a Cast (fp16 weights computed in float32).
            var table = n.Input[0];
            int? castTo = null;
            if (g.Producer(table) is { OpType: "Cast" } cast) { table = cast.Input[0]; castTo = (int)Attrs.Int(cast, "to", 0); }
            if (g.Initializer(table) is { Dims.Count: 2 } initializer) return (n, castTo ?? initializer.DataType, initializer.Dims[1]);
            if (g.Graph.Input.FirstOrDefault(i => i.Name == table)?.Type?.TensorType is { Shape.Dim: { Count: 2 } dim } type && dim[1].HasDimValue)
                return (n, castTo ?? type.ElemType, dim[1].DimValue);
        }
        return null;
    }
}
