using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests.Unseen;

/// <summary>One small model of an architecture the fixtures do not cover, and what inject must find in it.</summary>
/// <param name="Targets">PEFT module paths all-linear must adapt (layer 0 and 1 ...)</param>
/// <param name="FusedParts">module path → part widths the canonical variant must split it into</param>
public sealed record Architecture(string Name, Func<OnnxModel> Build, string[] Targets, Dictionary<string, int[]> FusedParts,
    bool Past = false, bool Trainable = true, bool Int32Tokens = false, bool FloatMask = false, bool NoPadding = false,
    long CacheHeads = 2, long CacheHeadDim = 8)
{
    /// <summary>Linear weights stored quantized (named *-qdq).</summary>
    public bool QuantizedWeights => Name.EndsWith("-qdq");

    /// <summary>The op histogram merge gives back: the original's, less the DequantizeLinear of each merged layer, whose
    /// weight becomes float (merging into the integers would round the delta away).</summary>
    public SortedDictionary<string, int> MergedHistogram(int mergedLayers)
    {
        using var original = Build();
        var histogram = GraphEditor.OpHistogram(original.Graph);
        if (QuantizedWeights) histogram["DequantizeLinear"] -= mergedLayers;
        return histogram;
    }

    /// <summary>An ORT GenAI builder export: its cache inputs come without position_ids.</summary>
    public bool GenAi => Name.StartsWith("genai");

    /// <summary>Activations in fp16 (named *-fp16): finite differences of its loss are ~10x noisier.</summary>
    public bool HalfActivations => Name.EndsWith("-fp16");
    public override string ToString() => Name;
}

/// <summary>Builders of small exports in the styles of Phi-3 (dynamo and TorchScript), GPT-NeoX, Qwen2, OPT (Gemm), an
/// Optimum decoder with a KV cache (fp32 and fp16), LLaMA at opsets 12/13/17/23 (RMSNormalization, Attention and
/// RotaryEmbedding ops), Gemma (multi-query, Gelu op, widening q_proj), fp16 weights cast to fp32, fully fp16, int32 token and float mask inputs.
/// Vocabulary 64, hidden 32, 4 query heads of 8 (2 KV heads where grouped), two layers.</summary>
public static class Architectures
{
    public const long Vocab = 64, Hidden = 32, Heads = 4, HeadDim = 8, Ffn = 48;

    static Architecture Phi3Like(string name, int opset, LinearStyle style = LinearStyle.Dynamo) => new(name, () => Phi3(opset, style),
        Targets(["self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"]),
        new() { ["model.layers.0.self_attn.qkv_proj"] = [32, 16, 16], ["model.layers.0.mlp.gate_up_proj"] = [48, 48],
            ["model.layers.1.self_attn.qkv_proj"] = [32, 16, 16], ["model.layers.1.mlp.gate_up_proj"] = [48, 48] });

    // Before All: static fields initialize in order.
    static readonly string[] LlamaTargets = Targets(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]);

    public static readonly Architecture[] All =
    [
        Phi3Like("phi3", 17),
        Phi3Like("phi3-opset18-split-num-outputs", 18),
        Phi3Like("phi3-opset12-split-attribute", 12) with { Trainable = false },
        Phi3Like("phi3-torchscript", 17, LinearStyle.TorchScript),
        new("gpt-neox", () => NeoX(), Targets(["attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"], "gpt_neox.layers"), []),
        new("qwen2", () => Qwen2(), Targets(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]), []),
        new("gemma-mqa-gelu-op", () => Gemma(), LlamaTargets, []),
        new("opt-gemm", () => Opt(), Targets(["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"], "model.decoder.layers"), []),
        new("optimum-kv-cache", () => Llama(17, past: true), LlamaTargets, [], Past: true),
        new("optimum-kv-cache-fp16", () => Llama(17, past: true, weightType: (int)DT.Float16, computeType: (int)DT.Float16), LlamaTargets, [], Past: true),
        new("llama-opset12", () => Llama(12), LlamaTargets, [], Trainable: false),
        new("llama-opset13", () => Llama(13), LlamaTargets, []),
        new("llama-opset23-rmsnorm", () => Llama(23), LlamaTargets, []),
        new("llama-opset23-attention-rotary-ops", () => Llama(23, attentionOp: true), LlamaTargets, []),
        new("llama-fp16-weights", () => Llama(17, weightType: (int)DT.Float16), LlamaTargets, []),
        new("llama-int32-token-inputs", () => Llama(17, tokenType: (int)DT.Int32), LlamaTargets, [], Int32Tokens: true),
        new("llama-float-attention-mask", () => Llama(17, maskType: (int)DT.Float), LlamaTargets, [], FloatMask: true),
        new("llama-fp16", () => Llama(17, weightType: (int)DT.Float16, computeType: (int)DT.Float16), LlamaTargets, []),
        // Weight-only QDQ, as ONNX Runtime's quantizers write a TorchScript export (weights [in, out]): int8 per output
        // channel, and uint4 in blocks of 16 along the input axis (opset 21).
        new("llama-int8-weights-qdq", () => Llama(17, quantize: new((int)DT.Int8), style: LinearStyle.TorchScript), LlamaTargets, []),
        new("llama-int4-block-weights-qdq", () => Llama(21, quantize: new((int)DT.Uint4, 16), style: LinearStyle.TorchScript), LlamaTargets, []),
        // ORT GenAI's model builder: contrib ops (GroupQueryAttention, SkipSimplifiedLayerNormalization), no padding
        // (GroupQueryAttention leaves padded rows undefined), a cache without position_ids.
        new("genai-builder-gqa", GenAiBuilderExport.Build, GenAiBuilderExport.Targets, new() { ["model.layers.0.attn.qkv_proj"] = [32, 16, 16] }, Past: true, NoPadding: true,
            CacheHeads: GenAiBuilderExport.KvHeads, CacheHeadDim: GenAiBuilderExport.HeadSize),
        // ... and its int4 form (the builder's int4 models; here as DequantizeLinear + MatMul, which inject reads
        // MatMulNBits as)
        new("genai-builder-gqa-int4-qdq", GenAiBuilderExport.BuildInt4, GenAiBuilderExport.Targets, new() { ["model.layers.0.attn.qkv_proj"] = [32, 16, 16] },
            Past: true, NoPadding: true, CacheHeads: GenAiBuilderExport.KvHeads, CacheHeadDim: GenAiBuilderExport.HeadSize),
    ];

    static string[] Targets(string[] modules, string layers = "model.layers") =>
        Enumerable.Range(0, 2).SelectMany(l => modules.Select(m => $"{layers}.{l}.{m}")).ToArray();

    static (string Ids, string Mask) TokenInputs(Net n, string? pastName = null, int tokenType = (int)DT.Int64, int? maskType = null)
    {
        n.Input("input_ids", tokenType, "batch_size", "sequence_length");
        n.Input("attention_mask", maskType ?? tokenType, "batch_size", pastName ?? "sequence_length");
        return ("input_ids", "attention_mask");
    }

    /// <summary>Phi-3: fused qkv_proj cut by Slices into q (4 heads) and k, v (2 KV heads each); fused gate_up_proj
    /// cut by Split in layer 0 (sizes as attribute before opset 13, as input, or num_outputs from 18) and by Slices in
    /// layer 1; SiLU as x·sigmoid(x); RMSNorm written out.</summary>
    static OnnxModel Phi3(int opset, LinearStyle style)
    {
        var n = new Net(opset, seed: 3);
        var (ids, am) = TokenInputs(n);
        var mask = n.Mask(ids, am, null);
        var x = n.Embedding(ids, "model.embed_tokens.weight", Vocab, Hidden);
        const long kvHeads = 2, q = Heads * HeadDim, kv = kvHeads * HeadDim;
        for (int l = 0; l < 2; l++)
        {
            var p = $"model.layers.{l}";
            var qkv = n.Linear(n.RmsNorm(x, p + ".input_layernorm.weight", Hidden), p + ".self_attn.qkv_proj", Hidden, q + 2 * kv, style);
            var (qs, ks, vs) = (n.Slice(qkv, 0, q), n.Slice(qkv, q, q + kv), n.Slice(qkv, q + kv, q + 2 * kv));
            var rep = Heads / kvHeads;
            var attn = n.Attention(n.Heads(qs, Heads, HeadDim), n.RepeatKv(n.Heads(ks, kvHeads, HeadDim), kvHeads, rep, HeadDim),
                n.RepeatKv(n.Heads(vs, kvHeads, HeadDim), kvHeads, rep, HeadDim), mask, Heads, HeadDim);
            x = n.Op("Add", x, n.Linear(attn, p + ".self_attn.o_proj", Hidden, Hidden, style));
            var gateUp = n.Linear(n.RmsNorm(x, p + ".post_attention_layernorm.weight", Hidden), p + ".mlp.gate_up_proj", Hidden, 2 * Ffn, style);
            var (gate, up) = l == 0 ? (n.Split(gateUp, -1, Ffn, Ffn)[0], "") : (n.Slice(gateUp, 0, Ffn), n.Slice(gateUp, Ffn, 2 * Ffn));
            if (l == 0) up = n.G.Producer(gate)!.Output[1];
            x = n.Op("Add", x, n.Linear(n.Op("Mul", n.Silu(gate), up), p + ".mlp.down_proj", Ffn, Hidden, style));
        }
        Head(n, n.RmsNorm(x, "model.norm.weight", Hidden), "lm_head", style);
        return n.Model();
    }

    /// <summary>GPT-NeoX/Pythia as TorchScript writes it: pre-transposed weights, biases, query_key_value reshaped to
    /// [B, S, heads, 3·dim] and split on the last axis (q|k|v interleaved per head: one adapter, no parts),
    /// LayerNormalization, erf GELU, parallel residual, embed_out head.</summary>
    static OnnxModel NeoX()
    {
        var n = new Net(17, seed: 5);
        var (ids, am) = TokenInputs(n);
        var mask = n.Mask(ids, am, null);
        var x = n.Embedding(ids, "gpt_neox.embed_in.weight", Vocab, Hidden);
        for (int l = 0; l < 2; l++)
        {
            var p = $"gpt_neox.layers.{l}";
            var qkv = n.Linear(n.LayerNorm(x, p + ".input_layernorm", Hidden), p + ".attention.query_key_value", Hidden, 3 * Hidden, LinearStyle.TorchScript, bias: true);
            var parts = n.Split(n.Op("Reshape", qkv, n.I(0, 0, Heads, 3 * HeadDim)), -1, HeadDim, HeadDim, HeadDim);
            var h = parts.Select(t => n.Op("Transpose", [t], ("perm", new long[] { 0, 2, 1, 3 }))).ToArray();
            var attn = n.Linear(n.Attention(h[0], h[1], h[2], mask, Heads, HeadDim), p + ".attention.dense", Hidden, Hidden, LinearStyle.TorchScript, bias: true);
            var mlpIn = n.LayerNorm(x, p + ".post_attention_layernorm", Hidden);
            var up = n.GeluErf(n.Linear(mlpIn, p + ".mlp.dense_h_to_4h", Hidden, Ffn, LinearStyle.TorchScript, bias: true));
            var mlp = n.Linear(up, p + ".mlp.dense_4h_to_h", Ffn, Hidden, LinearStyle.TorchScript, bias: true);
            x = n.Op("Add", n.Op("Add", x, attn), mlp);
        }
        Head(n, n.LayerNorm(x, "gpt_neox.final_layer_norm", Hidden), "embed_out", LinearStyle.TorchScript);
        return n.Model();
    }

    /// <summary>Qwen2 as dynamo writes it behind a wrapper (model_.): q/k/v with biases, grouped KV heads, SwiGLU, and
    /// an LM head tied to the embedding (all-linear leaves it alone).</summary>
    static OnnxModel Qwen2()
    {
        var n = new Net(18, seed: 7) { Prefix = "model_." };
        var (ids, am) = TokenInputs(n);
        var mask = n.Mask(ids, am, null);
        var x = n.Embedding(ids, "model_.model.embed_tokens.weight", Vocab, Hidden);
        x = Llama(n, x, mask, kvHeads: 2, LinearStyle.Dynamo, qkvBias: true, pastLength: null);
        var normed = n.RmsNorm(x, "model_.model.norm.weight", Hidden);
        var tied = n.Op("Transpose", ["model_.model.embed_tokens.weight"], ("perm", new long[] { 1, 0 }));
        n.G.Add("MatMul", [normed, tied], name: "/model_/lm_head/MatMul", outputs: ["logits"]);
        n.Proto.Graph.Output.Add(Net.Value("logits", (int)DT.Float, "batch_size", "sequence_length", Vocab));
        return n.Model();
    }

    /// <summary>Gemma as dynamo writes it at opset 20: embedding scaled by √hidden, one KV head (multi-query), head
    /// size 16 so q_proj widens (32 → 64) and o_proj narrows, the Gelu op (tanh approximation), head tied to the
    /// embedding.</summary>
    static OnnxModel Gemma()
    {
        const long headDim = 16, kvHeads = 1;
        var n = new Net(20, seed: 13);
        var (ids, am) = TokenInputs(n);
        var mask = n.Mask(ids, am, null);
        var x = n.Op("Mul", n.Embedding(ids, "model.embed_tokens.weight", Vocab, Hidden), n.F(MathF.Sqrt(Hidden)));
        for (int l = 0; l < 2; l++)
        {
            var p = $"model.layers.{l}";
            var h = n.RmsNorm(x, p + ".input_layernorm.weight", Hidden);
            var q = n.Heads(n.Linear(h, p + ".self_attn.q_proj", Hidden, Heads * headDim, LinearStyle.Dynamo), Heads, headDim);
            var k = n.Heads(n.Linear(h, p + ".self_attn.k_proj", Hidden, kvHeads * headDim, LinearStyle.Dynamo), kvHeads, headDim);
            var v = n.Heads(n.Linear(h, p + ".self_attn.v_proj", Hidden, kvHeads * headDim, LinearStyle.Dynamo), kvHeads, headDim);
            var attn = n.Attention(q, n.RepeatKv(k, kvHeads, Heads, headDim), n.RepeatKv(v, kvHeads, Heads, headDim), mask, Heads, headDim);
            x = n.Op("Add", x, n.Linear(attn, p + ".self_attn.o_proj", Heads * headDim, Hidden, LinearStyle.Dynamo));
            var m = n.RmsNorm(x, p + ".post_attention_layernorm.weight", Hidden);
            var gate = n.Op("Gelu", [n.Linear(m, p + ".mlp.gate_proj", Hidden, Ffn, LinearStyle.Dynamo)], ("approximate", "tanh"));
            x = n.Op("Add", x, n.Linear(n.Op("Mul", gate, n.Linear(m, p + ".mlp.up_proj", Hidden, Ffn, LinearStyle.Dynamo)), p + ".mlp.down_proj", Ffn, Hidden, LinearStyle.Dynamo));
        }
        var tied = n.Op("Transpose", ["model.embed_tokens.weight"], ("perm", new long[] { 1, 0 }));
        n.G.Add("MatMul", [n.RmsNorm(x, "model.norm.weight", Hidden), tied], name: "/lm_head/MatMul", outputs: ["logits"]);
        n.Proto.Graph.Output.Add(Net.Value("logits", (int)DT.Float, "batch_size", "sequence_length", Vocab));
        return n.Model();
    }

    /// <summary>OPT/BERT style: every linear layer a Gemm (transB=1, bias) on a 2-D input made by Reshape or
    /// Flatten, ReLU MLP, LayerNormalization.</summary>
    static OnnxModel Opt()
    {
        var n = new Net(17, seed: 9);
        var (ids, am) = TokenInputs(n);
        var mask = n.Mask(ids, am, null);
        var x = n.Embedding(ids, "model.decoder.embed_tokens.weight", Vocab, Hidden);
        for (int l = 0; l < 2; l++)
        {
            var p = $"model.decoder.layers.{l}";
            var h = n.LayerNorm(x, p + ".self_attn_layer_norm", Hidden);
            string Proj(string name) => n.Heads(n.Linear(h, $"{p}.self_attn.{name}", Hidden, Hidden, LinearStyle.Gemm, bias: true), Heads, HeadDim);
            var attn = n.Attention(Proj("q_proj"), Proj("k_proj"), Proj("v_proj"), mask, Heads, HeadDim);
            x = n.Op("Add", x, n.Linear(attn, p + ".self_attn.out_proj", Hidden, Hidden, LinearStyle.Gemm, bias: true));
            var f = n.Linear(n.LayerNorm(x, p + ".final_layer_norm", Hidden), p + ".fc1", Hidden, Ffn, LinearStyle.GemmFlatten, bias: true);
            x = n.Op("Add", x, n.Linear(n.Op("Relu", f), p + ".fc2", Ffn, Hidden, LinearStyle.Gemm, bias: true));
        }
        Head(n, n.LayerNorm(x, "model.decoder.final_layer_norm", Hidden), "lm_head", LinearStyle.Dynamo);
        return n.Model();
    }

    /// <summary>A LLaMA-style decoder at a given opset; with <paramref name="past"/> as Optimum exports it for
    /// generation: position_ids (learned positions here), past_key_values.N.key/value inputs and present.N outputs.</summary>
    /// <summary>The Optimum-style decoder (position_ids, past_key_values.N.key/value, present.N) with a given vocabulary.</summary>
    public static OnnxModel OptimumDecoder(long vocab) => Llama(17, past: true, vocab: vocab);

    static OnnxModel Llama(int opset, bool past = false, int weightType = (int)DT.Float, int computeType = (int)DT.Float, bool attentionOp = false,
        long vocab = Vocab, int tokenType = (int)DT.Int64, int? maskType = null, Quantization? quantize = null, LinearStyle style = LinearStyle.Dynamo)
    {
        var n = new Net(opset, seed: 11) { WeightType = weightType, ComputeType = computeType, Quantize = quantize };
        var (ids, am) = TokenInputs(n, past ? "total_sequence_length" : null, tokenType, maskType);
        string? pastLength = null;
        if (past)
        {
            n.Input("position_ids", (int)DT.Int64, "batch_size", "sequence_length");
            for (int l = 0; l < 2; l++)
                foreach (var kind in new[] { "key", "value" })
                    n.Input($"past_key_values.{l}.{kind}", computeType, "batch_size", 2, "past_sequence_length", HeadDim);
            pastLength = n.Op("Slice", n.Op("Shape", "past_key_values.0.key"), n.I(2), n.I(3), n.I(0));
        }
        var mask = n.Mask(ids, am, pastLength);
        var x = n.Embedding(ids, "model.embed_tokens.weight", vocab, Hidden);
        if (past) x = n.Op("Add", x, n.Embedding("position_ids", "model.embed_positions.weight", 128, Hidden));
        x = Llama(n, x, mask, kvHeads: 2, style, qkvBias: false, pastLength, attentionOp ? am : null);
        Head(n, n.RmsNorm(x, "model.norm.weight", Hidden), "lm_head", style, vocab);
        return n.Model();
    }

    /// <param name="attentionMaskForOp">given: RotaryEmbedding on q and k and attention by the ONNX Attention op (opset 23, as torch.onnx writes
    /// scaled_dot_product_attention) — layer 0 on 4-D heads with is_causal (no padding mask), grouped KV heads left
    /// to the op; layer 1 on 3-D projections (q_num_heads/kv_num_heads) with the full additive mask</param>
    static string Llama(Net n, string x, string mask, long kvHeads, LinearStyle style, bool qkvBias, string? pastLength, string? attentionMaskForOp = null)
    {
        for (int l = 0; l < 2; l++)
        {
            var p = $"model.layers.{l}";
            var h = n.RmsNorm(x, n.Prefix + p + ".input_layernorm.weight", Hidden);
            var qProj = n.Linear(h, p + ".self_attn.q_proj", Hidden, Heads * HeadDim, style, qkvBias);
            var kProj = n.Linear(h, p + ".self_attn.k_proj", Hidden, kvHeads * HeadDim, style, qkvBias);
            var vProj = n.Linear(h, p + ".self_attn.v_proj", Hidden, kvHeads * HeadDim, style, qkvBias);
            var (q, k, v) = (n.Heads(qProj, Heads, HeadDim), n.Heads(kProj, kvHeads, HeadDim), n.Heads(vProj, kvHeads, HeadDim));
            if (pastLength is not null)
            {
                k = n.Op("Concat", [$"past_key_values.{l}.key", k], ("axis", 2L));
                v = n.Op("Concat", [$"past_key_values.{l}.value", v], ("axis", 2L));
                n.Output(k, $"present.{l}.key", "batch_size", kvHeads, "total_sequence_length", HeadDim);
                n.Output(v, $"present.{l}.value", "batch_size", kvHeads, "total_sequence_length", HeadDim);
            }
            var rep = Heads / kvHeads;
            string attn;
            if (attentionMaskForOp is not null)
            {
                // RotaryEmbedding (opset 23) on the positions 0..S-1, 4-D heads in layer 0, 3-D projections in layer 1
                var positions = n.Op("Expand", n.Unsqueeze(n.Op("Range", n.G.AddInitializer(Tensors.FromInt64(n.G.Unique("zero"), [], [0])),
                    n.Squeeze0(n.Slice(n.Op("Shape", "input_ids"), 1, 2, 0)), n.G.AddInitializer(Tensors.FromInt64(n.G.Unique("one"), [], [1]))), 0),
                    n.Op("Shape", "input_ids"));
                var angles = Enumerable.Range(0, 64 * (int)HeadDim / 2).Select(i => (i / (int)(HeadDim / 2)) * MathF.Pow(100f, -(i % (HeadDim / 2)) / (float)(HeadDim / 2))).ToArray();
                var cos = n.G.AddInitializer(Tensors.FromFloats(n.G.Unique("cos_cache"), [64, HeadDim / 2], angles.Select(MathF.Cos).ToArray()));
                var sin = n.G.AddInitializer(Tensors.FromFloats(n.G.Unique("sin_cache"), [64, HeadDim / 2], angles.Select(MathF.Sin).ToArray()));
                if (l == 0) (q, k) = (n.Op("RotaryEmbedding", q, cos, sin, positions), n.Op("RotaryEmbedding", k, cos, sin, positions));
                else (qProj, kProj) = (n.Op("RotaryEmbedding", [qProj, cos, sin, positions], ("num_heads", Heads), ("interleaved", 1L)),
                    n.Op("RotaryEmbedding", [kProj, cos, sin, positions], ("num_heads", kvHeads), ("interleaved", 1L)));
            }
            if (attentionMaskForOp is { } am && l == 0)
            {
                var y = n.Op("Attention", [q, k, v], ("is_causal", 1L));
                attn = n.Op("Reshape", n.Op("Transpose", [y], ("perm", new long[] { 0, 2, 1, 3 })), n.I(0, 0, Heads * HeadDim));
            }
            else if (attentionMaskForOp is not null)
                attn = n.Op("Attention", [qProj, kProj, vProj, mask], ("q_num_heads", Heads), ("kv_num_heads", kvHeads), ("scale", 1f / MathF.Sqrt(HeadDim)));
            else
                attn = n.Attention(q, n.RepeatKv(k, kvHeads, rep, HeadDim), n.RepeatKv(v, kvHeads, rep, HeadDim), mask, Heads, HeadDim);
            x = n.Op("Add", x, n.Linear(attn, p + ".self_attn.o_proj", Hidden, Hidden, style));
            var m = n.RmsNorm(x, n.Prefix + p + ".post_attention_layernorm.weight", Hidden);
            var gate = n.Linear(m, p + ".mlp.gate_proj", Hidden, Ffn, style);
            var up = n.Linear(m, p + ".mlp.up_proj", Hidden, Ffn, style);
            x = n.Op("Add", x, n.Linear(n.Op("Mul", n.Silu(gate), up), p + ".mlp.down_proj", Ffn, Hidden, style));
        }
        return x;
    }

    static void Head(Net n, string x, string module, LinearStyle style, long vocab = Vocab)
    {
        var logits = n.Linear(x, module, Hidden, vocab, style);
        n.G.Add("Identity", [logits], outputs: ["logits"]);
        // Optimum lists logits first; present.N outputs (if any) were added before, so move logits to the front.
        n.Proto.Graph.Output.Insert(0, Net.Value("logits", n.ComputeType, "batch_size", "sequence_length", vocab));
    }
}
