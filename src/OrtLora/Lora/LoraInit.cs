namespace OrtLora.Lora;

/// <summary>PEFT's init_lora_weights for a linear layer's A and B (PiSSA, OLoRA and LoftQ, which start from the weight,
/// are in ResidualInit and Loftq): with B zero, or with B·A = 0 (orthogonal), the injected model computes the original.</summary>
public static class LoraInit
{
    /// <summary>PEFT's initialization of A: kaiming_uniform_(a=√5) gives bound 1/√in; "gaussian" draws N(0, (1/r)²).</summary>
    public static float[] A(Random rng, string init, int r, long inDim)
    {
        var a = new float[r * inDim];
        if (init == "gaussian")
        {
            double std = 1.0 / r;
            for (int i = 0; i < a.Length; i++) a[i] = (float)(std * Normal(rng));
        }
        else if (init is "kaiming" or "loftq" or "orthogonal" or "eva" or "corda" || ResidualInit.Applies(init)) // PiSSA, OLoRA, LoftQ, orthogonal, EVA and CorDA replace A afterwards
        {
            double bound = 1.0 / Math.Sqrt(inDim);
            for (int i = 0; i < a.Length; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * bound);
        }
        else if (init == "pissa")
            throw new OrtLoraException("init_lora_weights pissa (a full SVD of every weight) is not implemented; use pissa_niter_K, PEFT's fast variant (e.g. pissa_niter_16)");
        else throw new OrtLoraException($"unknown init '{init}' (use kaiming, gaussian, orthogonal, pissa_niter_K, olora, loftq, eva or corda)");
        return a;
    }

    /// <summary>PEFT's init_lora_weights "orthogonal": Q from the QR of an r×r normal matrix; A = (N[in, r/2]·Q's even-indexed
    /// rows)ᵀ and B = N[r/2, out]ᵀ·Q's odd-indexed rows. Both are dense, yet B·A = 0 (Q's rows are orthonormal), so the
    /// model starts unchanged with a gradient for A as well as B.</summary>
    public static (float[] A, float[] B) Orthogonal(Random rng, int r, long inDim, long outDim)
    {
        // Q by modified Gram-Schmidt on the rows of a normal matrix (r is small).
        var q = new double[r, r];
        for (int i = 0; i < r; i++)
        {
            for (int j = 0; j < r; j++) q[i, j] = Normal(rng);
            for (int k = 0; k < i; k++)
            {
                double dot = 0;
                for (int j = 0; j < r; j++) dot += q[i, j] * q[k, j];
                for (int j = 0; j < r; j++) q[i, j] -= dot * q[k, j];
            }
            double norm = Math.Sqrt(Enumerable.Range(0, r).Sum(j => q[i, j] * q[i, j]));
            for (int j = 0; j < r; j++) q[i, j] /= norm;
        }
        int half = r / 2;
        var a = new float[r * inDim];
        for (long col = 0; col < inDim; col++)
        {
            var draws = Enumerable.Range(0, half).Select(_ => Normal(rng)).ToArray();
            for (int k = 0; k < r; k++) a[k * inDim + col] = (float)Enumerable.Range(0, half).Sum(j => draws[j] * q[2 * j, k]);
        }
        var b = new float[outDim * r];
        for (long row = 0; row < outDim; row++)
        {
            var draws = Enumerable.Range(0, half).Select(_ => Normal(rng)).ToArray();
            for (int k = 0; k < r; k++) b[row * r + k] = (float)Enumerable.Range(0, half).Sum(j => draws[j] * q[2 * j + 1, k]);
        }
        return (a, b);
    }

    /// <summary>A standard normal draw (Box-Muller).</summary>
    public static double Normal(Random rng) => Math.Sqrt(-2 * Math.Log(1.0 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
}
