namespace OrtLora.Autodiff;

/// <summary>MatMul (numpy semantics, batched and broadcast) and Gemm.</summary>
public static partial class GradientRules
{
    static void AddMatMul(Dictionary<string, GradientRule> t)
    {
        t["MatMul"] = MatMul;
        t["Gemm"] = Gemm;
    }

    static long[] SwapLastTwo(int rank)
    {
        var perm = Enumerable.Range(0, rank).Select(i => (long)i).ToArray();
        (perm[rank - 2], perm[rank - 1]) = (perm[rank - 1], perm[rank - 2]);
        return perm;
    }

    // Y = A·B:  dA = dY·Bᵀ,  dB = Aᵀ·dY, each summed over broadcast batch dims. Vectors are made matrices first.
    // Matrices go through Gemm, whose transA/transB read the operand transposed: no Transpose node, no transposed copy.
    static string?[] MatMul(GradContext c)
    {
        string a = c.I(0), b = c.I(1), gy = c.GO(0)!;
        int ra = c.Rank(a), rb = c.Rank(b);
        if (ra == 1 || rb == 1) return MatMulWithVector(c);
        bool gemm = HasGemm(c, a) && HasGemm(c, b);
        string? ga = null, gb = null, gradRows = null;
        // the common x[..., K]·W[K, N]: the batch dims folded into rows, dY as [rows, N]
        string GradRows() => gradRows ??= ra == 2 ? gy : c.Reshape(gy, c.Concat(c.Ints(-1), c.LastDims(c.O(0), 1)));
        // dX of x[..., K]·W[K, N] stays MatMul(dY, Transpose(W)): ORT fuses the pair into one FusedMatMul (transB) at
        // level extended and above, where Gemm would need a Reshape on each side (measured: more nodes per step)
        if (c.Needs(0))
            ga = ra == 2 && rb == 2 && gemm ? c.Op("Gemm", [gy, b], ("transB", 1L))
                : c.Unbroadcast(c.MatMul(gy, c.Transpose(b, SwapLastTwo(rb))), BatchShapes(c, a), a);
        if (c.Needs(1))
        {
            if (rb == 2 && ra == 3 && SmallSide(c, b) <= BatchedUpTo)
            {
                // x[batch, rows, K]·W[K, N] with K or N small (a LoRA matrix: r): one product per batch row and their
                // sum, xᵀ·dY batched (ORT fuses the Transpose into the product, transA) and a ReduceSum over the batch,
                // instead of both operands reshaped to rows and one Gemm: one node fewer, and no Reshape of the
                // [batch, rows, N] gradient. The batch's partial products are [batch, K, N]: small when K or N is.
                gb = c.SumLeading(c.MatMul(c.Transpose(a, [0, 2, 1]), gy), 3, 2);
            }
            else if (rb == 2 && (ra > 2 || gemm))
            {
                // one [K, rows]·[rows, N] product
                var rows = ra == 2 ? a : c.Reshape(a, c.Concat(c.Ints(-1), c.LastDims(a, 1)));
                var grows = GradRows();
                gb = gemm ? c.Op("Gemm", [rows, grows], ("transA", 1L)) : c.MatMul(c.Transpose(rows, [1, 0]), grows);
            }
            else gb = c.Unbroadcast(c.MatMul(c.Transpose(a, SwapLastTwo(ra)), gy), BatchShapes(c, b), b);
        }
        return [ga, gb];
    }

    /// <summary>A weight gradient of x[batch, rows, K]·W[K, N] is taken batched (<see cref="MatMul"/>) when K or N is
    /// at most this: LoRA's ranks, a classifier's labels; not an LM head, whose [batch, hidden, vocab] partial products
    /// would be larger than its inputs.</summary>
    const long BatchedUpTo = 256;

    /// <summary>The smaller of a matrix operand's two dims when both probes agree on them, else long.MaxValue.</summary>
    static long SmallSide(GradContext c, string matrix) =>
        c.Types[matrix] is { } t && t.ShapeA.SequenceEqual(t.ShapeB) && t.ShapeA.Length == 2 ? Math.Min(t.ShapeA[0], t.ShapeA[1]) : long.MaxValue;

    /// <summary>Gemm for float and double; other types keep MatMul, whose kernels cover more types.</summary>
    static bool HasGemm(GradContext c, string value) => c.Types.ElemType(value) is Float or Double;

    static string?[] MatMulWithVector(GradContext c)
    {
        string a = c.I(0), b = c.I(1), gy = c.GO(0)!;
        int ra = c.Rank(a), rb = c.Rank(b), ry = c.Rank(c.O(0));
        var a2 = ra == 1 ? c.Unsqueeze(a, [0]) : a;
        var b2 = rb == 1 ? c.Unsqueeze(b, [1]) : b;
        var gy2 = gy;
        if (ra == 1) gy2 = c.Unsqueeze(gy2, [rb == 1 ? ry : ry - 1]);
        if (rb == 1) gy2 = c.Unsqueeze(gy2, [ry + (ra == 1 ? 1 : 0)]);
        int full2Rank = Math.Max(Math.Max(ra, 2), Math.Max(rb, 2));
        string? ga = null, gb = null;
        if (c.Needs(0))
        {
            var full = c.MatMul(gy2, c.Transpose(b2, SwapLastTwo(Math.Max(rb, 2))));
            ga = c.ReshapeLike(c.SumLeading(full, full2Rank, Math.Max(ra, 2)), a);
        }
        if (c.Needs(1))
        {
            var full = c.MatMul(c.Transpose(a2, SwapLastTwo(Math.Max(ra, 2))), gy2);
            gb = c.ReshapeLike(c.SumLeading(full, full2Rank, Math.Max(rb, 2)), b);
        }
        return [ga, gb];
    }

    /// <summary>Probe shapes of a MatMul operand's gradient before unbroadcasting: the output's batch dims, the
    /// operand's matrix dims.</summary>
    static (long[], long[]) BatchShapes(GradContext c, string operand)
    {
        var y = c.Types[c.O(0)]; var x = c.Types[operand];
        return ([.. y.ShapeA[..^2], .. x.ShapeA[^2..]], [.. y.ShapeB[..^2], .. x.ShapeB[^2..]]);
    }

    // Y = α·A'·B' + β·C with A' = transA ? Aᵀ : A, B' likewise.
    static string?[] Gemm(GradContext c)
    {
        string a = c.I(0), b = c.I(1), gy = c.GO(0)!;
        long transA = c.Attr("transA", 0L), transB = c.Attr("transB", 0L);
        float alpha = c.Attr("alpha", 1f), beta = c.Attr("beta", 1f);
        string? ga = null, gb = null, gc = null;
        if (c.Needs(0))
            ga = transA == 0
                ? c.Op("Gemm", [gy, b], ("alpha", alpha), ("transB", 1 - transB))              // α·dY·B'ᵀ
                : c.Op("Gemm", [b, gy], ("alpha", alpha), ("transA", transB), ("transB", 1L)); // α·B'·dYᵀ
        if (c.Needs(1))
            gb = transB == 0
                ? c.Op("Gemm", [a, gy], ("alpha", alpha), ("transA", 1 - transA))              // α·A'ᵀ·dY
                : c.Op("Gemm", [gy, a], ("alpha", alpha), ("transA", 1L), ("transB", transA)); // α·dYᵀ·A'
        if (c.HasInput(2) && c.Needs(2))
            gc = c.Unbroadcast(beta == 1f ? gy : c.Mul(gy, c.Scalar(beta, c.O(0))), c.O(0), c.I(2));
        return [ga, gb, gc];
    }
}
