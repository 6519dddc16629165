using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>The AdamW graph updates parameters of mixed shapes in bundles (concatenated along the one dim they differ
/// in, then split back): every parameter must come back with its own update, as AdamW written out per element on the
/// host in float64.</summary>
public class AdamWGraphTests
{
    // two LoRA-A-like [2, n] (bundled along dim 1), two B-like [n, 2] (along dim 0), vectors, a scalar, a lone 3-D shape
    static readonly Dictionary<string, long[]> Shapes = new()
    {
        ["a1"] = [2, 3], ["a2"] = [2, 5], ["b1"] = [4, 2], ["b2"] = [3, 2], ["v1"] = [6], ["v2"] = [1], ["s"] = [], ["t"] = [2, 2, 3],
    };

    [TestCase(0f)] [TestCase(0.5f)]
    public void EachParameterOfABundleGetsItsOwnUpdate(float maxGradNorm)
    {
        const double lr = 1e-2, wd = 0.1, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
        const int step = 3;
        var rng = new Random(7);
        float[] Random(long[] shape, double scale, bool positive = false) => Enumerable.Range(0, (int)shape.Aggregate(1L, (a, b) => a * b))
            .Select(_ => (float)((positive ? rng.NextDouble() : rng.NextDouble() * 2 - 1) * scale)).ToArray();
        var values = Shapes.ToDictionary(kv => kv.Key, kv => (P: Random(kv.Value, 1), G: Random(kv.Value, 1),
            M: Random(kv.Value, 0.1), V: Random(kv.Value, 0.01, positive: true)));

        var proto = new ModelProto { IrVersion = 8, Graph = new GraphProto { Name = "adamw" } };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        var g = new GraphEditor(proto.Graph);
        void Input(string name, long[] shape)
        {
            var tensor = new TypeProto.Types.Tensor { ElemType = (int)DT.Float, Shape = new TensorShapeProto() };
            foreach (var d in shape) tensor.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
            proto.Graph.Input.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensor } });
        }
        foreach (var name in new[] { "lr", "step", "max_norm" }) Input(name, []);
        var slots = new List<AdamWSlot>();
        foreach (var (p, shape) in Shapes)
        {
            foreach (var prefix in new[] { "", "g.", "m.", "v." }) Input(prefix + p, shape);
            slots.Add(new AdamWSlot(p, "g." + p, "m." + p, "v." + p));
        }
        var result = AdamWGraph.Append(g, slots, Shapes, "lr", "step", "max_norm",
            new AdamWOptions(beta1, beta2, eps, wd, LrMultiplier: p => p.StartsWith('b') ? 4 : 1, Decays: p => p is not ("v1" or "b2")));
        var outputs = result.Updated.SelectMany(kv => new[] { kv.Value.Param, kv.Value.ExpAvg, kv.Value.ExpAvgSq }).Append(result.GradNorm).ToList();
        foreach (var o in outputs) proto.Graph.Output.Add(new ValueInfoProto { Name = o });
        Assert.That(proto.Graph.Node.Count(n => n.OpType == "Reshape"), Is.Zero, "bundles are joined without reshapes");

        var feeds = new Dictionary<string, HostTensor>
        {
            ["lr"] = HostTensor.Of([(float)lr]), ["step"] = HostTensor.Of([(float)step]), ["max_norm"] = HostTensor.Of([maxGradNorm]),
        };
        foreach (var (p, (pv, gv, mv, vv)) in values)
        {
            feeds[p] = HostTensor.Of(pv, Shapes[p]); feeds["g." + p] = HostTensor.Of(gv, Shapes[p]);
            feeds["m." + p] = HostTensor.Of(mv, Shapes[p]); feeds["v." + p] = HostTensor.Of(vv, Shapes[p]);
        }
        var run = OrtRun.Run(new OnnxModel(proto), feeds, outputs);

        double norm = Math.Sqrt(values.Values.Sum(x => x.G.Sum(e => (double)e * e)));
        Assert.That(run[result.GradNorm].Floats[0], Is.EqualTo(norm).Within(1e-6 * norm));
        double coef = maxGradNorm > 0 ? Math.Min(1, maxGradNorm / (norm + 1e-6)) : 1;
        foreach (var (p, (pv, gv, mv, vv)) in values)
        {
            var (param, expAvg, expAvgSq) = result.Updated[p];
            Assert.That(run[param].Shape, Is.EqualTo(Shapes[p]), p);
            double k = p.StartsWith('b') ? 4 : 1;
            for (int i = 0; i < pv.Length; i++)
            {
                double grad = gv[i] * coef;
                double m = beta1 * mv[i] + (1 - beta1) * grad, v = beta2 * vv[i] + (1 - beta2) * grad * grad;
                double denom = Math.Sqrt(v) / Math.Sqrt(1 - Math.Pow(beta2, step)) + eps;
                double decay = p is "v1" or "b2" ? 0 : wd; // a bias, as the Trainer leaves it out of weight decay
                double expected = pv[i] * (1 - lr * k * decay) - lr * k / (1 - Math.Pow(beta1, step)) * m / denom;
                Assert.That(run[expAvg].Floats[i], Is.EqualTo(m).Within(1e-6), $"{p} m[{i}]");
                Assert.That(run[expAvgSq].Floats[i], Is.EqualTo(v).Within(1e-7), $"{p} v[{i}]");
                Assert.That(run[param].Floats[i], Is.EqualTo(expected).Within(1e-6), $"{p}[{i}]");
            }
        }
    }

    /// <summary>On a launch-bound device each node costs a dispatch: the optimizer and the accumulation of a LoRA model
    /// run a fixed handful of nodes per bundle (A's, B's), not a chain per parameter (56 parameters on tiny).</summary>
    [Test]
    public void OptimizerAndAccumulationNodesDoNotGrowWithTheParameterCount()
    {
        using var model = OrtLora.Graphs.LlamaGraph.Build(OrtLora.Graphs.LlamaShape.Tiny, seed: 1);
        OrtLora.Lora.LoraInjector.Inject(model, new OrtLora.Lora.LoraConfig { R = 2, LoraAlpha = 4, TargetModules = ["all-linear"] });
        using var graph = OrtLora.Training.Engine.TrainingGraph.Build(model);
        Assert.That(graph.Parameters, Has.Count.EqualTo(56));
        var step = graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)).Graph.Node;
        Assert.That(step.Count(n => n.Name.StartsWith("adamw/")), Is.LessThan(100), "69 today; a chain per parameter made over 400");
        Assert.That(step.Count(n => n.OpType == "Reshape" && n.Name.StartsWith("adamw/")), Is.Zero);
        var accumulate = graph.BuildAccumulate().Graph.Node;
        Assert.That(accumulate.Count(n => n.Name.StartsWith("accumulate/")), Is.EqualTo(10), "per bundle: 2 Concats, Mul, Add, Split");
    }
}
