using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>How a linear layer's weight initializer is stored: [in, out] (pre-transposed MatMul, GPT-2 Conv1D,
/// Gemm without transB) or [out, in] (PyTorch nn.Linear reaching MatMul through a Transpose, Gemm with transB).</summary>
public enum WeightLayout { InOut, OutIn }

/// <summary>One targetable linear layer of an exported graph: y = x·W (+ bias), W a 2-D float initializer.</summary>
/// <param name="Module">Dotted module path as the exporter recorded it, wrapper prefix included
/// (e.g. <c>model_.model.layers.0.self_attn.q_proj</c>).</param>
/// <param name="Parts">Output widths of a fused projection (a Split/Slice of the output along its last axis), or null.</param>
/// <param name="DataType">The type the layer computes in: the weight's, or what a Cast on the weight's path gives.</param>
/// <param name="IsOutputHead">Its output is a graph output: the LM head, which all-linear leaves alone, as PEFT does.</param>
/// <param name="Tied">The weight initializer is read elsewhere too (tied embeddings).</param>
public sealed record LinearLayer(NodeProto Node, string Module, string Weight, WeightLayout Layout, long In, long Out,
    int DataType, float GemmAlpha, int[]? Parts, bool IsOutputHead, bool Tied)
{
    /// <summary>A token (or position) embedding, PEFT's LoRA on nn.Embedding: a Gather of rows of the table, which is
    /// the linear layer onehot(ids)·W with W [vocabulary, hidden] stored [in, out].</summary>
    public bool Embedding { get; init; }
    /// <summary>x: the layer's input, or an embedding's ids.</summary>
    public string Input => Embedding ? Node.Input[1] : Node.Input[0];
    /// <summary>Which input of <see cref="Node"/> reads the weight.</summary>
    public int WeightInput => Embedding ? 0 : 1;
    public string Output => Node.Output[0];
    /// <summary>The DequantizeLinear the weight is read through when it is stored quantized (weight-only QDQ); then
    /// <see cref="Weight"/> is the integer tensor.</summary>
    public NodeProto? Dequantize { get; init; }
}

/// <summary>Finds the linear layers of a graph as real exporters write them, and the module path of each: from the
/// weight's name (dynamo keeps <c>model_.transformer.h.0.attn.c_attn.weight</c>), from the dynamo exporter's node
/// metadata (<c>pkg.torch.onnx.name_scopes</c>, when the weight was folded into <c>val_59</c>), or from the legacy
/// exporter's node name (<c>/model_/model/layers.0/self_attn/q_proj/MatMul</c>, weight <c>onnx::MatMul_673</c>).</summary>
public static class LinearLayers
{
    static readonly HashSet<int> FloatTypes = [(int)DT.Float, (int)DT.Float16, (int)DT.Bfloat16, (int)DT.Double];
    // Ops between a projection's output and the Split of a fused projection, or between the head and the graph output.
    static readonly HashSet<string> PassThrough = ["Reshape", "Identity", "Cast"];

    public static List<LinearLayer> Find(GraphEditor graph)
    {
        var layers = new List<LinearLayer>();
        foreach (var node in graph.Graph.Node.ToList())
            if (TryRead(graph, node) is { } layer) layers.Add(layer);
        return layers;
    }

    static LinearLayer? TryRead(GraphEditor g, NodeProto node)
    {
        if (node.Domain is not ("" or "ai.onnx") || node.Input.Count < 2 || node.Output.Count != 1) return null;
        bool transposed = false;
        float alpha = 1;
        if (node.OpType == "Gemm")
        {
            if (Attrs.Int(node, "transA", 0) != 0) return null;
            transposed = Attrs.Int(node, "transB", 0) != 0;
            alpha = Attrs.Float(node, "alpha", 1f);
        }
        else if (node.OpType != "MatMul") return null;
        // From the node back to the initializer: Identity (deduplication), one matrix Transpose (nn.Linear's [out, in]
        // under MatMul), Cast (weights stored in fp16/bf16 and cast to the compute type) and one DequantizeLinear
        // (weights stored as integers), in any order.
        string weightValue = node.Input[1], weightName = weightValue;
        int? castTo = null;
        NodeProto? dequantize = null;
        for (int hops = 0; hops < 8; hops++)
        {
            var producer = g.Producer(weightName);
            if (producer is { OpType: "Identity" }) weightName = producer.Input[0];
            else if (producer is { OpType: "Cast" }) { castTo ??= (int)Attrs.Int(producer, "to", 0); weightName = producer.Input[0]; }
            else if (producer is { OpType: "DequantizeLinear", Domain: "" or "ai.onnx" } dq && dequantize is null
                     && dq.Input.Skip(1).All(i => i == "" || g.Initializer(i) is not null)) // scales and zero points constant
            {
                dequantize = dq;
                castTo ??= Onnx.Dequantize.OutputType(dq, g);
                weightName = dq.Input[0];
            }
            else if (producer is { OpType: "Transpose" } t && node.OpType == "MatMul" && !transposed && IsMatrixTranspose(t))
            {
                transposed = true;
                weightName = t.Input[0];
                if (castTo is null) weightValue = weightName; // the name the exporter gave the weight, before Identity
            }
            else break;
        }
        var weight = g.Initializer(weightName);
        if (weight is null || weight.Dims.Count != 2) return null;
        if (!(dequantize is null ? FloatTypes.Contains(weight.DataType) : Onnx.Dequantize.IsQuantizedType(weight.DataType))) return null;
        if (castTo is { } to && !FloatTypes.Contains(to)) return null;
        if (castTo is not null) weightValue = weightName;
        // ONNX Runtime's quantizers name the integers after the weight: W_quantized (int8 QDQ), W_DQ_Q4 (4-bit QDQ).
        if (dequantize is not null) weightValue = System.Text.RegularExpressions.Regex.Replace(weightValue, "(_quantized|_DQ_Q[248])$", "");
        if (g.Graph.Input.Any(i => i.Name == weightName)) return null; // an overridable input, not a parameter
        if (ModuleNames.IsLoraA(weightName) || ModuleNames.IsLoraB(weightName)) return null; // an adapter's own branch
        if (g.Constant(node.Input[0]) is not null) return null;
        var module = ModulePath(node, weightValue);
        if (module is null) return null;
        var layout = transposed ? WeightLayout.OutIn : WeightLayout.InOut;
        long rows = weight.Dims[0], cols = weight.Dims[1];
        var (inDim, outDim) = layout == WeightLayout.InOut ? (rows, cols) : (cols, rows);
        return new LinearLayer(node, module, weightName, layout, inDim, outDim, castTo ?? weight.DataType, alpha,
            FusedParts(g, node.Output[0], outDim), IsHead(g, node.Output[0], module), IsTied(g, weightName, node)) { Dequantize = dequantize };
    }

    /// <summary>The token (and position) embeddings: Gathers of rows (axis 0) of a 2-D float initializer, read directly or
    /// through Identity/Cast nodes, by computed ids.</summary>
    public static List<LinearLayer> Embeddings(GraphEditor g)
    {
        var embeddings = new List<LinearLayer>();
        foreach (var node in g.Graph.Node.Where(n => n.OpType == "Gather" && n.Domain is "" or "ai.onnx" && Attrs.Int(n, "axis", 0) == 0))
        {
            if (g.Constant(node.Input[1]) is not null || g.Initializer(node.Input[1]) is not null) continue;
            var table = node.Input[0];
            int? castTo = null;
            while (g.Producer(table) is { OpType: "Identity" or "Cast" } hop)
            {
                if (hop.OpType == "Cast") castTo ??= (int)Attrs.Int(hop, "to", 0); // the outermost Cast gives the type read
                table = hop.Input[0];
            }
            if (g.Initializer(table) is not { Dims.Count: 2 } t || !FloatTypes.Contains(t.DataType) || castTo is { } to && !FloatTypes.Contains(to)) continue;
            if (g.Graph.Input.Any(i => i.Name == table) || ModuleNames.IsLoraA(table)) continue;
            embeddings.Add(new LinearLayer(node, ModulePath(node, table), table, WeightLayout.InOut, t.Dims[0], t.Dims[1], castTo ?? t.DataType,
                1, null, IsOutputHead: false, IsTied(g, table, node)) { Embedding = true });
        }
        return embeddings;
    }

    static bool IsMatrixTranspose(NodeProto t) => Attrs.Ints(t, "perm") is not { } perm || perm.SequenceEqual([1L, 0L]);

    /// <summary>The weight is shared when anything besides this layer (and Identity/Transpose nodes leading to it)
    /// reads it, e.g. an embedding Gather of a tied LM head.</summary>
    static bool IsTied(GraphEditor g, string weight, NodeProto layer)
    {
        var pending = new Stack<string>([weight]);
        while (pending.Count > 0)
        {
            var value = pending.Pop();
            foreach (var c in g.Consumers(value))
            {
                if (c == layer) continue;
                if (c.OpType is "Identity" or "Cast" || c.OpType == "Transpose" && IsMatrixTranspose(c)
                    || c.OpType == "DequantizeLinear" && c.Input[0] == value) pending.Push(c.Output[0]);
                else return true;
            }
        }
        return false;
    }

    /// <summary>The dotted module path of the layer. What the node records comes first (the dynamo exporter's
    /// name_scopes, the legacy exporter's /a/b/c/MatMul name), because a weight's name can belong to another module
    /// (a head tied to model.embed_tokens.weight); then the weight's own module name; then any name at all, which
    /// still lets all-linear and regexes select the layer.</summary>
    public static string ModulePath(NodeProto node, string weightValue)
    {
        var scopes = node.MetadataProps.FirstOrDefault(p => p.Key == "pkg.torch.onnx.name_scopes")?.Value;
        if (scopes is not null)
        {
            // "['', 'model_', ..., 'model_.model.layers.0.self_attn.q_proj', 'linear']": the last entry is the op.
            var items = scopes.Trim('[', ']').Split(',').Select(s => s.Trim().Trim('\'', '"')).Where(s => s != "").ToList();
            if (items.Count >= 2) return items[^2];
        }
        if (node.Name.StartsWith('/') && node.Name.Count(c => c == '/') >= 2)
            return string.Join('.', node.Name.Trim('/').Split('/')[..^1]);
        if (weightValue.EndsWith(".weight") && !weightValue.StartsWith("onnx::") && weightValue.Contains('.'))
            return weightValue[..^".weight".Length];
        return node.Name != "" ? node.Name.Trim('/').Replace('/', '.') : weightValue;
    }

    /// <summary>Widths of the parts when the output is split along its last axis (GPT-2 c_attn into q|k|v, Phi-3
    /// qkv_proj by Slices), read from the Split sizes or Slice bounds (or GroupQueryAttention's head counts), never
    /// assumed equal; null if not fused.</summary>
    public static int[]? FusedParts(GraphEditor g, string output, long width)
    {
        var value = output;
        var consumers = Meaningful(g, value);
        while (consumers.Count == 1 && PassThrough.Contains(consumers[0].OpType))
            consumers = Meaningful(g, value = consumers[0].Output[0]);
        if (consumers.Count == 1 && consumers[0].OpType == "Split") return SplitSizes(g, consumers[0], width);
        if (consumers.Count >= 2 && consumers.All(c => c.OpType == "Slice")) return SliceSizes(g, consumers, width);
        if (consumers is [{ OpType: "GroupQueryAttention", Domain: "com.microsoft" } gqa] && gqa.Input[0] == value && gqa.Input.Count > 1 && gqa.Input[1] == "")
            return PackedQkv(gqa, width);
        return null;
    }

    /// <summary>ORT GenAI's packed projection: GroupQueryAttention reads q | k | v from one input when key and value are
    /// empty, num_heads and kv_num_heads heads of one size.</summary>
    static int[]? PackedQkv(NodeProto gqa, long width)
    {
        long heads = Attrs.Int(gqa, "num_heads", 0), kvHeads = Attrs.Int(gqa, "kv_num_heads", 0);
        if (heads <= 0 || kvHeads <= 0 || width % (heads + 2 * kvHeads) != 0) return null;
        long head = width / (heads + 2 * kvHeads);
        return [(int)(heads * head), (int)(kvHeads * head), (int)(kvHeads * head)];
    }

    static List<NodeProto> Meaningful(GraphEditor g, string value) => g.Consumers(value).Where(c => c.OpType != "Shape").ToList();

    static int[]? SplitSizes(GraphEditor g, NodeProto split, long width)
    {
        long axis = Attrs.Int(split, "axis", 0);
        if (axis == 0) return null; // the batch or row axis, not the features
        long[]? sizes = Attrs.Ints(split, "split");
        if (sizes is null && split.Input.Count > 1 && split.Input[1] != "")
            sizes = g.ConstantInts(split.Input[1]);
        if (sizes is null)
        {
            long n = Attrs.Int(split, "num_outputs", split.Output.Count);
            if (n < 2) return null;
            long chunk = (width + n - 1) / n; // ONNX: equal chunks of ceil(width / n), the last one smaller
            sizes = Enumerable.Range(0, (int)n).Select(i => Math.Min(chunk, width - i * chunk)).ToArray();
        }
        return sizes.Length >= 2 && sizes.Sum() == width && sizes.All(s => s > 0) ? sizes.Select(s => (int)s).ToArray() : null;
    }

    static int[]? SliceSizes(GraphEditor g, IReadOnlyList<NodeProto> slices, long width)
    {
        var ranges = new List<(long Start, long End)>();
        long? sliceAxis = null;
        foreach (var s in slices)
        {
            long[]? Read(int i) => s.Input.Count > i ? g.ConstantInts(s.Input[i]) : null;
            var (starts, ends, axes, steps) = (Read(1), Read(2), Read(3), Read(4));
            if (starts is not { Length: 1 } || ends is not { Length: 1 } || axes is not { Length: 1 }) return null;
            if (steps is not null && steps[0] != 1) return null;
            if (axes[0] == 0 || sliceAxis is { } a && a != axes[0]) return null;
            sliceAxis = axes[0];
            ranges.Add((Clamp(starts[0], width), Clamp(ends[0], width)));
        }
        ranges.Sort();
        long next = 0;
        foreach (var (start, end) in ranges)
        {
            if (start != next || end <= start) return null;
            next = end;
        }
        return next == width ? ranges.Select(r => (int)(r.End - r.Start)).ToArray() : null;
    }

    static long Clamp(long index, long width) => index < 0 ? Math.Max(0, width + index) : Math.Min(index, width);

    // PEFT leaves out the output embedding; exports name it lm_head (GPT-NeoX: embed_out) and it writes the logits. A
    // sequence classifier's head (score, classifier) is read through the pooling, and PEFT's SEQ_CLS task saves it whole.
    static bool IsHead(GraphEditor g, string output, string module) =>
        ModuleNames.LastSegment(module) is "lm_head" or "embed_out" or "score" or "classifier" || ReachesGraphOutput(g, output);

    static bool ReachesGraphOutput(GraphEditor g, string value)
    {
        for (int depth = 0; depth < 8; depth++)
        {
            if (g.IsGraphOutput(value)) return true;
            var next = Meaningful(g, value);
            if (next.Count != 1 || !PassThrough.Contains(next[0].OpType)) return false;
            value = next[0].Output[0];
        }
        return false;
    }
}
