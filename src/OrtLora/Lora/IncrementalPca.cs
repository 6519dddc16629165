using OrtLora.Deploy;

namespace OrtLora.Lora;

/// <summary>Principal components of a stream of row batches, as scikit-learn's IncrementalPCA.partial_fit computes
/// them (PEFT's torch port, which EVA runs in its low-rank mode): each batch is centred on its own mean and stacked
/// under the components so far (scaled by their singular values) and a mean-correction row; the stack's top right
/// singular vectors are the new components. The SVD is torch.svd_lowrank's: a Gaussian range finder of width
/// q = 2·components and 4 subspace iterations, in double, from a seeded generator (so runs repeat exactly).</summary>
public sealed class IncrementalPca(int components, int features, int seed = 0)
{
    readonly Random _rng = new(seed);

    public int Count => components;
    public int Features => features;
    /// <summary>The components as rows [Count, Features], unit length, each signed so that its largest-magnitude entry
    /// is positive (scikit-learn's svd_flip on V); null before the first batch.</summary>
    public double[]? Components { get; private set; }
    public double[] SingularValues { get; private set; } = [];
    /// <summary>Each component's share of the total variance of every row seen so far.</summary>
    public double[] ExplainedVarianceRatio { get; private set; } = [];
    public long SamplesSeen { get; private set; }
    double[] _mean = [], _variance = [];

    /// <summary>One batch x [rows, Features] (row-major).</summary>
    public void PartialFit(double[] x, int rows)
    {
        if (x.Length != (long)rows * features) throw new ArgumentException($"expected {rows}×{features} values, got {x.Length}");
        if (rows == 0) return;
        var (mean, variance, total) = MeanAndVariance(x, rows);
        double[] stack;
        int stackRows;
        if (Components is null)
        {
            stack = Centered(x, rows, mean);
            stackRows = rows;
        }
        else
        {
            var batchMean = new double[features];
            for (int i = 0; i < rows; i++) for (int f = 0; f < features; f++) batchMean[f] += x[i * features + f];
            for (int f = 0; f < features; f++) batchMean[f] /= rows;
            stackRows = components + rows + 1;
            stack = new double[(long)stackRows * features];
            for (int c = 0; c < components; c++)
                for (int f = 0; f < features; f++) stack[c * features + f] = SingularValues[c] * Components[c * features + f];
            Array.Copy(Centered(x, rows, batchMean), 0, stack, (long)components * features, (long)rows * features);
            double correction = Math.Sqrt((double)SamplesSeen / total * rows);
            for (int f = 0; f < features; f++) stack[(long)(stackRows - 1) * features + f] = correction * (_mean[f] - batchMean[f]);
        }
        var (vectors, singular) = TopRightSingularVectors(stack, stackRows);
        double totalVariance = 0;
        for (int f = 0; f < features; f++) totalVariance += variance[f] * total;
        int kept = Math.Min(components, singular.Length);
        Components = vectors[..(kept * features)];
        SingularValues = singular[..kept];
        ExplainedVarianceRatio = [.. SingularValues.Select(s => s * s / totalVariance)];
        _mean = mean;
        _variance = variance;
        SamplesSeen = total;
    }

    double[] Centered(double[] x, int rows, double[] mean)
    {
        var y = new double[x.Length];
        for (int i = 0; i < rows; i++) for (int f = 0; f < features; f++) y[i * features + f] = x[i * features + f] - mean[f];
        return y;
    }

    /// <summary>The running mean and (population) variance of every row seen, batch by batch (Chan et al.'s update, as
    /// scikit-learn's _incremental_mean_and_var).</summary>
    (double[] Mean, double[] Variance, long Total) MeanAndVariance(double[] x, int rows)
    {
        long total = SamplesSeen + rows;
        var sum = new double[features];
        for (int i = 0; i < rows; i++) for (int f = 0; f < features; f++) sum[f] += x[i * features + f];
        var mean = new double[features];
        var variance = new double[features];
        for (int f = 0; f < features; f++)
        {
            double batchMean = sum[f] / rows, squares = 0;
            for (int i = 0; i < rows; i++) { double d = x[i * features + f] - batchMean; squares += d * d; }
            double lastSum = SamplesSeen == 0 ? 0 : _mean[f] * SamplesSeen;
            mean[f] = (lastSum + sum[f]) / total;
            double unnormalized = squares;
            if (SamplesSeen > 0)
            {
                double ratio = (double)SamplesSeen / rows, gap = lastSum / ratio - sum[f];
                unnormalized += _variance[f] * SamplesSeen + ratio / total * gap * gap;
            }
            variance[f] = unnormalized / total;
        }
        return (mean, variance, total);
    }

    /// <summary>torch.svd_lowrank(a, q, niter=4)'s right singular vectors (rows, flipped) and singular values, largest first.</summary>
    (double[] Vectors, double[] Singular) TopRightSingularVectors(double[] a, int rows)
    {
        int q = Math.Min(2 * components, Math.Min(rows, features));
        var (_, singular, v) = LowRank.SvdLowRank(a, rows, features, q, iterations: 4, _rng);
        var vectors = new double[q * features];
        for (int c = 0; c < q; c++)
        {
            int argMax = 0;
            for (int f = 0; f < features; f++)
            {
                vectors[c * features + f] = v[f * q + c];
                if (Math.Abs(v[f * q + c]) > Math.Abs(v[argMax * q + c])) argMax = f;
            }
            if (v[argMax * q + c] < 0)
                for (int f = 0; f < features; f++) vectors[c * features + f] = -vectors[c * features + f];
        }
        return (vectors, singular);
    }
}
