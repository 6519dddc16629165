namespace OrtLora.Autodiff;

/// <summary>Reductions, softmaxes and normalization layers.</summary>
public static partial class GradientRules
{
    static void AddNormalization(Dictionary<string, GradientRule> t)
    {
        t["ReduceSum"] = c => [ReduceBack(c, c.Opset >= 13, c.GO(0)!)];
        // divided before it is spread: the same numbers, computed on the reduced tensor
        t["ReduceMean"] = c => [ReduceBack(c, c.Opset >= 18, c.Div(c.GO(0)!, AveragedCount(c, c.Opset >= 18)))];
        t["Softmax"] = c =>
        {
            // dx = y ⊙ (dy − Σ dy⊙y)
            var y = c.O(0);
            var dot = c.ReduceSum(c.Mul(c.GO(0)!, y), SoftmaxAxes(c), keepdims: true);
            return [c.Mul(y, c.Sub(c.GO(0)!, dot))];
        };
        t["LogSoftmax"] = c =>
        {
            // dx = dy − softmax(x) ⊙ Σ dy
            var total = c.ReduceSum(c.GO(0)!, SoftmaxAxes(c), keepdims: true);
            return [c.Sub(c.GO(0)!, c.Mul(c.Op("Exp", [c.O(0)]), total))];
        };
        t["LayerNormalization"] = c => Normalization(c, centered: true);
        t["RMSNormalization"] = c => Normalization(c, centered: false);
        t["SimplifiedLayerNormalization"] = c => Normalization(c, centered: false);
    }

    /// <summary>Softmax axes: one axis from opset 13; before that the input was coerced to 2-D at the axis (default 1).</summary>
    static long[] SoftmaxAxes(GradContext c)
    {
        int rank = c.Rank(c.O(0));
        if (c.Opset >= 13) return GradContext.Normalize([c.Attr("axis", -1L)], rank);
        long axis = GradContext.Normalize([c.Attr("axis", 1L)], rank)[0];
        return Enumerable.Range((int)axis, rank - (int)axis).Select(i => (long)i).ToArray();
    }

    /// <summary>A gradient shaped like a reduction's output spread back over the reduced axes: the axes restored when
    /// keepdims=0, then expanded to the input's shape.</summary>
    static string ReduceBack(GradContext c, bool axesAsInput, string grad)
    {
        if (ReducedAxes(c, axesAsInput) is not { } axes) return grad;
        if (c.Attr("keepdims", 1L) == 0) grad = c.Unsqueeze(grad, axes.Order().ToArray());
        // Expand broadcasts: the shape needs only the reduced axes' extents, 1 where the gradient has the dim already. A
        // constant when the probes agree on those extents (no Shape node per step without static shapes either).
        var (a, b) = (c.Types[c.I(0)].ShapeA, c.Types[c.I(0)].ShapeB);
        var shape = axes.All(i => a[i] == b[i] && a[i] > 0) ? c.Ints(a.Select((d, i) => axes.Contains(i) ? d : 1L).ToArray()) : c.ShapeOf(c.I(0));
        return c.Op("Expand", [grad, shape]);
    }

    /// <summary>The axes a reduction sums over, normalized; null for a no-op (empty axes with noop_with_empty_axes).</summary>
    static long[]? ReducedAxes(GradContext c, bool axesAsInput)
    {
        int rank = c.Rank(c.I(0));
        var axes = axesAsInput ? c.AxesOf(1) : Onnx.Attrs.Ints(c.Node, "axes");
        if ((axes is null || axes.Length == 0) && c.Attr("noop_with_empty_axes", 0L) == 1) return null;
        return axes is null || axes.Length == 0 ? Enumerable.Range(0, rank).Select(i => (long)i).ToArray() : GradContext.Normalize(axes, rank);
    }

    /// <summary>The number of elements each output of a ReduceMean averages. A constant when both probe runs saw the same
    /// extents on the reduced axes (a hidden size, a head dim): then no Size/Cast/Div nodes run per step. Otherwise
    /// |input| / |output|, computed in the graph.</summary>
    static string AveragedCount(GradContext c, bool axesAsInput)
    {
        var (a, b) = (c.Types[c.I(0)].ShapeA, c.Types[c.I(0)].ShapeB);
        var axes = ReducedAxes(c, axesAsInput) ?? [];
        if (axes.All(i => a[i] == b[i] && a[i] > 0))
            return c.Scalar(axes.Aggregate(1L, (n, i) => n * a[i]), c.O(0));
        return c.Div(c.CastLike(c.Op("Size", [c.I(0)]), c.O(0)), c.CastLike(c.Op("Size", [c.O(0)]), c.O(0)));
    }

    /// <summary>LayerNormalization (centered) and RMS normalization over the axes from <c>axis</c> on.
    /// With x̂ the normalized input, r = 1/σ and g = dy ⊙ scale:
    /// dx = r·(g − mean(g) − x̂·mean(g⊙x̂)) (RMS: without the mean(g) term); dscale = Σ dy⊙x̂; dbias = Σ dy.</summary>
    static string?[] Normalization(GradContext c, bool centered)
    {
        string x = c.I(0), scale = c.I(1), gy = c.GO(0)!;
        int rank = c.Rank(x);
        long axis = GradContext.Normalize([c.Attr("axis", -1L)], rank)[0];
        var axes = Enumerable.Range((int)axis, rank - (int)axis).Select(i => (long)i).ToArray();
        double epsilon = c.Attr("epsilon", 1e-5f);
        var xc = centered ? c.Sub(x, c.ReduceMean(x, axes, keepdims: true)) : x;
        // 1/σ as the forward saved it (LayerNormalization's InvStdDev, SimplifiedLayerNormalization's inv_std_var) when
        // it did, in x's type; else computed again
        int saved = c.Node.OpType == "LayerNormalization" ? 2 : c.Node.OpType == "SimplifiedLayerNormalization" ? 1 : -1;
        var rstd = saved > 0 && c.Node.Output.Count > saved && c.O(saved) != "" && c.Types.Find(c.O(saved))?.ElemType == c.Types.ElemType(x) ? c.O(saved)
            : c.Op("Reciprocal", [c.Op("Sqrt", [c.Add(c.ReduceMean(c.Mul(xc, xc), axes, keepdims: true), c.Scalar(epsilon, x))])]);
        var xhat = c.Mul(xc, rstd);
        string? gx = null, gscale = null, gbias = null;
        if (c.Needs(0))
        {
            var g = c.Mul(gy, scale);
            var inner = c.Sub(g, c.Mul(xhat, c.ReduceMean(c.Mul(g, xhat), axes, keepdims: true)));
            if (centered) inner = c.Sub(inner, c.ReduceMean(g, axes, keepdims: true));
            gx = c.Mul(rstd, inner);
        }
        if (c.Needs(1)) gscale = c.Unbroadcast(c.Mul(gy, xhat), c.O(0), scale);
        if (c.HasInput(2) && c.Needs(2)) gbias = c.Unbroadcast(gy, c.O(0), c.I(2));
        return [gx, gscale, gbias];
    }
}
