namespace OrtLora.Autodiff;

/// <summary>Ops that move data without arithmetic: reshapes, transposes, concatenation and splitting, slicing.</summary>
public static partial class GradientRules
{
    static void AddShape(Dictionary<string, GradientRule> t)
    {
        GradientRule reshapeBack = c => [c.ReshapeLike(c.GO(0)!, c.I(0), (c.Types[c.O(0)].ShapeA, c.Types[c.O(0)].ShapeB))];
        foreach (var op in new[] { "Reshape", "Flatten", "Squeeze", "Unsqueeze" }) t[op] = reshapeBack;
        t["Expand"] = c => [c.Unbroadcast(c.GO(0)!, c.O(0), c.I(0))];
        t["Transpose"] = Transpose;
        t["Concat"] = Concat;
        t["Split"] = Split;
        t["Slice"] = Slice;
        t["Tile"] = c =>
        {
            // view the output as [repeat₀, d₀, repeat₁, d₁, ...] and sum the repeat axes
            int rank = c.Rank(c.I(0));
            var interleaved = c.Reshape(c.GO(0)!, c.Reshape(c.Op("Concat", [
                c.Unsqueeze(c.I(1), [1]), c.Unsqueeze(c.ShapeOf(c.I(0)), [1])], ("axis", 1L)), c.Ints(-1)));
            var summed = c.ReduceSum(interleaved, Enumerable.Range(0, rank).Select(i => 2L * i).ToArray(), keepdims: false);
            return [summed];
        };
    }

    static string?[] Transpose(GradContext c)
    {
        int rank = c.Rank(c.I(0));
        var perm = Onnx.Attrs.Ints(c.Node, "perm") ?? Enumerable.Range(0, rank).Reverse().Select(i => (long)i).ToArray();
        var inverse = new long[rank];
        for (int i = 0; i < rank; i++) inverse[perm[i]] = i;
        return [c.Transpose(c.GO(0)!, inverse)];
    }

    // The gradient of a concatenation is the output gradient split back into the inputs' extents along the axis.
    static string?[] Concat(GradContext c)
    {
        int rank = c.Rank(c.O(0));
        long axis = GradContext.Normalize([c.Attr("axis", 0L)], rank)[0];
        var sizes = Enumerable.Range(0, c.InputCount)
            .Select(i => c.Dims(c.I(i), (int)axis, (int)axis + 1)).ToArray();
        if (c.Opset < 13) throw c.Unsupported("needs opset 13 or later (Split with a sizes input)");
        var parts = c.OpN("Split", [c.GO(0)!, c.Concat(sizes)], c.InputCount, ("axis", axis));
        return Enumerable.Range(0, c.InputCount).Select(i => c.Needs(i) ? parts[i] : null).ToArray();
    }

    // The gradient of a split is the outputs' gradients concatenated, zeros for outputs nobody used.
    static string?[] Split(GradContext c)
    {
        long axis = c.Attr("axis", 0L);
        var parts = Enumerable.Range(0, c.Node.Output.Count)
            .Select(i => c.GO(i) ?? c.ZerosLike(c.O(i))).ToArray();
        return [parts.Length == 1 ? parts[0] : c.Op("Concat", parts, ("axis", axis))];
    }

    static string?[] Slice(GradContext c)
    {
        if (c.Opset < 10) throw c.Unsupported("opset < 10 Slice (starts/ends as attributes) is not supported");
        int rank = c.Rank(c.I(0));
        var starts = c.I(1);
        long[] axes = c.HasInput(3)
            ? GradContext.Normalize(c.ConstInts(c.I(3)) ?? throw c.Unsupported("axes must be constant"), rank)
            : Enumerable.Range(0, (int)c.Types[starts].ShapeA[0]).Select(i => (long)i).ToArray();
        var steps = c.HasInput(4) ? c.ConstInts(c.I(4)) : null;
        if (steps is null && c.HasInput(4)) return SliceByScatter(c, axes);
        if (steps is not null && steps.Any(s => s != 1)) return SliceByScatter(c, axes);
        return [SliceByPad(c, axes)];
    }

    /// <summary>Step-1 slices: pad the output gradient back with zeros. The pads replay Slice's clamping of starts and
    /// ends (negative counts from the end, clamped to [0, dim]) in the graph, so any dynamic start/end works.</summary>
    static string SliceByPad(GradContext c, long[] axes)
    {
        int rank = c.Rank(c.I(0));
        var before = Enumerable.Range(0, rank).Select(_ => c.Ints(0)).ToArray();
        var after = Enumerable.Range(0, rank).Select(_ => c.Ints(0)).ToArray();
        var zero = c.Ints(0);
        for (int k = 0; k < axes.Length; k++)
        {
            long axis = axes[k];
            var dim = c.Dims(c.I(0), (int)axis, (int)axis + 1);
            var start = Clamp(c, c.Op("Slice", [c.I(1), c.Ints(k), c.Ints(k + 1), c.Ints(0)]), dim, zero);
            var end = Clamp(c, c.Op("Slice", [c.I(2), c.Ints(k), c.Ints(k + 1), c.Ints(0)]), dim, zero);
            end = c.Op("Max", [end, start]);
            before[axis] = start;
            after[axis] = c.Sub(dim, end);
        }
        var pads = c.Concat([.. before, .. after]);
        // CUDA has no bfloat16 Pad: pad in float32 instead (exact, bfloat16 → float32 → bfloat16 round-trips).
        if (c.Types.ElemType(c.I(0)) != Bfloat16) return c.Op("Pad", [c.GO(0)!, pads], ("mode", "constant"));
        return c.CastLike(c.Op("Pad", [c.Cast(c.GO(0)!, Float), pads], ("mode", "constant")), c.I(0));
    }

    const int Int64 = (int)global::Onnx.TensorProto.Types.DataType.Int64, Float = (int)global::Onnx.TensorProto.Types.DataType.Float,
        Double = (int)global::Onnx.TensorProto.Types.DataType.Double, Bfloat16 = (int)global::Onnx.TensorProto.Types.DataType.Bfloat16,
        Float16 = (int)global::Onnx.TensorProto.Types.DataType.Float16;

    static string AsInt64(GradContext c, string value, string like) =>
        c.Types.ElemType(like) == Int64 ? value : c.Cast(value, Int64);

    static string Clamp(GradContext c, string index, string dim, string zero)
    {
        index = AsInt64(c, index, c.I(1));
        var fromEnd = c.Op("Where", [c.Op("Less", [index, zero]), c.Add(index, dim), index]);
        return c.Op("Min", [c.Op("Max", [fromEnd, zero]), dim]);
    }

    /// <summary>Strided slices: slice an index ramp the same way, then scatter the gradient to those indices, one axis
    /// at a time from the last sliced axis back to the first.</summary>
    static string?[] SliceByScatter(GradContext c, long[] axes)
    {
        int rank = c.Rank(c.I(0));
        var grad = c.GO(0)!;
        for (int k = axes.Length - 1; k >= 0; k--)
        {
            long axis = axes[k];
            var dim = c.Op("Squeeze", [c.Dims(c.I(0), (int)axis, (int)axis + 1), c.Ints(0)]);
            var ramp = c.Op("Range", [c.ScalarOfType(0, Int64), dim, c.ScalarOfType(1, Int64)]);
            // Constant bounds and steps stay constants (the CUDA plugin's SliceAsGather needs a constant step).
            string Part(int input) => c.ConstInts(c.I(input)) is { } constant ? c.Ints(constant[k])
                : AsInt64(c, c.Op("Slice", [c.I(input), c.Ints(k), c.Ints(k + 1), c.Ints(0)]), c.I(input));
            var picked = c.Op("Slice", [ramp, Part(1), Part(2), c.Ints(0), c.HasInput(4) ? Part(4) : c.Ints(1)]);
            var viewShape = Enumerable.Repeat(1L, rank).ToArray(); viewShape[axis] = -1;
            var gradShape = c.Op("Shape", [grad]);
            var indices = c.Op("Expand", [c.Reshape(picked, c.Ints(viewShape)), gradShape]);
            var target = c.Concat(
                c.Op("Slice", [gradShape, c.Ints(0), c.Ints(axis), c.Ints(0)]),
                c.Dims(c.I(0), (int)axis, (int)axis + 1),
                c.Op("Slice", [gradShape, c.Ints(axis + 1), c.Ints(long.MaxValue), c.Ints(0)]));
            var zeros = c.Op("ConstantOfShape", [target], ("value", OrtLora.Onnx.Tensors.FromFloats("zero", [1], [0f], c.Types.ElemType(c.I(0)))));
            grad = c.Op("ScatterElements", [zeros, indices, grad], ("axis", axis));
        }
        return [grad];
    }
}
