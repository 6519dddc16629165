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
    static double[,] Delta(string dir, string module)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        double scale = config["lora_alpha"]!.GetValue<double>() / config["r"]!.GetValue<double>();
        var tensors = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        var a = tensors[module + ".lora_A.weight"];
        var b = tensors[module + ".lora_B.weight"];
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
        foreach (var module in PeftAdapterDirectory.Load(first).Modules.Keys)
        {
            var expected = module is Q0 or K1 ? WeightedSum(0.7, Delta(first, module), 0.3, Delta(second, module)) : WeightedSum(0.7, Delta(first, module), 0, Delta(first, module));
            Assert.That(MaxDiff(Delta(output, module), expected), Is.LessThan(1e-5), module);
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
            var exact = Delta(Path.Combine(dir, "cat"), module);
            Assert.That(MaxDiff(Delta(Path.Combine(dir, "full"), module), exact), Is.LessThan(1e-5), module);
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
        // 0.5·X + 0.5·X: the concatenated factors have rank 8 but the product only rank 4.
        var first = Shared.Peft("llama", "adapter");
        var output = Path.Combine(Shared.TempDir(), "halves");
        AdapterCombiner.Combine([(first, 0.5), (first, 0.5)], output, rank: 4);
        foreach (var module in PeftAdapterDirectory.Load(first).Modules.Keys)
            Assert.That(MaxDiff(Delta(output, module), Delta(first, module)), Is.LessThan(1e-5), module);
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
}
