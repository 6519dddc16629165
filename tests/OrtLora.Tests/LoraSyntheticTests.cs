using Google.Protobuf;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>Layouts and dtypes the fixtures do not have, on small graphs built here: a Phi-3-style fused qkv_proj
/// split by Slices into unequal parts, fp16 and bf16 weights, Gemm with transB and alpha, unnamed nodes.</summary>
public class LoraSyntheticTests
{
    const int In = 8;
    static readonly int[] QkvParts = [8, 4, 4];

    static ValueInfoProto Value(string name, int type, params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims) shape.Dim.Add(d < 0 ? new TensorShapeProto.Types.Dimension { DimParam = "n" } : new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = type, Shape = shape } } };
    }

    static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    /// <summary>x [n, 8] float → Cast(dtype) → MatMul with Transpose(qkv_proj.weight [16, 8]) → three Slices → Cast
    /// to float: q, k, v; and x → Gemm(transB=1, alpha) with down_proj.weight [6, 8] and a bias → y.</summary>
    static OnnxModel Build(int dtype, float gemmAlpha = 1)
    {
        var graph = new GraphProto { Name = "synthetic" };
        graph.Input.Add(Value("x", (int)DT.Float, -1, In));
        var g = new GraphEditor(graph);
        int outQkv = QkvParts.Sum();
        g.AddInitializer(Tensors.FromFloats("model.layers.0.self_attn.qkv_proj.weight", [outQkv, In], Random(outQkv * In, 1), dtype));
        g.AddInitializer(Tensors.FromFloats("model.layers.0.mlp.down_proj.weight", [6, In], Random(6 * In, 2)));
        g.AddInitializer(Tensors.FromFloats("model.layers.0.mlp.down_proj.bias", [6], Random(6, 3)));
        var x = g.Add("Cast", ["x"], attributes: ("to", dtype));
        var wT = g.Add("Transpose", ["model.layers.0.self_attn.qkv_proj.weight"], attributes: ("perm", new long[] { 1, 0 }));
        var qkv = g.Add("MatMul", [x, wT], name: "");
        graph.Node[^1].Name = ""; // exporters sometimes leave nodes unnamed
        long start = 0;
        foreach (var (name, width) in new[] { "q", "k", "v" }.Zip(QkvParts))
        {
            var starts = g.AddInitializer(Tensors.FromInt64(g.Unique("start"), [1], [start]));
            var ends = g.AddInitializer(Tensors.FromInt64(g.Unique("end"), [1], [start + width]));
            var axes = g.AddInitializer(Tensors.FromInt64(g.Unique("axes"), [1], [-1]));
            var part = g.Add("Slice", [qkv, starts, ends, axes]);
            g.Add("Cast", [part], outputs: [name], attributes: ("to", (int)DT.Float));
            graph.Output.Add(Value(name, (int)DT.Float, -1, width));
            start += width;
        }
        g.Add("Gemm", ["x", "model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.bias"], name: "/down_proj/Gemm",
            outputs: ["y"], attributes: [("transB", 1L), ("alpha", gemmAlpha)]);
        graph.Output.Add(Value("y", (int)DT.Float, -1, 6));
        var proto = new ModelProto { IrVersion = 9, Graph = graph, ProducerName = "test" };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        proto.MetadataProps.Add(new StringStringEntryProto { Key = "owner", Value = "tests" });
        return new OnnxModel(proto);
    }

    static Dictionary<string, HostTensor> Feeds() => new() { ["x"] = HostTensor.Of(Random(3 * In, 9), 3, In) };

    static float[] Outputs(OnnxModel model) =>
        OrtRun.Run(model, Feeds(), ["q", "k", "v", "y"]).Values.SelectMany(t => t.Floats).ToArray();

    [Test]
    public void SlicedFusedProjectionHasUnequalParts()
    {
        using var model = Build((int)DT.Float);
        var layers = LinearLayers.Find(new GraphEditor(model.Graph));
        var qkv = layers.Single(l => l.Module.EndsWith("qkv_proj"));
        Assert.That(qkv.Parts, Is.EqualTo(QkvParts));
        Assert.That((qkv.Layout, qkv.In, qkv.Out), Is.EqualTo((WeightLayout.OutIn, (long)In, 16L)));
        var down = layers.Single(l => l.Module.EndsWith("down_proj"));
        Assert.That((down.Layout, down.In, down.Out, down.IsOutputHead), Is.EqualTo((WeightLayout.OutIn, (long)In, 6L, true)));
    }

    [TestCase("canonical", 1f)]
    [TestCase("performant", 0.5f)]
    public void Float32MergeReproducesUnmergedOutputs(string variant, float gemmAlpha)
    {
        using var model = Build((int)DT.Float, gemmAlpha);
        var before = Outputs(model);
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["qkv_proj", "down_proj"], Variant = variant, R = 2 });
        Assert.That(lora.Adapters, Has.Count.EqualTo(variant == "canonical" ? 4 : 2));
        Assert.That(Shared.MaxAbsDiff(Outputs(model), before), Is.LessThan(1e-6f), "B = 0: unchanged");
        LoraTestKit.RandomizeB(model);
        var unmerged = Outputs(model);
        Assert.That(Shared.MaxAbsDiff(unmerged, before), Is.GreaterThan(1e-2f));
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Outputs(model), unmerged), Is.LessThan(1e-5f));
        using var original = Build((int)DT.Float, gemmAlpha);
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
        Assert.That(model.Proto.MetadataProps.Select(p => p.Key), Is.EqualTo(new[] { "owner" }));
    }

    [TestCase(DT.Float16)]
    [TestCase(DT.Bfloat16)]
    [TestCase(DT.Double)]
    public void OtherFloatWeightsMergeInTheirOwnDtype(DT dtype)
    {
        using var model = Build((int)dtype);
        const string name = "model.layers.0.self_attn.qkv_proj.weight";
        var w = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == name));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["qkv_proj"], R = 3, LoraAlpha = 6 });
        Assert.That(model.Graph.Node.Count(n => n.OpType == "Cast"), Is.EqualTo(4 + 2), "the LoRA branch casts to float32 and back");
        LoraTestKit.RandomizeB(model);
        var a = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].LoraA));
        var b = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == lora.Adapters[0].LoraB));
        float[]? unmerged = dtype != DT.Bfloat16 ? Outputs(model) : null; // ORT's CPU MatMul has no bf16 kernel
        LoraMerger.Merge(model);
        var merged = model.Graph.Initializer.Single(t => t.Name == name);
        Assert.That(merged.DataType, Is.EqualTo((int)dtype));
        var values = model.ReadFloats(merged);
        double ulp = dtype switch { DT.Float16 => 1.0 / 1024, DT.Bfloat16 => 1.0 / 128, _ => 1e-6 };
        for (int o = 0; o < 16; o++)
            for (int i = 0; i < In; i++)
            {
                double expected = w[o * In + i] + 2.0 * Enumerable.Range(0, 3).Sum(k => (double)b[o * 3 + k] * a[k * In + i]);
                Assert.That(values[o * In + i], Is.EqualTo(expected).Within(Math.Abs(expected) * ulp + 1e-6), $"W[{o},{i}]");
            }
        if (unmerged is not null) Assert.That(Shared.MaxAbsDiff(Outputs(model), unmerged), Is.LessThan(dtype == DT.Double ? 1e-5f : 2e-2f));
    }
}
