using Onnx;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Tests.Unseen;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>The CUDA kernel table and its checker (issue 6: nodes without a CUDA kernel run on the CPU EP between CUDA
/// nodes). Every graph ortlora builds for training must be covered by a CUDA kernel, node by node and type by type.</summary>
public class KernelCoverageTests
{
    static OnnxModel Injected(Func<OnnxModel> build)
    {
        var model = build();
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"], Seed = 3 });
        return model;
    }

    static OnnxModel Tiny() => OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"));

    static List<FallbackNode> Fallbacks(ModelProto graph) => KernelCoverage.Missing(graph, KernelTable.Cuda, ValueTable.ElemTypes(graph));

    /// <summary>Every node has a CUDA kernel, and no host-memory argument waits for a device computation.</summary>
    static void AssertAllOnCuda(string what, ModelProto graph)
    {
        var types = ValueTable.ElemTypes(graph);
        var missing = KernelCoverage.Missing(graph, KernelTable.Cuda, types);
        Assert.That(missing, Is.Empty, $"{what}: {missing.Count} of {graph.Graph.Node.Count} nodes have no CUDA kernel:\n  "
            + string.Join("\n  ", missing.Take(20)));
        var copies = HostArguments.DeviceToHost(graph, types);
        Assert.That(copies, Is.Empty, $"{what}: device-to-host copies for\n  " + string.Join("\n  ", copies.Take(20)));
        var fromBatch = HostArguments.FromFedIntegers(graph);
        Assert.That(fromBatch, Is.Empty, $"{what}: host arguments a CUDA graph would freeze at the first batch\n  " + string.Join("\n  ", fromBatch.Take(20)));
        // What a plugin provider loads (PluginRewrites.Apply) holds none of the ops the plugin was seen to crash on,
        // and still has a CUDA kernel for every node.
        var forPlugin = PluginRewrites.Apply(graph);
        var crashes = KernelCoverage.PluginCrashes(forPlugin);
        Assert.That(crashes.Select(n => $"{n.OpType} {n.Name}"), Is.Empty, $"{what}: left for the plugin to crash on");
        var pluginMissing = KernelCoverage.Missing(forPlugin, KernelTable.Cuda, ValueTable.ElemTypes(forPlugin));
        Assert.That(pluginMissing, Is.Empty, $"{what} for the plugin: no CUDA kernel for\n  " + string.Join("\n  ", pluginMissing.Take(20)));
    }

    /// <summary>All four graphs a training run loads (eval, step, accumulate, apply), with LoRA dropout and weight
    /// decay so that every emitted op appears; the exported forward part included.</summary>
    static void AssertTrainingGraphsOnCuda(string what, OnnxModel model)
    {
        using var graph = TrainingGraph.Build(model, loraDropout: 0.1);
        AssertAllOnCuda(what + " eval", graph.Eval);
        AssertAllOnCuda(what + " step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01, LrMultiplier: p => p.EndsWith("lora_B.weight") ? 16 : 1)));
        AssertAllOnCuda(what + " accumulate", graph.BuildAccumulate());
        AssertAllOnCuda(what + " apply", graph.BuildApply(new AdamWOptions(WeightDecay: 0.01)));
    }

    [Test]
    public void TinyTrainingGraphsHaveACudaKernelForEveryNode()
    {
        using var model = Injected(Tiny);
        AssertTrainingGraphsOnCuda("graphs/tiny", model);
    }

    [TestCaseSource(typeof(LoraTestKit), nameof(LoraTestKit.Models))]
    public void FixtureTrainingGraphsHaveACudaKernelForEveryNode(string arch, string file)
    {
        using var model = EngineFixtures.InjectedModel(arch, file.Split('.')[1]);
        AssertTrainingGraphsOnCuda($"{arch} {file}", model);
    }

    /// <summary>The graphs `train --fp16` / `--bf16` run (half base, float32 LoRA branches and optimizer) on graphs/tiny
    /// and the llama fixture: bf16 is the GPU's case, where the Slice gradient's Pad (no bfloat16 CUDA kernel) pads in
    /// float32. With gradient checkpointing and the chunked loss too: their ordering nodes (ReduceSum, Slice, Sum, Cast in
    /// half) and the chunks' slices must not fall back either.</summary>
    [TestCase(ComputeType.Float16, false)]
    [TestCase(ComputeType.BFloat16, false)]
    [TestCase(ComputeType.Float16, true)]
    [TestCase(ComputeType.BFloat16, true)]
    public void HalfComputeStepGraphsHaveACudaKernelForEveryNode(ComputeType compute, bool memoryOptions)
    {
        foreach (var (name, open) in new (string, Func<OnnxModel>)[] { ("graphs/tiny", () => Injected(Tiny)), ("llama dynamo", () => EngineFixtures.InjectedModel("llama", "dynamo")) })
        {
            using var model = open();
            using var graph = TrainingGraph.Build(model, compute: compute, gradientCheckpointing: memoryOptions, lossChunks: memoryOptions ? 4 : 1);
            if (memoryOptions) Assert.That(Checkpoints.CountSegments(graph.Gradients.Graph), Is.GreaterThan(0), name);
            AssertAllOnCuda($"{name} {compute} step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)));
            if (memoryOptions) AssertAllOnCuda($"{name} {compute} eval", graph.Eval);
        }
    }

    /// <summary>DoRA's graphs (weight norms, the base copies that lora_dropout adds, Gemm bias removal on GPT-2
    /// torchscript), in float32 and bf16.</summary>
    [TestCase("llama", "model.dynamo.onnx", ComputeType.Float32)]
    [TestCase("gpt2", "model.torchscript.onnx", ComputeType.Float32)]
    [TestCase("llama", "model.torchscript.onnx", ComputeType.BFloat16)]
    public void DoraTrainingGraphsHaveACudaKernelForEveryNode(string arch, string file, ComputeType compute)
    {
        using var model = OnnxModel.Load(Shared.Peft(arch, file));
        LoraInjector.Inject(model, new LoraConfig { R = 4, TargetModules = ["all-linear"], UseDora = true });
        using var graph = TrainingGraph.Build(model, loraDropout: 0.1, compute: compute);
        Assert.That(graph.Gradients.Graph.Node.Count(n => n.Name.EndsWith("/dora/norm")), Is.GreaterThan(0));
        AssertAllOnCuda($"DoRA {arch} {file} {compute} eval", graph.Eval);
        AssertAllOnCuda($"DoRA {arch} {file} {compute} step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)));
    }

    /// <summary>Quantized bases in half compute: DequantizeLinear has no bfloat16 scale on CUDA, so bf16 dequantizes to
    /// float32 and casts; fp16 dequantizes into float16 from opset 19 (the int8 base is at opset 17: float32 and a Cast).</summary>
    [TestCase("llama-int8-weights-qdq", ComputeType.Float16)]
    [TestCase("llama-int8-weights-qdq", ComputeType.BFloat16)]
    [TestCase("llama-int4-block-weights-qdq", ComputeType.Float16)]
    [TestCase("llama-int4-block-weights-qdq", ComputeType.BFloat16)]
    public void QuantizedBasesInHalfComputeHaveACudaKernelForEveryNode(string name, ComputeType compute)
    {
        using var model = Injected(Architectures.All.Single(a => a.Name == name).Build);
        using var graph = TrainingGraph.Build(model, compute: compute);
        var scales = graph.Gradients.Graph.Node.Where(n => n.OpType == "DequantizeLinear").Select(n => n.Input[1]).Distinct().ToList();
        Assert.That(scales, Is.Not.Empty);
        AssertAllOnCuda($"{name} {compute} eval", graph.Eval);
        AssertAllOnCuda($"{name} {compute} step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)));
    }

    /// <summary>modules_to_save (a float32 head and embedding copy, the embedding's scatter-add) and trainable tokens (the
    /// rows' ScatterND, GatherND in the backward) on graphs/tiny, whose head is tied, in float32 and both half types.</summary>
    [TestCase(ComputeType.Float32)]
    [TestCase(ComputeType.Float16)]
    [TestCase(ComputeType.BFloat16)]
    public void SavedModulesAndTokenRowsHaveACudaKernelForEveryNode(ComputeType compute)
    {
        foreach (var config in new[] { new LoraConfig { R = 4, ModulesToSave = ["lm_head", "embed_tokens"] }, new LoraConfig { R = 4, TrainableTokenIndices = new() { [""] = [5, 6, 7] } } })
        {
            using var model = Tiny();
            LoraInjector.Inject(model, config);
            using var graph = TrainingGraph.Build(model, compute: compute);
            var what = $"{(config.ModulesToSave.Count > 0 ? "modules_to_save" : "trainable tokens")} {compute}";
            Assert.That(graph.Gradients.Graph.Node.Count(n => n.OpType == "ScatterND"), Is.GreaterThan(0), what);
            AssertAllOnCuda(what + " eval", graph.Eval);
            AssertAllOnCuda(what + " step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)));
        }
    }

    static IEnumerable<Architecture> Trainable => Architectures.All.Where(a => a.Trainable);

    /// <summary>The unseen export styles bring fp16 activations, opset-23 ops, int32 tokens, Gemm layers, cache inputs.</summary>
    [TestCaseSource(nameof(Trainable))]
    public void UnseenStepGraphsHaveACudaKernelForEveryNode(Architecture arch)
    {
        using var model = Injected(arch.Build);
        using var graph = TrainingGraph.Build(model);
        AssertAllOnCuda(arch.Name + " step", graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)));
    }

    /// <summary>A training graph's frozen weights, fed as they are held, give the same types as synthetic weights.</summary>
    [Test]
    public void ElemTypesFromTheFrozenWeightsMatchSyntheticOnes()
    {
        using var model = Injected(Tiny);
        using var graph = TrainingGraph.Build(model);
        var step = graph.BuildStep(new AdamWOptions());
        var fromFrozen = ValueTable.ElemTypes(step, graph.Frozen.Values);
        Assert.That(graph.Frozen.Values.Keys, Is.SubsetOf(fromFrozen.Keys).And.Not.Empty);
        Assert.That(fromFrozen, Is.EquivalentTo(ValueTable.ElemTypes(step)));
    }

    /// <summary>The checker can fail: an op the CUDA EP has no kernel for (Mean), a type outside a kernel's constraint
    /// (Clip on int32, which the CPU EP takes), next to nodes it covers (Add, Cast) and a Constant (folded at load).</summary>
    [Test]
    public void FindsNodesTheCudaEpHasNoKernelFor()
    {
        var net = new Net(17);
        net.Input("x", (int)DT.Float, 2, 3);
        var mean = net.Op("Mean", "x", net.Op("Add", "x", net.G.Add("Constant", [], attributes: ("value", Tensors.Scalar("c", 1, (int)DT.Float)))));
        var clipped = net.Op("Clip", [net.Op("Cast", [mean], ("to", (long)DT.Int32))]);
        net.Output(net.Op("Cast", [clipped], ("to", (long)DT.Float)), "y", 2, 3);

        var missing = Fallbacks(net.Proto);

        Assert.That(missing.Select(m => m.Node.OpType), Is.EqualTo(new[] { "Mean", "Clip" }));
        Assert.That(missing[0].Reason, Is.EqualTo("CUDAExecutionProvider has no Mean kernel"));
        Assert.That(missing[0].Types, Is.EqualTo("float,float -> float"));
        Assert.That(missing[1].Node.Output[0], Is.EqualTo(clipped));
        Assert.That(missing[1].Reason, Does.StartWith("input 0 ").And.EndWith("is int32; the kernel for opsets 13+ takes double, float, float16, int64, int8, uint64, uint8"));
    }

    /// <summary>An opset outside every registered range is a fallback too, and a table's shorthands and variadic
    /// inputs read as the format says.</summary>
    [Test]
    public void ChecksTheOpsetRangeAndVariadicInputs()
    {
        var table = KernelTable.Parse("TestEP", """
            @ints int32,int64
            Relu    ai.onnx  14+  T   T  T=float
            Concat  ai.onnx  4-12 T*  T  T=float,@ints
            """);
        var net = new Net(13);
        net.Input("x", (int)DT.Float, 2);
        net.Input("i", (int)DT.Int64, 2);
        var relu = net.Op("Relu", "x");
        net.Op("Concat", ["i", "i", "i"], ("axis", 0L));
        net.Output(relu, "y", 2);
        var types = new Dictionary<string, int> { ["x"] = (int)DT.Float, ["i"] = (int)DT.Int64 };

        var missing = KernelCoverage.Missing(net.Proto, table, types);

        Assert.That(missing.Select(m => m.Reason), Is.EqualTo(new[]
        {
            "TestEP has Relu for opsets 14+ only",
            "TestEP has Concat for opsets 4-12 only",
            "TestEP has no Identity kernel",
        }));
        var concat = table.Find("Concat", "").Single();
        Assert.That(concat.Allowed(input: true, 2), Is.EquivalentTo(new[] { "float", "int32", "int64" }));
        Assert.That(KernelTable.Cuda.Find("Reciprocal", "ai.onnx").First(k => k.Covers(17)).Allowed(true, 0), Does.Not.Contain("bfloat16"),
            "the CUDA table as ORT documents it: no bf16 Reciprocal");
    }

    /// <summary>The copy check can fail: a Reshape whose shape is computed from a float tensor's contents waits for
    /// a device-to-host copy; one whose shape comes from Shape (metadata) does not.</summary>
    [Test]
    public void FindsHostArgumentsComputedOnTheDevice()
    {
        var net = new Net(17);
        net.Input("x", (int)DT.Float, 2, 3);
        net.Input("ids", (int)DT.Int64, 2, 3);
        var fromShape = net.Op("Reshape", "x", net.Op("Shape", net.Op("Relu", "x")));
        var fromTokens = net.Op("Reshape", fromShape, net.Op("Shape", "ids"));
        var countFromData = net.Op("Cast", [net.Op("ReduceSum", [net.Op("Relu", "x")], ("keepdims", 0L))], ("to", (long)DT.Int64));
        var fromData = net.Op("Reshape", fromTokens, net.Op("Concat", [net.I(-1), net.Op("Unsqueeze", countFromData, net.I(0))], ("axis", 0L)));
        net.Output(fromData, "y", 2, 3);

        var copies = HostArguments.DeviceToHost(net.Proto, ValueTable.ElemTypes(net.Proto));

        Assert.That(copies.Select(c => (c.Node.OpType, c.Input)), Is.EqualTo(new[] { ("Reshape", 1) }));
        Assert.That(copies[0].Node.Output[0], Is.EqualTo(fromData));
        Assert.That(HostArguments.FromFedIntegers(net.Proto), Is.Empty, "the tokens reach a host argument only through Shape");
    }

    /// <summary>A host argument computed from the tokens' values (a count of nonzero ids as a Range limit) is what a
    /// captured CUDA graph would freeze: found, and --cuda-graphs refuses the graph naming it; one from their shape is not.</summary>
    [Test]
    public void FindsHostArgumentsComputedFromTheBatch()
    {
        var net = new Net(17);
        net.Input("ids", (int)DT.Int64, 2, 3);
        var fromShape = net.Op("Range", [net.I(0L), net.Op("ReduceProd", [net.Op("Shape", "ids")], ("keepdims", 0L)), net.I(1L)]);
        var count = net.Op("ReduceSum", [net.Op("Cast", [net.Op("Greater", "ids", net.I(0L))], ("to", (long)DT.Int64))], ("keepdims", 0L));
        var fromValues = net.Op("Range", [net.I(0L), count, net.I(1L)]);
        net.Output(net.Op("Concat", [fromShape, fromValues], ("axis", 0L)), "y", -1);

        var copies = HostArguments.FromFedIntegers(net.Proto);

        Assert.That(copies.Select(c => (c.Node.OpType, c.Input)), Is.EqualTo(new[] { ("Range", 1) }));
        Assert.That(copies[0].Node.Output[0], Is.EqualTo(fromValues));
        var e = Assert.Throws<OrtLoraException>(() => FixedAddresses.RequireNoBatchHostArguments(net.Proto))!;
        Assert.That(e.Message, Does.Contain("Range").And.Contain("--cuda-graphs"));
    }

    [Test]
    public void InspectPrintsTheStepGraphAndItsCudaFallbacks()
    {
        var output = OrtloraOk("inspect", Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"), "--training-graph", "--device", "cuda", "--r", "2").Out;
        Assert.That(output, Does.Match(@"training step graph: \d,\d{3} nodes"));
        Assert.That(output, Does.Match(@"MatMul \d+").And.Contain("ScatterElements 1").And.Contain("LogSoftmax 1"));
        Assert.That(output, Does.Contain("CUDAExecutionProvider: every node has a kernel").And.Contain("no device-to-host copies"));
        Assert.That(output, Does.Contain("CUDA graphs (--cuda-graphs): no host-memory argument is computed from the batch's contents"));
        // graphs/tiny's rotary halves and the loss's label pick and shift, and none after the plugin's rewrites
        var plugin = System.Text.RegularExpressions.Regex.Match(output, @"CUDA plugin \(--ep-library\): (\d+) nodes of ops it was seen to crash on \(([^)]*)\); (\d+) left");
        Assert.That(plugin.Success, output);
        Assert.That(int.Parse(plugin.Groups[1].Value), Is.GreaterThan(2));
        Assert.That(plugin.Groups[2].Value, Does.Contain("Slice").And.Contain("GatherElements 1"));
        Assert.That(plugin.Groups[3].Value, Is.EqualTo("0"));
    }

    [Test]
    public void InspectRefusesDeviceWithoutTheTrainingGraphBeforePrinting()
    {
        var result = Ortlora("inspect", Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"), "--device", "cuda");
        Assert.That(result.ExitCode, Is.Not.Zero);
        Assert.That(result.Error, Does.Contain("--device is for --training-graph"));
        Assert.That(result.Out, Is.Empty, "the arguments are checked before the model is described");
    }
}
