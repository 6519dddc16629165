using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests.Unseen;

/// <summary>How an exporter writes a linear layer's weight: dynamo keeps nn.Linear's [out, in] weight under its module
/// name behind a Transpose; TorchScript stores it pre-transposed as onnx::MatMul_N and puts the module path in the
/// node name; Gemm reads [out, in] with transB=1 on a 2-D input (BERT/OPT exports reshape or flatten to 2-D first).</summary>
public enum LinearStyle { Dynamo, TorchScript, Gemm, GemmFlatten }

/// <summary>A small exported-looking transformer under construction: input_ids/attention_mask inputs, random weights,
/// and the building blocks real exports use, written with each opset's conventions (axes as attribute or input).</summary>
public sealed class Net
{
    public GraphEditor G { get; }
    public ModelProto Proto { get; }
    public int Opset { get; }
    public string Prefix { get; init; } = "";
    /// <summary>Weights stored in this type and Cast to float32 before use (fp16 checkpoints exported as-is).</summary>
    public int WeightType { get; init; } = (int)DT.Float;
    /// <summary>The type activations are computed in (fp16 for an export of a half-precision model).</summary>
    public int ComputeType { get; init; } = (int)DT.Float;
    /// <summary>Linear weights stored quantized and read through DequantizeLinear, named as ONNX Runtime's weight-only
    /// quantizers name them (WEIGHT_quantized with int8, WEIGHT_DQ_Q4 with 4 bits).</summary>
    public Quantization? Quantize { get; init; }
    readonly Random _rng;
    int _torchScriptId = 100;

    public Net(int opset, int seed = 1)
    {
        Opset = opset;
        _rng = new Random(seed);
        Proto = new ModelProto { IrVersion = opset >= 23 ? 11 : opset >= 21 ? 10 : opset >= 19 ? 9 : 8, ProducerName = "unseen-tests", Graph = new GraphProto { Name = "main_graph" } };
        Proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        G = new GraphEditor(Proto.Graph);
    }

    public OnnxModel Model() => new(Proto.Clone());

    public static ValueInfoProto Value(string name, int type, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is string p ? new TensorShapeProto.Types.Dimension { DimParam = p } : new TensorShapeProto.Types.Dimension { DimValue = Convert.ToInt64(d) });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = type, Shape = shape } } };
    }

    public void Input(string name, int type, params object[] dims) => Proto.Graph.Input.Add(Value(name, type, dims));
    public void Output(string value, string name, params object[] dims)
    {
        G.Add("Identity", [value], outputs: [name]);
        Proto.Graph.Output.Add(Value(name, ComputeType, dims));
    }

    public float[] Random(long n, double scale) => Enumerable.Range(0, (int)n).Select(_ => (float)((_rng.NextDouble() * 2 - 1) * scale)).ToArray();

    /// <summary>A float32 parameter read by the graph (Cast from <see cref="WeightType"/> when that differs).</summary>
    public string Param(string name, long[] dims, float[] values)
    {
        G.AddInitializer(Tensors.FromFloats(name, dims, values, WeightType));
        return WeightType == ComputeType ? name : G.Add("Cast", [name], attributes: ("to", ComputeType));
    }

    public string Ones(string name, long n) => Param(name, [n], Enumerable.Repeat(1f, (int)n).ToArray());
    public string Zeros(string name, long n) => Param(name, [n], new float[n]);
    public string F(params float[] v) => G.AddInitializer(Tensors.FromFloats(G.Unique("c"), v.Length == 1 ? [] : [v.Length], v, ComputeType));
    public string I(params long[] v) => G.AddInitializer(Tensors.FromInt64(G.Unique("i"), [v.Length], v));

    public string Op(string op, params string[] inputs) => G.Add(op, inputs);
    public string Op(string op, string[] inputs, params (string, object)[] attrs) => G.Add(op, inputs, attributes: attrs);

    public string Unsqueeze(string x, params long[] axes) =>
        Opset >= 13 ? Op("Unsqueeze", x, I(axes)) : Op("Unsqueeze", [x], ("axes", axes));

    public string Squeeze0(string x) => Opset >= 13 ? Op("Squeeze", x, I(0)) : Op("Squeeze", [x], ("axes", new long[] { 0 }));

    public string ReduceMeanLast(string x) =>
        Opset >= 18 ? Op("ReduceMean", [x, I(-1)], ("keepdims", 1L)) : Op("ReduceMean", [x], ("axes", new long[] { -1 }), ("keepdims", 1L));

    public string[] Split(string x, long axis, params long[] sizes)
    {
        var outs = sizes.Select(_ => G.Unique("split")).ToArray();
        if (Opset < 13) G.Add("Split", [x], outputs: outs, attributes: [("axis", axis), ("split", sizes)]);
        else if (Opset >= 18 && sizes.Distinct().Count() == 1) G.Add("Split", [x], outputs: outs, attributes: [("axis", axis), ("num_outputs", (long)sizes.Length)]);
        else G.Add("Split", [x, I(sizes)], outputs: outs, attributes: ("axis", axis));
        return outs;
    }

    public string Slice(string x, long start, long end, long axis = -1) => Op("Slice", x, I(start), I(end), I(axis));

    /// <summary>A linear layer y = x·Wᵀ (+ b) on [B, S, in] written in one exporter's way; <paramref name="module"/> is
    /// the PEFT module path (without the wrapper prefix).</summary>
    public string Linear(string x, string module, long inDim, long outDim, LinearStyle style, bool bias = false)
    {
        var w = Random(outDim * inDim, 1.0 / Math.Sqrt(inDim));
        var full = Prefix + module;
        string? b = bias ? Param(full + ".bias", [outDim], Random(outDim, 0.1)) : null;
        string y;
        switch (style)
        {
            case LinearStyle.Dynamo:
                y = G.Add("MatMul", [x, Op("Transpose", [Weight(full + ".weight", [outDim, inDim], w, outAxis: 0)], ("perm", new long[] { 1, 0 }))]);
                break;
            case LinearStyle.TorchScript:
                var transposed = new float[w.Length];
                for (int o = 0; o < outDim; o++) for (int i = 0; i < inDim; i++) transposed[i * outDim + o] = w[o * inDim + i];
                y = G.Add("MatMul", [x, Weight($"onnx::MatMul_{_torchScriptId++}", [inDim, outDim], transposed, outAxis: 1)],
                    name: "/" + full.Replace('.', '/').Replace("/layers/", "/layers.") + "/MatMul");
                break;
            default:
                var flat = style == LinearStyle.Gemm ? Op("Reshape", x, I(-1, inDim)) : Op("Flatten", [x], ("axis", 2L));
                var inputs = b is null ? new[] { flat, Param(full + ".weight", [outDim, inDim], w) } : [flat, Param(full + ".weight", [outDim, inDim], w), b];
                var y2 = G.Add("Gemm", inputs, name: "/" + full.Replace('.', '/') + "/Gemm", attributes: ("transB", 1L));
                var batchSeq = Op("Slice", Op("Shape", x), I(0), I(2), I(0));
                return Op("Reshape", y2, Op("Concat", [batchSeq, I(outDim)], ("axis", 0L)));
        }
        return b is null ? y : Op("Add", y, b);
    }

    /// <summary>A linear layer's 2-D weight: a parameter, or with <see cref="Quantize"/> integers and their scales (and
    /// zero points) read through DequantizeLinear. int8: symmetric per output channel (zero point 0); uint4: blocks of
    /// <see cref="Quantization.BlockSize"/> along the input axis, zero point 8.</summary>
    string Weight(string name, long[] dims, float[] w, int outAxis)
    {
        if (Quantize is not { } qz) return Param(name, dims, w);
        bool int4 = qz.Type == (int)DT.Uint4;
        int axis = int4 ? 1 - outAxis : outAxis;
        long block = int4 ? qz.BlockSize : 0;
        var scaleDims = int4 ? dims.Select((d, i) => i == axis ? (d + block - 1) / block : d).ToArray() : [dims[axis]];
        long ScaleIndex(long r, long c)
        {
            long along = axis == 0 ? r : c;
            if (!int4) return along;
            return axis == 0 ? along / block * dims[1] + c : r * scaleDims[1] + along / block;
        }
        var scales = new float[Tensors.ElementCount(scaleDims)];
        for (long r = 0; r < dims[0]; r++)
            for (long c = 0; c < dims[1]; c++)
            {
                long s = ScaleIndex(r, c);
                scales[s] = Math.Max(scales[s], Math.Abs(w[r * dims[1] + c]) / (int4 ? 7f : 127f));
            }
        var q = new int[w.Length];
        for (long r = 0; r < dims[0]; r++)
            for (long c = 0; c < dims[1]; c++)
            {
                long i = r * dims[1] + c;
                q[i] = (int)Math.Round(w[i] / scales[ScaleIndex(r, c)]) + (int4 ? 8 : 0);
            }
        var zeros = Enumerable.Repeat(int4 ? 8 : 0, scales.Length).ToArray();
        var quantized = G.AddInitializer(Integers(name + (int4 ? "_DQ_Q4" : "_quantized"), dims, q, qz.Type));
        var scale = G.AddInitializer(Tensors.FromFloats(name + (int4 ? "_DQ_scales" : "_scale"), scaleDims, scales));
        var zero = G.AddInitializer(Integers(name + (int4 ? "_DQ_zero_points" : "_zero_point"), scaleDims, zeros, qz.Type));
        return int4 ? Op("DequantizeLinear", [quantized, scale, zero], ("axis", (long)axis), ("block_size", block))
            : Op("DequantizeLinear", [quantized, scale, zero], ("axis", (long)axis));
    }

    static TensorProto Integers(string name, long[] dims, int[] values, int type)
    {
        var t = new TensorProto { Name = name, DataType = type };
        t.Dims.AddRange(dims);
        var bytes = type == (int)DT.Uint4 ? new byte[(values.Length + 1) / 2] : new byte[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            if (type == (int)DT.Uint4) bytes[i / 2] |= (byte)((values[i] & 0xF) << (4 * (i % 2)));
            else bytes[i] = (byte)(sbyte)values[i];
        }
        t.RawData = Google.Protobuf.ByteString.CopyFrom(bytes);
        return t;
    }

    public string RmsNorm(string x, string weightName, long dim)
    {
        var w = Param(weightName, [dim], Random(dim, 0.2).Select(v => 1 + v).ToArray());
        if (Opset >= 23) return Op("RMSNormalization", [x, w], ("axis", -1L), ("epsilon", 1e-6f));
        var variance = ReduceMeanLast(Op("Pow", x, F(2f)));
        return Op("Mul", w, Op("Mul", x, Op("Reciprocal", Op("Sqrt", Op("Add", variance, F(1e-6f))))));
    }

    public string LayerNorm(string x, string name, long dim) =>
        Op("LayerNormalization", [x, Param(name + ".weight", [dim], Random(dim, 0.2).Select(v => 1 + v).ToArray()),
            Param(name + ".bias", [dim], Random(dim, 0.1))], ("axis", -1L), ("epsilon", 1e-5f));

    public string Silu(string x) => Op("Mul", x, Op("Sigmoid", x));

    /// <summary>GELU as the erf formula 0.5·x·(1 + erf(x/√2)) that exporters emit before opset 20.</summary>
    public string GeluErf(string x) => Op("Mul", Op("Mul", x, F(0.5f)), Op("Add", F(1f), Op("Erf", Op("Div", x, F(MathF.Sqrt(2f))))));

    public string Embedding(string ids, string weightName, long vocab, long dim) =>
        Op("Gather", Param(weightName, [vocab, dim], Random(vocab * dim, 1.0)), ids);

    /// <summary>[B, S, heads·dim] → [B, heads, S, dim].</summary>
    public string Heads(string x, long heads, long dim) =>
        Op("Transpose", [Op("Reshape", x, I(0, 0, heads, dim))], ("perm", new long[] { 0, 2, 1, 3 }));

    /// <summary>Grouped-query heads: [B, kv, S, dim] repeated to [B, kv·rep, S, dim] by Unsqueeze/Expand/Reshape.</summary>
    public string RepeatKv(string x, long kvHeads, long rep, long dim) => rep == 1 ? x
        : Op("Reshape", Op("Expand", Unsqueeze(x, 2), I(1, 1, rep, 1, 1)), I(0, kvHeads * rep, -1, dim));

    /// <summary>The additive mask [B, 1, S, T]: -1e4 where key t is later than query s (offset by the past length
    /// <paramref name="pastLength"/>, a 1-D int64 value) or padding in attention_mask [B, T].</summary>
    public string Mask(string inputIds, string attentionMask, string? pastLength)
    {
        var seq = Squeeze0(Op("Slice", Op("Shape", inputIds), I(1), I(2), I(0)));
        var total = Squeeze0(Op("Slice", Op("Shape", attentionMask), I(1), I(2), I(0)));
        var one = G.AddInitializer(Tensors.FromInt64(G.Unique("one"), [], [1]));
        var zero = G.AddInitializer(Tensors.FromInt64(G.Unique("zero"), [], [0]));
        var rows = Op("Range", zero, seq, one);
        if (pastLength is not null) rows = Op("Add", rows, Squeeze0(pastLength));
        var cols = Op("Range", zero, total, one);
        var future = Op("Greater", Unsqueeze(cols, 0), Unsqueeze(rows, 1));
        var causal = Op("Where", future, F(-1e4f), F(0f));
        var padding = Op("Mul", Op("Sub", F(1f), Op("Cast", [attentionMask], ("to", ComputeType))), F(-1e4f));
        return Op("Add", causal, Unsqueeze(padding, 1, 2));
    }

    /// <summary>Scaled dot-product attention over [B, H, S, D] heads, back to [B, S, H·D].</summary>
    public string Attention(string q, string k, string v, string mask, long heads, long dim)
    {
        var scores = Op("Add", Op("Mul", Op("MatMul", q, Op("Transpose", [k], ("perm", new long[] { 0, 1, 3, 2 }))), F(1f / MathF.Sqrt(dim))), mask);
        var context = Op("MatMul", Op("Softmax", [scores], ("axis", -1L)), v);
        return Op("Reshape", Op("Transpose", [context], ("perm", new long[] { 0, 2, 1, 3 })), I(0, 0, heads * dim));
    }
}

/// <summary>How <see cref="Net"/> stores linear weights quantized: int8 per channel, or uint4 in blocks.</summary>
public sealed record Quantization(int Type, long BlockSize = 0);
