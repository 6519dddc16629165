using System.Text.Json.Nodes;
using OrtLora.Deploy;
using OrtLora.Lora;

namespace OrtLora.Tests;

/// <summary>add_weighted_adapter's other combination types (<see cref="AdapterCombiner"/>, <see cref="TaskMerging"/>):
/// PEFT's merge_utils worked by hand (magnitude pruning, TIES's sign election by total and by frequency, the disjoint
/// mean, DARE's rescaled random pruning); linear's A and B merged separately with √|w·s| (the sign on A); the pruned svd
/// types exact at full rank and near the best truncation below it; and each misuse as one error.</summary>
public class CombineMethodsTests
{
    const string Q0 = "base_model.model.model.layers.0.self_attn.q_proj";

    [Test]
    public void MagnitudePruningKeepsTheLargestShare()
    {
        Assert.That(TaskMerging.MagnitudePrune([3f, -1f, 0.5f, -4f], 0.5), Is.EqualTo(new[] { 3f, 0f, 0f, -4f }));
        Assert.That(TaskMerging.MagnitudePrune([3f, -1f, 0.5f], 0.5), Is.EqualTo(new[] { 3f, 0f, 0f }), "int(0.5·3) = 1 kept");
        Assert.That(TaskMerging.MagnitudePrune([3f, -1f], 1.0), Is.EqualTo(new[] { 3f, -1f }), "density 1 prunes nothing");
        Assert.That(TaskMerging.MagnitudePrune([2f, -2f, 1f, 2f], 0.5), Is.EqualTo(new[] { 2f, -2f, 0f, 0f }), "equal magnitudes: the earlier ones");
        Assert.That(TaskMerging.MagnitudePrune([2f, -2f], 0.4), Is.EqualTo(new[] { 0f, 0f }), "int(0.8) = 0 kept");
        var merged = TaskMerging.Merge("magnitude_prune", [[3f, -1f, 0.5f, -4f], [1f, 2f, -3f, 0.1f]], [2.0, -1.0], 0.5, "total", new Random(0));
        Assert.That(merged, Is.EqualTo(new[] { 6f - 0f, 0f - 2f, 0f + 3f, -8f - 0f }));
    }

    [Test]
    public void TiesElectsASignAndAveragesTheValuesThatAgree()
    {
        float[][] tensors = [[1f, -2f, 3f, 0.5f], [-1f, -1f, 2f, 4f]];
        // total: Σ = [0, −3, 5, 4.5] → signs [+, −, +, +] (0 counts as +); the first value of t2 disagrees
        var total = TaskMerging.Merge("ties", tensors, [2.0, 1.0], 1.0, "total", new Random(0));
        Assert.That(total, Is.EqualTo(new[] { 2f, (-4f - 1f) / 2, (6f + 2f) / 2, (1f + 4f) / 2 }));
        // one large positive value against two small negative ones: total elects +, frequency −
        float[][] split = [[5f], [-1f], [-1f]];
        Assert.That(TaskMerging.Merge("ties", split, [1.0, 1.0, 1.0], 1.0, "total", new Random(0)), Is.EqualTo(new[] { 5f }));
        Assert.That(TaskMerging.Merge("ties", split, [1.0, 1.0, 1.0], 1.0, "frequency", new Random(0)), Is.EqualTo(new[] { -1f }));
        // pruned first: with density 0.5 each keeps its two largest magnitudes
        var pruned = TaskMerging.Merge("ties", tensors, [1.0, 1.0], 0.5, "total", new Random(0));
        Assert.That(pruned, Is.EqualTo(new[] { 0f, -2f, (3f + 2f) / 2, 4f }));
    }

    [Test]
    public void DareKeepsADensityShareRescaled()
    {
        var values = Enumerable.Range(1, 4000).Select(i => (float)i).ToArray();
        var pruned = TaskMerging.RandomPrune(values, 0.25, new Random(3));
        Assert.That(pruned.Select((v, i) => v == 0 || Math.Abs(v - values[i] * 4) < 1e-3), Is.All.True, "dropped, or divided by the density");
        Assert.That(pruned.Count(v => v != 0) / 4000.0, Is.EqualTo(0.25).Within(0.03));
        Assert.That(pruned.Sum(v => (double)v) / values.Sum(v => (double)v), Is.EqualTo(1).Within(0.06), "the sum kept in expectation");
        Assert.That(TaskMerging.RandomPrune(values, 0.25, new Random(3)), Is.EqualTo(pruned), "seeded");
        var dareLinear = TaskMerging.Merge("dare_linear", [values, values], [0.5, 0.5], 1.0, "total", new Random(0));
        Assert.That(dareLinear, Is.EqualTo(values), "density 1: plain task arithmetic");
    }

    /// <summary>Two rank-4 adapters for the fixture llama (scales 2 and 1.5) with the same modules.</summary>
    static (string First, string Second) Pair()
    {
        var first = Shared.Peft("llama", "adapter");
        var dir = Path.Combine(Shared.TempDir(), "second4");
        Directory.CreateDirectory(dir);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(first, "adapter_config.json")))!.AsObject();
        config["lora_alpha"] = 6;
        File.WriteAllText(Path.Combine(dir, "adapter_config.json"), config.ToJsonString());
        var rng = new Random(11);
        var tensors = SafeTensors.Read(Path.Combine(first, "adapter_model.safetensors"))
            .ToDictionary(kv => kv.Key, kv => SafeTensor.FromFloats(kv.Value.Shape, [.. kv.Value.AsFloats().Select(_ => (float)(rng.NextDouble() - 0.5))]));
        SafeTensors.Write(Path.Combine(dir, "adapter_model.safetensors"), tensors);
        return (first, dir);
    }

    static float[] Tensor(string dir, string key) => SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"))[key].AsFloats();

    [Test]
    public void LinearMergesAAndBWithTheRootOfTheScaledWeights()
    {
        var (first, second) = Pair();
        var output = Path.Combine(Shared.TempDir(), "linear");
        Assert.That(AdapterCombiner.Combine([(first, 0.7), (second, -0.3)], output, new CombineOptions { CombinationType = "linear" }), Is.EqualTo(4));
        double wa1 = Math.Sqrt(0.7 * 2), wa2 = -Math.Sqrt(0.3 * 1.5), wb2 = Math.Sqrt(0.3 * 1.5);
        var (a1, a2, a) = (Tensor(first, Q0 + ".lora_A.weight"), Tensor(second, Q0 + ".lora_A.weight"), Tensor(output, Q0 + ".lora_A.weight"));
        var (b1, b2, b) = (Tensor(first, Q0 + ".lora_B.weight"), Tensor(second, Q0 + ".lora_B.weight"), Tensor(output, Q0 + ".lora_B.weight"));
        for (int i = 0; i < a.Length; i++) Assert.That(a[i], Is.EqualTo(wa1 * a1[i] + wa2 * a2[i]).Within(1e-6));
        for (int i = 0; i < b.Length; i++) Assert.That(b[i], Is.EqualTo(wa1 * b1[i] + wb2 * b2[i]).Within(1e-6), "the sign on A only");

        // ties: the same weights through TIES on A and on B
        var ties = Path.Combine(Shared.TempDir(), "ties");
        AdapterCombiner.Combine([(first, 0.7), (second, -0.3)], ties, new CombineOptions { CombinationType = "ties", Density = 0.5 });
        Assert.That(Tensor(ties, Q0 + ".lora_A.weight"), Is.EqualTo(TaskMerging.Merge("ties", [a1, a2], [wa1, wa2], 0.5, "total", new Random(0))));
        Assert.That(Tensor(ties, Q0 + ".lora_B.weight"), Is.EqualTo(TaskMerging.Merge("ties", [b1, b2], [wa1, wb2], 0.5, "total", new Random(0))));
    }

    /// <summary>One adapter is combined linearly whatever the type (PEFT's rule): √|w·s| on both factors, the sign on
    /// A. With a rank it is truncated (a compressed adapter): at rank 4 the fixture's own ΔW·w comes back.</summary>
    [Test]
    public void OneAdapterIsCombinedLinearly()
    {
        var first = Shared.Peft("llama", "adapter");
        var output = Path.Combine(Shared.TempDir(), "one");
        AdapterCombiner.Combine([(first, -1.0)], output, new CombineOptions { CombinationType = "ties_svd", Density = 0.1 });
        var (a, a1) = (Tensor(output, Q0 + ".lora_A.weight"), Tensor(first, Q0 + ".lora_A.weight"));
        var (b, b1) = (Tensor(output, Q0 + ".lora_B.weight"), Tensor(first, Q0 + ".lora_B.weight"));
        for (int i = 0; i < a.Length; i++) Assert.That(a[i], Is.EqualTo(-Math.Sqrt(2) * a1[i]).Within(1e-6));
        for (int i = 0; i < b.Length; i++) Assert.That(b[i], Is.EqualTo(Math.Sqrt(2) * b1[i]).Within(1e-6));
        var compressed = Path.Combine(Shared.TempDir(), "compressed");
        Assert.That(AdapterCombiner.Combine([(first, -1.0)], compressed, new CombineOptions { CombinationType = "svd", SvdRank = 4 }), Is.EqualTo(4));
        var (expected, got) = (DenseDelta(first, Q0, 2), DenseDelta(compressed, Q0, 1));
        Assert.That(got.Select((v, i) => Math.Abs(v + expected[i])).Max(), Is.LessThan(1e-5), "−ΔW, not PEFT's svd weighting of several adapters");
    }

    static double[] DenseDelta(string dir, string module, double scale)
    {
        var (a, b) = (Tensor(dir, module + ".lora_A.weight"), Tensor(dir, module + ".lora_B.weight"));
        int rank = a.Length / 64, outDim = b.Length / rank;
        var d = new double[outDim * 64];
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < 64; i++)
                for (int k = 0; k < rank; k++) d[o * 64 + i] += scale * b[o * rank + k] * a[k * 64 + i];
        return d;
    }

    /// <summary>ties_svd: the ΔWᵢ (each with its scale) merged by TIES with weights wᵢ·sᵢ, then factored. At full rank
    /// (64) the factors give the merged matrix back; at rank 4 the residual is within 1% of the best rank-4 residual
    /// (the tail of the singular values).</summary>
    [Test]
    public void PrunedSvdTypesFactorTheMergedDelta()
    {
        var (first, second) = Pair();
        var merged = TaskMerging.Merge("ties", [[.. DenseDelta(first, Q0, 2).Select(v => (float)v)], [.. DenseDelta(second, Q0, 1.5).Select(v => (float)v)]],
            [0.7 * 2, -0.3 * 1.5], 0.5, "total", new Random(0));
        var full = Path.Combine(Shared.TempDir(), "full");
        AdapterCombiner.Combine([(first, 0.7), (second, -0.3)], full, new CombineOptions { CombinationType = "ties_svd", Density = 0.5, SvdRank = 64 });
        var back = DenseDelta(full, Q0, 1);
        Assert.That(back.Select((v, i) => Math.Abs(v - merged[i])).Max(), Is.LessThan(1e-4), "full rank: the merged ΔW");

        var low = Path.Combine(Shared.TempDir(), "low");
        AdapterCombiner.Combine([(first, 0.7), (second, -0.3)], low, new CombineOptions { CombinationType = "ties_svd", Density = 0.5, SvdRank = 4 });
        var approx = DenseDelta(low, Q0, 1);
        double residual = Math.Sqrt(approx.Select((v, i) => (v - merged[i]) * (v - merged[i])).Sum());
        var (bFull, _) = LowRank.TruncatedSvd(merged, 64, 64, 64);
        var singular = Enumerable.Range(0, 64).Select(c => Math.Sqrt(Enumerable.Range(0, 64).Sum(o => (double)bFull[o * 64 + c] * bFull[o * 64 + c]))).ToList();
        double best = Math.Sqrt(singular.Skip(4).Sum(x => x * x));
        Assert.That(singular, Is.Ordered.Descending);
        Assert.That(residual, Is.LessThan(best * 1.01).And.GreaterThanOrEqualTo(best * 0.999));
    }

    [Test]
    public void MisusesAreOneErrorEach()
    {
        var (first, second) = Pair();
        var odd = Path.Combine(Shared.TempDir(), "never");
        string Error(CombineOptions options, params (string, double)[] inputs) =>
            Assert.Throws<OrtLoraException>(() => AdapterCombiner.Combine(inputs.Length > 0 ? inputs : [(first, 0.5), (second, 0.5)], odd, options))!.Message;
        Assert.That(Error(new CombineOptions { CombinationType = "ties" }), Does.Contain("needs --density"));
        Assert.That(Error(new CombineOptions { CombinationType = "cat", SvdRank = 3 }), Does.Contain("--rank applies to the svd"));
        Assert.That(Error(new CombineOptions { CombinationType = "linear", Density = 0.5 }), Does.Contain("--density applies"));
        Assert.That(Error(new CombineOptions { CombinationType = "svd", SvdClamp = 1.5 }), Does.Contain("--svd-clamp"));
        // the fixture (rank 4) and a rank-2 adapter: linear needs one rank
        var rank2 = Path.Combine(Shared.TempDir(), "rank2");
        Directory.CreateDirectory(rank2);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(first, "adapter_config.json")))!.AsObject();
        config["r"] = 2;
        File.WriteAllText(Path.Combine(rank2, "adapter_config.json"), config.ToJsonString());
        SafeTensors.Write(Path.Combine(rank2, "adapter_model.safetensors"), new Dictionary<string, SafeTensor>
        {
            [Q0 + ".lora_A.weight"] = SafeTensor.FromFloats([2, 64], new float[128]), [Q0 + ".lora_B.weight"] = SafeTensor.FromFloats([64, 2], new float[128]),
        });
        Assert.That(Error(new CombineOptions { CombinationType = "linear" }, (first, 1), (rank2, 1)), Does.Contain("need one rank"));
        Assert.That(Directory.Exists(odd), Is.False, "no partial output");

        var (code, stdout, stderr) = DeployCliRunner.Run("adapters", "combine", first + ":0.7", second + ":0.3", "-o", Path.Combine(Shared.TempDir(), "cli"),
            "--combination-type", "dare_ties", "--density", "0.5", "--seed", "3");
        Assert.That(code, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("rank 4").And.Contain("dare_ties"));
    }
}
