using OrtLora.Deploy;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>PiSSA (PEFT's init_lora_weights="pissa_niter_K"): A and B start as the principal part of W,
/// B·A = U_r·S_r·V_rᵀ / scale from the top r singular triplets, and the base weight becomes the residual
/// W − scale·B·A, so the injected model still computes the original. The singular vectors come from torch's
/// svd_lowrank algorithm (randomized range finder with K power iterations, q = r), in double.</summary>
public static class Pissa
{
    /// <summary>The K of "pissa_niter_K", or null for another init.</summary>
    public static int? Iterations(string init) =>
        init.StartsWith("pissa_niter_", StringComparison.Ordinal) && int.TryParse(init["pissa_niter_".Length..], out var k) && k >= 0 ? k : null;

    /// <summary>A and B for one layer (PEFT's pissa_init), after checking the layer can take it.</summary>
    public static (float[] A, float[] B) ForLayer(OnnxModel model, GraphEditor g, LinearLayer layer, string path, LoraConfig config,
        int r, double scale, int parts, Random rng)
    {
        string Refuse(string why) => throw new OrtLoraException($"{model.Source}: {config.Init} on '{path}': {why}");
        if (parts > 1) Refuse("PiSSA factors the whole fused weight; use --variant performant");
        if (config.UseDora) Refuse("PiSSA with DoRA is not supported");
        if (layer.GemmAlpha != 1) Refuse($"the layer is a Gemm with alpha {layer.GemmAlpha}");
        if (g.Consumers(layer.Weight).Count > 1) Refuse($"weight '{layer.Weight}' is read by other nodes too (tied?); PiSSA rewrites it");
        var weight = g.Initializer(layer.Weight)!;
        var values = model.ReadFloats(weight);
        int outDim = (int)layer.Out, inDim = (int)layer.In;
        var w = new double[outDim * inDim];
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
                w[o * inDim + i] = layer.Layout == WeightLayout.OutIn ? values[o * inDim + i] : values[i * outDim + o];
        return Factor(w, outDim, inDim, r, scale, Iterations(config.Init)!.Value, rng);
    }

    /// <summary>A [r, in] and B [out, r] for weight <paramref name="w"/> given [out, in] (row-major).</summary>
    public static (float[] A, float[] B) Factor(double[] w, int outDim, int inDim, int r, double scale, int iterations, Random rng)
    {
        int q = Math.Min(r, Math.Min(outDim, inDim));
        var gaussian = new double[inDim * q];
        for (int i = 0; i < gaussian.Length; i++) gaussian[i] = Normal(rng);
        var basis = LowRank.Qr(Multiply(w, outDim, inDim, gaussian, q, transposeLeft: false), outDim, q).Q;
        for (int k = 0; k < iterations; k++)
        {
            var back = LowRank.Qr(Multiply(w, outDim, inDim, basis, q, transposeLeft: true), inDim, q).Q;
            basis = LowRank.Qr(Multiply(w, outDim, inDim, back, q, transposeLeft: false), outDim, q).Q;
        }
        // W ≈ Q·(Qᵀ·W); Qᵀ·W = R2ᵀ·Q2ᵀ from the QR of (Qᵀ·W)ᵀ = Wᵀ·Q; the small R2ᵀ [q, q] by Jacobi: R2ᵀ = Us·S·Vsᵀ.
        var (q2, r2) = LowRank.Qr(Multiply(w, outDim, inDim, basis, q, transposeLeft: true), inDim, q);
        var r2T = new double[q * q];
        for (int i = 0; i < q; i++) for (int j = 0; j < q; j++) r2T[i * q + j] = r2[j * q + i];
        var (us, vs, order) = LowRank.JacobiSvd(r2T, q);
        var a = new float[r * inDim];
        var b = new float[outDim * r];
        for (int c = 0; c < q; c++)
        {
            int j = order[c];
            double sigma = Math.Sqrt(Enumerable.Range(0, q).Sum(t => us[t * q + j] * us[t * q + j]));
            if (sigma == 0) continue;
            double root = Math.Sqrt(sigma / scale); // √(S_r / scale) goes into each factor, as PEFT splits it
            for (int o = 0; o < outDim; o++)
            {
                double u = 0;
                for (int t = 0; t < q; t++) u += basis[o * q + t] * us[t * q + j];
                b[o * r + c] = (float)(u / sigma * root);
            }
            for (int i = 0; i < inDim; i++)
            {
                double v = 0;
                for (int t = 0; t < q; t++) v += q2[i * q + t] * vs[t * q + j];
                a[c * inDim + i] = (float)(v * root);
            }
        }
        return (a, b);
    }

    /// <summary>W·X ([out, in]·[in, q]) or Wᵀ·X ([in, out]·[out, q]), rows in parallel.</summary>
    static double[] Multiply(double[] w, int outDim, int inDim, double[] x, int q, bool transposeLeft)
    {
        int rows = transposeLeft ? inDim : outDim, inner = transposeLeft ? outDim : inDim;
        var y = new double[rows * q];
        Parallel.For(0, rows, row =>
        {
            for (int k = 0; k < inner; k++)
            {
                double m = transposeLeft ? w[k * inDim + row] : w[row * inDim + k];
                if (m == 0) continue;
                for (int c = 0; c < q; c++) y[row * q + c] += m * x[k * q + c];
            }
        });
        return y;
    }

    static double Normal(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
}
