using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>The causal-LM loss's closed-form gradient with respect to the logits (the seed of the training graph's
/// backward) against finite differences and against the gradient the builder derives op by op through the loss.</summary>
public class CausalLmLossTests
{
    /// <summary>A graph from logits [B, S, V] (a graph input, or Cast(MatMul(x, w)) to fp16 and back with
    /// <paramref name="throughFp16"/>) and labels [B, S] to the loss.</summary>
    static (ModelProto Model, CausalLmLoss Loss, string Wrt) LossGraph(int elemType, long b, long s, long v, bool throughFp16 = false,
        int opset = 18, double smoothing = 0)
    {
        var model = new ModelProto { IrVersion = 10, Graph = new GraphProto { Name = "loss" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        var g = new GraphEditor(model.Graph);
        model.Graph.Input.Add(ValueInfo("labels", (int)DT.Int64, [b, s]));
        string logits, wrt;
        if (throughFp16)
        {
            model.Graph.Input.Add(ValueInfo("x", elemType, [b, s, 3]));
            model.Graph.Input.Add(ValueInfo("w", elemType, [3, v]));
            var half = g.Add("Cast", [g.Add("MatMul", ["x", "w"])], attributes: ("to", (long)DT.Float16));
            logits = g.Add("Cast", [half], name: "loss/upcast", attributes: ("to", (long)elemType));
            wrt = "w";
        }
        else
        {
            model.Graph.Input.Add(ValueInfo("logits", elemType, [b, s, v]));
            logits = wrt = "logits";
        }
        var loss = CausalLmLoss.Append(g, logits, "labels", elemType, smoothing);
        model.Graph.Output.Add(new ValueInfoProto { Name = loss.Loss });
        return (model, loss, wrt);
    }

    /// <summary>The forward graph plus the gradient of <paramref name="wrt"/>: seeded at the logits with the closed form,
    /// or derived op by op from the scalar loss.</summary>
    static (ModelProto Model, string Grad) WithGradient(ModelProto forward, CausalLmLoss loss, string wrt,
        Dictionary<string, HostTensor> feeds, bool seeded)
    {
        var model = forward.Clone();
        var g = new GraphEditor(model.Graph);
        var types = ValueTable.Probe(forward, feeds, feeds);
        int opset = (int)forward.OpsetImport[0].Version;
        var grads = seeded
            ? GradientBuilder.Build(g, new Dictionary<string, string> { [loss.Logits] = loss.AppendLogitsGradient(g) }, [wrt], types, opset)
            : GradientBuilder.Build(g, loss.Loss, [wrt], types, opset);
        model.Graph.Output.Add(new ValueInfoProto { Name = grads[wrt] });
        return (model, grads[wrt]);
    }

    /// <summary>Feeds for <see cref="LossGraph"/> with throughFp16: x [b, s, 3], w [3, v] and labels (a fifth ignored),
    /// from seeds <paramref name="seed"/>, +1 and +2.</summary>
    static Dictionary<string, HostTensor> UpcastFeeds(long b, long s, long v, int seed) => new()
    {
        ["x"] = HostTensor.Of(Uniform(b * s * 3, 1, seed).Select(x => (float)x).ToArray(), b, s, 3),
        ["w"] = HostTensor.Of(Uniform(3 * v, 2, seed + 1).Select(x => (float)x).ToArray(), 3, v),
        ["labels"] = HostTensor.Of(Labels(b, s, v, 0.2, seed + 2), b, s),
    };

    static long[] Labels(long b, long s, long v, double ignoredFraction, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, (int)(b * s)).Select(_ => rng.NextDouble() < ignoredFraction ? CausalLmLoss.IgnoreIndex : rng.NextInt64(v)).ToArray();
    }

    static double[] Uniform(long n, double scale, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, (int)n).Select(_ => (rng.NextDouble() * 2 - 1) * scale).ToArray();
    }

    /// <summary>d loss / d logits[k], central differences (h = 1e-5, double), equals <paramref name="analytic"/>[k] to 1e-9.</summary>
    static void AssertCentralDifferences(ModelProto forward, CausalLmLoss loss, Dictionary<string, HostTensor> feeds, double[] logits,
        long[] shape, double[] analytic)
    {
        using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new InferenceSession(new OnnxModel(forward).ToBytes(), options);
        const double h = 1e-5;
        for (int k = 0; k < logits.Length; k++)
        {
            double LossAt(double delta)
            {
                var perturbed = (double[])logits.Clone();
                perturbed[k] += delta;
                var f = new Dictionary<string, HostTensor>(feeds) { ["logits"] = HostTensor.Of(perturbed, shape) };
                return OrtRun.Run(session, f, [loss.Loss])[loss.Loss].Doubles[0];
            }
            Assert.That(analytic[k], Is.EqualTo((LossAt(h) - LossAt(-h)) / (2 * h)).Within(1e-9), $"d loss / d logits[{k}]");
        }
    }

    static double[] AsDoubles(HostTensor t) => t.Data is double[] d ? d : t.Floats.Select(f => (double)f).ToArray();

    /// <summary>label_smoothing_factor ε: the loss is transformers' LabelSmoother on shifted labels, (1 − ε)·nll/n +
    /// ε·Σ(−Σ_v log p_v)/(n·V) over the n counted tokens, recomputed here from the logits; the closed-form gradient
    /// matches central differences and the gradient the builder derives op by op.</summary>
    [TestCase(0.1)]
    [TestCase(0.5)]
    public void LabelSmoothingIsTheTrainersAndItsGradientIsExact(double epsilon)
    {
        const long b = 2, s = 4, v = 6;
        var (forward, loss, wrt) = LossGraph((int)DT.Double, b, s, v, smoothing: epsilon);
        var logits = Uniform(b * s * v, 3, seed: 3);
        var labels = Labels(b, s, v, 0.3, seed: 4);
        var feeds = new Dictionary<string, HostTensor> { ["logits"] = HostTensor.Of(logits, b, s, v), ["labels"] = HostTensor.Of(labels, b, s) };
        double nll = 0, uniform = 0;
        int n = 0;
        for (int row = 0; row < b; row++)
            for (int t = 0; t + 1 < s; t++)
            {
                long label = labels[row * s + t + 1];
                if (label == CausalLmLoss.IgnoreIndex) continue;
                var z = logits.Skip((int)((row * s + t) * v)).Take((int)v).ToArray();
                double max = z.Max(), logSum = max + Math.Log(z.Sum(x => Math.Exp(x - max)));
                nll -= z[label] - logSum;
                uniform -= z.Sum(x => x - logSum);
                n++;
            }
        double expected = (1 - epsilon) * nll / n + epsilon * uniform / (n * v);
        Assert.That(OrtRun.Run(new OnnxModel(forward), feeds, [loss.Loss], GraphOptimizationLevel.ORT_DISABLE_ALL)[loss.Loss].Doubles[0],
            Is.EqualTo(expected).Within(1e-12));

        var (seededModel, seededGrad) = WithGradient(forward, loss, wrt, feeds, seeded: true);
        var analytic = OrtRun.Run(new OnnxModel(seededModel), feeds, [seededGrad], GraphOptimizationLevel.ORT_DISABLE_ALL)[seededGrad].Doubles;
        var (opModel, opGrad) = WithGradient(forward, loss, wrt, feeds, seeded: false);
        var opByOp = OrtRun.Run(new OnnxModel(opModel), feeds, [opGrad], GraphOptimizationLevel.ORT_DISABLE_ALL)[opGrad].Doubles;
        Assert.That(analytic, Is.EqualTo(opByOp).Within(1e-12));
        AssertCentralDifferences(forward, loss, feeds, logits, [b, s, v], analytic);
    }

    /// <summary>Opset 13 too: training's lowest, where the op-by-op gradient of GatherElements was not available.</summary>
    [TestCase(13)]
    [TestCase(18)]
    public void ClosedFormGradientMatchesFiniteDifferences(int opset)
    {
        const long b = 2, s = 4, v = 6;
        var (forward, loss, wrt) = LossGraph((int)DT.Double, b, s, v, opset: opset);
        var logits = Uniform(b * s * v, 3, seed: 1);
        var labels = Labels(b, s, v, 0.3, seed: 2);
        Assert.That(labels.Count(l => l == CausalLmLoss.IgnoreIndex), Is.GreaterThan(0), "the labels include ignored tokens");
        var feeds = new Dictionary<string, HostTensor> { ["logits"] = HostTensor.Of(logits, b, s, v), ["labels"] = HostTensor.Of(labels, b, s) };
        var (model, grad) = WithGradient(forward, loss, wrt, feeds, seeded: true);
        var analytic = OrtRun.Run(new OnnxModel(model), feeds, [grad], GraphOptimizationLevel.ORT_DISABLE_ALL)[grad].Doubles;

        AssertCentralDifferences(forward, loss, feeds, logits, [b, s, v], analytic);
        // an ignored label, and the last position of each row (it has no next token), give exactly zero gradient
        for (int row = 0; row < b * s; row++)
        {
            bool counted = (row + 1) % s != 0 && labels[row + 1] != CausalLmLoss.IgnoreIndex;
            if (!counted) Assert.That(analytic.Skip(row * (int)v).Take((int)v), Is.All.EqualTo(0.0), $"position {row}");
        }
    }

    [TestCase(0.3)]
    [TestCase(1.0)]
    public void ClosedFormGradientEqualsTheOpByOpGradient(double ignoredFraction)
    {
        const long b = 3, s = 7, v = 50;
        var (forward, loss, wrt) = LossGraph((int)DT.Float, b, s, v);
        var feeds = new Dictionary<string, HostTensor>
        {
            ["logits"] = HostTensor.Of(Uniform(b * s * v, 8, seed: 3).Select(x => (float)x).ToArray(), b, s, v),
            ["labels"] = HostTensor.Of(Labels(b, s, v, ignoredFraction, seed: 4), b, s),
        };
        HostTensor[] Run(bool seeded)
        {
            var (model, grad) = WithGradient(forward, loss, wrt, feeds, seeded);
            var outputs = OrtRun.Run(new OnnxModel(model), feeds, [loss.Loss, grad]);
            return [outputs[loss.Loss], outputs[grad]];
        }
        var closed = Run(seeded: true);
        var opByOp = Run(seeded: false);
        Assert.That(closed[0].Floats[0], Is.EqualTo(opByOp[0].Floats[0]), "the same loss");
        // equal but at the target column, where exp of the picked log-probability may round apart from exp inside the
        // full [B, S, V] tensor by an ulp
        float tolerance = 1e-6f * opByOp[1].Floats.Max(Math.Abs);
        Assert.That(closed[1].Floats, Is.EqualTo(opByOp[1].Floats).Within(tolerance), "the same gradient");
        Assert.That(closed[1].Floats.Zip(opByOp[1].Floats).Count(p => p.First != p.Second), Is.LessThanOrEqualTo(b * s),
            "at most one element per position differs");
        Assert.That(closed[1].Floats.Any(float.IsNaN), Is.False);
        if (ignoredFraction == 1.0)
        {
            // Hugging Face's loss is NaN here (0/0); ortlora divides by max(count, 1): loss 0, gradient 0
            Assert.That(closed[0].Floats[0], Is.EqualTo(0f));
            Assert.That(closed[1].Floats, Is.All.EqualTo(0f));
        }
        else Assert.That(closed[1].Floats.Count(x => x != 0), Is.GreaterThan(0));
    }

    [Test]
    public void SeedFlowsBackThroughTheUpcastFromFp16()
    {
        const long b = 2, s = 5, v = 40;
        var (forward, loss, wrt) = LossGraph((int)DT.Float, b, s, v, throughFp16: true);
        var feeds = UpcastFeeds(b, s, v, seed: 5);
        float[] Grad(bool seeded)
        {
            var (model, grad) = WithGradient(forward, loss, wrt, feeds, seeded);
            return OrtRun.Run(new OnnxModel(model), feeds, [grad])[grad].Floats;
        }
        var closed = Grad(seeded: true);
        Assert.That(closed.Length, Is.EqualTo(3 * v));
        Assert.That(closed.Max(Math.Abs), Is.GreaterThan(1e-3f));
        Assert.That(closed, Is.EqualTo(Grad(seeded: false)).Within(1e-6f * closed.Max(Math.Abs)), "d loss / d w through Cast(fp16) and back");
    }

    /// <summary>ORT runs nodes in depth-first order from the graph outputs, so a node only the loss output reads runs
    /// after the whole backward, keeping what it reads alive. The closed form reads the loss's picked log-probability:
    /// the GatherElements over the [B, S, V] log-probabilities runs before the backward reaches the parameters.</summary>
    [Test]
    public void TheLossGatherOverLogProbabilitiesRunsBeforeTheBackward()
    {
        const long b = 2, s = 5, v = 40;
        var (forward, loss, wrt) = LossGraph((int)DT.Float, b, s, v, throughFp16: true);
        var feeds = UpcastFeeds(b, s, v, seed: 10);
        var (model, grad) = WithGradient(forward, loss, wrt, feeds, seeded: true);
        string Producer(string value) => model.Graph.Node.Single(n => n.Output.Contains(value)).Name;

        var prefix = Path.Combine(Path.GetTempPath(), $"ortlora-loss-order-{Environment.ProcessId}");
        using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
        options.EnableProfiling = true;
        options.ProfileOutputPathPrefix = prefix;
        string profile;
        using (var session = new InferenceSession(new OnnxModel(model).ToBytes(), options))
        {
            OrtRun.Run(session, feeds, [loss.Loss, grad]);
            profile = session.EndProfiling();
        }
        var order = System.Text.Json.JsonDocument.Parse(File.ReadAllText(profile)).RootElement.EnumerateArray()
            .Select(e => e.GetProperty("name").GetString()!).Where(n => n.EndsWith("_kernel_time"))
            .Select(n => n[..^"_kernel_time".Length]).ToList();
        File.Delete(profile);
        int gather = order.IndexOf(Producer(loss.TargetLogProb)), gradient = order.IndexOf(Producer(grad));
        Assert.That(gather, Is.GreaterThanOrEqualTo(0));
        Assert.That(gather, Is.LessThan(gradient), "the loss's GatherElements runs before d loss / d w is complete");
    }

    /// <summary>The point of the closed form: fewer [B, S, V] values. Op by op the backward of LogSoftmax and
    /// GatherElements makes five (zeros, the scatter, exp, the product, the difference); the closed form three.</summary>
    [Test]
    public void ClosedFormMakesThreeFullVocabValuesWhereOpByOpMakesFive()
    {
        const long b = 2, s = 3, v = 11;
        var (forward, loss, wrt) = LossGraph((int)DT.Float, b, s, v);
        var feeds = new Dictionary<string, HostTensor>
        {
            ["logits"] = HostTensor.Of(Uniform(b * s * v, 1, seed: 8).Select(x => (float)x).ToArray(), b, s, v),
            ["labels"] = HostTensor.Of(Labels(b, s, v, 0.2, seed: 9), b, s),
        };
        int FullVocabValues(ModelProto model)
        {
            var types = ValueTable.Probe(model, feeds, feeds);
            return model.Graph.Node.SelectMany(n => n.Output).Count(o => types.Find(o)?.ShapeA.SequenceEqual(new[] { b, s, v }) == true);
        }
        Assert.That(FullVocabValues(forward), Is.EqualTo(1), "the forward: LogSoftmax");
        Assert.That(FullVocabValues(WithGradient(forward, loss, wrt, feeds, seeded: true).Model), Is.EqualTo(1 + 3));
        Assert.That(FullVocabValues(WithGradient(forward, loss, wrt, feeds, seeded: false).Model), Is.EqualTo(1 + 5));
    }

    static ValueInfoProto ValueInfo(string name, int elemType, long[] shape)
    {
        var tensor = new TypeProto.Types.Tensor { ElemType = elemType, Shape = new TensorShapeProto() };
        foreach (var d in shape) tensor.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensor } };
    }
}
