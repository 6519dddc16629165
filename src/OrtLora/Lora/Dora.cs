using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>DoRA (weight-decomposed LoRA; PEFT's use_dora): the adapted weight is W' = m ⊙ V / ‖V‖ with V = W + scale·B·A,
/// the norm taken per output feature and m [out] a trainable magnitude that starts at ‖W‖, so the injected model computes
/// the original. As PEFT computes it: y = x·W + (s − 1)·(x·W) + s·scale·(x·Aᵀ)·Bᵀ with s = m / ‖V‖, i.e. y = s·(x·W +
/// scale·(x·Aᵀ)·Bᵀ); training treats ‖V‖ as a constant (the paper's §4.3; PEFT detaches it), and merge folds
/// W ← s ⊙ (W + scale·B·A). An embedding is the linear layer onehot(ids)·W with its table W [vocabulary, hidden] stored
/// [in, out], so the same nodes give PEFT's DoraEmbeddingLayer: the norm runs over the table's columns.</summary>
public static class Dora
{
    public delegate string AddNode(string op, string name, string[] inputs, params (string, object)[] attributes);

    /// <summary>What ortlora's DoRA does not cover, each one error naming the module.</summary>
    public static void RequireSupported(OnnxModel model, LinearLayer layer, string path, LoraConfig config, int parts)
    {
        string Refuse(string why) => throw new OrtLoraException($"{model.Source}: DoRA on '{path}': {why}");
        if (parts > 1) Refuse("DoRA normalizes the whole fused weight, so it takes one adapter per layer (--variant performant)");
        if (GemmBias(layer) is not null && Attrs.Float(layer.Node, "beta", 1f) != 1f)
            Refuse($"the layer is a Gemm with beta {Attrs.Float(layer.Node, "beta", 1f)}");
        if (layer.GemmAlpha != 1) Refuse($"the layer is a Gemm with alpha {layer.GemmAlpha}");
    }

    /// <summary>The bias C of a Gemm layer (inside the base output, which DoRA scales without it), or null.</summary>
    static string? GemmBias(LinearLayer layer) =>
        layer.Node.OpType == "Gemm" && layer.Node.Input.Count > 2 && layer.Node.Input[2] != "" ? layer.Node.Input[2] : null;

    /// <summary>With lora_dropout, PEFT's DoRA term reads the base layer applied to the dropped-out input:
    /// y = x·W + (s − 1)·(x_d·W) + s·scale·(x_d·Aᵀ)·Bᵀ. For each DoRA adapter this adds a copy of the base layer on
    /// <paramref name="dropout"/>(adapter)'s output (the dropout of the LoRA branch's input, cast to the layer's input type)
    /// and points the DoRA nodes at it instead of at the layer's own output. Types come from a probe of the graph before
    /// the dropout (a dropout's output has its input's type).</summary>
    public static void UseDroppedInput(GraphEditor g, LoraModel lora, Func<LoraAdapter, (string Output, string Input)?> dropout, Autodiff.ValueTable types)
    {
        foreach (var adapter in lora.Adapters.Where(a => a.WeightNorm is not null))
        {
            if (dropout(adapter) is not var (dropped, droppedFrom)) continue;
            var names = adapter.Nodes.Where(n => n.Contains("/dora/")).ToHashSet();
            var doraNodes = g.Graph.Node.Where(n => names.Contains(n.Name)).ToList();
            var first = doraNodes.FirstOrDefault(n => n.Name.EndsWith("/dora/base_without_bias")) ?? doraNodes.Single(n => n.Name.EndsWith("/dora/base_plus_lora"));
            var baseInDora = first.Input[0];
            var layer = g.Producer(adapter.BaseOutput) ?? throw new OrtLoraException($"DoRA on '{adapter.Module}': its base layer is missing");
            var x = types.ElemType(layer.Input[0]) == types.ElemType(droppedFrom) ? dropped
                : g.Add("Cast", [dropped], name: $"{adapter.Module}/lora/dropout_base/Cast_x", attributes: ("to", (long)types.ElemType(layer.Input[0])));
            var copy = g.AddRenamedCopy(layer, new Dictionary<string, string> { [layer.Input[0]] = x }, "/dropout_base");
            var recomputed = types.ElemType(baseInDora) == types.ElemType(adapter.BaseOutput) ? copy.Output[0]
                : g.Add("Cast", [copy.Output[0]], name: $"{adapter.Module}/lora/dropout_base/Cast_y", attributes: ("to", (long)types.ElemType(baseInDora)));
            foreach (var n in doraNodes)
                for (int i = 0; i < n.Input.Count; i++) if (n.Input[i] == baseInDora) n.Input[i] = recomputed;
        }
    }

    /// <summary>m = ‖W‖ per output feature (B starts at zero) and ‖W‖², after checking the layer is supported.</summary>
    public static (float[] Magnitude, float[] WeightNormSquared) InitialMagnitude(OnnxModel model, GraphEditor g, LinearLayer layer, string path,
        LoraConfig config, int parts)
    {
        RequireSupported(model, layer, path, config, parts);
        var squares = WeightNormSquared(model, g, layer);
        return (squares.Select(s => (float)Math.Sqrt(s)).ToArray(), squares);
    }

    /// <summary>‖W[o, :]‖ for each output feature o of a weight stored [out, in] or [in, out], summed in double.</summary>
    public static float[] OutputNorms(ReadOnlySpan<float> weight, WeightLayout layout, long inDim, long outDim) =>
        OutputSquares(weight, layout, inDim, outDim).Select(s => (float)Math.Sqrt(s)).ToArray();

    /// <summary>‖W[o, :]‖² for each output feature o, in double.</summary>
    public static double[] OutputSquares(ReadOnlySpan<float> weight, WeightLayout layout, long inDim, long outDim)
    {
        var sums = new double[outDim];
        for (long i = 0; i < inDim * outDim; i++)
        {
            long o = layout == WeightLayout.OutIn ? i / inDim : i % outDim;
            sums[o] += (double)weight[(int)i] * weight[(int)i];
        }
        return sums;
    }

    /// <summary>‖W[o, :]‖² of a layer's frozen weight, which the graph's norm starts from.</summary>
    public static float[] WeightNormSquared(OnnxModel model, GraphEditor g, LinearLayer layer)
    {
        var weight = g.Initializer(layer.Weight) ?? throw new OrtLoraException($"{model.Source}: weight '{layer.Weight}' is missing");
        var values = layer.Dequantize is { } dq ? Onnx.Dequantize.Run(model, g, dq) : model.ReadFloats(weight);
        return OutputSquares(values, layer.Layout, layer.In, layer.Out).Select(v => (float)v).ToArray();
    }

    /// <summary>Scales each output feature of a merged weight V = W + scale·B·A to m ⊙ V / ‖V‖, in V's layout.</summary>
    public static void ScaleToMagnitude(Span<float> weight, WeightLayout layout, long inDim, long outDim, float[] magnitude)
    {
        var norms = OutputNorms(weight, layout, inDim, outDim);
        for (long i = 0; i < inDim * outDim; i++)
        {
            long o = layout == WeightLayout.OutIn ? i / inDim : i % outDim;
            weight[(int)i] *= magnitude[o] / norms[o];
        }
    }

    /// <summary>Adds DoRA's nodes to a layer's LoRA branch. <paramref name="baseOutput"/> is the layer's output in
    /// float32 (x·W, plus C for a Gemm with a bias), <paramref name="scaledLora"/> scale·(x·Aᵀ)·Bᵀ; returns what the branch
    /// adds to the layer's output, (s − 1)·x·W + s·scaled (PEFT takes the bias out of the base result first), and the
    /// name of ‖V‖.
    /// <para>‖V_o‖² is expanded as ‖W_o‖² + 2·scale·⟨W_o, (B·A)_o⟩ + scale²·‖(B·A)_o‖², with ⟨W_o, (B·A)_o⟩ = Σ_k B_ok·(W·Aᵀ)_ok
    /// and ‖(B·A)_o‖² = Σ_k B_ok·(B·A·Aᵀ)_ok: every intermediate is [out, r] or [r, r], where forming V would make
    /// weight-sized tensors each step. ‖W_o‖² is <paramref name="weightNormSquared"/>, computed once at inject (W is
    /// frozen).</para></summary>
    public static (string Added, string WeightNorm) Emit(GraphEditor g, LinearLayer layer, int opset, string a, string b, string scale,
        string magnitude, string weightNormSquared, string baseOutput, string scaledLora, AddNode node)
    {
        // W as the layer reads it (through the export's Transpose or Cast, if any): reading the initializer itself would
        // keep SharedInitializers from storing a Transpose-only weight transposed. Gemm with transB reads [out, in],
        // everything else [in, out] (an embedding's table [vocabulary, hidden] too).
        var read = layer.Node.Input[layer.WeightInput];
        bool outIn = layer.Node.OpType == "Gemm" && Attrs.Int(layer.Node, "transB", 0) != 0;
        var readType = g.Initializer(read)?.DataType ?? layer.DataType;
        var w = readType == (int)DT.Float ? read : node("Cast", "Cast_W", [read], ("to", (int)DT.Float));
        var aT = node("Transpose", "A_T", [a], ("perm", new long[] { 1, 0 }));
        // W·Aᵀ [out, r]: [out, in]·[in, r], or (A·W)ᵀ for W read [in, out].
        var wa = outIn ? node("MatMul", "W_At", [w, aT])
            : node("Transpose", "W_At", [node("MatMul", "A_W", [a, w])], ("perm", new long[] { 1, 0 }));
        var rowAxes = opset >= 13 ? g.AddInitializer(Tensors.FromInt64(g.Unique($"{magnitude}.row_axes"), [1], [1])) : null;
        string RowSum(string name, string x) => rowAxes is not null
            ? node("ReduceSum", name, [x, rowAxes], ("keepdims", 0L))
            : node("ReduceSum", name, [x], ("axes", new long[] { 1 }), ("keepdims", 0L));
        var cross = RowSum("cross", node("Mul", "B_W_At", [b, wa]));
        var quadratic = RowSum("quadratic", node("Mul", "B_A_At_B", [node("MatMul", "B_A_At", [b, node("MatMul", "A_At", [a, aT])]), b]));
        var inner = node("Add", "inner", [node("Add", "two_cross", [cross, cross]), node("Mul", "scaled_quadratic", [quadratic, scale])]);
        var norm = node("Sqrt", "norm", [node("Add", "norm_squared", [weightNormSquared, node("Mul", "scaled_inner", [inner, scale])])]);
        var s = node("Div", "mag_norm_scale", [magnitude, norm]);
        if (GemmBias(layer) is { } bias)
        {
            var biasType = g.Initializer(bias)?.DataType ?? layer.DataType;
            var biasF = biasType == (int)DT.Float ? bias : node("Cast", "Cast_bias", [bias], ("to", (int)DT.Float));
            baseOutput = node("Sub", "base_without_bias", [baseOutput, biasF]);
        }
        var added = node("Sub", "added", [node("Mul", "scaled", [s, node("Add", "base_plus_lora", [baseOutput, scaledLora])]), baseOutput]);
        return (added, norm);
    }
}
