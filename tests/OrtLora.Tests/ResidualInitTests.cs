using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>PiSSA (--init-lora-weights pissa_niter_K) and OLoRA (olora): A and B start from W, which keeps the residual.</summary>
public class ResidualInitTests
{
    static string Injected(string arch, string file, string init = "pissa_niter_8")
    {
        var output = Path.Combine(Shared.TempDir(), "residual.onnx");
        OrtloraOk(["inject", Shared.Peft(arch, file), "-o", output, "--init-lora-weights", init, "--target-modules", "all-linear",
            "--r", "4", "--lora-alpha", "8"]);
        return output;
    }

    /// <summary>The largest singular value of W [rows, cols] by power iteration on WᵀW, in double: independent of the
    /// randomized SVD under test.</summary>
    static double TopSingularValue(float[] w, int rows, int cols)
    {
        var v = Enumerable.Range(0, cols).Select(i => 1.0 + 0.01 * i).ToArray();
        double sigma = 0;
        for (int it = 0; it < 500; it++)
        {
            var u = new double[rows];
            for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) u[r] += w[r * cols + c] * v[c];
            var next = new double[cols];
            for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) next[c] += w[r * cols + c] * u[r];
            double norm = Math.Sqrt(next.Sum(x => x * x));
            sigma = Math.Sqrt(norm);
            v = next.Select(x => x / norm).ToArray();
        }
        return sigma;
    }

    /// <summary>W − scale·B·A + scale·B·A is W: the injected model computes the original. B's columns and A's rows are
    /// orthogonal, both scaled by √(σ/scale) in descending order, and the first σ is W's largest singular value.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void PissaStartsFromThePrincipalPartAndKeepsTheModel(string arch, string file)
    {
        var reference = Reference(arch);
        var path = Injected(arch, file);
        Assert.That(Shared.MaxAbsDiff(Logits(path, reference), reference["logits_base"].AsFloats()), Is.LessThan(2e-5f));
        using var original = OnnxModel.Load(Shared.Peft(arch, file));
        using var model = OnnxModel.Load(path);
        var lora = LoraModel.Read(model)!;
        foreach (var adapter in lora.Adapters.Take(3))
        {
            var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
            var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraB));
            int r = adapter.R, inDim = (int)adapter.In, outDim = (int)adapter.Out;
            double Gram(float[] m, int rows, int cols, int i, int j, bool byColumn) => byColumn
                ? Enumerable.Range(0, rows).Sum(k => (double)m[k * cols + i] * m[k * cols + j])
                : Enumerable.Range(0, cols).Sum(k => (double)m[i * cols + k] * m[j * cols + k]);
            var diagonal = Enumerable.Range(0, r).Select(i => Gram(b, outDim, r, i, i, byColumn: true)).ToArray();
            for (int i = 0; i < r; i++)
            {
                Assert.That(Gram(a, r, inDim, i, i, byColumn: false), Is.EqualTo(diagonal[i]).Within(1e-4).Percent, "AAᵀ = BᵀB = S/scale");
                if (i > 0) Assert.That(diagonal[i], Is.LessThanOrEqualTo(diagonal[i - 1] * (1 + 1e-6)), "descending");
                for (int j = 0; j < i; j++)
                    Assert.That(Math.Abs(Gram(b, outDim, r, i, j, byColumn: true)), Is.LessThan(1e-5 * diagonal[0]), "orthogonal columns of B");
            }
            // W [out, in] from the original model in either layout; σ₁ = scale·(BᵀB)₁₁.
            var w = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == adapter.BaseWeight));
            var outIn = adapter.Layout == WeightLayout.OutIn ? w
                : Enumerable.Range(0, outDim * inDim).Select(k => w[(k % inDim) * outDim + k / inDim]).ToArray();
            // A randomized range finder with q = r (torch's svd_lowrank, as PEFT calls it) approaches σ₁ from below; on
            // these random weights, whose spectrum has no gap, 8 iterations get within a few percent.
            double sigma1 = TopSingularValue(outIn, outDim, inDim);
            Assert.That(adapter.Scale * diagonal[0], Is.LessThanOrEqualTo(sigma1 * (1 + 1e-6)).And.GreaterThan(0.96 * sigma1), adapter.Module);
            // The base weight now holds the residual W − scale·B·A.
            var residual = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.BaseWeight));
            Assert.That(Shared.MaxAbsDiff(residual, w), Is.GreaterThan(1e-3f), "W was rewritten");
        }
    }

    /// <summary>On a matrix with a spectral gap (rank 4 plus noise 1e-4) the factorization recovers the singular values
    /// and the rank-4 part: B·A·scale = U·S·Vᵀ, with √(σ/scale) in each factor.</summary>
    [Test]
    public void FactorRecoversTheSingularTriplets()
    {
        const int rows = 40, cols = 30, r = 4;
        var rng = new Random(1);
        double[] Orthonormal(int n)
        {
            var m = Enumerable.Range(0, n * r).Select(_ => rng.NextDouble() - 0.5).ToArray();
            for (int j = 0; j < r; j++)
            {
                for (int p = 0; p < j; p++)
                {
                    double d = Enumerable.Range(0, n).Sum(i => m[i * r + j] * m[i * r + p]);
                    for (int i = 0; i < n; i++) m[i * r + j] -= d * m[i * r + p];
                }
                double norm = Math.Sqrt(Enumerable.Range(0, n).Sum(i => m[i * r + j] * m[i * r + j]));
                for (int i = 0; i < n; i++) m[i * r + j] /= norm;
            }
            return m;
        }
        var (u, v) = (Orthonormal(rows), Orthonormal(cols));
        double[] sigma = [10, 8, 6, 4];
        var lowRank = new double[rows * cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                lowRank[i * cols + j] = Enumerable.Range(0, r).Sum(k => u[i * r + k] * sigma[k] * v[j * r + k]);
        var w = lowRank.Select(x => x + 1e-4 * (rng.NextDouble() - 0.5)).ToArray();
        const double scale = 2;
        var (a, b) = ResidualInit.Pissa(w, rows, cols, r, scale, iterations: 4, new Random(7));
        for (int k = 0; k < r; k++)
        {
            double bb = Enumerable.Range(0, rows).Sum(i => (double)b[i * r + k] * b[i * r + k]);
            Assert.That(bb * scale, Is.EqualTo(sigma[k]).Within(1e-4), $"σ{k}");
        }
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                Assert.That(scale * Enumerable.Range(0, r).Sum(k => (double)b[i * r + k] * a[k * cols + j]), Is.EqualTo(lowRank[i * cols + j]).Within(1e-4));
    }

    /// <summary>After training moves A and B, export gives PEFT's converted adapter (rank 2r, A' = [A; A₀],
    /// B' = [B, −B₀]): injected into the original model it reproduces the PiSSA or OLoRA model, as the merge does.</summary>
    [TestCase("llama", "model.dynamo.onnx", "pissa_niter_8")]
    [TestCase("gpt2", "model.torchscript.onnx", "pissa_niter_8")]
    [TestCase("llama", "model.torchscript.onnx", "olora")]
    [TestCase("gpt2", "model.dynamo.onnx", "olora")]
    public void ExportIsALoraForTheOriginalWeights(string arch, string file, string init)
    {
        var reference = Reference(arch);
        var path = Injected(arch, file, init);
        using (var model = OnnxModel.Load(path))
        {
            var rng = new Random(3);
            foreach (var t in model.Graph.Initializer.Where(t => t.Name.EndsWith(".lora_A.weight") || t.Name.EndsWith(".lora_B.weight")))
                Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v + 0.05f * (float)(rng.NextDouble() * 2 - 1)).ToArray(), t.DataType));
            model.Save(path);
        }
        var trained = Logits(path, reference);
        Assert.That(Shared.MaxAbsDiff(trained, reference["logits_base"].AsFloats()), Is.GreaterThan(1e-3f));
        var dir = Path.Combine(Shared.TempDir(), "adapter");
        OrtloraOk("export-adapter", path, "-o", dir);
        var exported = PeftAdapter.Load(dir);
        Assert.That((exported.Config.R, exported.Config.LoraAlpha, exported.Config.Init), Is.EqualTo((8, 16.0, "kaiming")));
        Assert.That(exported.Modules().Select(m => m.A.Shape[0]), Has.All.EqualTo(8));
        var reinjected = Path.Combine(Shared.TempDir(), "re.onnx");
        OrtloraOk("inject", Shared.Peft(arch, file), "-o", reinjected, "--init-from", dir);
        float max = trained.Max(Math.Abs);
        Assert.That(Shared.MaxAbsDiff(Logits(reinjected, reference), trained), Is.LessThan(1e-4f * max));
        var merged = Path.Combine(Shared.TempDir(), "merged.onnx");
        OrtloraOk("merge", path, "-o", merged);
        Assert.That(Shared.MaxAbsDiff(Logits(merged, reference), trained), Is.LessThan(1e-4f * max));
        using var mergedModel = OnnxModel.Load(merged);
        Assert.That(mergedModel.Graph.Initializer.Select(t => t.Name), Has.None.Contains("pissa"));
    }

    /// <summary>OLoRA: B = Q_r has orthonormal columns, A = R_r = Q_rᵀ·W is upper triangular in its first r columns
    /// (W [out, in]), W's first r columns are B·A's exactly, and the injected model computes the original.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void OloraStartsFromTheQrOfW(string arch, string file)
    {
        var reference = Reference(arch);
        var path = Injected(arch, file, "olora");
        Assert.That(Shared.MaxAbsDiff(Logits(path, reference), reference["logits_base"].AsFloats()), Is.LessThan(2e-5f));
        using var original = OnnxModel.Load(Shared.Peft(arch, file));
        using var model = OnnxModel.Load(path);
        foreach (var adapter in LoraModel.Read(model)!.Adapters.Take(3))
        {
            var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
            var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == adapter.LoraB));
            int r = adapter.R, inDim = (int)adapter.In, outDim = (int)adapter.Out;
            for (int i = 0; i < r; i++)
                for (int j = 0; j <= i; j++)
                    Assert.That(Enumerable.Range(0, outDim).Sum(o => (double)b[o * r + i] * b[o * r + j]), Is.EqualTo(i == j ? 1 : 0).Within(1e-5), "QᵀQ = I");
            for (int c = 0; c < r; c++)
                for (int i = 0; i < c; i++) Assert.That(a[c * inDim + i], Is.EqualTo(0).Within(1e-5), "R is upper triangular");
            var w = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == adapter.BaseWeight));
            for (int o = 0; o < outDim; o++)
                for (int i = 0; i < r; i++)
                {
                    double wOi = adapter.Layout == WeightLayout.OutIn ? w[o * inDim + i] : w[i * outDim + o];
                    Assert.That(Enumerable.Range(0, r).Sum(k => (double)b[o * r + k] * a[k * inDim + i]), Is.EqualTo(wOi).Within(1e-5), "Q_r·R_r spans W's first r columns");
                }
        }
    }

    [Test]
    public void WhatPissaDoesNotCoverIsOneErrorEach()
    {
        var dir = Shared.TempDir();
        (string, string)[] cases =
        [
            ("--init-lora-weights pissa", "pissa_niter_K"),
            ("--init-lora-weights pissa_niter_4 --use-dora", "pissa_niter_4 on 'transformer.h.0.attn.c_attn': with DoRA it is not supported"),
            ("--init-lora-weights pissa_niter_4 --variant canonical", "--variant performant"),
            ("--init-lora-weights lora_ga", "unknown init 'lora_ga'"),
        ];
        foreach (var (options, message) in cases)
        {
            var result = Ortlora(["inject", Shared.Peft("gpt2", "model.dynamo.onnx"), "-o", Path.Combine(dir, "x.onnx"), "--target-modules", "all-linear", .. options.Split(' ')]);
            Assert.That(result.ExitCode, Is.Not.Zero, options);
            Assert.That(result.Error, Does.Contain(message), options);
        }
        Assert.That(Directory.GetFiles(dir), Is.Empty);
    }
}
