namespace OrtLora;

/// <summary>The two statistics several stages take as torch computes them.</summary>
public static class Statistics
{
    /// <summary>The unbiased standard deviation, as torch.std (NaN for fewer than two values).</summary>
    public static double StdDev(IReadOnlyList<double> values)
    {
        if (values.Count < 2) return double.NaN;
        double mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
    }

    /// <summary>The <paramref name="q"/> quantile of ascending <paramref name="sorted"/> values, as torch.quantile's
    /// default linear interpolation.</summary>
    public static double Quantile(IReadOnlyList<double> sorted, double q)
    {
        double position = q * (sorted.Count - 1);
        int below = (int)Math.Floor(position), above = Math.Min(sorted.Count - 1, below + 1);
        return sorted[below] + (sorted[above] - sorted[below]) * (position - below);
    }
}
