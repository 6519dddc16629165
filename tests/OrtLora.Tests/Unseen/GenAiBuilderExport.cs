using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;
using static OrtLora.Tests.Unseen.Architectures;

namespace OrtLora.Tests.Unseen;

/// <summary>A LLaMA written the way ONNX Runtime GenAI's model builder writes one for the CPU: opset 21 plus
/// com.microsoft ops. SimplifiedLayerNormalization first, then SkipSimplifiedLayerNormalization carrying the residual
/// (its fourth output); GroupQueryAttention with the rotary embedding inside (do_rotary, cos/sin caches), seqlens_k and
/// total_sequence_length computed from attention_mask, past and present caches; weights [in, out] read by MatMul
/// nodes named /model/layers.N/attn/qkv_proj/MatMul. Layer 0 packs q, k and v into one projection (the builder's
/// packed MatMul), layer 1 keeps them apart.</summary>
public static class GenAiBuilderExport
{
    // ORT's GroupQueryAttention kernel wants a head size that is a multiple of 16: 2 query heads of 16, 1 KV head.
    public const long QueryHeads = 2, KvHeads = 1, HeadSize = 16;

    public static readonly string[] Targets =
    [
        "model.layers.0.attn.qkv_proj", "model.layers.0.attn.o_proj", "model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj",
        "model.layers.1.attn.q_proj", "model.layers.1.attn.k_proj", "model.layers.1.attn.v_proj", "model.layers.1.attn.o_proj",
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj",
    ];

    public static OnnxModel Build()
    {
        var n = new Net(21, seed: 19);
        n.Proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "com.microsoft", Version = 1 });
        n.Input("input_ids", (int)DT.Int64, "batch_size", "sequence_length");
        n.Input("attention_mask", (int)DT.Int64, "batch_size", "total_sequence_length");
        for (int l = 0; l < 2; l++)
            foreach (var kind in new[] { "key", "value" })
                n.Input($"past_key_values.{l}.{kind}", (int)DT.Float, "batch_size", KvHeads, "past_sequence_length", HeadSize);

        // seqlens_k = Σ mask − 1 and the total length, int32, as the builder computes them once for all layers.
        var seqlens = n.Op("Cast", [n.Op("Sub", n.Op("ReduceSum", [n.Op("Cast", ["attention_mask"], ("to", (long)DT.Int64)), n.I(1)], ("keepdims", 0L)), n.I(1))],
            ("to", (long)DT.Int32));
        var total = n.Op("Cast", [n.Op("Squeeze", n.Op("Slice", n.Op("Shape", "attention_mask"), n.I(1), n.I(2), n.I(0)), n.I(0))], ("to", (long)DT.Int32));
        const int half = (int)HeadSize / 2;
        var angles = Enumerable.Range(0, 64 * half).Select(i => (i / half) * MathF.Pow(100f, -(i % half) / (float)half)).ToArray();
        var cos = n.G.AddInitializer(Tensors.FromFloats("cos_cache", [64, half], angles.Select(MathF.Cos).ToArray()));
        var sin = n.G.AddInitializer(Tensors.FromFloats("sin_cache", [64, half], angles.Select(MathF.Sin).ToArray()));

        var x = n.G.Add("Gather", [n.Param("model.embed_tokens.weight", [Vocab, Hidden], n.Random(Vocab * Hidden, 1.0)), "input_ids"], name: "/model/embed_tokens/Gather");
        var h = n.G.Add("SimplifiedLayerNormalization", [x, Norm(n, "model.layers.0.input_layernorm.weight")], name: "/model/layers.0/input_layernorm/LayerNorm",
            attributes: [("axis", -1L), ("epsilon", 1e-6f), ("stash_type", 1L)]);
        string residual = x;
        for (int l = 0; l < 2; l++)
        {
            var p = $"/model/layers.{l}";
            string[] qkv = l == 0
                ? [MatMul(n, h, p + "/attn/qkv_proj", Hidden, (QueryHeads + 2 * KvHeads) * HeadSize), "", ""]
                : [MatMul(n, h, p + "/attn/q_proj", Hidden, QueryHeads * HeadSize), MatMul(n, h, p + "/attn/k_proj", Hidden, KvHeads * HeadSize), MatMul(n, h, p + "/attn/v_proj", Hidden, KvHeads * HeadSize)];
            var outputs = new[] { n.G.Unique(p + "/attn/GroupQueryAttention/output_0"), $"present.{l}.key", $"present.{l}.value" };
            n.G.Add("GroupQueryAttention", [.. qkv, $"past_key_values.{l}.key", $"past_key_values.{l}.value", seqlens, total, cos, sin],
                name: p + "/attn/GroupQueryAttention", outputs: outputs, domain: "com.microsoft",
                attributes: [("num_heads", QueryHeads), ("kv_num_heads", KvHeads), ("do_rotary", 1L), ("rotary_interleaved", 0L), ("scale", 1f / MathF.Sqrt(HeadSize)), ("local_window_size", -1L)]);
            foreach (var kind in new[] { "key", "value" })
                n.Proto.Graph.Output.Add(Net.Value($"present.{l}.{kind}", (int)DT.Float, "batch_size", KvHeads, "total_sequence_length", HeadSize));
            var attention = MatMul(n, outputs[0], p + "/attn/o_proj", QueryHeads * HeadSize, Hidden);
            (h, residual) = SkipNorm(n, attention, residual, $"model.layers.{l}.post_attention_layernorm.weight", p + "/post_attention_layernorm/SkipLayerNorm");
            var gate = MatMul(n, h, p + "/mlp/gate_proj", Hidden, Ffn);
            var up = MatMul(n, h, p + "/mlp/up_proj", Hidden, Ffn);
            var down = MatMul(n, n.Op("Mul", n.Silu(gate), up), p + "/mlp/down_proj", Ffn, Hidden);
            (h, residual) = l == 0
                ? SkipNorm(n, down, residual, "model.layers.1.input_layernorm.weight", "/model/layers.1/input_layernorm/SkipLayerNorm")
                : SkipNorm(n, down, residual, "model.norm.weight", "/model/norm/SkipLayerNorm");
        }
        n.G.Add("Identity", [MatMul(n, h, "/lm_head", Hidden, Vocab)], outputs: ["logits"]);
        n.Proto.Graph.Output.Insert(0, Net.Value("logits", (int)DT.Float, "batch_size", "sequence_length", Vocab));
        return n.Model();
    }

    /// <summary>The same model with its linear weights (the tied-free head included) in 4 bits, blocks of 16.</summary>
    public static OnnxModel BuildInt4()
    {
        var model = Build();
        Lora.WeightQuantizer.Apply(model, 4, blockSize: 16);
        return model;
    }

    static string Norm(Net n, string name) => n.Param(name, [Hidden], n.Random(Hidden, 0.2).Select(v => 1 + v).ToArray());

    /// <summary>The builder's MatMul: weight [in, out] named after the node (model.layers.0.attn.q_proj.MatMul.weight).</summary>
    static string MatMul(Net n, string x, string scope, long inDim, long outDim) =>
        n.G.Add("MatMul", [x, n.Param(scope.TrimStart('/').Replace('/', '.') + ".MatMul.weight", [inDim, outDim], n.Random(inDim * outDim, 1.0 / Math.Sqrt(inDim)))],
            name: scope + "/MatMul");

    /// <summary>SkipSimplifiedLayerNormalization: (normalized input + skip, input + skip).</summary>
    static (string Normalized, string Sum) SkipNorm(Net n, string input, string skip, string weight, string name)
    {
        var outputs = new[] { n.G.Unique(name + "/output_0"), "", "", n.G.Unique(name + "/output_3") };
        n.G.Add("SkipSimplifiedLayerNormalization", [input, skip, Norm(n, weight)], name: name, outputs: outputs, domain: "com.microsoft",
            attributes: ("epsilon", 1e-6f));
        return (outputs[0], outputs[3]);
    }
}
