using System.Text.Json.Nodes;
using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Deploy;

/// <summary>A decoder's sizes as ORT GenAI's genai_config.json wants them, read from the ONNX graph itself:
/// vocabulary and hidden size from the token embedding (the Gather on input_ids), layers from the cache inputs or the
/// attention Softmax count, head size from the [batch, seq, -1, head_size] Reshape after each q/k/v projection, and
/// head counts from those projections' widths. A Hugging Face config.json beside the model fills what a graph cannot
/// tell (model_type, context length).</summary>
public sealed record ModelDimensions(string Type, int VocabSize, int HiddenSize, int NumHiddenLayers, int NumAttentionHeads,
    int NumKeyValueHeads, int HeadSize, int ContextLength)
{
    public const int DefaultContextLength = 2048;

    public static ModelDimensions Derive(OnnxModel model, string? hfConfigPath = null)
    {
        var graph = model.Graph;
        var editor = new GraphEditor(graph);
        JsonObject? hf = hfConfigPath is not null && File.Exists(hfConfigPath) ? JsonNode.Parse(File.ReadAllText(hfConfigPath))?.AsObject() : null;
        var embedding = EmbeddingTable(model, editor);
        var pastKeys = graph.Input.Where(i => i.Name.StartsWith("past_key_values.", StringComparison.Ordinal) && i.Name.EndsWith(".key", StringComparison.Ordinal)).ToList();
        int layers = pastKeys.Count > 0 ? pastKeys.Count : graph.Node.Count(n => n.OpType == "Softmax");
        var (headSize, widths) = ProjectionHeads(model, editor);
        if (pastKeys.Count > 0 && Dims(pastKeys[0]) is [_, var kvHeads, _, var cacheHead] && kvHeads > 0 && cacheHead > 0)
        {
            headSize = (int)cacheHead;
            widths = widths.Count > 0 ? widths : [embedding.Hidden, (int)(kvHeads * cacheHead)];
        }
        if (headSize <= 0 || widths.Count == 0)
            throw new OrtLoraException($"{model.Source}: cannot find the attention head size (no [batch, seq, -1, head_size] Reshape after a projection, and no KV cache inputs)");
        int heads = widths.Max() / headSize, kvHeadCount = widths.Min() / headSize;
        return new ModelDimensions(
            Type: hf?["model_type"]?.GetValue<string>() ?? GuessType(graph),
            VocabSize: embedding.Vocab,
            HiddenSize: embedding.Hidden,
            NumHiddenLayers: layers,
            NumAttentionHeads: heads,
            NumKeyValueHeads: kvHeadCount,
            HeadSize: headSize,
            ContextLength: ReadContextLength(hf, model, editor));
    }

    static long[] Dims(ValueInfoProto v) => v.Type.TensorType.Shape.Dim.Select(d => d.HasDimValue ? d.DimValue : -1).ToArray();

    /// <summary>[vocab, hidden] of the table that input_ids index.</summary>
    static (int Vocab, int Hidden) EmbeddingTable(OnnxModel model, GraphEditor editor)
    {
        foreach (var gather in editor.Consumers("input_ids").Where(n => n.OpType == "Gather"))
            if (WeightOf(editor, gather.Input[0]) is { Dims.Count: 2 } table) return ((int)table.Dims[0], (int)table.Dims[1]);
        // Exports that reshape input_ids first (GPT-2's view(-1, seq)): the Gather table with as many rows as logits has columns.
        var logits = model.Graph.Output.FirstOrDefault(o => o.Name == "logits") ?? model.Graph.Output[0];
        if (Dims(logits) is { Length: > 0 } shape && shape[^1] > 0)
            foreach (var gather in model.Graph.Node.Where(n => n.OpType == "Gather"))
                if (WeightOf(editor, gather.Input[0]) is { Dims.Count: 2 } table && table.Dims[0] == shape[^1])
                    return ((int)table.Dims[0], (int)table.Dims[1]);
        throw new OrtLoraException($"{model.Source}: no token embedding (a Gather of an initializer by input_ids) found");
    }

    /// <summary>The initializer behind a value, looking through Cast/Identity (fp16 exports, shared embeddings).</summary>
    static TensorProto? WeightOf(GraphEditor editor, string value)
    {
        for (int hop = 0; hop < 4; hop++)
        {
            if (editor.Initializer(value) is { } t) return t;
            if (editor.Producer(value) is { OpType: "Cast" or "Identity" } p) value = p.Input[0];
            else return null;
        }
        return null;
    }

    /// <summary>The head size and the output widths of the projections that are split into heads.</summary>
    static (int HeadSize, List<int> Widths) ProjectionHeads(OnnxModel model, GraphEditor editor)
    {
        int headSize = 0;
        var widths = new List<int>();
        foreach (var reshape in model.Graph.Node.Where(n => n.OpType == "Reshape"))
        {
            if (TrailingHeadSize(model, editor, reshape.Input[1]) is not { } d) continue;
            if (ProjectionWidth(editor, reshape.Input[0]) is not { } width || width % d != 0) continue;
            headSize = (int)d;
            widths.Add(width);
        }
        return (headSize, widths);
    }

    /// <summary>d when the target shape is [?, ?, -1 or heads, d] with d a constant (directly or as Concat's last part).</summary>
    static long? TrailingHeadSize(OnnxModel model, GraphEditor editor, string shape)
    {
        long[]? Values(string v) => editor.Constant(v) is { } c ? Tensors.ReadInt64s(model.ReadBytes(c), c.DataType) : null;
        if (Values(shape) is { Length: 4 } direct) return direct[3] > 0 ? direct[3] : null;
        if (editor.Producer(shape) is { OpType: "Concat" } concat && concat.Input.Count == 4 && Values(concat.Input[3]) is [var last] && last > 0)
            return last;
        return null;
    }

    /// <summary>Output width of the projection feeding a Reshape: a MatMul/Gemm (optionally + bias) with an
    /// initializer weight, or one part of a Split of a fused projection (GPT-2's c_attn).</summary>
    static int? ProjectionWidth(GraphEditor editor, string value)
    {
        var producer = editor.Producer(value);
        // Gemm works on 2-D input, so exports flatten [b, s, in] around it; the last dimension survives the Reshape.
        if (producer is { OpType: "Reshape" } flat) return ProjectionWidth(editor, flat.Input[0]);
        if (producer is { OpType: "Add" }) producer = producer.Input.Select(editor.Producer).FirstOrDefault(p => p is { OpType: "MatMul" or "Gemm" });
        if (producer is { OpType: "Split" } split && ProjectionWidth(editor, split.Input[0]) is { } fused) return fused / split.Output.Count;
        if (producer is not { OpType: "MatMul" or "Gemm" }) return null;
        bool transB = producer.OpType == "Gemm" && Attrs.Int(producer, "transB", 0) == 1;
        if (WeightOf(editor, producer.Input[1]) is { Dims.Count: 2 } w) return (int)(transB ? w.Dims[0] : w.Dims[1]);
        if (editor.Producer(producer.Input[1]) is { OpType: "Transpose" } t && WeightOf(editor, t.Input[0]) is { Dims.Count: 2 } wt) return (int)wt.Dims[0];
        return null;
    }

    static string GuessType(GraphProto graph)
    {
        bool Mentions(string s) => graph.Node.Any(n => n.Name.Contains(s, StringComparison.Ordinal)) || graph.Initializer.Any(t => t.Name.Contains(s, StringComparison.Ordinal));
        if (Mentions("c_attn") || Mentions("transformer.h.") || Mentions("transformer/h.")) return "gpt2";
        if (Mentions("qkv_proj")) return "phi3";
        return "llama";
    }

    /// <summary>max_position_embeddings / n_positions from config.json; else the rows of a learned position table
    /// (a Gather by position_ids); else the default.</summary>
    static int ReadContextLength(JsonObject? hf, OnnxModel model, GraphEditor editor)
    {
        foreach (var key in new[] { "max_position_embeddings", "n_positions", "seq_length" })
            if (hf?[key] is JsonValue v && v.TryGetValue<int>(out var n)) return n;
        if (model.Graph.Input.Any(i => i.Name == "position_ids"))
            foreach (var gather in editor.Consumers("position_ids").Where(n => n.OpType == "Gather"))
                if (WeightOf(editor, gather.Input[0]) is { Dims.Count: 2 } table) return (int)table.Dims[0];
        return DefaultContextLength;
    }
}
