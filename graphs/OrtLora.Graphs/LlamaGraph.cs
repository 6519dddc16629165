using System.Text.Json;
using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Graphs;

/// <summary>Options of <see cref="LlamaGraph.Build"/>.</summary>
/// <param name="WithKvCache">Adds inputs <c>past_key_values.{i}.key/.value</c> [batch, kv_heads, past, head_dim] and
/// outputs <c>present.{i}.key/.value</c> (Optimum's names); positions start at the past length.</param>
/// <param name="WithPositionIds">Adds input <c>position_ids</c> int64 [batch, seq] (Optimum's name) for rotary
/// positions, e.g. cumsum(attention_mask) − 1 as generate computes them; without it positions are past .. past+seq−1
/// (rotary attention only sees position differences, so left padding is invisible either way).</param>
/// <param name="LazyWeights">Weights are computed when the model is saved or serialized, one tensor at a time
/// (for models too big to hold twice in memory).</param>
public sealed record LlamaOptions(bool WithKvCache = false, bool LazyWeights = false, bool WithPositionIds = false);

/// <summary>Builds a LLaMA-style causal LM as an opset-18 ONNX graph of standard ops, laid out like PyTorch's dynamo
/// export of Hugging Face's LlamaForCausalLM: parameters keep Hugging Face's names, linear weights are stored
/// [out, in] and reach MatMul through a Transpose. Inputs <c>input_ids</c>, <c>attention_mask</c> (int64
/// [batch, seq]); output <c>logits</c> [batch, seq, vocab].</summary>
public sealed class LlamaGraph
{
    public const int Opset = 18;
    public const string ShapeMetadataKey = "ortlora.llama_shape";

    readonly LlamaShape _shape;
    readonly int _seed;
    readonly LlamaOptions _options;
    readonly OnnxModel _model;
    readonly GraphBuilder _b;

    LlamaGraph(LlamaShape shape, int seed, LlamaOptions options)
    {
        _shape = shape;
        _seed = seed;
        _options = options;
        var proto = new ModelProto
        {
            IrVersion = 8,
            ProducerName = "ortlora-graphs",
            ProducerVersion = "1",
            Graph = new GraphProto { Name = "main_graph" },
        };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        proto.MetadataProps.Add(new StringStringEntryProto { Key = ShapeMetadataKey, Value = JsonSerializer.Serialize(shape) });
        _model = new OnnxModel(proto);
        _b = new GraphBuilder(new GraphEditor(proto.Graph));
    }

    public static OnnxModel Build(LlamaShape shape, int seed, LlamaOptions? options = null)
    {
        if (shape.HiddenSize % shape.NumAttentionHeads != 0 || shape.NumAttentionHeads % shape.NumKeyValueHeads != 0 || shape.HeadDim % 2 != 0)
            throw new OrtLoraException($"shape '{shape.Name}': hidden size, heads and kv heads do not divide evenly");
        var builder = new LlamaGraph(shape, seed, options ?? new LlamaOptions());
        builder.BuildGraph();
        return builder._model;
    }

    GraphProto Graph => _model.Graph;

    void BuildGraph()
    {
        DeclareInputsAndOutputs();
        var positions = Positions(out var totalLength);
        var (cos, sin) = Rotary(_options.WithPositionIds ? "position_ids" : positions);
        var mask = AttentionBias(positions, totalLength);

        var embed = Parameter("model.embed_tokens.weight", [_shape.VocabSize, _shape.HiddenSize]);
        var hidden = _b.Op("/model/embed_tokens", "Gather", [embed, "input_ids"], ("axis", 0));
        for (int i = 0; i < _shape.NumHiddenLayers; i++)
            hidden = DecoderLayer(i, hidden, cos, sin, mask);
        hidden = RmsNorm("/model/norm", hidden, "model.norm.weight");

        var lmHead = _shape.TieWordEmbeddings ? embed : Parameter("lm_head.weight", [_shape.VocabSize, _shape.HiddenSize]);
        var lmHeadT = _b.Op("/lm_head", "Transpose", [lmHead], ("perm", new long[] { 1, 0 }));
        _b.OpTo("logits", "/lm_head", "MatMul", [hidden, lmHeadT]);
    }

    string TotalLengthDim => _options.WithKvCache ? "past_sequence_length + sequence_length" : "sequence_length";

    /// <summary>In Optimum's order: input_ids, attention_mask, [position_ids], past_key_values.*; logits, present.*.</summary>
    void DeclareInputsAndOutputs()
    {
        Graph.Input.Add(GraphBuilder.Value("input_ids", DT.Int64, "batch_size", "sequence_length"));
        Graph.Input.Add(GraphBuilder.Value("attention_mask", DT.Int64, "batch_size", TotalLengthDim));
        if (_options.WithPositionIds) Graph.Input.Add(GraphBuilder.Value("position_ids", DT.Int64, "batch_size", "sequence_length"));
        Graph.Output.Add(GraphBuilder.Value("logits", DT.Float, "batch_size", "sequence_length", _shape.VocabSize));
        if (!_options.WithKvCache) return;
        for (int i = 0; i < _shape.NumHiddenLayers; i++)
            foreach (var kind in new[] { "key", "value" })
            {
                Graph.Input.Add(GraphBuilder.Value($"past_key_values.{i}.{kind}", DT.Float,
                    "batch_size", _shape.NumKeyValueHeads, "past_sequence_length", _shape.HeadDim));
                Graph.Output.Add(GraphBuilder.Value($"present.{i}.{kind}", DT.Float,
                    "batch_size", _shape.NumKeyValueHeads, TotalLengthDim, _shape.HeadDim));
            }
    }

    /// <summary>Positions of the new tokens, past_length .. past_length + seq - 1, as Hugging Face's cache_position.</summary>
    string Positions(out string totalLength)
    {
        const string scope = "/model";
        var idsShape = _b.Op(scope, "Shape", ["input_ids"]);
        var seqLength = _b.Op(scope, "Gather", [idsShape, _b.Int64Scalar(1)], ("axis", 0));
        var pastLength = _b.Int64Scalar(0);
        if (_options.WithKvCache)
        {
            var pastShape = _b.Op(scope, "Shape", ["past_key_values.0.key"]);
            pastLength = _b.Op(scope, "Gather", [pastShape, _b.Int64Scalar(2)], ("axis", 0));
        }
        totalLength = _options.WithKvCache ? _b.Op(scope, "Add", [pastLength, seqLength]) : seqLength;
        return _b.Op(scope, "Range", [pastLength, totalLength, _b.Int64Scalar(1)]);
    }

    /// <summary>cos and sin of position × inverse frequency, both halves repeated (Hugging Face's layout): [seq, head_dim]
    /// from shared positions, [batch, 1, seq, head_dim] from position_ids; either broadcasts against [batch, heads, seq, head_dim].</summary>
    (string Cos, string Sin) Rotary(string positions)
    {
        const string scope = "/model/rotary_emb";
        int half = _shape.HeadDim / 2;
        var invFreq = new float[half];
        for (int i = 0; i < half; i++)
            invFreq[i] = (float)(1.0 / Math.Pow(_shape.RopeTheta, 2.0 * i / _shape.HeadDim));
        var positionsF = _b.Op(scope, "Cast", [positions], ("to", (int)DT.Float));
        var column = _b.Op(scope, "Unsqueeze", [positionsF, _b.Int64s(-1)]);
        var freqs = _b.Op(scope, "Mul", [column, _b.Floats("inv_freq", invFreq)]);
        var emb = _b.Op(scope, "Concat", [freqs, freqs], ("axis", -1));
        if (_options.WithPositionIds) emb = _b.Op(scope, "Unsqueeze", [emb, _b.Int64s(1)]);
        return (_b.Op(scope, "Cos", [emb]), _b.Op(scope, "Sin", [emb]));
    }

    /// <summary>Additive attention bias [batch, 1, seq, total]: 0 where a query may see a key (causal and not padding),
    /// the lowest float elsewhere, as Hugging Face builds it (a fully masked row stays finite).</summary>
    string AttentionBias(string positions, string totalLength)
    {
        const string scope = "/model/mask";
        var keyPositions = _b.Op(scope, "Range", [_b.Int64Scalar(0), totalLength, _b.Int64Scalar(1)]);
        var keyRow = _b.Op(scope, "Unsqueeze", [keyPositions, _b.Int64s(0)]);
        var queryColumn = _b.Op(scope, "Unsqueeze", [positions, _b.Int64s(1)]);
        var causal = _b.Op(scope, "LessOrEqual", [keyRow, queryColumn]);
        var notPadding = _b.Op(scope, "Cast", ["attention_mask"], ("to", (int)DT.Bool));
        var notPadding4d = _b.Op(scope, "Unsqueeze", [notPadding, _b.Int64s(1, 2)]);
        var allowed = _b.Op(scope, "And", [causal, notPadding4d]);
        return _b.Op(scope, "Where", [allowed, _b.FloatScalar(0f), _b.FloatScalar(float.MinValue)]);
    }

    string DecoderLayer(int i, string hidden, string cos, string sin, string mask)
    {
        var scope = $"/model/layers.{i}";
        var prefix = $"model.layers.{i}";
        var normed = RmsNorm($"{scope}/input_layernorm", hidden, $"{prefix}.input_layernorm.weight");
        var attention = Attention(i, normed, cos, sin, mask);
        hidden = _b.Op(scope, "Add", [hidden, attention]);
        normed = RmsNorm($"{scope}/post_attention_layernorm", hidden, $"{prefix}.post_attention_layernorm.weight");
        return _b.Op(scope, "Add", [hidden, Mlp(i, normed)]);
    }

    string Attention(int layer, string x, string cos, string sin, string mask)
    {
        var scope = $"/model/layers.{layer}/self_attn";
        var prefix = $"model.layers.{layer}.self_attn";
        int heads = _shape.NumAttentionHeads, kvHeads = _shape.NumKeyValueHeads, d = _shape.HeadDim;
        var q = Heads(scope, Linear($"{scope}/q_proj", x, $"{prefix}.q_proj.weight", _shape.HiddenSize, _shape.HiddenSize), heads);
        var k = Heads(scope, Linear($"{scope}/k_proj", x, $"{prefix}.k_proj.weight", _shape.KvDim, _shape.HiddenSize), kvHeads);
        var v = Heads(scope, Linear($"{scope}/v_proj", x, $"{prefix}.v_proj.weight", _shape.KvDim, _shape.HiddenSize), kvHeads);
        q = ApplyRotary(scope, q, cos, sin);
        k = ApplyRotary(scope, k, cos, sin);
        if (_options.WithKvCache)
        {
            k = _b.Editor.Add("Concat", [$"past_key_values.{layer}.key", k], _b.Editor.Unique($"{scope}/Concat"), [$"present.{layer}.key"], "", ("axis", 2));
            v = _b.Editor.Add("Concat", [$"past_key_values.{layer}.value", v], _b.Editor.Unique($"{scope}/Concat"), [$"present.{layer}.value"], "", ("axis", 2));
        }
        k = RepeatKv(scope, k);
        v = RepeatKv(scope, v);

        var kT = _b.Op(scope, "Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 }));
        var scores = _b.Op(scope, "MatMul", [q, kT]);
        scores = _b.Op(scope, "Mul", [scores, _b.FloatScalar((float)(1.0 / Math.Sqrt(d)))]);
        scores = _b.Op(scope, "Add", [scores, mask]);
        var probs = _b.Op(scope, "Softmax", [scores], ("axis", -1));
        var context = _b.Op(scope, "MatMul", [probs, v]);
        context = _b.Op(scope, "Transpose", [context], ("perm", new long[] { 0, 2, 1, 3 }));
        context = _b.Op(scope, "Reshape", [context, _b.Int64s(0, 0, heads * d)]);
        return Linear($"{scope}/o_proj", context, $"{prefix}.o_proj.weight", _shape.HiddenSize, heads * d);
    }

    /// <summary>[batch, seq, n·d] → [batch, n, seq, d].</summary>
    string Heads(string scope, string x, int n)
    {
        var split = _b.Op(scope, "Reshape", [x, _b.Int64s(0, 0, n, _shape.HeadDim)]);
        return _b.Op(scope, "Transpose", [split], ("perm", new long[] { 0, 2, 1, 3 }));
    }

    /// <summary>x·cos + rotate_half(x)·sin, where rotate_half(x) = concat(−x[..., d/2:], x[..., :d/2]).</summary>
    string ApplyRotary(string scope, string x, string cos, string sin)
    {
        int half = _shape.HeadDim / 2;
        var axis = _b.Int64s(-1);
        var first = _b.Op(scope, "Slice", [x, _b.Int64s(0), _b.Int64s(half), axis]);
        var second = _b.Op(scope, "Slice", [x, _b.Int64s(half), _b.Int64s(long.MaxValue), axis]);
        var rotated = _b.Op(scope, "Concat", [_b.Op(scope, "Neg", [second]), first], ("axis", -1));
        return _b.Op(scope, "Add", [_b.Op(scope, "Mul", [x, cos]), _b.Op(scope, "Mul", [rotated, sin])]);
    }

    /// <summary>Grouped-query attention: each kv head serves heads/kv_heads query heads, [b, kv, t, d] → [b, heads, t, d].</summary>
    string RepeatKv(string scope, string x)
    {
        int groups = _shape.NumAttentionHeads / _shape.NumKeyValueHeads;
        if (groups == 1) return x;
        var unsqueezed = _b.Op(scope, "Unsqueeze", [x, _b.Int64s(2)]);
        var expanded = _b.Op(scope, "Expand", [unsqueezed, _b.Int64s(1, 1, groups, 1, 1)]);
        return _b.Op(scope, "Reshape", [expanded, _b.Int64s(0, _shape.NumAttentionHeads, -1, _shape.HeadDim)]);
    }

    /// <summary>SwiGLU: down(silu(gate(x)) · up(x)).</summary>
    string Mlp(int layer, string x)
    {
        var scope = $"/model/layers.{layer}/mlp";
        var prefix = $"model.layers.{layer}.mlp";
        var gate = Linear($"{scope}/gate_proj", x, $"{prefix}.gate_proj.weight", _shape.IntermediateSize, _shape.HiddenSize);
        var silu = _b.Op($"{scope}/act_fn", "Mul", [gate, _b.Op($"{scope}/act_fn", "Sigmoid", [gate])]);
        var up = Linear($"{scope}/up_proj", x, $"{prefix}.up_proj.weight", _shape.IntermediateSize, _shape.HiddenSize);
        var product = _b.Op(scope, "Mul", [silu, up]);
        return Linear($"{scope}/down_proj", product, $"{prefix}.down_proj.weight", _shape.HiddenSize, _shape.IntermediateSize);
    }

    /// <summary>A bias-free nn.Linear: weight [out, in], x · weightᵀ.</summary>
    string Linear(string scope, string x, string weightName, int outFeatures, int inFeatures)
    {
        var weight = Parameter(weightName, [outFeatures, inFeatures]);
        var transposed = _b.Op(scope, "Transpose", [weight], ("perm", new long[] { 1, 0 }));
        return _b.Op(scope, "MatMul", [x, transposed]);
    }

    /// <summary>Hugging Face's LlamaRMSNorm: weight · x / sqrt(mean(x²) + eps).</summary>
    string RmsNorm(string scope, string x, string weightName)
    {
        var weight = Parameter(weightName, [_shape.HiddenSize]);
        var squared = _b.Op(scope, "Pow", [x, _b.FloatScalar(2f)]);
        var variance = _b.Op(scope, "ReduceMean", [squared, _b.Int64s(-1)], ("keepdims", 1));
        var withEps = _b.Op(scope, "Add", [variance, _b.FloatScalar(_shape.RmsNormEps)]);
        var inverse = _b.Op(scope, "Reciprocal", [_b.Op(scope, "Sqrt", [withEps])]);
        var normalized = _b.Op(scope, "Mul", [x, inverse]);
        return _b.Op(scope, "Mul", [weight, normalized]);
    }

    /// <summary>A float32 initializer: norms start at 1, the embedding ~N(0, embedding_std²), the rest
    /// ~N(0, initializer_range²).</summary>
    string Parameter(string name, long[] dims)
    {
        long count = Tensors.ElementCount(dims);
        bool isNorm = name.EndsWith("layernorm.weight") || name == "model.norm.weight";
        double std = name == "model.embed_tokens.weight" ? _shape.EmbeddingStd : _shape.InitializerRange;
        float[] Values() => isNorm ? Weights.Ones(count) : Weights.Normal(_seed, name, count, std);
        var tensor = new TensorProto { Name = name, DataType = (int)DT.Float };
        tensor.Dims.AddRange(dims);
        if (_options.LazyWeights) _model.Defer(name, _ => Weights.Bytes(Values()));
        else Tensors.SetRaw(tensor, Weights.Bytes(Values()));
        return _b.Editor.AddInitializer(tensor);
    }
}
