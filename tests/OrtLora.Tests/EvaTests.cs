using System.Text.Json.Nodes;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.DataInitKit;

namespace OrtLora.Tests;

/// <summary>EVA (--init-lora-weights eva): A from the principal components of each layer's inputs on the training
/// batches, the rank budget shared out by explained variance (PEFT's eva.py).</summary>
public class EvaTests
{
    /// <summary>The top eigenvectors (and eigenvalues) of a symmetric matrix c [n, n], by power iteration with
    /// deflation in double: independent of the randomized SVD under test.</summary>
    static (double[][] Vectors, double[] Values) TopEigen(double[] c, int n, int count)
    {
        var m = (double[])c.Clone();
        var vectors = new double[count][];
        var values = new double[count];
        for (int k = 0; k < count; k++)
        {
            var v = Enumerable.Range(0, n).Select(i => 1.0 + 0.37 * Math.Sin(i + k)).ToArray();
            double lambda = 0;
            for (int it = 0; it < 3000; it++)
            {
                var next = new double[n];
                for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) next[i] += m[i * n + j] * v[j];
                lambda = Math.Sqrt(next.Sum(x => x * x));
                v = next.Select(x => x / lambda).ToArray();
            }
            vectors[k] = v;
            values[k] = lambda;
            for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) m[i * n + j] -= lambda * v[i] * v[j];
        }
        return (vectors, values);
    }

    /// <summary>The population covariance of rows x [rows, n].</summary>
    static double[] Covariance(IReadOnlyList<double[]> rows, int n)
    {
        var mean = new double[n];
        foreach (var r in rows) for (int i = 0; i < n; i++) mean[i] += r[i] / rows.Count;
        var c = new double[n * n];
        foreach (var r in rows)
            for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) c[i * n + j] += (r[i] - mean[i]) * (r[j] - mean[j]) / rows.Count;
        return c;
    }

    static double Dot(double[] a, ReadOnlySpan<double> b) { double s = 0; for (int i = 0; i < a.Length; i++) s += a[i] * b[i]; return s; }

    /// <summary>Rows with three planted directions (variances 25, 9, 2.25) plus small noise, fed in six batches: the
    /// components, singular values and explained variance ratios equal those of the whole data's covariance, and each
    /// component's largest entry is positive (svd_flip).</summary>
    [Test]
    public void IncrementalPcaFindsThePrincipalComponentsOfAllRows()
    {
        const int n = 10, rows = 600, batch = 100;
        var rng = new Random(3);
        double Normal() => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());
        var directions = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, n).Select(_ => Normal()).ToArray()).ToArray();
        var data = new List<double[]>();
        for (int r = 0; r < rows; r++)
        {
            var x = Enumerable.Range(0, n).Select(i => 0.5 * i + 1e-2 * Normal()).ToArray(); // a mean, and noise
            double[] z = [5 * Normal(), 3 * Normal(), 1.5 * Normal()];
            for (int k = 0; k < 3; k++) for (int i = 0; i < n; i++) x[i] += z[k] * directions[k][i];
            data.Add(x);
        }
        var pca = new IncrementalPca(components: 4, features: n, seed: 1);
        for (int b = 0; b < rows / batch; b++) pca.PartialFit([.. data.Skip(b * batch).Take(batch).SelectMany(x => x)], batch);

        var covariance = Covariance(data, n);
        var (vectors, values) = TopEigen(covariance, n, 3);
        double trace = Enumerable.Range(0, n).Sum(i => covariance[i * n + i]);
        Assert.That(pca.SamplesSeen, Is.EqualTo(rows));
        for (int k = 0; k < 3; k++)
        {
            var component = pca.Components.AsSpan(k * n, n);
            Assert.That(Math.Abs(Dot(vectors[k], component)), Is.GreaterThan(1 - 1e-6), $"component {k}");
            int largest = 0;
            for (int i = 1; i < n; i++) if (Math.Abs(component[i]) > Math.Abs(component[largest])) largest = i;
            Assert.That(component[largest], Is.GreaterThan(0), "svd_flip: the largest entry is positive");
            Assert.That(pca.SingularValues[k] * pca.SingularValues[k], Is.EqualTo(values[k] * rows).Within(1e-6).Percent);
            Assert.That(pca.ExplainedVarianceRatio[k], Is.EqualTo(values[k] / trace).Within(1e-6).Percent);
        }
        Assert.That(pca.ExplainedVarianceRatio.Take(3).Sum(), Is.GreaterThan(0.999));
    }

    /// <summary>An adapter's layer inputs at the counted positions of the first epoch (<see cref="DataInitKit.LayerInputs"/>).</summary>
    static List<double[]> CountedInputs(OnnxModel model, LoraAdapter adapter, TrainingData data)
    {
        var rows = new List<double[]>();
        foreach (var (batch, x) in DataInitKit.LayerInputs(model, adapter, data))
            for (int p = 0; p < batch.AttentionMask.Length; p++)
                if (batch.AttentionMask[p] != 0 && batch.Labels[p] != -100)
                    rows.Add([.. x.AsSpan(p * (int)adapter.In, (int)adapter.In).ToArray().Select(v => (double)v)]);
        return rows;
    }

    /// <summary>With rho 1 every layer keeps r, and A's rows are the top r principal components of the layer's inputs
    /// (compared with the covariance of the whole first epoch), orthonormal; B stays zero, so the model is unchanged.</summary>
    [Test]
    public void EvaDrawsAFromThePrincipalComponentsOfEachLayersInputs()
    {
        var dir = Shared.TempDir();
        using var model = OnnxModel.Load(DataInitKit.Injected("eva", "--r", "4", "--eva-rho", "1"));
        var lora = LoraModel.Read(model)!;
        using var data = DemoData();
        var probeBatch = data.Batches(new DataPosition(0, 0)).First().ToFeeds(withLabels: false);
        var before = OrtRun.Run(model, probeBatch)["logits"].Floats;
        var q = lora.Adapters.Single(a => a.Module == "model.layers.1.self_attn.q_proj");
        var down = lora.Adapters.Single(a => a.Module == "model.layers.2.mlp.down_proj");
        var inputs = (Q: CountedInputs(model, q, data), Down: CountedInputs(model, down, data));

        var result = Eva.Initialize(model, lora, epoch => data.Batches(new DataPosition(epoch, 0)));
        Assert.That(result.Converged, Is.True);
        Assert.That(result.Batches, Is.GreaterThan(2));
        Assert.That(result.Ranks.Values, Is.All.EqualTo(4), "rho 1: Σ r components for a budget of Σ r");
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(model, probeBatch)["logits"].Floats, before), Is.LessThan(1e-6f));
        foreach (var (adapter, rows) in new[] { (q, inputs.Q), (down, inputs.Down) })
        {
            int n = (int)adapter.In;
            var a = Values(model, adapter.LoraA);
            Assert.That(a, Has.Length.EqualTo(4 * n));
            Assert.That(Values(model, adapter.LoraB), Is.All.EqualTo(0f));
            var (vectors, _) = TopEigen(Covariance(rows, n), n, 2);
            for (int c = 0; c < 4; c++)
                for (int d = 0; d < 4; d++)
                {
                    double dot = Enumerable.Range(0, n).Sum(i => (double)a[c * n + i] * a[d * n + i]);
                    Assert.That(dot, Is.EqualTo(c == d ? 1 : 0).Within(1e-5), $"{adapter.Module}: A·Aᵀ = I");
                }
            for (int c = 0; c < 2; c++)
            {
                double cosine = Math.Abs(Dot(vectors[c], a.AsSpan(c * n, n).ToArray().Select(v => (double)v).ToArray()));
                TestContext.Out.WriteLine($"{adapter.Module} component {c}: |cos| {cosine:F6} with the first epoch's");
                Assert.That(cosine, Is.GreaterThan(0.98), $"{adapter.Module}: component {c}");
            }
        }
    }

    /// <summary>rho 2: the ranks move between layers but add up to Σ r; a layer that holds its group's PCA (q_proj for
    /// q, k, v) has the group's largest rank; alpha follows the rank, so every scale stays lora_alpha / r. The exported
    /// adapter says init_lora_weights eva with its eva_config, and rank_pattern and alpha_pattern give PEFT each shape.</summary>
    [Test]
    public void TrainWithEvaRedistributesTheRanksAndExportsThem()
    {
        var dir = Shared.TempDir();
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("train", DataInitKit.Injected("eva", "--r", "4", "--lora-alpha", "8"), "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", output,
            "--max-steps", "2", "--plain-log", "--max-seq-length", "128");
        Assert.That(run.Out, Does.Contain("EVA: "));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.That(config["init_lora_weights"]!.GetValue<string>(), Is.EqualTo("eva"));
        Assert.That(config["eva_config"]!["rho"]!.GetValue<double>(), Is.EqualTo(2.0));
        var tensors = SafeTensors.Read(Path.Combine(output, "adapter_model.safetensors"));
        var rankPattern = config["rank_pattern"]!.AsObject();
        var alphaPattern = config["alpha_pattern"]!.AsObject();
        var ranks = new Dictionary<string, int>();
        foreach (var (key, tensor) in tensors.Where(t => t.Key.EndsWith(".lora_A.weight")))
        {
            var module = key["base_model.model.".Length..^".lora_A.weight".Length];
            ranks[module] = (int)tensor.Shape[0];
            Assert.That(rankPattern[module]?.GetValue<int>() ?? 4, Is.EqualTo(ranks[module]), module);
            Assert.That(alphaPattern[module]?.GetValue<double>() ?? 8, Is.EqualTo(2.0 * ranks[module]), $"{module}: alpha·rank/r");
        }
        Assert.That(ranks.Count + (config["exclude_modules"] is JsonArray gone ? gone.Count : 0), Is.EqualTo(28));
        Assert.That(ranks.Values.Sum(), Is.EqualTo(28 * 4), "the budget Σ r");
        Assert.That(ranks.Values, Is.All.InRange(1, 8));
        Assert.That(ranks.Values.Distinct().Count(), Is.GreaterThan(1), "the ranks moved");
        for (int layer = 0; layer < 4; layer++)
        {
            int Rank(string name) => ranks.GetValueOrDefault($"model.layers.{layer}.{name}");
            Assert.That(Rank("self_attn.q_proj"), Is.GreaterThanOrEqualTo(Math.Max(Rank("self_attn.k_proj"), Rank("self_attn.v_proj"))), $"layer {layer}");
            Assert.That(Rank("mlp.gate_proj"), Is.GreaterThanOrEqualTo(Rank("mlp.up_proj")), $"layer {layer}");
        }
    }

    /// <summary>Without adjust_scaling_factors the alpha stays, so a layer's scale is lora_alpha / its new rank and
    /// alpha_pattern is empty.</summary>
    [Test]
    public void WithoutAdjustedScalingTheAlphaStays()
    {
        var dir = Shared.TempDir();
        using var model = OnnxModel.Load(DataInitKit.Injected("eva", "--r", "4", "--lora-alpha", "8", "--eva-adjust-scaling-factors", "false"));
        var lora = LoraModel.Read(model)!;
        using var data = DemoData();
        Eva.Initialize(model, lora, epoch => data.Batches(new DataPosition(epoch, 0)));
        foreach (var adapter in LoraModel.Read(model)!.Adapters)
        {
            Assert.That(adapter.Scale, Is.EqualTo(8.0 / adapter.R).Within(1e-12), adapter.Module);
            Assert.That(Values(model, adapter.ScaleName)[0], Is.EqualTo((float)(8.0 / adapter.R)), adapter.Module);
        }
        Assert.That(AdapterExporter.Export(model).Config.AlphaPattern, Is.Empty);
    }

    /// <summary>rank_pattern sets each layer's share of the budget (Σ of the layers' r), and the layers on one input share
    /// their PCA's components, so k_proj (r 2) may take as many as q_proj (r 4): up to 8.</summary>
    [Test]
    public void RankPatternSetsTheBudget()
    {
        using var model = OnnxModel.Load(DataInitKit.Injected("eva", "--r", "4", "--rank-pattern", "k_proj=2"));
        var lora = LoraModel.Read(model)!;
        Assert.That(lora.Adapters.Where(a => a.Module.EndsWith("k_proj")).Select(a => a.R), Is.All.EqualTo(2));
        using var data = DemoData();
        var result = Eva.Initialize(model, lora, epoch => data.Batches(new DataPosition(epoch, 0)));
        Assert.That(result.Ranks.Values.Sum(), Is.EqualTo(24 * 4 + 4 * 2));
        Assert.That(result.Ranks.Values, Is.All.InRange(0, 8));
        foreach (var (module, rank) in result.Ranks.Where(r => r.Key.EndsWith("k_proj")))
            Assert.That(result.Ranks[module.Replace("k_proj", "q_proj")], Is.GreaterThanOrEqualTo(rank), module);
    }

    /// <summary>Rank 0 removes an adapter (the layer computes its own output again, its module is excluded, merge and
    /// export work); another rank reshapes A and B and leaves the model unchanged.</summary>
    [Test]
    public void AdapterRanksResizeAndRemoveAdapters()
    {
        var dir = Shared.TempDir();
        var path = Path.Combine(dir, "lora.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", path, "--target-modules", "all-linear", "--r", "4");
        using var model = OnnxModel.Load(path);
        using var data = DemoData();
        var feeds = data.Batches(new DataPosition(0, 0)).First().ToFeeds(withLabels: false);
        var before = OrtRun.Run(model, feeds)["logits"].Floats;
        var lora = LoraModel.Read(model)!;
        var removed = lora.Adapters.Single(a => a.Module == "model.layers.0.mlp.up_proj");
        var resized = lora.Adapters.Single(a => a.Module == "model.layers.3.self_attn.o_proj");
        var a = Enumerable.Range(0, 6 * 128).Select(i => (float)Math.Sin(i)).ToArray();
        AdapterRanks.Apply(model, lora, new Dictionary<string, AdapterRank>
        {
            [removed.Module] = new(0, 16),
            [resized.Module] = new(6, 24, a),
        });
        var reread = LoraModel.Read(model)!;
        Assert.That(reread.Adapters, Has.Count.EqualTo(27));
        Assert.That(reread.Adapters.Single(x => x.Module == resized.Module).R, Is.EqualTo(6));
        Assert.That(reread.Config.ExcludeModules, Is.EqualTo(new[] { removed.Module }));
        Assert.That(model.Graph.Node.Select(n => n.Name).Intersect(removed.Nodes), Is.Empty);
        Assert.That(model.Graph.Initializer.Select(t => t.Name), Does.Not.Contain(removed.LoraA));
        Assert.That(Values(model, resized.LoraA), Is.EqualTo(a));
        Assert.That(model.Graph.Initializer.Single(t => t.Name == resized.LoraB).Dims, Is.EqualTo(new long[] { 128, 6 }));
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(model, feeds)["logits"].Floats, before), Is.LessThan(1e-6f));
        var export = AdapterExporter.Export(model);
        Assert.That(export.Config.RankPattern[resized.Module], Is.EqualTo(6));
        Assert.That(export.Config.AlphaPattern[resized.Module], Is.EqualTo(24));
        Assert.That(export.Tensors.Keys, Has.None.Contains(removed.Module));
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(model, feeds)["logits"].Floats, before), Is.LessThan(1e-6f));
    }

    /// <summary>A run resumed from a checkpoint takes EVA's ranks from it and ends with the straight run's adapter.</summary>
    [Test]
    public void ResumedEvaRunEndsLikeTheStraightRun()
    {
        var model = DataInitKit.Injected("eva", "--r", "4");
        AssertResumedRunEndsLikeStraight(dir => ["train", model, "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", dir, "--max-steps", "4",
            "--save-steps", "2", "--plain-log", "--max-seq-length", "128"], "checkpoint-4");
    }

    [Test]
    public void EvaRefusesWhatItCannotDo()
    {
        var dir = Shared.TempDir();
        var eva = DataInitKit.Injected("eva", "--r", "4");
        var grpo = Ortlora("grpo", eva, "--data", Tiny("demo_prompts.parquet"), "--reward-funcs", "exact_match", "-o", Path.Combine(dir, "grpo"));
        Assert.That(grpo.ExitCode, Is.Not.EqualTo(0));
        Assert.That(grpo.Error, Does.Contain("init_lora_weights eva"));
        var stray = Ortlora("inject", Tiny("model.onnx"), "-o", Path.Combine(dir, "x.onnx"), "--eva-rho", "3");
        Assert.That(stray.ExitCode, Is.Not.EqualTo(0));
        Assert.That(stray.Error, Does.Contain("--eva-rho is an option of EVA"));
        var wide = Ortlora("train", DataInitKit.Injected("eva", "--r", "70"), "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", Path.Combine(dir, "wide"), "--max-steps", "1");
        Assert.That(wide.ExitCode, Is.Not.EqualTo(0));
        Assert.That(wide.Error, Does.Contain("r·rho = 140 components of 128 input features"));
        var fused = Path.Combine(dir, "fused.onnx");
        OrtloraOk("inject", Shared.Peft("gpt2", "model.dynamo.onnx"), "-o", fused, "--init-lora-weights", "eva", "--variant", "canonical", "--target-modules", "c_attn");
        using var model = OnnxModel.Load(fused);
        using var data = DemoData();
        var error = Assert.Throws<OrtLoraException>(() => Eva.Initialize(model, LoraModel.Read(model)!, epoch => data.Batches(new DataPosition(epoch, 0))));
        Assert.That(error!.Message, Does.Contain("one part of a fused layer: use --variant performant"));
    }
}
