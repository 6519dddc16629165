namespace OrtLora.Deploy;

/// <summary>PEFT's merge_utils over tensors of one shape (flat arrays), as add_weighted_adapter merges LoRA factors or
/// delta weights with them:
/// <list type="bullet">
/// <item>linear (task arithmetic): Σ wᵢ·tᵢ.</item>
/// <item>magnitude_prune: each tensor keeps its int(density·n) largest magnitudes, then Σ wᵢ·tᵢ.</item>
/// <item>ties (Yadav et al. 2023): prune the same way; elect a sign per element (the sign of Σ tᵢ, "total", or of
/// Σ sign(tᵢ), "frequency", ties going to +); then the mean of the weighted values that agree with it.</item>
/// <item>dare_linear, dare_ties (Yu et al. 2023): keep each element with probability density and divide what is kept by
/// density, then linear or TIES's sign election and mean.</item>
/// </list>
/// A density of 1 or more prunes nothing. DARE's random draws are ortlora's own (seeded), not torch's.</summary>
public static class TaskMerging
{
    public static readonly string[] Methods = ["linear", "ties", "dare_linear", "dare_ties", "magnitude_prune"];
    public static readonly string[] SignMethods = ["total", "frequency"];

    public static float[] Merge(string method, IReadOnlyList<float[]> tensors, IReadOnlyList<double> weights, double density, string signMethod, Random rng)
    {
        if (tensors.Count == 0 || tensors.Count != weights.Count) throw new ArgumentException("one weight per tensor, at least one tensor");
        if (density < 0) throw new OrtLoraException($"--density must be at least 0, got {density}");
        var pruned = method switch
        {
            "linear" => tensors,
            "magnitude_prune" or "ties" => [.. tensors.Select(t => MagnitudePrune(t, density))],
            "dare_linear" or "dare_ties" => [.. tensors.Select(t => RandomPrune(t, density, rng))],
            _ => throw new OrtLoraException($"unknown merge method '{method}'; expected {string.Join(", ", Methods)}"),
        };
        return method is "ties" or "dare_ties" ? DisjointMerge(pruned, weights, signMethod) : WeightedSum(pruned, weights);
    }

    static float[] WeightedSum(IReadOnlyList<float[]> tensors, IReadOnlyList<double> weights)
    {
        var sum = new float[tensors[0].Length];
        for (int i = 0; i < sum.Length; i++)
        {
            double s = 0;
            for (int t = 0; t < tensors.Count; t++) s += weights[t] * tensors[t][i];
            sum[i] = (float)s;
        }
        return sum;
    }

    /// <summary>The int(density·n) largest magnitudes kept (on equal magnitudes the earlier elements), the rest zero.
    /// The threshold comes from a sort of the magnitudes alone, which a dense ΔW of tens of millions of values allows.</summary>
    public static float[] MagnitudePrune(float[] tensor, double density)
    {
        if (density >= 1) return tensor;
        int keep = (int)(density * tensor.Length);
        var pruned = new float[tensor.Length];
        if (keep == 0) return pruned;
        var magnitudes = tensor.Select(MathF.Abs).ToArray();
        Array.Sort(magnitudes);
        float threshold = magnitudes[^keep];
        int ties = keep - tensor.Count(v => MathF.Abs(v) > threshold);
        for (int i = 0; i < tensor.Length; i++)
        {
            float magnitude = MathF.Abs(tensor[i]);
            if (magnitude > threshold || magnitude == threshold && ties-- > 0) pruned[i] = tensor[i];
        }
        return pruned;
    }

    /// <summary>Each element kept with probability density, and what is kept divided by it (its expectation unchanged).</summary>
    public static float[] RandomPrune(float[] tensor, double density, Random rng)
    {
        if (density >= 1) return tensor;
        var pruned = new float[tensor.Length];
        for (int i = 0; i < tensor.Length; i++)
            if (rng.NextDouble() < density) pruned[i] = (float)(tensor[i] / density);
        return pruned;
    }

    /// <summary>TIES's elected sign per element (from the unweighted tensors) and the mean of the weighted values that
    /// have it; an element no tensor agrees on is zero.</summary>
    static float[] DisjointMerge(IReadOnlyList<float[]> tensors, IReadOnlyList<double> weights, string signMethod)
    {
        if (!SignMethods.Contains(signMethod)) throw new OrtLoraException($"unknown --majority-sign-method '{signMethod}'; expected total or frequency");
        var merged = new float[tensors[0].Length];
        for (int i = 0; i < merged.Length; i++)
        {
            double magnitude = 0;
            foreach (var t in tensors) magnitude += signMethod == "total" ? t[i] : Math.Sign(t[i]);
            int majority = magnitude >= 0 ? 1 : -1;
            double sum = 0;
            int agreeing = 0;
            for (int t = 0; t < tensors.Count; t++)
                if (Math.Sign(tensors[t][i]) == majority) { sum += weights[t] * tensors[t][i]; agreeing++; }
            merged[i] = (float)(sum / Math.Max(1, agreeing));
        }
        return merged;
    }
}
