using System.Text.Json.Nodes;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.DataInitKit;

namespace OrtLora.Tests;

/// <summary>CorDA (--init-lora-weights corda): A and B from the SVD of W·C, C the covariance of the layer's inputs on
/// the training data, the weight keeping the residual (PEFT's corda.py and corda_init).</summary>
public class CordaTests
{
    static double[] Multiply(double[] x, int rows, int inner, double[] y, int cols)
    {
        var z = new double[rows * cols];
        for (int i = 0; i < rows; i++) for (int k = 0; k < inner; k++) for (int j = 0; j < cols; j++) z[i * cols + j] += x[i * inner + k] * y[k * cols + j];
        return z;
    }

    static double[] Random(Random rng, int count) => [.. Enumerable.Range(0, count).Select(_ => rng.NextDouble() * 2 - 1)];

    /// <summary>The top singular value of m [rows, cols] by power iteration on mᵀm.</summary>
    static double TopSingularValue(double[] m, int rows, int cols)
    {
        var v = Enumerable.Range(0, cols).Select(i => 1.0 + 0.1 * i).ToArray();
        double sigma = 0;
        for (int it = 0; it < 2000; it++)
        {
            var u = Multiply(m, rows, cols, v, 1);
            var next = new double[cols];
            for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) next[c] += m[r * cols + c] * u[r];
            double norm = Math.Sqrt(next.Sum(x => x * x));
            sigma = Math.Sqrt(norm);
            v = next.Select(x => x / norm).ToArray();
        }
        return sigma;
    }

    static double FrobeniusSquared(double[] m) => m.Sum(x => x * x);

    /// <summary>With W = U·S·(C⁻¹·Vh)ᵀ (C damped by 1% of its mean diagonal): all min(out, in) triplets rebuild W; ipm's
    /// r carry the largest singular values of W·C and kpm's the rest, so their ‖scale·B·A·C‖² add up to ‖W·C‖²; B's
    /// columns and the rows of A·C are orthogonal, each of squared norm σ/scale. Tall and wide weights.</summary>
    [TestCase(10, 6)]
    [TestCase(6, 10)]
    public void FactorsSplitWTimesTheCovariance(int outDim, int inDim)
    {
        var rng = new Random(5);
        var w = Random(rng, outDim * inDim);
        var x = Random(rng, 40 * inDim);
        var c = new double[inDim * inDim];
        for (int t = 0; t < 40; t++) for (int i = 0; i < inDim; i++) for (int j = 0; j < inDim; j++) c[i * inDim + j] += x[t * inDim + i] * x[t * inDim + j] / 40;
        double meanDiagonal = Enumerable.Range(0, inDim).Average(i => c[i * inDim + i]);
        var damped = (double[])c.Clone();
        for (int i = 0; i < inDim; i++) damped[i * inDim + i] += 0.01 * meanDiagonal;
        const double scale = 2;
        int minDim = Math.Min(outDim, inDim);
        double[] Delta((float[] A, float[] B) f, int r) => Multiply(f.B.Select(v => v * scale).ToArray(), outDim, r, f.A.Select(v => (double)v).ToArray(), inDim);

        var whole = Corda.Factors(w, outDim, inDim, c, minDim, scale, "ipm");
        var rebuilt = Delta(whole, minDim);
        for (int i = 0; i < w.Length; i++) Assert.That(rebuilt[i], Is.EqualTo(w[i]).Within(1e-5), "all triplets give W back");

        const int r = 2;
        var ipm = Corda.Factors(w, outDim, inDim, c, r, scale, "ipm");
        var kpm = Corda.Factors(w, outDim, inDim, c, minDim - r, scale, "kpm");
        var wc = Multiply(w, outDim, inDim, damped, inDim);
        var ipmC = Multiply(Delta(ipm, r), outDim, inDim, damped, inDim);
        var kpmC = Multiply(Delta(kpm, minDim - r), outDim, inDim, damped, inDim);
        Assert.That(FrobeniusSquared(ipmC) + FrobeniusSquared(kpmC), Is.EqualTo(FrobeniusSquared(wc)).Within(1e-4).Percent);
        Assert.That(FrobeniusSquared(ipmC), Is.GreaterThan(FrobeniusSquared(kpmC) * r / (minDim - r)), "ipm holds the largest");
        Assert.That(TopSingularValue(ipmC, outDim, inDim), Is.EqualTo(TopSingularValue(wc, outDim, inDim)).Within(1e-4).Percent);

        // ipm: B's columns and (A·C)'s rows orthogonal, squared norms σ/scale, σ₁ the largest
        var ac = Multiply(ipm.A.Select(v => (double)v).ToArray(), r, inDim, damped, inDim);
        double sigma1 = TopSingularValue(wc, outDim, inDim);
        for (int p = 0; p < r; p++)
            for (int q = 0; q < r; q++)
            {
                double bb = Enumerable.Range(0, outDim).Sum(o => (double)ipm.B[o * r + p] * ipm.B[o * r + q]);
                double aa = Enumerable.Range(0, inDim).Sum(i => ac[p * inDim + i] * ac[q * inDim + i]);
                if (p != q) { Assert.That(bb, Is.EqualTo(0).Within(1e-5)); Assert.That(aa, Is.EqualTo(0).Within(1e-4)); }
                else
                {
                    Assert.That(aa, Is.EqualTo(bb).Within(1e-4).Percent, "both carry √(σ/scale)");
                    if (p == 0) Assert.That(bb, Is.EqualTo(sigma1 / scale).Within(1e-4).Percent);
                }
            }
    }

    /// <summary>ipm on wide layers takes the randomized SVD: on a weight with a spectral gap after r, its B·A equals the
    /// exact Jacobi's.</summary>
    [Test]
    public void IpmsRandomizedSvdGivesTheExactFactors()
    {
        const int outDim = 40, inDim = 30, r = 3;
        var rng = new Random(9);
        // W = Σ of 3 strong rank-one terms plus small noise: a clear gap after the third singular value
        var w = Random(rng, outDim * inDim).Select(v => v * 0.01).ToArray();
        for (int k = 0; k < r; k++)
        {
            var u = Random(rng, outDim);
            var v = Random(rng, inDim);
            for (int o = 0; o < outDim; o++) for (int i = 0; i < inDim; i++) w[o * inDim + i] += (3 - k) * u[o] * v[i];
        }
        var x = Random(rng, 60 * inDim);
        var c = new double[inDim * inDim];
        for (int t = 0; t < 60; t++) for (int i = 0; i < inDim; i++) for (int j = 0; j < inDim; j++) c[i * inDim + j] += x[t * inDim + i] * x[t * inDim + j] / 60;
        double[] Delta((float[] A, float[] B) f) => Multiply(f.B.Select(v => (double)v).ToArray(), outDim, r, f.A.Select(v => (double)v).ToArray(), inDim);
        var exact = Delta(Corda.Factors(w, outDim, inDim, c, r, 2, "ipm"));
        var randomized = Delta(Corda.Factors(w, outDim, inDim, c, r, 2, "ipm", exactUpTo: 0));
        double largest = exact.Max(Math.Abs);
        for (int i = 0; i < exact.Length; i++) Assert.That(randomized[i], Is.EqualTo(exact[i]).Within(1e-5 * largest));
    }

    /// <summary>The covariance of one layer's inputs over the first <paramref name="samples"/> sequences, as PEFT's hook
    /// sums it (each sequence's attended X divided by |max X|), from a plain ONNX Runtime run with the input as an output.</summary>
    static double[] Covariance(OnnxModel model, LoraAdapter adapter, TrainingData data, int samples)
    {
        int n = (int)adapter.In, seen = 0;
        var sum = new double[n * n];
        foreach (var (batch, x) in DataInitKit.LayerInputs(model, adapter, data))
        {
            for (int row = 0; row < batch.BatchSize && seen < samples; row++, seen++)
            {
                var positions = Enumerable.Range(row * batch.SeqLength, batch.SeqLength).Where(p => batch.AttentionMask[p] != 0).ToList();
                double max = Math.Abs(positions.Max(p => Enumerable.Range(0, n).Max(f => (double)x[p * n + f])));
                foreach (var p in positions)
                    for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) sum[i * n + j] += x[p * n + i] / max * (x[p * n + j] / max);
            }
            if (seen >= samples) break;
        }
        return [.. sum.Select(v => v / samples)];
    }

    /// <summary>On graphs/tiny: the model computes what it did (the weights hold the residual); an adapter's factors are
    /// those of <see cref="Corda.Factors"/> with the covariance computed here independently; the model records the
    /// initial factors for the export.</summary>
    [TestCase("ipm")]
    [TestCase("kpm")]
    public void CordaKeepsTheModelAndTakesTheCovariancesFactors(string method)
    {
        using var model = OnnxModel.Load(DataInitKit.Injected("corda", "--r", "4", "--corda-method", method, "--corda-samples", "20"));
        var lora = LoraModel.Read(model)!;
        using var data = DemoData();
        var feeds = data.Batches(new DataPosition(0, 0)).First().ToFeeds(withLabels: false);
        var before = OrtRun.Run(model, feeds)["logits"].Floats;
        var down = lora.Adapters.Single(a => a.Module == "model.layers.1.mlp.down_proj");
        var covariance = Covariance(model, down, data, 20);
        var w = Values(model, down.BaseWeight);

        Corda.Initialize(model, lora, data.Batches(new DataPosition(0, 0)));
        var after = OrtRun.Run(model, feeds)["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(after, before), Is.LessThan(2e-4f * before.Max(Math.Abs)), "W − scale·B·A + scale·B·A = W");
        var adapter = LoraModel.Read(model)!.Adapters.Single(a => a.Module == down.Module);
        Assert.That(adapter.InitialA, Is.Not.Null);
        Assert.That(Values(model, adapter.InitialA!), Is.EqualTo(Values(model, adapter.LoraA)));
        int outDim = (int)down.Out, inDim = (int)down.In;
        var weight = new double[outDim * inDim];
        for (int o = 0; o < outDim; o++) for (int i = 0; i < inDim; i++)
                weight[o * inDim + i] = down.Layout == WeightLayout.OutIn ? w[o * inDim + i] : w[i * outDim + o];
        var expected = Corda.Factors(weight, outDim, inDim, covariance, 4, down.Scale, method);
        double[] Product(float[] a, float[] b) => Multiply(b.Select(v => (double)v).ToArray(), outDim, 4, a.Select(v => (double)v).ToArray(), inDim);
        var ours = Product(Values(model, down.LoraA), Values(model, down.LoraB));
        var theirs = Product(expected.A, expected.B);
        double largest = theirs.Max(Math.Abs);
        Assert.That(largest, Is.GreaterThan(1e-3));
        for (int i = 0; i < ours.Length; i++) Assert.That(ours[i], Is.EqualTo(theirs[i]).Within(2e-3 * largest), $"B·A[{i}]");
    }

    /// <summary>Through the CLI: the adapter is PEFT's conversion for the original weights (rank 2r, lora_alpha doubled),
    /// which, merged into the plain model, gives the model `train --merge` wrote; a resumed run rebuilds the residual and
    /// ends with the straight run's adapter.</summary>
    [Test]
    public void TrainWithCordaExportsTheConvertedAdapterAndResumes()
    {
        var model = DataInitKit.Injected("corda", "--r", "4", "--lora-alpha", "8", "--corda-samples", "16");
        string[] Args(string dir) => ["train", model, "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", dir, "--max-steps", "4",
            "--save-steps", "2", "--plain-log", "--max-seq-length", "128", "--learning-rate", "1e-3", "--merge"];
        var (straight, _) = AssertResumedRunEndsLikeStraight(Args, "checkpoint-4");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(straight, "adapter_config.json")))!;
        Assert.That(config["r"]!.GetValue<int>(), Is.EqualTo(8));
        Assert.That(config["lora_alpha"]!.GetValue<double>(), Is.EqualTo(16));
        var merged = Path.Combine(Shared.TempDir(), "merged.onnx");
        OrtloraOk("merge", Tiny("model.onnx"), "--adapter", straight, "-o", merged);
        using var data = DemoData();
        var feeds = data.Batches(new DataPosition(0, 0)).First().ToFeeds(withLabels: false);
        using var ours = OnnxModel.Load(Path.Combine(straight, "merged", "model.onnx"));
        using var viaAdapter = OnnxModel.Load(merged);
        var expected = OrtRun.Run(ours, feeds)["logits"].Floats;
        using var plain = OnnxModel.Load(Tiny("model.onnx"));
        Assert.That(Shared.MaxAbsDiff(expected, OrtRun.Run(plain, feeds)["logits"].Floats), Is.GreaterThan(1e-3f), "training moved the model");
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(viaAdapter, feeds)["logits"].Floats, expected), Is.LessThan(2e-4f * expected.Max(Math.Abs)));
    }

    [Test]
    public void CordaRefusesWhatItCannotDo()
    {
        var dir = Shared.TempDir();
        var dora = Ortlora("inject", Tiny("model.onnx"), "-o", Path.Combine(dir, "d.onnx"), "--init-lora-weights", "corda", "--use-dora");
        Assert.That(dora.Error, Does.Contain("corda on 'model.layers.0.self_attn.q_proj': with DoRA it is not supported"));
        var grpo = Ortlora("grpo", DataInitKit.Injected("corda"), "--data", Tiny("demo_prompts.parquet"), "--reward-funcs", "exact_match", "-o", Path.Combine(dir, "grpo"));
        Assert.That(grpo.Error, Does.Contain("init_lora_weights corda"));
        var stray = Ortlora("inject", Tiny("model.onnx"), "-o", Path.Combine(dir, "x.onnx"), "--corda-method", "kpm");
        Assert.That(stray.Error, Does.Contain("--corda-method is an option of CorDA"));
        var wide = Ortlora("train", DataInitKit.Injected("corda", "--r", "100"), "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", Path.Combine(dir, "w"), "--max-steps", "1");
        Assert.That(wide.Error, Does.Contain("r = 100 exceeds the weight's smaller side 64"));
    }
}
