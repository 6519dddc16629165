using OrtLora.Deploy;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>The inits that take A and B from W itself and leave the base weight the residual W − scale·B·A, so the
/// injected model still computes the original (PEFT's init_lora_weights):
/// <list type="bullet">
/// <item>PiSSA, "pissa_niter_K": B·A = U_r·S_r·V_rᵀ / scale from the top r singular triplets, √(S_r/scale) in each factor.
/// The singular vectors come from torch's svd_lowrank algorithm (randomized range finder, K power iterations, q = r),
/// in double.</item>
/// <item>OLoRA, "olora": B = Q_r and A = R_r from the QR of W [out, in] (the first r columns of Q, rows of R).</item>
/// </list>
/// The initial factors stay in the model, so that export can write PEFT's converted adapter for the original W.</summary>
public static class ResidualInit
{
    /// <summary>Whether <paramref name="init"/> is one of these inits.</summary>
    public static bool Applies(string init) => init == "olora" || Iterations(init) is not null;

    /// <summary>The K of "pissa_niter_K", or null for another init.</summary>
    static int? Iterations(string init) =>
        init.StartsWith("pissa_niter_", StringComparison.Ordinal) && int.TryParse(init["pissa_niter_".Length..], out var k) && k >= 0 ? k : null;

    /// <summary>Refuses a layer whose weight cannot become a residual W − scale·B·A (PiSSA, OLoRA, CorDA).</summary>
    public static void Require(OnnxModel model, GraphEditor g, LinearLayer layer, string path, LoraConfig config, int parts)
    {
        string Refuse(string why) => throw new OrtLoraException($"{model.Source}: {config.Init} on '{path}': {why}");
        if (parts > 1) Refuse("it factors the whole fused weight; use --variant performant");
        if (config.UseDora) Refuse("with DoRA it is not supported");
        if (layer.GemmAlpha != 1) Refuse($"the layer is a Gemm with alpha {layer.GemmAlpha}");
        if (layer.Dequantize is not null) Refuse($"weight '{layer.Weight}' is stored quantized, and the residual W − scale·B·A would not survive requantization");
        if (g.Consumers(layer.Weight).Count > 1) Refuse($"weight '{layer.Weight}' is read by other nodes too (tied?); {config.Init} rewrites it");
    }

    /// <summary>A and B for one layer, after checking the layer can take it.</summary>
    public static (float[] A, float[] B) ForLayer(OnnxModel model, GraphEditor g, LinearLayer layer, string path, LoraConfig config,
        int r, double scale, int parts, Random rng)
    {
        Require(model, g, layer, path, config, parts);
        var weight = g.Initializer(layer.Weight)!;
        var values = model.ReadFloats(weight);
        int outDim = (int)layer.Out, inDim = (int)layer.In;
        var w = new double[outDim * inDim];
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
                w[o * inDim + i] = layer.Layout == WeightLayout.OutIn ? values[o * inDim + i] : values[i * outDim + o];
        return config.Init == "olora" ? Olora(w, outDim, inDim, r) : Pissa(w, outDim, inDim, r, scale, Iterations(config.Init)!.Value, rng);
    }

    /// <summary>OLoRA: Q_r [out, r] orthonormalizes W's first r columns (Gram–Schmidt, R's diagonal positive where
    /// LAPACK's Householder QR may flip a sign of a column of Q and the matching row of R: the same B·A), R_r = Q_rᵀ·W.</summary>
    public static (float[] A, float[] B) Olora(double[] w, int outDim, int inDim, int r)
    {
        int q = Math.Min(r, Math.Min(outDim, inDim));
        var columns = new double[outDim * q];
        for (int o = 0; o < outDim; o++) for (int c = 0; c < q; c++) columns[o * q + c] = w[o * inDim + c];
        var basis = LowRank.Qr(columns, outDim, q).Q;
        var rows = LowRank.Multiply(w, outDim, inDim, basis, q, transposeLeft: true); // Wᵀ·Q_r [in, q] = R_rᵀ
        var a = new float[r * inDim];
        var b = new float[outDim * r];
        for (int c = 0; c < q; c++)
        {
            for (int o = 0; o < outDim; o++) b[o * r + c] = (float)basis[o * q + c];
            for (int i = 0; i < inDim; i++) a[c * inDim + i] = (float)rows[i * q + c];
        }
        return (a, b);
    }

    /// <summary>PiSSA's A [r, in] and B [out, r] for weight <paramref name="w"/> given [out, in] (row-major).</summary>
    public static (float[] A, float[] B) Pissa(double[] w, int outDim, int inDim, int r, double scale, int iterations, Random rng)
    {
        int q = Math.Min(r, Math.Min(outDim, inDim));
        var (u, s, v) = LowRank.SvdLowRank(w, outDim, inDim, q, iterations, rng);
        var a = new float[r * inDim];
        var b = new float[outDim * r];
        for (int c = 0; c < q; c++)
        {
            if (s[c] == 0) continue;
            double root = Math.Sqrt(s[c] / scale); // √(S_r / scale) goes into each factor, as PEFT splits it
            for (int o = 0; o < outDim; o++) b[o * r + c] = (float)(u[o * q + c] * root);
            for (int i = 0; i < inDim; i++) a[c * inDim + i] = (float)(v[i * q + c] * root);
        }
        return (a, b);
    }
}
