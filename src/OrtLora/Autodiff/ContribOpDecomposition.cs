using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Rewrites the ONNX Runtime contrib ops that the ORT GenAI model builder emits (com.microsoft) into ops the
/// gradient builder differentiates, in the training graph only (eval keeps ORT's kernels):
/// <list type="bullet">
/// <item>SkipSimplifiedLayerNormalization / SkipLayerNormalization: s = input + skip (+ bias), then
/// SimplifiedLayerNormalization / LayerNormalization of s; the fourth output is s (the next residual).</item>
/// <item>RotaryEmbedding: as ONNX's RotaryEmbedding (opset 23), decomposed by <see cref="FusedOpDecomposition"/>; a
/// one-element position_ids is an offset (positions offset..offset+S−1).</item>
/// <item>GroupQueryAttention on a prompt (the training graph's past is empty): the packed QKV split, rotary on q and k
/// at positions 0..S−1 (do_rotary), then ONNX's Attention with is_causal (and a sliding-window mask for
/// local_window_size), both decomposed the same way. As ORT's kernel does for a prompt, query i
/// sees keys 0..i: sequences must be right-padded (what ortlora's batches are), and seqlens_k only marks padding
/// past a row's end, which no counted token sees.</item>
/// </list></summary>
public static class ContribOpDecomposition
{
    const string Microsoft = "com.microsoft";

    static bool IsContrib(NodeProto n) => n.Domain == Microsoft
        && n.OpType is "SkipSimplifiedLayerNormalization" or "SkipLayerNormalization" or "RotaryEmbedding" or "GroupQueryAttention";

    public static bool Applies(GraphEditor g) => g.Graph.Node.Any(IsContrib);

    public static void Apply(GraphEditor g, ValueTable types)
    {
        foreach (var node in g.Graph.Node.Where(IsContrib).ToList())
            FusedOpDecomposition.Replace(g, node, () =>
            {
                switch (node.OpType)
                {
                    case "GroupQueryAttention": GroupQueryAttention(g, node, types); break;
                    case "RotaryEmbedding": Rotary(g, node, types); break;
                    default: SkipNormalization(g, node); break;
                }
            });
    }

    static string? Input(NodeProto node, int i) => node.Input.Count > i && node.Input[i] != "" ? node.Input[i] : null;
    static string? Output(NodeProto node, int i) => node.Output.Count > i && node.Output[i] != "" ? node.Output[i] : null;

    static void SkipNormalization(GraphEditor g, NodeProto node)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: node.Name + "/" + op, attributes: attrs);
        if (Output(node, 1) is not null || Output(node, 2) is not null)
            throw new OrtLoraException($"{node.OpType} node '{node.Name}': its mean / inv_std_var outputs are used; ortlora trains through the output and the sum only");
        bool simplified = node.OpType == "SkipSimplifiedLayerNormalization";
        var sum = Op("Add", [node.Input[0], node.Input[1]]);
        var bias = Input(node, simplified ? 3 : 4);
        if (bias is not null) sum = Op("Add", [sum, bias]);
        var epsilon = ("epsilon", (object)Attrs.Float(node, "epsilon", 1e-5f));
        var normalized = simplified
            ? Op("SimplifiedLayerNormalization", [sum, node.Input[2]], ("axis", -1L), epsilon)
            : Op("LayerNormalization", Input(node, 3) is { } beta ? [sum, node.Input[2], beta] : [sum, node.Input[2]], ("axis", -1L), epsilon);
        g.Add("Identity", [normalized], name: node.Name + "/output", outputs: [node.Output[0]]);
        if (Output(node, 3) is { } s) g.Add("Identity", [sum], name: node.Name + "/input_skip_bias_sum", outputs: [s]);
    }

    /// <summary>com.microsoft RotaryEmbedding (input, position_ids, cos_cache, sin_cache) as ONNX's (X, cos, sin,
    /// position_ids), which the fused-op pass decomposes.</summary>
    static void Rotary(GraphEditor g, NodeProto node, ValueTable types)
    {
        if (Attrs.Float(node, "scale", 1f) != 1f) throw new OrtLoraException($"RotaryEmbedding node '{node.Name}': scale other than 1 is not supported for training");
        if (Attrs.Int(node, "is_packed_batching", 0) != 0) throw new OrtLoraException($"RotaryEmbedding node '{node.Name}': packed batching is not supported for training");
        var positions = node.Input[1];
        if (types.Rank(positions) == 1)
            positions = Positions(g, node.Name, node.Input[0], types.Rank(node.Input[0]) == 4 ? 2 : 1, positions);
        FusedOpDecomposition.RewriteRotary(g, OnnxRotary(g, node.Name, node.Input[0], node.Input[2], node.Input[3], positions, node.Output[0],
            Attrs.Int(node, "num_heads", 0), Attrs.Int(node, "rotary_embedding_dim", 0), Attrs.Int(node, "interleaved", 0)), types);
    }

    /// <summary>An additive [S, S] mask that hides key j from query i when i − j ≥ <paramref name="window"/> (the causal
    /// mask hides j > i): ORT 1.31's CPU kernel attends to window keys, this one included (measured against it; one
    /// more key gave a loss 1.4% off).</summary>
    static string SlidingWindow(GraphEditor g, string scope, string q, long window, ValueTable.Info info, ValueTable types)
    {
        string Op(string op, string[] inputs) => g.Add(op, inputs, name: scope + "/window/" + op);
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique(scope + "/ints"), [v.Length], v));
        string Scalar(long v) => g.AddInitializer(Tensors.FromInt64(g.Unique(scope + "/scalar"), [], [v]));
        string Const(float v) => g.AddInitializer(Tensors.FromFloats(g.Unique(scope + "/const"), [], [v], info.ElemType));
        var positions = SequenceRange(g, scope, q, 1);
        var distance = Op("Sub", [Op("Unsqueeze", [positions, Ints(1)]), Op("Unsqueeze", [positions, Ints(0)])]);
        var mask = Op("Where", [Op("Greater", [distance, Scalar(window - 1)]), Const(-1e4f), Const(0)]);
        types.Set(mask, info with { ShapeA = [info.ShapeA[1], info.ShapeA[1]], ShapeB = [info.ShapeB[1], info.ShapeB[1]] });
        return mask;
    }

    /// <summary>[1, S] positions offset..offset+S−1 along <paramref name="axis"/> of <paramref name="x"/> (offset: a
    /// one-element int64 tensor, or none: 0).</summary>
    static string Positions(GraphEditor g, string scope, string x, long axis, string? offset)
    {
        string Op(string op, string[] inputs) => g.Add(op, inputs, name: scope + "/positions/" + op);
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique(scope + "/ints"), [v.Length], v));
        var range = SequenceRange(g, scope, x, axis);
        if (offset is not null) range = Op("Add", [range, offset]);
        return Op("Unsqueeze", [range, Ints(0)]);
    }

    /// <summary>0..n−1 for the length n of <paramref name="x"/> along <paramref name="axis"/>, int64.</summary>
    static string SequenceRange(GraphEditor g, string scope, string x, long axis)
    {
        string Op(string op, string[] inputs) => g.Add(op, inputs, name: scope + "/range/" + op);
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique(scope + "/ints"), [v.Length], v));
        string Scalar(long v) => g.AddInitializer(Tensors.FromInt64(g.Unique(scope + "/scalar"), [], [v]));
        return Op("Range", [Scalar(0), Op("Squeeze", [Op("Slice", [Op("Shape", [x]), Ints(axis), Ints(axis + 1), Ints(0)]), Ints(0)]), Scalar(1)]);
    }

    /// <summary>An ONNX RotaryEmbedding node (not added to the graph: the fused-op pass writes its primitives).</summary>
    static NodeProto OnnxRotary(GraphEditor g, string scope, string x, string cos, string sin, string positions, string output,
        long heads, long rotaryDim, long interleaved)
    {
        var rotary = new NodeProto { OpType = "RotaryEmbedding", Name = g.Unique(scope + "/RotaryEmbedding") };
        rotary.Input.AddRange([x, cos, sin, positions]);
        rotary.Output.Add(output);
        if (heads > 0) rotary.Attribute.Add(Attrs.Make("num_heads", heads));
        if (rotaryDim > 0) rotary.Attribute.Add(Attrs.Make("rotary_embedding_dim", rotaryDim));
        rotary.Attribute.Add(Attrs.Make("interleaved", interleaved));
        return rotary;
    }

    static void GroupQueryAttention(GraphEditor g, NodeProto node, ValueTable types)
    {
        string Unsupported(string what) => throw new OrtLoraException($"GroupQueryAttention node '{node.Name}': {what} is not supported for training");
        long heads = Attrs.Int(node, "num_heads", 0), kvHeads = Attrs.Int(node, "kv_num_heads", 0);
        long window = Attrs.Int(node, "local_window_size", -1); // > 0: query i sees the window keys i − window + 1 .. i
        for (int i = 9; i < node.Input.Count; i++) if (node.Input[i] != "") Unsupported($"input {i} (position_ids, attention_bias, head_sink, KV quantization)");
        if (Output(node, 3) is not null) Unsupported("the output_qk output");
        foreach (var past in new[] { Input(node, 3), Input(node, 4) }.OfType<string>())
            if (types[past].ShapeA is var shape && shape.Length == 4 && shape[2] != 0)
                throw new OrtLoraException($"GroupQueryAttention node '{node.Name}': training runs on prompts, and '{past}' is not empty");

        string q = node.Input[0], k, v;
        var info = types[q];
        long headSize;
        if (Input(node, 1) is null)
        {
            // packed [B, S, (N + 2·Nkv)·H]
            headSize = info.ShapeA[2] / (heads + 2 * kvHeads);
            var parts = new[] { g.Unique(node.Name + "/q"), g.Unique(node.Name + "/k"), g.Unique(node.Name + "/v") };
            long[] widths = [heads * headSize, kvHeads * headSize, kvHeads * headSize];
            g.Add("Split", [q, g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "/sizes"), [3], widths))],
                name: node.Name + "/Split", outputs: parts, attributes: ("axis", -1L));
            for (int i = 0; i < 3; i++) types.Set(parts[i], info with { ShapeA = [.. info.ShapeA[..2], widths[i]], ShapeB = [.. info.ShapeB[..2], widths[i]] });
            (q, k, v) = (parts[0], parts[1], parts[2]);
        }
        else
        {
            headSize = info.ShapeA[2] / heads;
            (k, v) = (node.Input[1], node.Input[2]);
        }

        if (Attrs.Int(node, "do_rotary", 0) != 0)
        {
            string cos = Input(node, 7) ?? Unsupported("do_rotary without cos_cache"), sin = Input(node, 8) ?? Unsupported("do_rotary without sin_cache");
            long rotaryDim = 2 * types[cos].ShapeA[1]; // the kernel rotates the first 2·cos_cache.shape[1] features of each head
            var positions = Positions(g, node.Name, q, 1, null);
            long interleaved = Attrs.Int(node, "rotary_interleaved", 0);
            string Rotate(string x, long n, string name)
            {
                var rotated = g.Unique(node.Name + "/" + name);
                FusedOpDecomposition.RewriteRotary(g, OnnxRotary(g, node.Name, x, cos, sin, positions, rotated, n, rotaryDim < headSize ? rotaryDim : 0, interleaved), types);
                types.Set(rotated, types[x]);
                return rotated;
            }
            (q, k) = (Rotate(q, heads, "q_rotated"), Rotate(k, kvHeads, "k_rotated"));
        }
        if (Output(node, 1) is { } presentKey) g.Add("Identity", [k], name: node.Name + "/present_key", outputs: [presentKey]);
        if (Output(node, 2) is { } presentValue) g.Add("Identity", [v], name: node.Name + "/present_value", outputs: [presentValue]);

        var attention = new NodeProto { OpType = "Attention", Name = g.Unique(node.Name + "/Attention") };
        attention.Input.AddRange([q, k, v]);
        if (window > 0) attention.Input.Add(SlidingWindow(g, node.Name, q, window, info, types));
        attention.Output.Add(node.Output[0]);
        attention.Attribute.Add(Attrs.Make("q_num_heads", heads));
        attention.Attribute.Add(Attrs.Make("kv_num_heads", kvHeads));
        attention.Attribute.Add(Attrs.Make("is_causal", 1L));
        if (Attrs.Float(node, "scale", 0f) is var scale && scale != 0) attention.Attribute.Add(Attrs.Make("scale", scale));
        if (Attrs.Float(node, "softcap", 0f) is var cap && cap != 0) attention.Attribute.Add(Attrs.Make("softcap", cap));
        if (Attrs.Int(node, "smooth_softmax", 0) != 0) attention.Attribute.Add(Attrs.Make("smooth_softmax", 1L));
        FusedOpDecomposition.RewriteAttention(g, attention, types);
    }
}
