using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>Rewrites the fused ops of opset 23 (what torch.onnx emits for scaled_dot_product_attention and
/// torch.onnx.ops.rotary_embedding) into the primitive ops they are defined by, so the gradient builder can
/// differentiate them with its existing rules.
/// <list type="bullet">
/// <item>Attention: 3-D inputs split into heads, past keys/values concatenated, grouped KV heads repeated (each one
/// for consecutive query heads), softmax(scale·Q·Kᵀ (softcapped) + mask (+ causal mask aligned to the end)) · V.</item>
/// <item>RotaryEmbedding: the first rotary_embedding_dim features of each head rotated by (cos, sin) picked by
/// position_ids, halves (or interleaved pairs) as real and imaginary parts.</item>
/// </list></summary>
public static class FusedOpDecomposition
{
    /// <summary>Large negative additive bias for masked keys: finite, so a fully masked row stays a (unused) uniform
    /// distribution instead of NaN.</summary>
    const float Masked = -1e4f;

    public static bool Applies(GraphEditor g) => g.Graph.Node.Any(IsFused);

    static bool IsFused(NodeProto n) => n.OpType is "Attention" or "RotaryEmbedding" && n.Domain is "" or "ai.onnx";

    /// <param name="types">element types of the graph's values before the rewrite (constants are made in Q's type;
    /// a bool mask means "attend" where an additive one is added)</param>
    public static void Apply(GraphEditor g, ValueTable types)
    {
        foreach (var node in g.Graph.Node.Where(IsFused).ToList())
            Replace(g, node, () =>
            {
                if (node.OpType == "Attention") RewriteAttention(g, node, types);
                else RewriteRotary(g, node, types);
            });
    }

    /// <summary>Runs <paramref name="rewrite"/>, which appends the nodes computing <paramref name="node"/>'s outputs from
    /// its inputs, and puts them in the node's place in the (sorted) node list, the node removed.</summary>
    internal static void Replace(GraphEditor g, NodeProto node, Action rewrite)
    {
        int before = g.Graph.Node.Count;
        rewrite();
        var added = g.Graph.Node.Skip(before).ToList();
        var all = g.Graph.Node.Take(before).ToList();
        all.InsertRange(all.IndexOf(node), added);
        g.Graph.Node.Clear();
        g.Graph.Node.AddRange(all);
        g.RemoveNode(node); // (also refreshes the editor's producer/consumer maps)
    }

    /// <summary>Appends the primitives of RotaryEmbedding <paramref name="node"/> (which need not be in the graph), ending in
    /// its output.</summary>
    internal static void RewriteRotary(GraphEditor g, NodeProto node, ValueTable types)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: node.Name + "/" + op, attributes: attrs);
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "/ints"), [v.Length], v));
        string x = node.Input[0], cos = node.Input[1], sin = node.Input[2];
        int rank = types.Rank(x);
        long heads = Attrs.Int(node, "num_heads", 0), rotaryDim = Attrs.Int(node, "rotary_embedding_dim", 0);
        bool interleaved = Attrs.Int(node, "interleaved", 0) != 0;
        if (rank == 3 && heads <= 0) throw new OrtLoraException($"RotaryEmbedding node '{node.Name}': 3-D input without num_heads");
        // to [B, S, H, D]
        var bshd = rank == 4 ? Op("Transpose", [x], ("perm", new long[] { 0, 2, 1, 3 })) : Op("Reshape", [x, Ints(0, 0, heads, -1)]);
        if (node.Input.Count > 3 && node.Input[3] != "")
            (cos, sin) = (Op("Gather", [cos, node.Input[3]]), Op("Gather", [sin, node.Input[3]]));
        (cos, sin) = (Op("Unsqueeze", [cos, Ints(2)]), Op("Unsqueeze", [sin, Ints(2)])); // [B, S, 1, rd/2]
        // Contiguous parts of the head are cut with Split, not Slice: the same values, and no float Slice, which is
        // the prime suspect of the CUDA plugin's crashes (docs/gpu.md).
        (string, string) SplitLast(string value, params long[] sizes)
        {
            var parts = new[] { g.Unique(node.Name + "/Split_out"), g.Unique(node.Name + "/Split_out") };
            g.Add("Split", sizes.Length == 0 ? [value] : [value, Ints(sizes)], name: node.Name + "/Split", outputs: parts,
                attributes: sizes.Length == 0 ? [("axis", -1L), ("num_outputs", 2L)] : [("axis", -1L)]);
            return (parts[0], parts[1]);
        }
        string rotated = bshd, rest = "";
        if (rotaryDim > 0)
        {
            long headDim = rank == 4 ? types[x].ShapeA[3] : types[x].ShapeA[2] / heads;
            (rotated, rest) = SplitLast(bshd, rotaryDim, headDim - rotaryDim);
        }
        string x1, x2;
        if (interleaved)
            (x1, x2) = (Op("Slice", [rotated, Ints(0), Ints(long.MaxValue), Ints(-1), Ints(2)]), Op("Slice", [rotated, Ints(1), Ints(long.MaxValue), Ints(-1), Ints(2)]));
        else (x1, x2) = SplitLast(rotated);
        var real = Op("Sub", [Op("Mul", [cos, x1]), Op("Mul", [sin, x2])]);
        var imag = Op("Add", [Op("Mul", [sin, x1]), Op("Mul", [cos, x2])]);
        var y = interleaved
            ? Op("Reshape", [Op("Concat", [Op("Unsqueeze", [real, Ints(-1)]), Op("Unsqueeze", [imag, Ints(-1)])], ("axis", -1L)),
                Op("Shape", [rotated])])
            : Op("Concat", [real, imag], ("axis", -1L));
        if (rotaryDim > 0) y = Op("Concat", [y, rest], ("axis", -1L));
        y = rank == 4 ? Op("Transpose", [y], ("perm", new long[] { 0, 2, 1, 3 })) : Op("Reshape", [y, Ints(0, 0, -1)]);
        g.Add("Identity", [y], name: node.Name + "/Y", outputs: [node.Output[0]]);
    }

    /// <summary>Appends the primitives of Attention <paramref name="node"/> (which need not be in the graph), ending in its output.</summary>
    internal static void RewriteAttention(GraphEditor g, NodeProto node, ValueTable types)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: node.Name + "/" + op, attributes: attrs);
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "/ints"), [v.Length], v));
        int elemType = types.ElemType(node.Input[0]);
        string Const(float v) => g.AddInitializer(Tensors.FromFloats(g.Unique(node.Name + "/const"), [], [v], elemType));
        string Dim(string x, long axis) => Op("Slice", [Op("Shape", [x]), Ints(axis), Ints(axis + 1), Ints(0)]);
        string? Input(int i) => node.Input.Count > i && node.Input[i] != "" ? node.Input[i] : null;
        if (Attrs.Float(node, "softcap", 0f) is var cap && cap < 0) throw new OrtLoraException($"Attention node '{node.Name}': negative softcap");
        if (node.Output.Count > 3 && node.Output[3] != "")
            throw new OrtLoraException($"Attention node '{node.Name}': its qk_matmul_output is used; ortlora can only train through Attention's Y, present_key and present_value");
        if (Input(6) is not null) throw new OrtLoraException($"Attention node '{node.Name}': nonpad_kv_seqlen is not supported for training");

        string q = node.Input[0], k = node.Input[1], v = node.Input[2];
        long qHeads = Attrs.Int(node, "q_num_heads", 0), kvHeads = Attrs.Int(node, "kv_num_heads", 0);
        // 3-D inputs [B, S, heads·D] need the head counts (attributes): [B, S, heads, D] → [B, heads, S, D].
        bool threeD = types.Rank(q) == 3;
        if (threeD && (qHeads <= 0 || kvHeads <= 0)) throw new OrtLoraException($"Attention node '{node.Name}': 3-D inputs without q_num_heads and kv_num_heads");
        string Heads(string x, long heads) => Op("Transpose", [Op("Reshape", [x, Ints(0, 0, heads, -1)])], ("perm", new long[] { 0, 2, 1, 3 }));
        if (threeD) (q, k, v) = (Heads(q, qHeads), Heads(k, kvHeads), Heads(v, kvHeads));

        if (Input(4) is { } pastKey) k = Op("Concat", [pastKey, k], ("axis", 2L));
        if (Input(5) is { } pastValue) v = Op("Concat", [pastValue, v], ("axis", 2L));
        if (node.Output.Count > 1 && node.Output[1] != "") g.Add("Identity", [k], name: node.Name + "/present_key", outputs: [node.Output[1]]);
        if (node.Output.Count > 2 && node.Output[2] != "") g.Add("Identity", [v], name: node.Name + "/present_value", outputs: [node.Output[2]]);

        // Grouped KV heads: [B, kv, T, D] → [B, kv, rep, T, D] → [B, kv·rep, T, D], rep = q heads / kv heads.
        var rep = Op("Div", [Dim(q, 1), Dim(k, 1)]);
        string Repeat(string x) => Op("Reshape", [
            Op("Expand", [Op("Unsqueeze", [x, Ints(2)]), Op("Concat", [Ints(1, 1), rep, Ints(1, 1)], ("axis", 0L))]),
            Op("Concat", [Ints(0, -1), Op("Slice", [Op("Shape", [x]), Ints(2), Ints(4), Ints(0)])], ("axis", 0L))]);
        (k, v) = (Repeat(k), Repeat(v));

        float scaleAttr = Attrs.Float(node, "scale", 0f);
        var scale = scaleAttr != 0 ? Const(scaleAttr)
            : Op("Reciprocal", [Op("Sqrt", [Op("Cast", [Dim(q, 3)], ("to", (long)elemType))])]);
        var scores = Op("Mul", [Op("MatMul", [q, Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 }))]), scale]);
        if (cap > 0) scores = Op("Mul", [Op("Tanh", [Op("Div", [scores, Const(cap)])]), Const(cap)]);

        if (Input(3) is { } mask)
        {
            // bool: true attends; otherwise an additive bias
            bool isBool = types.ElemType(mask) == (int)DT.Bool;
            scores = Op("Add", [scores, isBool ? Op("Where", [mask, Const(0), Const(Masked)]) : mask]);
        }
        if (Attrs.Int(node, "is_causal", 0) != 0)
        {
            // query i (after `past` cached positions) sees key j iff j <= i + past
            var zero = g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "/zero"), [], [0]));
            var one = g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "/one"), [], [1]));
            string Scalar(string dim) => Op("Squeeze", [dim, Ints(0)]);
            var rows = Op("Range", [zero, Scalar(Dim(q, 2)), one]);
            if (Input(4) is { } past) rows = Op("Add", [rows, Scalar(Dim(past, 2))]);
            var cols = Op("Range", [zero, Scalar(Dim(k, 2)), one]);
            var future = Op("Greater", [Op("Unsqueeze", [cols, Ints(0)]), Op("Unsqueeze", [rows, Ints(1)])]);
            scores = Op("Add", [scores, Op("Where", [future, Const(Masked), Const(0)])]);
        }
        string probabilities;
        if (Attrs.Int(node, "smooth_softmax", 0) != 0)
        {
            // GroupQueryAttention's smooth softmax (not an ONNX attribute; passed through by ContribOpDecomposition):
            // softmax over the scores and one more logit of 0, which takes its share and is dropped.
            var shape = Op("Shape", [scores]);
            var sink = Op("ConstantOfShape", [Op("Concat", [Op("Slice", [shape, Ints(0), Ints(-1), Ints(0)]), Ints(1)], ("axis", 0L))],
                ("value", Tensors.FromFloats("zero", [1], [0f], elemType)));
            var withSink = Op("Softmax", [Op("Concat", [scores, sink], ("axis", -1L))], ("axis", -1L));
            var parts = new[] { g.Unique(node.Name + "/probabilities"), g.Unique(node.Name + "/sink") };
            g.Add("Split", [withSink, Op("Concat", [Op("Slice", [shape, Ints(-1), Ints(long.MaxValue), Ints(0)]), Ints(1)], ("axis", 0L))],
                name: node.Name + "/Split", outputs: parts, attributes: ("axis", -1L));
            probabilities = parts[0];
        }
        else probabilities = Op("Softmax", [scores], ("axis", -1L));
        var y = Op("MatMul", [probabilities, v]);
        if (threeD) y = Op("Reshape", [Op("Transpose", [y], ("perm", new long[] { 0, 2, 1, 3 })), Ints(0, 0, -1)]);
        g.Add("Identity", [y], name: node.Name + "/Y", outputs: [node.Output[0]]);
    }
}
