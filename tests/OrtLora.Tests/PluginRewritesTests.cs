using Google.Protobuf;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>The ops the plugin CUDA provider crashes on, rewritten (docs/gpu.md): every Slice it would run becomes
/// Gathers that pick the same elements, the loss's GatherElements and ScatterElements a flat Gather and ScatterND;
/// each checked against ORT's own op on the CPU, and by training through the rewritten graphs.</summary>
public class PluginRewritesTests
{
    const long Max = long.MaxValue, Min = long.MinValue;

    /// <summary>starts, ends, axes (null: omitted), steps (null: omitted).</summary>
    static readonly (long[] Starts, long[] Ends, long[]? Axes, long[]? Steps)[] Forms =
    [
        ([2], [7], [1], null),                  // a plain range
        ([1], [Max], [2], null),                // x[..., 1:] as exporters write it
        ([-3], [Max], [-1], [1]),               // negative start and axis
        ([0], [-1], [1], [2]),                  // negative end, stride 2
        ([1], [Max], [-1], [2]),                // the interleaved rotary's odd half
        ([-1], [Min], [1], [-1]),               // reversed
        ([8], [2], [1], [-3]),                  // negative stride inside the range
        ([0, 1], [2, 5], null, null),           // axes omitted: 0 and 1
        ([1, -4, 0], [3, Max, 100], [0, 2, 1], [1, 1, 3]), // three axes, an end past the dim
        ([5], [2], [1], null),                  // empty
        ([-100], [100], [2], null),             // bounds far outside the dim
    ];

    [Test]
    public void EverySliceFormPicksTheSameElementsAsSlice()
    {
        var (model, g) = Opset18Model("slices");
        model.Graph.Input.Add(Input("x", DT.Float, "a", "b", 6L));
        model.Graph.Input.Add(Input("ids", DT.Int64, "a", "b"));
        var outputs = new List<string>();
        foreach (var (starts, ends, axes, steps) in Forms)
        {
            var inputs = new List<string> { "x", GraphConstants.Int64s(g, "starts", starts), GraphConstants.Int64s(g, "ends", ends) };
            if (axes is not null || steps is not null) inputs.Add(axes is null ? "" : GraphConstants.Int64s(g, "axes", axes));
            if (steps is not null) inputs.Add(GraphConstants.Int64s(g, "steps", steps));
            outputs.Add(g.Add("Slice", inputs));
        }
        // Bounds computed at run time (the torchscript rotary's middle), int32 bounds, and int64 data (labels shifted).
        var shape = g.Add("Shape", ["x"]);
        var middle = g.Add("Div", [g.Add("Slice", [shape, GraphConstants.Int64s(g, "two", 2), GraphConstants.Int64s(g, "three", 3)]), GraphConstants.Int64s(g, "half", 2)]);
        outputs.Add(g.Add("Slice", ["x", middle, GraphConstants.Int64s(g, "end", Max), GraphConstants.Int64s(g, "axis", 2)]));
        var int32Start = GraphConstants.Add(g, "i32start", n => new TensorProto { Name = n, DataType = (int)DT.Int32, Dims = { 1 }, Int32Data = { -2 } });
        var int32End = GraphConstants.Add(g, "i32end", n => new TensorProto { Name = n, DataType = (int)DT.Int32, Dims = { 1 }, Int32Data = { int.MaxValue } });
        var int32Axis = GraphConstants.Add(g, "i32axis", n => new TensorProto { Name = n, DataType = (int)DT.Int32, Dims = { 1 }, Int32Data = { 1 } });
        outputs.Add(g.Add("Slice", ["x", int32Start, int32End, int32Axis]));
        outputs.Add(g.Add("Slice", ["ids", GraphConstants.Int64s(g, "one", 1), GraphConstants.Int64s(g, "max", Max), GraphConstants.Int64s(g, "axis1b", 1)]));
        var shapeSlice = g.Add("Slice", [shape, GraphConstants.Int64s(g, "zero", 0), GraphConstants.Int64s(g, "first", 1)]);
        outputs.Add(shapeSlice);
        foreach (var o in outputs) model.Graph.Output.Add(new ValueInfoProto { Name = o });

        var rewritten = model.Clone();
        int count = SliceAsGather.Apply(rewritten.Graph);
        Assert.That(count, Is.EqualTo(Forms.Length + 5), "every Slice, of data and of shapes");
        Assert.That(rewritten.Graph.Node.Count(n => n.OpType == "Slice"), Is.Zero);

        var rng = new Random(5);
        foreach (var (a, b) in new[] { (3, 10), (2, 4) }) // two shapes through the same graphs: bounds follow the dims
        {
            var feeds = new Dictionary<string, HostTensor>
            {
                ["x"] = HostTensor.Of(Enumerable.Range(0, a * b * 6).Select(_ => (float)rng.NextDouble()).ToArray(), a, b, 6),
                ["ids"] = HostTensor.Of(Enumerable.Range(0, a * b).Select(i => (long)i).ToArray(), a, b),
            };
            var (expected, _) = AssertSameOutputs(model, rewritten, feeds, outputs, $"at [{a}, {b}, 6]",
                Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_DISABLE_ALL);
            Assert.That(expected.Values.Sum(v => v.Data.Length), Is.GreaterThan(100), "the forms pick elements");
        }
    }

    /// <summary>The loss's row indexing (marked GatherElements and ScatterElements along the last axis) against the
    /// flat Gather and ScatterND it becomes, at two batch shapes and with one and with three indices a row.</summary>
    [TestCase(1)]
    [TestCase(3)]
    public void RowIndexingPicksAndWritesTheSameElements(int perRow)
    {
        var (model, g) = Opset18Model("rows");
        model.Graph.Input.Add(Input("data", DT.Float, "b", "s", 7L));
        model.Graph.Input.Add(Input("index", DT.Int64, "b", "s", (long)perRow));
        model.Graph.Input.Add(Input("values", DT.Float, "b", "s", (long)perRow));
        var picked = g.Add("GatherElements", ["data", "index"], attributes: ("axis", -1L));
        var written = g.Add("ScatterElements", ["data", "index", "values"], attributes: ("axis", -1L));
        var unmarked = g.Add("GatherElements", ["data", "index"], attributes: ("axis", -1L));
        RowIndexAsGather.Mark(g, picked);
        RowIndexAsGather.Mark(g, written);
        foreach (var o in new[] { picked, written, unmarked }) model.Graph.Output.Add(new ValueInfoProto { Name = o });
        var rewritten = model.Clone();
        Assert.That(RowIndexAsGather.Apply(rewritten), Is.EqualTo(2), "the marked nodes only");
        Assert.That(rewritten.Graph.Node.Count(n => n.OpType is "GatherElements" or "ScatterElements"), Is.EqualTo(1));

        var rng = new Random(7);
        foreach (var (b, s) in new[] { (2, 5), (3, 1) })
        {
            int rows = b * s;
            // distinct indices within a row: ScatterElements leaves the order of duplicate writes unspecified
            var index = Enumerable.Range(0, rows).SelectMany(_ => Enumerable.Range(0, 7).OrderBy(_ => rng.Next()).Take(perRow)).Select(i => (long)i).ToArray();
            var feeds = new Dictionary<string, HostTensor>
            {
                ["data"] = HostTensor.Of(Enumerable.Range(0, rows * 7).Select(_ => (float)rng.NextDouble()).ToArray(), b, s, 7),
                ["index"] = HostTensor.Of(index, b, s, perRow),
                ["values"] = HostTensor.Of(Enumerable.Range(0, rows * perRow).Select(_ => -(float)rng.NextDouble()).ToArray(), b, s, perRow),
            };
            var (expected, _) = AssertSameOutputs(model, rewritten, feeds, [picked, written], "");
            Assert.That(expected[written].Floats.Count(v => v < 0), Is.EqualTo(rows * perRow), "the scatter wrote every index");
        }
    }

    /// <summary>Size counted through Shape of the flattened tensor, at two shapes and at one with no elements.</summary>
    [Test]
    public void SizeAsShapeCountsTheSameElements()
    {
        var (model, g) = Opset18Model("sizes");
        model.Graph.Input.Add(Input("x", DT.Float, "a", "b", 6L));
        model.Graph.Input.Add(Input("ids", DT.Int64, "a", "b"));
        var outputs = new[] { g.Add("Size", ["x"]), g.Add("Mul", [g.Add("Size", ["ids"]), g.Add("Size", ["x"])]) };
        foreach (var o in outputs) model.Graph.Output.Add(new ValueInfoProto { Name = o });
        var rewritten = model.Clone();
        Assert.That(SizeAsShape.Apply(rewritten.Graph), Is.EqualTo(3));
        Assert.That(rewritten.Graph.Node.Count(n => n.OpType == "Size"), Is.Zero);
        foreach (var (a, b) in new[] { (3, 10), (2, 1), (0, 4) })
        {
            var feeds = new Dictionary<string, HostTensor>
            {
                ["x"] = HostTensor.Of(new float[a * b * 6], a, b, 6),
                ["ids"] = HostTensor.Of(new long[a * b], a, b),
            };
            var (_, actual) = AssertSameOutputs(model, rewritten, feeds, outputs, "");
            Assert.That(actual[outputs[0]].Int64s, Is.EqualTo(new[] { (long)a * b * 6 }), $"[{a}, {b}, 6]");
        }
    }

    /// <summary>ORT's GatherToSliceFusion turns SliceAsGather's Range and Gather back into a Slice when the shape is only
    /// known at run time (the dynamic-shape crash on the plugin, docs/gpu.md); a session configured with
    /// <see cref="PluginRewrites.KeepRewritten"/> keeps the Gather. Read from the model ORT optimized (level all, CPU).</summary>
    [Test]
    public void TheOptimizerKeepsTheRewrittenSlice()
    {
        var (model, g) = Opset18Model("shifted");
        model.Graph.Input.Add(Input("labels", DT.Int64, "batch", "sequence"));
        var shifted = g.Add("Slice", ["labels", GraphConstants.Int64s(g, "one", 1), GraphConstants.Int64s(g, "max", Max), GraphConstants.Int64s(g, "axis", 1)]);
        model.Graph.Output.Add(new ValueInfoProto { Name = shifted });
        var rewritten = PluginRewrites.Apply(model);
        Assert.That(rewritten.Graph.Node.Select(n => n.OpType), Has.Member("Range").And.No.Member("Slice"));

        string[] Optimized(bool keep)
        {
            var dir = Directory.CreateTempSubdirectory("ortlora-optimized-").FullName;
            try
            {
                using var options = new Microsoft.ML.OnnxRuntime.SessionOptions
                {
                    GraphOptimizationLevel = Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
                    OptimizedModelFilePath = Path.Combine(dir, "optimized.onnx"),
                };
                if (keep) PluginRewrites.KeepRewritten(options);
                using (var session = new Microsoft.ML.OnnxRuntime.InferenceSession(rewritten.ToByteArray(), options)) { }
                using var optimized = OnnxModel.Load(options.OptimizedModelFilePath);
                return [.. optimized.Graph.Node.Select(n => n.OpType)];
            }
            finally { Directory.Delete(dir, recursive: true); }
        }
        Assert.That(Optimized(keep: false), Has.Member("Slice"), "ORT fuses the Range and Gather back into a Slice");
        Assert.That(Optimized(keep: true), Has.Member("Gather").And.No.Member("Slice"));
        // Optimizers that ORTLORA_ORT_CONFIG disables join the list instead of replacing it.
        using (Shared.EnvironmentVariable("ORTLORA_ORT_CONFIG", "optimization.disable_specified_optimizers=ConstantFolding"))
            Assert.That(Optimized(keep: true), Has.Member("Gather").And.No.Member("Slice"));
    }

    /// <summary>What verify --static-shapes computes on the plugin, here on the CPU: PEFT's loss, gradients, AdamW step
    /// and 20-step trajectory through all three rewrites with graphs loaded for the batch's shape, every row within
    /// tolerance, on an export of each exporter.</summary>
    [TestCase("llama", "torchscript")]
    [TestCase("gpt2", "dynamo")]
    public void PeftParityHoldsThroughTheRewritesWithStaticShapes(string arch, string exporter)
    {
        using var model = EngineFixtures.InjectedModel(arch, exporter);
        EngineFixtures.AssertPeftParity(model, arch, new TrainingSessionOptions(new AdamWOptions(), StaticShapes: true, PluginRewrites: true));
    }

    /// <summary>`train` through the rewrites (forced with ORTLORA_PLUGIN_REWRITES=1, as --ep-library turns them on)
    /// writes the adapter plain training writes; unpadded it notes that the plugin wants static shapes, padded it does not.</summary>
    [Test]
    public void TrainThroughTheRewritesWritesTheSameAdapter()
    {
        string[] Args(string dir, params string[] extra) =>
        [
            "train", LoraTestKit.Tiny("model.onnx"), "--data", LoraTestKit.Tiny("demo.parquet"), "--target-modules", "all-linear",
            "--r", "4", "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--max-steps", "3", "--plain-log", "-o", dir, .. extra,
        ];
        var (plainDir, rewrittenDir, paddedDir) = (Shared.TempDir(), Shared.TempDir(), Shared.TempDir());
        var plain = LoraTestKit.Ortlora(Args(plainDir));
        LoraTestKit.CliResult rewritten, padded;
        using (Shared.EnvironmentVariable("ORTLORA_PLUGIN_REWRITES", "1"))
        {
            rewritten = LoraTestKit.Ortlora(Args(rewrittenDir));
            padded = LoraTestKit.Ortlora(Args(paddedDir, "--pad-to-max-length", "--max-seq-length", "128"));
        }
        foreach (var run in new[] { plain, rewritten, padded }) Assert.That(run.ExitCode, Is.Zero, run.Out + run.Error);
        const string note = "--pad-to-max-length (or --cuda-graphs) loads them for one padded batch shape";
        Assert.That(rewritten.Out, Does.Contain(note));
        Assert.That(plain.Out + padded.Out, Does.Not.Contain(note));
        var expected = SafeTensors.Read(Path.Combine(plainDir, PeftAdapter.WeightsFile));
        var actual = SafeTensors.Read(Path.Combine(rewrittenDir, PeftAdapter.WeightsFile));
        Assert.That(actual.Keys, Is.EquivalentTo(expected.Keys));
        foreach (var (name, tensor) in expected)
            Assert.That(actual[name].AsFloats().Zip(tensor.AsFloats()).Max(p => Math.Abs(p.First - p.Second)), Is.LessThan(1e-5), name);
    }

    static (ModelProto Model, GraphEditor Editor) Opset18Model(string name)
    {
        var model = new ModelProto { IrVersion = 9, Graph = new GraphProto { Name = name } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        return (model, new GraphEditor(model.Graph));
    }

    /// <summary>The model and its rewrite run on the same feeds: each output the same shape and the same elements.</summary>
    static (Dictionary<string, HostTensor> Expected, Dictionary<string, HostTensor> Actual) AssertSameOutputs(ModelProto model,
        ModelProto rewritten, Dictionary<string, HostTensor> feeds, IEnumerable<string> outputs, string where,
        Microsoft.ML.OnnxRuntime.GraphOptimizationLevel level = Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
    {
        using var original = new OnnxModel(model.Clone());
        using var changed = new OnnxModel(rewritten.Clone());
        var expected = OrtRun.Run(original, feeds, level: level);
        var actual = OrtRun.Run(changed, feeds, level: level);
        foreach (var o in outputs)
        {
            Assert.That(actual[o].Shape, Is.EqualTo(expected[o].Shape), $"{o} {where}");
            Assert.That(actual[o].Data, Is.EqualTo(expected[o].Data), $"{o} {where}");
        }
        return (expected, actual);
    }

    static ValueInfoProto Input(string name, DT type, params object[] dims)
    {
        var tensor = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = new TensorShapeProto() };
        foreach (var d in dims)
            tensor.Shape.Dim.Add(d is long v ? new TensorShapeProto.Types.Dimension { DimValue = v } : new TensorShapeProto.Types.Dimension { DimParam = (string)d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensor } };
    }

    /// <summary>Training through the rewritten graphs (what a plugin provider loads) is training: the loss's label shift
    /// and the backward's Slices become Gathers (and eval's rotary halves: the step cuts them with a Split, see
    /// <see cref="Autodiff.SlicesAsSplit"/>), the loss's row indexing flat Gather and ScatterND, and losses and parameters
    /// stay those of the original ops (with label smoothing too).</summary>
    [TestCase(0.0)]
    [TestCase(0.1)]
    public void TrainingThroughTheRewritesMatchesTrainingWithout(double labelSmoothing)
    {
        var batch = PeftParity.ReadBatch(SafeTensors.Read(Shared.Peft("llama", "reference.safetensors")));
        using var model = EngineFixtures.InjectedModel("llama", "torchscript"); // computed rotary bounds
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01), LabelSmoothing: labelSmoothing);
        using var slices = new TrainingSession(model, options);
        using var gathers = new TrainingSession(model, options with { PluginRewrites = true });
        Assert.That(options.RewritesForPlugin, Is.False);
        Assert.That((options with { EpLibrary = "plugin.so" }).RewritesForPlugin, Is.True, "on by default with a plugin provider");
        var step = slices.Graph.BuildStep(options.AdamW);
        var forPlugin = PluginRewrites.Apply(step).Graph.Node;
        Assert.That(step.Graph.Node.Count(n => n.OpType is "Slice" or "GatherElements" or "ScatterElements"), Is.GreaterThan(3), "the step had ops to rewrite");
        Assert.That(forPlugin.Count(n => n.OpType is "GatherElements" or "ScatterElements"), Is.Zero);
        Assert.That(forPlugin.Count(n => n.OpType is "Slice" or "Size"), Is.Zero);
        Assert.That(slices.Graph.Eval.Graph.Node.Count(n => n.OpType == "Slice"), Is.GreaterThanOrEqualTo(8), "eval's rotary halves, 2 a rotation");
        Assert.That(PluginRewrites.Apply(slices.Graph.Eval).Graph.Node.Count(n => n.OpType is "Slice" or "Size"), Is.Zero);
        for (int i = 0; i < 3; i++)
            Assert.That(gathers.Step(batch, 1e-2f, maxGradNorm: 1f), Is.EqualTo(slices.Step(batch, 1e-2f, maxGradNorm: 1f)).Within(1e-6), $"step {i}");
        Assert.That(gathers.EvalLoss(batch), Is.EqualTo(slices.EvalLoss(batch)).Within(1e-6));
        var (a, b) = (slices.GetParameters(), gathers.GetParameters());
        foreach (var p in slices.ParameterNames)
            Assert.That(b[p].Zip(a[p]).Max(t => Math.Abs(t.First - t.Second)), Is.LessThan(1e-6), p);
    }
}
