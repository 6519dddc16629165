using OrtLora.Deploy;
using OrtLora.Lora;
using OrtLora.Onnx;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>PEFT's CorDA initialization (init_lora_weights="corda", Yang et al. 2024), from PEFT's corda.py and
/// LoraLayer.corda_init. Before training, each adapted linear layer's inputs on the first training sequences give a
/// covariance C = mean over sequences of XᵀX, each sequence's X divided by |max(X)| as PEFT scales it (computed in the
/// graph, <see cref="LayerInputs"/>). W·C is
/// decomposed, W·C = U·S·Vhᵀ (C damped by 1% of its mean diagonal, doubled until C·C⁻¹ is within 0.05 of I), so that
/// W = U·S·(Vh·C⁻¹)ᵀ exactly. The adapter takes r of those triplets: "ipm" the largest (the directions the data
/// uses most are trained), "kpm" the smallest (they are trained, the rest of W, which holds what the data uses, stays):
/// B = U_r·√(S_r/scale), A = √(S_r/scale)·V_rᵀ with V = C⁻¹·Vh. The base weight becomes the residual W − scale·B·A, so
/// the model computes what it did, and the initial factors stay beside it for PEFT's converted export, as PiSSA's do.</summary>
public static class Corda
{
    public static void Initialize(OnnxModel model, LoraModel lora, IEnumerable<DataBatch> batches, ITrainingReporter? reporter = null)
    {
        var config = lora.Config;
        if (config.CordaMethod is not ("ipm" or "kpm")) throw new OrtLoraException($"CorDA's method is ipm or kpm, not '{config.CordaMethod}'");
        if (config.CordaSamples < 1) throw new OrtLoraException($"CorDA needs at least one sample sequence (got {config.CordaSamples})");
        var g = new GraphEditor(model.Graph);
        var adapters = lora.Adapters.Where(a => !a.Embedding).ToList();
        if (adapters.Count == 0) throw new OrtLoraException($"{model.Source}: CorDA initializes linear layers' adapters, and the model has none");
        var inputOf = adapters.ToDictionary(a => a.Module, a => LayerInputs.BranchInput(model, g, a));
        var features = adapters.GroupBy(a => inputOf[a.Module]).ToDictionary(x => x.Key, x => (int)x.First().In);
        var sums = features.ToDictionary(f => f.Key, f => new double[(long)f.Value * f.Value]);
        int samples = 0;
        using (var forward = new LayerInputs(model, [], features))
            foreach (var batch in batches)
            {
                if (samples >= config.CordaSamples) break;
                // each sequence is one of PEFT's samples (its hook takes one sequence a call): the first CordaSamples with tokens
                var taken = new float[batch.BatchSize];
                for (int r = 0; r < batch.BatchSize && samples < config.CordaSamples; r++)
                    if (batch.AttentionMask.AsSpan(r * batch.SeqLength, batch.SeqLength).Contains(1L)) { taken[r] = 1; samples++; }
                var covariances = forward.Run(batch, features.Keys.Select(LayerInputs.CovarianceOf), taken);
                foreach (var input in features.Keys)
                {
                    var sum = sums[input];
                    var covariance = covariances[LayerInputs.CovarianceOf(input)].Floats;
                    for (int i = 0; i < sum.Length; i++) sum[i] += covariance[i];
                }
            }
        if (samples == 0) throw new OrtLoraException("CorDA needs training sequences for the covariance, and the data gave none");

        foreach (var adapter in adapters)
        {
            int n = (int)adapter.In;
            var covariance = sums[inputOf[adapter.Module]].Select(v => v / samples).ToArray();
            var weight = g.Initializer(adapter.BaseWeight) ?? throw new OrtLoraException($"{model.Source}: the weight '{adapter.BaseWeight}' of '{adapter.Module}' is missing");
            var values = model.ReadFloats(weight);
            int outDim = (int)adapter.Out;
            var w = new double[(long)outDim * n];
            for (int o = 0; o < outDim; o++)
                for (int i = 0; i < n; i++) w[o * n + i] = adapter.Layout == WeightLayout.OutIn ? values[o * n + i] : values[i * outDim + o];
            var (a, b) = Factors(w, outDim, n, covariance, adapter.R, adapter.Scale, config.CordaMethod, model.Source, adapter.Module);
            SetResidualFactors(model, g, lora, adapter, a, b, weight.DataType);
        }
        lora.Write(model.Proto);
        reporter?.Info($"CorDA ({config.CordaMethod}): covariance of {samples} sequences; {adapters.Count} adapters take the " +
            $"{(config.CordaMethod == "ipm" ? "largest" : "smallest")} {adapters.Max(a => a.R)} singular directions of W·C, the weights keep the rest");
    }

    /// <summary>CorDA's A [r, in] and B [out, r] for W [out, in] and the covariance C [in, in].</summary>
    /// <param name="exactUpTo">ipm on a weight whose smaller side is larger than this takes its r triplets from torch's
    /// svd_lowrank algorithm (q = 2r, 16 subspace iterations, seeded) instead of the whole Jacobi SVD, which grows as n³
    /// (16 s at 1,024 on 2 cores); kpm needs the whole spectrum and is always exact</param>
    public static (float[] A, float[] B) Factors(double[] w, int outDim, int inDim, double[] covariance, int r, double scale, string method,
        string source = "", string module = "", int exactUpTo = 512)
    {
        int minDim = Math.Min(outDim, inDim);
        if (r > minDim) throw new OrtLoraException($"{source}: CorDA on '{module}': r = {r} exceeds the weight's smaller side {minDim}");
        var (damped, inverse) = DampedInverse(covariance, inDim);
        var wc = Product(w, outDim, inDim, damped, inDim);
        // Hestenes' Jacobi works on columns: on W·C when it is tall, on its transpose when it is wide
        double[] left, right, singular;
        if (method == "ipm" && minDim > exactUpTo)
        {
            int q = Math.Min(minDim, 2 * r);
            (left, singular, right) = LowRank.SvdLowRank(wc, outDim, inDim, q, iterations: 16, new Random(0));
            minDim = q; // the triplets' stride
        }
        else if (outDim >= inDim)
        {
            var (us, v, order) = LowRank.JacobiSvd(wc, outDim, inDim);
            (left, right, singular) = Triplets(us, outDim, v, inDim, order, minDim);
        }
        else
        {
            var wcT = new double[wc.Length];
            for (int o = 0; o < outDim; o++) for (int i = 0; i < inDim; i++) wcT[i * outDim + o] = wc[o * inDim + i];
            var (vs, u, order) = LowRank.JacobiSvd(wcT, inDim, outDim);
            (right, left, singular) = Triplets(vs, inDim, u, outDim, order, minDim);
        }
        var a = new float[r * inDim];
        var b = new float[outDim * r];
        for (int c = 0; c < r; c++)
        {
            int k = method == "ipm" ? c : minDim - r + c;
            double root = Math.Sqrt(singular[k] / scale);
            for (int o = 0; o < outDim; o++) b[o * r + c] = (float)(left[o * minDim + k] * root);
            // V = C⁻¹·Vh (C⁻¹ is symmetric)
            for (int i = 0; i < inDim; i++)
            {
                double v = 0;
                for (int j = 0; j < inDim; j++) v += inverse[i * inDim + j] * right[j * minDim + k];
                a[c * inDim + i] = (float)(v * root);
            }
        }
        return (a, b);
    }

    /// <summary>The singular triplets of a Jacobi result m·V = (U·S): left vectors [rows, count], right [cols, count]
    /// (columns, largest first) and the values.</summary>
    static (double[] Left, double[] Right, double[] Singular) Triplets(double[] us, int rows, double[] v, int cols, int[] order, int count)
    {
        var left = new double[rows * count];
        var right = new double[cols * count];
        var singular = new double[count];
        for (int k = 0; k < count; k++)
        {
            int j = order[k];
            double s = 0;
            for (int i = 0; i < rows; i++) s += us[i * cols + j] * us[i * cols + j];
            singular[k] = Math.Sqrt(s);
            for (int i = 0; i < rows; i++) left[i * count + k] = singular[k] == 0 ? 0 : us[i * cols + j] / singular[k];
            for (int i = 0; i < cols; i++) right[i * count + k] = v[i * cols + j];
        }
        return (left, right, singular);
    }

    /// <summary>PEFT's damping: C + λ·I with λ = 1% of C's mean diagonal, doubled until (C + λI)·(C + λI)⁻¹ is within
    /// 0.05 of I (Frobenius); the inverse by Cholesky, in double.</summary>
    static (double[] Damped, double[] Inverse) DampedInverse(double[] c, int n)
    {
        double meanDiagonal = Enumerable.Range(0, n).Average(i => c[i * n + i]);
        for (double damp = 0.01; damp < 1e6; damp *= 2)
        {
            var fixedC = (double[])c.Clone();
            for (int i = 0; i < n; i++) fixedC[i * n + i] += meanDiagonal * damp;
            if (CholeskyInverse(fixedC, n) is not { } inverse) continue;
            var check = Product(fixedC, n, n, inverse, n);
            double error = 0;
            for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) { double d = check[i * n + j] - (i == j ? 1 : 0); error += d * d; }
            if (Math.Sqrt(error) < 0.05) return (fixedC, inverse);
        }
        throw new OrtLoraException("CorDA: the inputs' covariance could not be inverted (are the layer inputs all zero?)");
    }

    /// <summary>The inverse of a symmetric positive definite m [n, n], or null when it is not positive definite.</summary>
    static double[]? CholeskyInverse(double[] m, int n)
    {
        var l = new double[n * n];
        for (int j = 0; j < n; j++)
        {
            double d = m[j * n + j];
            for (int k = 0; k < j; k++) d -= l[j * n + k] * l[j * n + k];
            if (d <= 0 || !double.IsFinite(d)) return null;
            l[j * n + j] = Math.Sqrt(d);
            for (int i = j + 1; i < n; i++)
            {
                double s = m[i * n + j];
                for (int k = 0; k < j; k++) s -= l[i * n + k] * l[j * n + k];
                l[i * n + j] = s / l[j * n + j];
            }
        }
        // L⁻¹ by forward substitution, then m⁻¹ = L⁻ᵀ·L⁻¹
        var li = new double[n * n];
        for (int i = 0; i < n; i++)
        {
            li[i * n + i] = 1 / l[i * n + i];
            for (int j = 0; j < i; j++)
            {
                double s = 0;
                for (int k = j; k < i; k++) s += l[i * n + k] * li[k * n + j];
                li[i * n + j] = -s / l[i * n + i];
            }
        }
        var inverse = new double[n * n];
        Parallel.For(0, n, i =>
        {
            for (int j = 0; j <= i; j++)
            {
                double s = 0;
                for (int k = i; k < n; k++) s += li[k * n + i] * li[k * n + j];
                inverse[i * n + j] = inverse[j * n + i] = s;
            }
        });
        return inverse;
    }

    static double[] Product(double[] left, int rows, int inner, double[] right, int cols) =>
        LowRank.Multiply(left, rows, inner, right, cols, transposeLeft: false);

    /// <summary>A and B take the factors, the initial factors are kept (PEFT's converted export), and the base weight
    /// becomes W − scale·B·A when it is read (in its own layout and type).</summary>
    static void SetResidualFactors(OnnxModel model, GraphEditor g, LoraModel lora, LoraAdapter adapter, float[] a, float[] b, int dataType)
    {
        g.RemoveInitializer(adapter.LoraA);
        g.RemoveInitializer(adapter.LoraB);
        g.AddInitializer(Tensors.FromFloats(adapter.LoraA, [adapter.R, adapter.In], a));
        g.AddInitializer(Tensors.FromFloats(adapter.LoraB, [adapter.Out, adapter.R], b));
        var initialA = g.AddInitializer(Tensors.FromFloats(g.Unique(adapter.LoraA + ".corda_init"), [adapter.R, adapter.In], a));
        var initialB = g.AddInitializer(Tensors.FromFloats(g.Unique(adapter.LoraB + ".corda_init"), [adapter.Out, adapter.R], b));
        var principal = new LayerAdapter(adapter.Module, adapter.R, adapter.In, adapter.Out, adapter.Scale, a, b, []);
        var layout = adapter.Layout;
        model.Defer(adapter.BaseWeight, bytes => LoraMerger.AddDelta(bytes, dataType, principal, layout, factor: -1));
        lora.Adapters[lora.Adapters.IndexOf(adapter)] = adapter with { InitialA = initialA, InitialB = initialB };
    }
}
