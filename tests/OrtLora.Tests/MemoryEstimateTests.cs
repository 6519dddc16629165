using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>The memory of one Run with static shapes (<see cref="MemoryEstimate"/>): values alive from their node to
/// their last reader, shape-only ops sharing their input's buffer, shapes as ONNX Runtime infers them.</summary>
public class MemoryEstimateTests
{
    /// <summary>x [4, 8] float → a = Relu(x), b = Reshape(a) (a's buffer), c = Exp(x), d = Neg(b), e = Sigmoid(c);
    /// outputs d and e. At Neg a (kept alive by b), c and d are alive: 3 × 128 bytes, the peak; a goes after it.</summary>
    [Test]
    public void ValuesLiveFromTheirNodeToTheirLastReaderAndReshapesShareTheirInput()
    {
        var model = new ModelProto { IrVersion = 9, Graph = new GraphProto { Name = "live" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        var g = new GraphEditor(model.Graph);
        model.Graph.Input.Add(new ValueInfoProto
        {
            Name = "x",
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DT.Float, Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimValue = 4 }, new TensorShapeProto.Types.Dimension { DimValue = 8 } } } } },
        });
        var a = g.Add("Relu", ["x"]);
        var b = g.Add("Reshape", [a, GraphConstants.Int64s(g, "flat", 32)]);
        var c = g.Add("Exp", ["x"]);
        var d = g.Add("Neg", [b]);
        var e = g.Add("Sigmoid", [c]);
        model.Graph.Output.Add(new ValueInfoProto { Name = d });
        model.Graph.Output.Add(new ValueInfoProto { Name = e });

        var shapes = StaticShapes.Infer(model);
        Assert.That(shapes[b], Is.EqualTo(new long[] { 32 }));
        Assert.That(shapes[e], Is.EqualTo(new long[] { 4, 8 }));
        var types = new[] { "x", a, b, c, d, e }.ToDictionary(v => v, _ => (int)DT.Float);
        types["flat"] = (int)DT.Int64;
        var estimate = MemoryEstimate.Of(model, shapes, types);
        Assert.That(estimate.InputBytes, Is.EqualTo(128 + 8));
        Assert.That(estimate.PeakBytes, Is.EqualTo(3 * 128));
        Assert.That(estimate.PeakNode.OpType, Is.EqualTo("Neg"));
        Assert.That(estimate.LiveAtPeak.Select(v => v.Name), Is.EquivalentTo(new[] { a, c, d }));
    }

    /// <summary>graphs/tiny's step graph: ORT knows nearly every value's shape; twice the batch holds about twice the
    /// activations; bfloat16 compute holds fewer bytes than float32; at the peak, the forward's values saved for the
    /// backward are most of what is alive.</summary>
    [Test]
    public void TheStepGraphsPeakFollowsTheBatchAndThePrecision()
    {
        long Peak(ComputeType compute, int batch, out double known, out long saved)
        {
            using var model = EngineFixtures.TinyWithLora();
            using var graph = TrainingGraph.Build(model, compute: compute);
            var agnostic = graph.BuildStep(new AdamWOptions());
            var step = graph.WithBatchShape(agnostic, batch, 64);
            var shapes = StaticShapes.Infer(step);
            var made = step.Graph.Node.SelectMany(n => n.Output).Where(o => o != "").ToList();
            known = made.Count(shapes.ContainsKey) / (double)made.Count;
            var estimate = MemoryEstimate.Of(step, shapes, ValueTable.ElemTypes(agnostic, graph.Frozen.Values));
            saved = estimate.LiveAtPeak.Where(v => !v.Producer.Name.StartsWith("grad/") && !v.Producer.Name.StartsWith("adamw/")).Sum(v => v.Bytes);
            TestContext.Out.WriteLine($"{compute} B{batch} S64: inputs {estimate.InputBytes / 1024.0:N0} KiB, peak {estimate.PeakBytes / 1024.0:N0} KiB at '{estimate.PeakNode.Name}', saved {saved / 1024.0:N0} KiB, shapes known {known:P1}");
            return estimate.PeakBytes;
        }
        long two = Peak(ComputeType.Float32, 2, out var known, out var saved), four = Peak(ComputeType.Float32, 4, out _, out _);
        long half = Peak(ComputeType.BFloat16, 4, out var knownHalf, out _);
        Assert.That(known, Is.GreaterThan(0.95));
        Assert.That(knownHalf, Is.GreaterThan(0.95));
        Assert.That((double)four / two, Is.InRange(1.7, 2.1));
        Assert.That(half, Is.LessThan(four));
        Assert.That(saved, Is.GreaterThan(two / 2));
    }

    /// <summary>`inspect --training-graph --memory`: the inputs, the peak and its largest kinds of values, layers folded
    /// together; twice the batch, about twice the peak. Refused without --training-graph, before anything is printed.</summary>
    [Test]
    public void InspectReportsTheStepsMemoryAtABatchShape()
    {
        var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx");
        double Peak(int batch, out string output)
        {
            output = OrtloraOk("inspect", tiny, "--training-graph", "--memory", "--per-device-train-batch-size", batch.ToString(), "--max-seq-length", "32").Out;
            var m = System.Text.RegularExpressions.Regex.Match(output, @"made by the nodes, at the peak \('[^']+', \w+\): ([\d,.]+) MiB, of which the forward's values kept for the backward ([\d,.]+) MiB");
            Assert.That(m.Success, output);
            double peak = double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.That(double.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture), Is.InRange(peak / 2, peak));
            return peak;
        }
        double two = Peak(2, out var report), four = Peak(4, out _);
        Assert.That(four / two, Is.InRange(1.6, 2.2));
        Assert.That(report, Does.Contain("memory of one step at 2 × 32 tokens").And.Contain("4 × /model/layers.N/mlp/act_fn/Sigmoid_1 (Sigmoid)"));
        var refused = Ortlora("inspect", tiny, "--memory");
        Assert.That(refused.ExitCode, Is.Not.Zero);
        Assert.That(refused.Error, Does.Contain("--memory is for --training-graph"));
        Assert.That(refused.Out, Is.Empty);
    }
}
