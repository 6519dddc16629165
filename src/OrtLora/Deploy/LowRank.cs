namespace OrtLora.Deploy;

/// <summary>Best rank-k factorisation of a product B·A (B [out, r], A [r, in]) without forming the [out, in] matrix:
/// QR of B and of Aᵀ reduce B·A = Qb (Rb Raᵀ) Qaᵀ to the SVD of the small r×r core, done by one-sided Jacobi
/// rotations (accurate also for tiny singular values, and r is at most a few hundred). Everything in double.</summary>
public static class LowRank
{
    /// <summary>Returns (B' [out, k], A' [k, in]) with B'·A' the truncated SVD of B·A; singular values go into B', as
    /// PEFT's svd combination puts them into lora_B. With k above r the extra rows/columns are zero.</summary>
    public static (float[] B, float[] A) Factor(float[] b, float[] a, int outDim, int rank, int inDim, int k)
    {
        var (qb, rb) = Qr(ToDouble(b), outDim, rank);
        var (qa, ra) = Qr(Transpose(ToDouble(a), rank, inDim), inDim, rank);
        var core = new double[rank * rank]; // Rb · Raᵀ
        for (int i = 0; i < rank; i++)
            for (int j = 0; j < rank; j++)
            {
                double s = 0;
                for (int t = 0; t < rank; t++) s += rb[i * rank + t] * ra[j * rank + t];
                core[i * rank + j] = s;
            }
        var (us, v, order) = JacobiSvd(core, rank);
        var newB = new float[outDim * k];
        var newA = new float[k * inDim];
        for (int c = 0; c < Math.Min(k, rank); c++)
        {
            int j = order[c];
            for (int o = 0; o < outDim; o++)
            {
                double s = 0;
                for (int t = 0; t < rank; t++) s += qb[o * rank + t] * us[t * rank + j];
                newB[o * k + c] = (float)s;
            }
            for (int i = 0; i < inDim; i++)
            {
                double s = 0;
                for (int t = 0; t < rank; t++) s += qa[i * rank + t] * v[t * rank + j];
                newA[c * inDim + i] = (float)s;
            }
        }
        return (newB, newA);
    }

    /// <summary>The rank-k truncated SVD of a dense matrix w [out, in] as (B' = U·S [out, k], A' = Vh [k, in]). A
    /// randomized range finder with ten more columns than k and eight power iterations gives Q with w ≈ Q·Qᵀ·w;
    /// <see cref="Factor"/> then takes the exact SVD of Q·(Qᵀ·w). Where min(out, in) ≤ k + 10 the range is the whole
    /// space and the result is exact; otherwise the top k directions are found to within the power iterations'
    /// convergence (a gap in the spectrum makes it fast).</summary>
    public static (float[] B, float[] A) TruncatedSvd(float[] w, int outDim, int inDim, int k, int seed = 0)
    {
        int q = Math.Min(k + 10, Math.Min(outDim, inDim));
        var rng = new Random(seed);
        var x = new double[inDim * q];
        for (int i = 0; i < x.Length; i++) x[i] = rng.NextDouble() - 0.5;
        var basis = Qr(Multiply(w, outDim, inDim, x, q, transposeLeft: false), outDim, q).Q;
        for (int iteration = 0; iteration < 8; iteration++)
        {
            var back = Qr(Multiply(w, outDim, inDim, basis, q, transposeLeft: true), inDim, q).Q;
            basis = Qr(Multiply(w, outDim, inDim, back, q, transposeLeft: false), outDim, q).Q;
        }
        // Qᵀ·w [q, in] = (wᵀ·Q)ᵀ
        var projected = Multiply(w, outDim, inDim, basis, q, transposeLeft: true);
        var small = new float[q * inDim];
        for (int i = 0; i < inDim; i++) for (int c = 0; c < q; c++) small[c * inDim + i] = (float)projected[i * q + c];
        return Factor([.. basis.Select(v => (float)v)], small, outDim, q, inDim, k);
    }

    /// <summary>torch.svd_lowrank's algorithm for a [rows, cols] (row-major): a Gaussian range finder of width q, then
    /// <paramref name="iterations"/> subspace iterations; Qᵀ·a = R2ᵀ·Q2ᵀ from the QR of aᵀ·Q, and the small R2ᵀ [q, q] by
    /// Jacobi. Returns the q singular triplets, largest first: U [rows, q], S [q], V [cols, q] (columns).</summary>
    public static (double[] U, double[] S, double[] V) SvdLowRank(double[] a, int rows, int cols, int q, int iterations, Random rng)
    {
        // aᵀ stored as its own matrix: the products with aᵀ then read rows, not strided columns
        var aT = new double[a.Length];
        Parallel.For(0, cols, c => { for (int i = 0; i < rows; i++) aT[(long)c * rows + i] = a[(long)i * cols + c]; });
        var gaussian = new double[cols * q];
        for (int i = 0; i < gaussian.Length; i++) gaussian[i] = Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        var basis = Qr(Multiply(a, rows, cols, gaussian, q, transposeLeft: false), rows, q).Q;
        for (int k = 0; k < iterations; k++)
        {
            var back = Qr(Multiply(aT, cols, rows, basis, q, transposeLeft: false), cols, q).Q;
            basis = Qr(Multiply(a, rows, cols, back, q, transposeLeft: false), rows, q).Q;
        }
        var (q2, r2) = Qr(Multiply(aT, cols, rows, basis, q, transposeLeft: false), cols, q);
        var r2T = new double[q * q];
        for (int i = 0; i < q; i++) for (int j = 0; j < q; j++) r2T[i * q + j] = r2[j * q + i];
        var (us, vs, order) = JacobiSvd(r2T, q);
        var u = new double[rows * q];
        var s = new double[q];
        var v = new double[cols * q];
        for (int c = 0; c < q; c++)
        {
            int j = order[c];
            double sigma = 0;
            for (int t = 0; t < q; t++) sigma += us[t * q + j] * us[t * q + j];
            s[c] = Math.Sqrt(sigma);
            for (int i = 0; i < rows; i++)
            {
                double sum = 0;
                for (int t = 0; t < q; t++) sum += basis[i * q + t] * us[t * q + j];
                u[i * q + c] = s[c] == 0 ? 0 : sum / s[c];
            }
            for (int i = 0; i < cols; i++)
            {
                double sum = 0;
                for (int t = 0; t < q; t++) sum += q2[i * q + t] * vs[t * q + j];
                v[i * q + c] = sum;
            }
        }
        return (u, s, v);
    }

    /// <summary>w·x ([out, in]·[in, q]) or wᵀ·x ([in, out]·[out, q]) for a float or double w, rows in parallel.</summary>
    internal static double[] Multiply<T>(T[] w, int outDim, int inDim, double[] x, int q, bool transposeLeft) where T : System.Numerics.IFloatingPoint<T>
    {
        int rows = transposeLeft ? inDim : outDim, inner = transposeLeft ? outDim : inDim;
        var y = new double[rows * q];
        Parallel.For(0, rows, row =>
        {
            var output = y.AsSpan(row * q, q);
            for (int t = 0; t < inner; t++)
            {
                double m = double.CreateTruncating(transposeLeft ? w[t * inDim + row] : w[row * inDim + t]);
                if (m == 0) continue;
                var input = x.AsSpan(t * q, q);
                int c = 0;
                if (System.Numerics.Vector.IsHardwareAccelerated)
                {
                    var factor = new System.Numerics.Vector<double>(m);
                    for (int width = System.Numerics.Vector<double>.Count; c <= q - width; c += width)
                        (new System.Numerics.Vector<double>(output[c..]) + factor * new System.Numerics.Vector<double>(input[c..])).CopyTo(output[c..]);
                }
                for (; c < q; c++) output[c] += m * input[c];
            }
        });
        return y;
    }

    /// <summary>The singular values of B·A, largest first (for reports and tests).</summary>
    public static double[] SingularValues(float[] b, float[] a, int outDim, int rank, int inDim)
    {
        var (newB, _) = Factor(b, a, outDim, rank, inDim, rank);
        // A' has orthonormal rows, so the column norms of B' are the singular values.
        return Enumerable.Range(0, rank).Select(c => Math.Sqrt(Enumerable.Range(0, outDim).Sum(o => (double)newB[o * rank + c] * newB[o * rank + c]))).ToArray();
    }

    static double[] ToDouble(float[] x) => x.Select(v => (double)v).ToArray();

    static double[] Transpose(double[] x, int rows, int cols)
    {
        var t = new double[x.Length];
        for (int i = 0; i < rows; i++) for (int j = 0; j < cols; j++) t[j * rows + i] = x[i * cols + j];
        return t;
    }

    /// <summary>Thin QR of x [m, n] (row-major) by modified Gram-Schmidt with a second orthogonalisation pass.
    /// A column that is (numerically) in the span of the previous ones gets a zero Q column.</summary>
    internal static (double[] Q, double[] R) Qr(double[] x, int m, int n)
    {
        var q = new double[m * n];
        var r = new double[n * n];
        var v = new double[m];
        for (int j = 0; j < n; j++)
        {
            double original = 0;
            for (int i = 0; i < m; i++) { v[i] = x[i * n + j]; original += v[i] * v[i]; }
            for (int pass = 0; pass < 2; pass++)
                for (int p = 0; p < j; p++)
                {
                    double d = 0;
                    for (int i = 0; i < m; i++) d += q[i * n + p] * v[i];
                    r[p * n + j] += d;
                    for (int i = 0; i < m; i++) v[i] -= d * q[i * n + p];
                }
            double norm = Math.Sqrt(v.Sum(e => e * e));
            if (norm <= 1e-13 * Math.Sqrt(original) || norm == 0) continue;
            r[j * n + j] = norm;
            for (int i = 0; i < m; i++) q[i * n + j] = v[i] / norm;
        }
        return (q, r);
    }

    /// <summary>One-sided Jacobi SVD of the square matrix m [n, n]: returns U·S (columns scaled by the singular
    /// values), V, and the column order by descending singular value.</summary>
    internal static (double[] US, double[] V, int[] Order) JacobiSvd(double[] m, int n) => JacobiSvd(m, n, n);

    /// <summary>One-sided Jacobi (Hestenes) SVD of m [rows, cols]: rotates column pairs until all are orthogonal, so
    /// m·V = U·S. Returns U·S [rows, cols], V [cols, cols] and the column order by descending singular value (the
    /// column norms of U·S). Accurate for small singular values too, which an eigen-decomposition of mᵀm is not.</summary>
    internal static (double[] US, double[] V, int[] Order) JacobiSvd(double[] m, int rows, int cols)
    {
        // columns stored contiguously, so the sweeps' dot products and rotations run over spans
        var w = new double[cols][];
        var v = new double[cols][];
        for (int j = 0; j < cols; j++)
        {
            w[j] = new double[rows];
            for (int i = 0; i < rows; i++) w[j][i] = m[i * cols + j];
            v[j] = new double[cols];
            v[j][j] = 1;
        }
        for (int sweep = 0; sweep < 60; sweep++)
        {
            bool rotated = false;
            for (int p = 0; p < cols - 1; p++)
                for (int q = p + 1; q < cols; q++)
                {
                    double alpha = Dot(w[p], w[p]), beta = Dot(w[q], w[q]), gamma = Dot(w[p], w[q]);
                    if (gamma == 0 || Math.Abs(gamma) <= 1e-15 * Math.Sqrt(alpha * beta)) continue;
                    rotated = true;
                    double zeta = (beta - alpha) / (2 * gamma);
                    double t = Math.Sign(zeta == 0 ? 1 : zeta) / (Math.Abs(zeta) + Math.Sqrt(1 + zeta * zeta));
                    double c = 1 / Math.Sqrt(1 + t * t), s = c * t;
                    Rotate(w[p], w[q], c, s);
                    Rotate(v[p], v[q], c, s);
                }
            if (!rotated) break;
        }
        var us = new double[rows * cols];
        var vm = new double[cols * cols];
        for (int j = 0; j < cols; j++)
        {
            for (int i = 0; i < rows; i++) us[i * cols + j] = w[j][i];
            for (int i = 0; i < cols; i++) vm[i * cols + j] = v[j][i];
        }
        var norms = w.Select(column => Dot(column, column)).ToArray();
        var order = Enumerable.Range(0, cols).OrderByDescending(j => norms[j]).ToArray();
        return (us, vm, order);
    }

    static double Dot(ReadOnlySpan<double> x, ReadOnlySpan<double> y)
    {
        double sum = 0;
        int i = 0;
        if (System.Numerics.Vector.IsHardwareAccelerated && x.Length >= System.Numerics.Vector<double>.Count)
        {
            var acc = System.Numerics.Vector<double>.Zero;
            for (int width = System.Numerics.Vector<double>.Count; i <= x.Length - width; i += width)
                acc += new System.Numerics.Vector<double>(x[i..]) * new System.Numerics.Vector<double>(y[i..]);
            sum = System.Numerics.Vector.Sum(acc);
        }
        for (; i < x.Length; i++) sum += x[i] * y[i];
        return sum;
    }

    /// <summary>(x, y) ← (c·x − s·y, s·x + c·y).</summary>
    static void Rotate(Span<double> x, Span<double> y, double c, double s)
    {
        for (int i = 0; i < x.Length; i++)
        {
            double xi = x[i], yi = y[i];
            x[i] = c * xi - s * yi;
            y[i] = s * xi + c * yi;
        }
    }
}
