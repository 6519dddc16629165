using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Rotary embedding's rotate_half, <c>concat(-x[..., d/2:], x[..., :d/2])</c>, becomes one MatMul by a constant
/// signed permutation before the backward is built (after <see cref="SlicesAsSplit"/> has made its two slices one
/// Split). Forward and backward were three nodes each for q and for k in every layer (Split, Neg, Concat; Concat, Neg,
/// Split), now one each (the backward multiplies by the permutation's transpose): 270 fewer nodes in a SmolLM2 step
/// as ORT runs it (fp32, level all; the Sum of the backward's two branches stays). The
/// values are exact: each output is one input times ±1 plus zeros, in any float type, as long as the product is not
/// rounded to TF32 (ortlora asks CUDA for use_tf32=0). A [d, d] product per head and position is negligible next to
/// the projections (d = 64: 4·d² flops per token and head, forward and backward, against the layer's millions).
/// <para>Only the training graph changes: eval keeps the export's nodes (the same bits either way).</para></summary>
public static class RotateHalfAsMatMul
{
    /// <summary>Rewrites the graph in place (probed <paramref name="types"/> give the last dim); returns how many
    /// rotate_halfs became MatMuls.</summary>
    public static int Apply(GraphEditor g, ValueTable types)
    {
        var matrices = new Dictionary<(long D, int Type), string>(); // one constant per head size and type, shared
        int rewritten = 0;
        foreach (var concat in g.Graph.Node.Where(n => n.OpType == "Concat" && n.Input.Count == 2).ToList())
        {
            // concat(Neg(second half), first half) along the last axis
            if (g.Producer(concat.Input[0]) is not { OpType: "Neg" } neg || g.Producer(neg.Input[0]) is not { OpType: "Split" } split) continue;
            if (split.Output.Count != 2 || split.Output[1] != neg.Input[0] || split.Output[0] != concat.Input[1]) continue;
            var x = split.Input[0];
            if (types.Find(x) is not { } info || info.Rank < 1 || types.Find(concat.Output[0]) is not { } rotated || rotated.ElemType != info.ElemType) continue;
            long d = info.ShapeA[^1];
            if (d != info.ShapeB[^1] || d % 2 != 0 || d < 2) continue;
            if (!LastAxis(Attrs.Int(split, "axis", 0), info.Rank) || !LastAxis(Attrs.Int(concat, "axis", 0), info.Rank)) continue;
            // the halves' sizes: a constant input (one computed: [0], no match), the old attribute, or equal (num_outputs)
            long[]? sizes = split.Input.Count > 1 && split.Input[1] != "" ? g.ConstantInts(split.Input[1]) ?? [0]
                : Attrs.Ints(split, "split") is { Length: > 0 } attribute ? attribute : null;
            if (sizes is not null && !sizes.SequenceEqual([d / 2, d / 2])) continue;
            // the halves and the negation feed nothing else
            if (g.Consumers(split.Output[0]).Count != 1 || g.Consumers(split.Output[1]).Count != 1 || g.Consumers(neg.Output[0]).Count != 1) continue;
            if (new[] { split.Output[0], split.Output[1], neg.Output[0] }.Any(g.IsGraphOutput)) continue;

            if (!matrices.TryGetValue((d, info.ElemType), out var permutation))
            {
                permutation = matrices[(d, info.ElemType)] = GraphConstants.Add(g, "rotate_half_matrix", name => Tensors.FromFloats(name, [d, d], SignedPermutation(d), info.ElemType));
                types.Set(permutation, new ValueTable.Info(info.ElemType, [d, d], [d, d]));
            }
            var matMul = new NodeProto { OpType = "MatMul", Name = g.Unique((concat.Name == "" ? "rotate_half" : concat.Name) + "/as_matmul"), Input = { x, permutation }, Output = { concat.Output[0] } };
            int at = g.Graph.Node.IndexOf(split);
            foreach (var n in new[] { concat, neg, split }) g.RemoveNode(n);
            g.InsertNode(at, matMul);
            rewritten++;
        }
        return rewritten;
    }

    static bool LastAxis(long axis, int rank) => axis == -1 || axis == rank - 1;

    /// <summary>R with x·R = concat(-x[d/2:], x[:d/2]): column i &lt; d/2 takes -x[i + d/2], column i ≥ d/2 takes x[i - d/2].</summary>
    static float[] SignedPermutation(long d)
    {
        var r = new float[d * d];
        long h = d / 2;
        for (long i = 0; i < h; i++)
        {
            r[(i + h) * d + i] = -1f;
            r[i * d + i + h] = 1f;
        }
        return r;
    }
}
