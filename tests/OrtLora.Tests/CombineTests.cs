using System.Text.Json.Nodes;
using OrtLora.Cli;
using OrtLora.Deploy;
using OrtLora.Lora;

namespace OrtLora.Tests;

/// <summary>Adapter arithmetic checked against its definition: the combined adapter's ΔW = scale·B·A must be the
/// weighted sum of the inputs' ΔW (computed here in plain loops from the files).</summary>
public class CombineTests
{
    const string Q0 = "base_model.model.model.layers.0.self_attn.q_proj";
    const string K1 = "base_model.model.model.layers.1.self_attn.k_proj";

    /// <summary>ΔW [out, in] of one module read straight from a PEFT directory (scale = lora_alpha / r).</summary>
    static double[,] Delta(string dir, string module, bool embedding = false)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        double scale = config["lora_alpha"]!.GetValue<double>() / config["r"]!.GetValue<double>();
        var tensors = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        var a = tensors[module + (embedding ? ".lora_embedding_A" : ".lora_A.weight")];
        var b = tensors[module + (embedding ? ".lora_embedding_B" : ".lora_B.weight")];
        int r = (int)a.Shape[0], inDim = (int)a.Shape[1], outDim = (int)b.Shape[0];
        var (av, bv) = (a.AsFloats(), b.AsFloats());
        var d = new double[outDim, inDim];
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
            {
                double s = 0;
                for (int k = 0; k < r; k++) s += (double)bv[o * r + k] * av[k * inDim + i];
                d[o, i] = scale * s;
            }
        return d;
    }

    static double MaxDiff(double[,] x, double[,] y, double wx = 1, double wy = 1)
    {
        double m = 0;
        for (int i = 0; i < x.GetLength(0); i++) for (int j = 0; j < x.GetLength(1); j++) m = Math.Max(m, Math.Abs(wx * x[i, j] - wy * y[i, j]));
        return m;
    }

    static double[,] WeightedSum(double wa, double[,] a, double wb, double[,] b)
    {
        var s = new double[a.GetLength(0), a.GetLength(1)];
        for (int i = 0; i < a.GetLength(0); i++) for (int j = 0; j < a.GetLength(1); j++) s[i, j] = wa * a[i, j] + wb * b[i, j];
        return s;
    }

    /// <summary>A second adapter for the fixture llama: rank 2, lora_alpha 3, only on layer 0's q_proj and layer 1's
    /// k_proj (so the other modules exist in one input only).</summary>
    static string SecondAdapter()
    {
        var fixture = Shared.Peft("llama", "adapter");
        var dir = Path.Combine(Shared.TempDir(), "second");
        Directory.CreateDirectory(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(fixture, "adapter_config.json")))!.AsObject();
        config["r"] = 2;
        config["lora_alpha"] = 3;
        config["target_modules"] = new JsonArray("q_proj", "k_proj");
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config.ToJsonString());
        var rng = new Random(7);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        SafeTensors.Write(Path.Combine(dir, "adapter_model.safetensors"), new Dictionary<string, SafeTensor>
        {
            [Q0 + ".lora_A.weight"] = SafeTensor.FromFloats([2, 64], Rand(128)),
            [Q0 + ".lora_B.weight"] = SafeTensor.FromFloats([64, 2], Rand(128)),
            [K1 + ".lora_A.weight"] = SafeTensor.FromFloats([2, 64], Rand(128)),
            [K1 + ".lora_B.weight"] = SafeTensor.FromFloats([32, 2], Rand(64)),
        });
        return dir;
    }

    [Test]
    public void CatIsTheExactWeightedSumOfDeltas()
    {
        var first = Shared.Peft("llama", "adapter");
        var second = SecondAdapter();
        var output = Path.Combine(Shared.TempDir(), "combined");
        int rank = AdapterCombiner.Combine([(first, 0.7), (second, 0.3)], output);
        Assert.That(rank, Is.EqualTo(6));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.That((config["r"]!.GetValue<int>(), config["lora_alpha"]!.GetValue<double>()), Is.EqualTo((6, 6.0)));
        Assert.That(config["target_modules"]!.AsArray().Count, Is.EqualTo(7), "union of the target modules");
        // PEFT's layout: B blocks copied unchanged, the weight and scale folded into A (0.7·2.0 for the fixture).
        var combined = SafeTensors.Read(Path.Combine(output, "adapter_model.safetensors"));
        var original = SafeTensors.Read(Path.Combine(first, "adapter_model.safetensors"));
        var (b6, b4) = (combined[Q0 + ".lora_B.weight"].AsFloats(), original[Q0 + ".lora_B.weight"].AsFloats());
        for (int o = 0; o < 64; o++)
            for (int r = 0; r < 4; r++) Assert.That(b6[o * 6 + r], Is.EqualTo(b4[o * 4 + r]));
        var (a6, a4) = (combined[Q0 + ".lora_A.weight"].AsFloats(), original[Q0 + ".lora_A.weight"].AsFloats());
        for (int i = 0; i < 4 * 64; i++) Assert.That(a6[i], Is.EqualTo(a4[i] * 1.4f).Within(1e-6f));
        foreach (var module in PeftAdapterDirectory.Load(first).Modules.Keys)
        {
            var expected = module is Q0 or K1 ? WeightedSum(0.7, Delta(first, module), 0.3, Delta(second, module)) : WeightedSum(0.7, Delta(first, module), 0, Delta(first, module));
            Assert.That(MaxDiff(Delta(output, module), expected), Is.LessThan(1e-5), module);
        }
    }

    /// <summary>Adapters with an embedding module (PEFT's lora_embedding_A [r, vocabulary], lora_embedding_B [hidden, r])
    /// combine by the same arithmetic, cat and SVD, and keep the embedding's key names.</summary>
    [Test]
    public void EmbeddingAdaptersCombineUnderTheirOwnKeys()
    {
        const string Embed = "base_model.model.model.embed_tokens";
        var dir = Shared.TempDir();
        var rng = new Random(9);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        string Adapter(string name, int r)
        {
            var path = Path.Combine(dir, name);
            Directory.CreateDirectory(path);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(Shared.Peft("llama", "adapter"), "adapter_config.json")))!.AsObject();
            (config["r"], config["lora_alpha"], config["target_modules"]) = (r, 2 * r, new JsonArray("embed_tokens", "q_proj"));
            File.WriteAllText(Path.Combine(path, "adapter_config.json"), config.ToJsonString());
            SafeTensors.Write(Path.Combine(path, "adapter_model.safetensors"), new Dictionary<string, SafeTensor>
            {
                [Embed + ".lora_embedding_A"] = SafeTensor.FromFloats([r, 100], Rand(r * 100)),
                [Embed + ".lora_embedding_B"] = SafeTensor.FromFloats([64, r], Rand(64 * r)),
                [Q0 + ".lora_A.weight"] = SafeTensor.FromFloats([r, 64], Rand(r * 64)),
                [Q0 + ".lora_B.weight"] = SafeTensor.FromFloats([64, r], Rand(64 * r)),
            });
            return path;
        }
        var (first, second) = (Adapter("first", 2), Adapter("second", 3));
        Assert.That(AdapterCombiner.Combine([(first, 0.6), (second, -0.4)], Path.Combine(dir, "cat")), Is.EqualTo(5));
        AdapterCombiner.Combine([(first, 0.6), (second, -0.4)], Path.Combine(dir, "svd"), rank: 5);
        var keys = SafeTensors.Read(Path.Combine(dir, "cat", "adapter_model.safetensors")).Keys;
        Assert.That(keys, Is.EquivalentTo(new[] { Embed + ".lora_embedding_A", Embed + ".lora_embedding_B", Q0 + ".lora_A.weight", Q0 + ".lora_B.weight" }));
        foreach (var (module, embedding) in new[] { (Embed, true), (Q0, false) })
        {
            var expected = WeightedSum(0.6, Delta(first, module, embedding), -0.4, Delta(second, module, embedding));
            Assert.That(MaxDiff(Delta(Path.Combine(dir, "cat"), module, embedding), expected), Is.LessThan(1e-5), $"cat {module}");
            // PEFT's svd weighs each ΔW (scale 2 here) by w·s
            var peft = WeightedSum(0.6 * 2, Delta(first, module, embedding), -0.4 * 2, Delta(second, module, embedding));
            Assert.That(MaxDiff(Delta(Path.Combine(dir, "svd"), module, embedding), peft), Is.LessThan(1e-5), $"svd at full rank {module}");
        }
    }

    [Test]
    public void NegationGivesMinusDelta()
    {
        var first = Shared.Peft("llama", "adapter");
        var output = Path.Combine(Shared.TempDir(), "negated");
        // A single adapter still goes through cat (PEFT switches to linear; for one adapter both are -ΔW).
        AdapterCombiner.Combine([AdaptersCommand.ParseWeighted(first + ":-1")], output);
        foreach (var module in new[] { Q0, K1 })
            Assert.That(MaxDiff(Delta(output, module), Delta(first, module), 1, -1), Is.LessThan(1e-6), module);
    }

    /// <summary>PEFT's svd: Σ wᵢ·sᵢ·ΔWᵢ with ΔWᵢ = sᵢ·Bᵢ·Aᵢ (the scale counted twice, as add_weighted_adapter does;
    /// the fixture's scale is 2, the second adapter's 1.5), exact at full rank, and at a lower rank its best
    /// approximation.</summary>
    [Test]
    public void SvdAtFullRankReproducesAndTruncationIsOrthogonal()
    {
        var first = Shared.Peft("llama", "adapter");
        var second = SecondAdapter();
        var dir = Shared.TempDir();
        AdapterCombiner.Combine([(first, 0.7), (second, 0.3)], Path.Combine(dir, "cat"));
        AdapterCombiner.Combine([(first, 0.7), (second, 0.3)], Path.Combine(dir, "full"), rank: 6);
        AdapterCombiner.Combine([(first, 0.7), (second, 0.3)], Path.Combine(dir, "two"), rank: 2);
        foreach (var module in new[] { Q0, K1 })
        {
            var exact = WeightedSum(0.7 * 2, Delta(first, module), 0.3 * 1.5, Delta(second, module));
            Assert.That(MaxDiff(Delta(Path.Combine(dir, "full"), module), exact), Is.LessThan(1e-5), module);
            Assert.That(MaxDiff(Delta(Path.Combine(dir, "cat"), module), WeightedSum(0.7, Delta(first, module), 0.3, Delta(second, module))), Is.LessThan(1e-5),
                "cat is the plain weighted sum");
            // Eckart–Young: the best rank-2 approximation leaves a residual orthogonal to it (Frobenius inner product).
            var approx = Delta(Path.Combine(dir, "two"), module);
            double inner = 0, norm = 0;
            for (int i = 0; i < exact.GetLength(0); i++)
                for (int j = 0; j < exact.GetLength(1); j++) { inner += (exact[i, j] - approx[i, j]) * approx[i, j]; norm += approx[i, j] * approx[i, j]; }
            Assert.That(Math.Abs(inner), Is.LessThan(1e-5 * norm), module);
            Assert.That(norm, Is.GreaterThan(0), module);
        }
    }

    [Test]
    public void SvdOfARankDeficientSumIsStillExact()
    {
        // 0.5·X + 0.5·X: the concatenated factors have rank 8 but the product only rank 4 (PEFT's svd: scale 2 · X).
        var first = Shared.Peft("llama", "adapter");
        var output = Path.Combine(Shared.TempDir(), "halves");
        AdapterCombiner.Combine([(first, 0.5), (first, 0.5)], output, rank: 4);
        foreach (var module in PeftAdapterDirectory.Load(first).Modules.Keys)
            Assert.That(MaxDiff(Delta(output, module), Delta(first, module), 1, 2), Is.LessThan(1e-5), module);
    }

    [Test]
    public void ShapeMismatchAndBadDirectoriesGiveClearMessages()
    {
        var first = Shared.Peft("llama", "adapter");
        var e = Assert.Throws<OrtLoraException>(() => AdapterCombiner.Combine([(first, 1), (Shared.TempDir(), 1)], Path.Combine(Shared.TempDir(), "x")))!;
        Assert.That(e.Message, Does.Contain("not a PEFT adapter directory"));
        // A module whose input size differs from the fixture's (as an adapter for another base model would).
        var clash = SecondAdapter();
        var tensors = SafeTensors.Read(Path.Combine(clash, "adapter_model.safetensors"));
        tensors[Q0 + ".lora_A.weight"] = SafeTensor.FromFloats([2, 32], new float[64]);
        SafeTensors.Write(Path.Combine(clash, "adapter_model.safetensors"), tensors);
        var output = Path.Combine(Shared.TempDir(), "never");
        e = Assert.Throws<OrtLoraException>(() => AdapterCombiner.Combine([(first, 1), (clash, 1)], output))!;
        Assert.That(e.Message, Does.Contain("q_proj").And.Contain("cannot be combined"));
        Assert.That(Directory.Exists(output), Is.False, "no partial output");
    }

    [Test]
    public void WeightSpecsParseWithAndWithoutWeights()
    {
        Assert.That(AdaptersCommand.ParseWeighted("a/b:0.7"), Is.EqualTo(("a/b", 0.7)));
        Assert.That(AdaptersCommand.ParseWeighted("a/b:-1"), Is.EqualTo(("a/b", -1.0)));
        Assert.That(AdaptersCommand.ParseWeighted("a/b"), Is.EqualTo(("a/b", 1.0)));
        Assert.That(AdaptersCommand.ParseWeighted("C:\\x\\y"), Is.EqualTo(("C:\\x\\y", 1.0)));
    }

    [Test]
    public void CombineVerbWritesTheAdapterAndReportsItsRank()
    {
        var first = Shared.Peft("llama", "adapter");
        var output = Path.Combine(Shared.TempDir(), "verb");
        var (code, stdout, stderr) = DeployCliRunner.Run("adapters", "combine", first + ":0.5", first + ":0.5", "-o", output, "--rank", "4");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("rank 4").And.Contain("svd"));
        Assert.That(MaxDiff(Delta(output, Q0), Delta(first, Q0), 1, 2), Is.LessThan(1e-5), "PEFT's svd: w·s on ΔW");
        (code, _, stderr) = DeployCliRunner.Run("adapters", "combine", first, "-o", output, "--rank", "0");
        Assert.That((code, stderr.Trim()), Is.EqualTo((1, "error: --rank must be at least 1 (got 0)")));
    }
}
