using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Tests.Unseen;
using static OrtLora.Tests.LoraTestKit;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>The half-precision pass on its own: which values become half, which stay float32, the model's interface,
/// and logits against the float32 model.</summary>
public class HalfPrecisionTests
{
    const int Fp16 = (int)DT.Float16, Bf16 = (int)DT.Bfloat16, F32 = (int)DT.Float;

    /// <summary>The injected model converted as training converts it (LoRA branches kept float32).</summary>
    public static OnnxModel Half(OnnxModel injected, int half, out HalfPrecisionReport report)
    {
        var proto = ModelProto.Parser.ParseFrom(injected.ToBytes());
        report = HalfPrecision.Apply(proto, half, LoraModel.Read(proto)!.BranchNodes(proto.Graph));
        return new OnnxModel(proto);
    }

    /// <summary>Embedding → up_proj (LoRA) → Where with float32's minimum → + float mask bias → Softmax → lm_head.</summary>
    static OnnxModel Toy()
    {
        var n = new Net(17);
        n.Input("input_ids", (int)DT.Int64, "batch", "sequence");
        n.Input("attention_mask", (int)DT.Int64, "batch", "sequence");
        var x = n.Embedding("input_ids", "model.embed_tokens.weight", 64, 16);
        var h = n.Linear(x, "model.layers.0.mlp.up_proj", 16, 16, LinearStyle.Dynamo);
        var keep = n.Unsqueeze(n.Op("Cast", ["attention_mask"], ("to", (long)DT.Bool)), 2);
        var masked = n.Op("Where", keep, h, n.F(float.MinValue));
        var bias = n.Op("Mul", n.Op("Sub", n.F(1f), n.Op("Cast", ["attention_mask"], ("to", (long)F32))), n.F(-1e4f));
        var p = n.Op("Softmax", [n.Op("Add", masked, n.Unsqueeze(bias, 2))], ("axis", -1L));
        n.Output(n.Linear(p, "lm_head", 16, 64, LinearStyle.Dynamo), "logits", "batch", "sequence", 64);
        var model = n.Model();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["up_proj"], R = 4 });
        RandomizeB(model);
        return model;
    }

    static Dictionary<string, HostTensor> ToyFeeds() => new()
    {
        ["input_ids"] = HostTensor.Of(new long[] { 1, 5, 9, 63, 2, 7, 7, 0 }, 2, 4),
        ["attention_mask"] = HostTensor.Of(new long[] { 1, 1, 1, 1, 1, 1, 0, 0 }, 2, 4),
    };

    [Test]
    public void FrozenWeightsBecomeHalfWhileLoraMasksAndTheInterfaceStayFloat32([Values(Fp16, Bf16)] int half)
    {
        using var model = Toy();
        using var converted = Half(model, half, out var report);
        var g = converted.Graph;
        int TypeOf(string name) => g.Initializer.Single(t => t.Name == name).DataType;
        Assert.That(TypeOf("model.embed_tokens.weight"), Is.EqualTo(half));
        Assert.That(TypeOf("model.layers.0.mlp.up_proj.weight"), Is.EqualTo(half), "read through a Transpose: converted at rest");
        Assert.That(TypeOf("lm_head.weight"), Is.EqualTo(half));
        var lora = LoraModel.Read(converted)!.Adapters.Single();
        Assert.That(new[] { TypeOf(lora.LoraA), TypeOf(lora.LoraB), TypeOf(lora.ScaleName) }, Is.All.EqualTo(F32), "LoRA parameters and scale");
        Assert.That(report.ConvertedTensors, Is.GreaterThanOrEqualTo(4));

        var types = ElementTypes.Infer(g);
        var producers = g.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        foreach (var name in lora.Nodes.Where(n => n != g.Node.Single(x => x.Output.Contains(lora.Output)).Name))
            Assert.That(g.Node.Single(n => n.Name == name).Output.Select(o => types[o]), Is.All.EqualTo(F32), $"LoRA node {name} computes in float32");
        Assert.That(types[lora.BaseOutput], Is.EqualTo(half), "the base matmul computes in half");
        Assert.That(types[lora.Output], Is.EqualTo(half), "the LoRA output is cast back to the base's type before the Add");
        var softmax = g.Node.Single(n => n.OpType == "Softmax");
        Assert.That(types[softmax.Input[0]], Is.EqualTo(F32), "softmax in float32 (the float32 mask bias promotes the Add)");
        var maskCast = g.Node.Single(n => n.OpType == "Cast" && n.Input[0] == "attention_mask" && Attrs.Int(n, "to", 0) != (long)DT.Bool);
        Assert.That(Attrs.Int(maskCast, "to", 0), Is.EqualTo(F32), "the mask is computed in float32, off the activation path");

        // Where's float32 minimum is read in half: it saturates to the half type's largest finite value, as
        // torch.finfo(dtype).min, instead of becoming -inf.
        var where = g.Node.Single(n => n.OpType == "Where");
        var minimum = g.Initializer.Single(t => t.Name == where.Input[2]);
        Assert.That(minimum.DataType, Is.EqualTo(half));
        Assert.That(Tensors.BytesToFloats(Tensors.InlineBytes(minimum), half)[0], Is.EqualTo(-HalfPrecision.MaxFinite(half)));

        Assert.That(g.Input.Select(i => i.Type.TensorType.ElemType), Is.All.EqualTo((int)DT.Int64), "inputs as declared");
        var logits = g.Output.Single();
        Assert.That(logits.Type.TensorType.ElemType, Is.EqualTo(F32));
        Assert.That(producers[logits.Name] is { OpType: "Cast" } cast && types[cast.Input[0]] == half, "logits computed in half, cast to the declared float32");
    }

    [Test]
    public void Fp16ToyLogitsMatchFloat32AndBf16LoadsUpToItsMissingCpuKernels()
    {
        using var model = Toy();
        var expected = OrtRun.Run(model, ToyFeeds(), ["logits"])["logits"].Floats;
        using var fp16 = Half(model, Fp16, out _);
        var actual = OrtRun.Run(fp16, ToyFeeds(), ["logits"])["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(actual, expected), Is.LessThan(5e-3f * expected.Max(Math.Abs)));

        // ONNX Runtime resolves the graph (type and shape inference over every node) before it looks for kernels: a
        // bfloat16 graph that fails only for want of CPU kernels is consistent.
        using var bf16 = Half(model, Bf16, out _);
        var error = Assert.Throws<OnnxRuntimeException>(() => new InferenceSession(bf16.ToBytes()).Dispose())!;
        Assert.That(error.Message, Does.Contain("NotImplemented").And.Contain("Could not find an implementation"));
    }

    static IEnumerable<TestCaseData> RealModels()
    {
        foreach (var arch in new[] { "llama", "gpt2" })
            foreach (var export in new[] { "dynamo", "torchscript" })
                yield return new TestCaseData(arch, export).SetName($"Fp16Logits({arch}, {export})");
        yield return new TestCaseData("tiny", "").SetName("Fp16Logits(graphs/tiny)");
    }

    /// <summary>The PEFT fixtures with their adapter (B non-zero) and the tiny model with random B: fp16 logits within
    /// 5e-3 of the largest logit (measured 3e-4 to 9e-4).</summary>
    [TestCaseSource(nameof(RealModels))]
    public void Fp16LogitsMatchFloat32OnRealExports(string arch, string export)
    {
        using var model = arch == "tiny" ? OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx")) : EngineFixtures.InjectedModel(arch, export);
        if (arch == "tiny") { LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 8 }); RandomizeB(model, std: 0.05f); }
        var feeds = arch == "tiny" ? TinyFeeds() : Shared.Feeds(Reference(arch));
        var expected = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        using var half = Half(model, Fp16, out var report);
        var actual = OrtRun.Run(half, feeds, ["logits"])["logits"].Floats;
        float scale = expected.Max(Math.Abs), diff = Shared.MaxAbsDiff(actual, expected);
        TestContext.Out.WriteLine($"{arch} {export}: max |diff| {diff:G3} = {diff / scale:G3} of max |logit| {scale:G3}; {report}");
        Assert.That(diff, Is.LessThan(5e-3f * scale));
        Assert.That(diff, Is.GreaterThan(0f), "the model really computes in half");
        Assert.That(half.Graph.Initializer.Where(t => t.Name.StartsWith("onnx::MatMul") || t.Name.EndsWith("proj.weight") || t.Name.EndsWith("c_attn.weight"))
            .Select(t => t.DataType), Is.All.EqualTo(Fp16), "linear weights stored in half");
    }

    /// <summary>CPU cannot run bfloat16 arithmetic, but the bfloat16 graph retyped to float32 (every bfloat16 value is
    /// exact in float32) runs: it has the bfloat16 weights and constants and every Cast of the real graph, and only
    /// the arithmetic rounding differs. Its logits stay within bfloat16's weight rounding of float32's (measured
    /// 2.6e-3 to 4.5e-3 of the largest logit).</summary>
    [TestCase("llama", "dynamo")]
    [TestCase("gpt2", "torchscript")]
    [TestCase("tiny", "")]
    public void Bf16WeightsAndWiringReproduceFloat32Logits(string arch, string export)
    {
        using var model = arch == "tiny" ? OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx")) : EngineFixtures.InjectedModel(arch, export);
        if (arch == "tiny") { LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 8 }); RandomizeB(model, std: 0.05f); }
        var feeds = arch == "tiny" ? TinyFeeds() : Shared.Feeds(Reference(arch));
        var expected = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        using var bf16 = Half(model, Bf16, out _);
        using var emulated = new OnnxModel(ElementTypes.Retype(bf16.Proto, Bf16, F32));
        var actual = OrtRun.Run(emulated, feeds, ["logits"])["logits"].Floats;
        float scale = expected.Max(Math.Abs), diff = Shared.MaxAbsDiff(actual, expected);
        TestContext.Out.WriteLine($"{arch} {export}: max |diff| {diff:G3} = {diff / scale:G3} of max |logit|");
        Assert.That(diff, Is.LessThan(2e-2f * scale).And.GreaterThan(0f));
    }

    /// <summary>Hugging Face returns the rotary tables in the compute dtype (<c>cos.to(x.dtype)</c>): each table is cast
    /// to half once, and every product of q or k with a table computes in half (float32 tables promoted the rotation to
    /// float32: q and k went to float32 and back in every layer).</summary>
    [TestCase("llama", "dynamo")]
    [TestCase("llama", "torchscript")]
    [TestCase("tiny", "")]
    public void RotaryTablesAreCastToHalfOnceAndTheRotationComputesInHalf(string arch, string export)
    {
        using var model = arch == "tiny" ? OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx")) : EngineFixtures.InjectedModel(arch, export);
        if (arch == "tiny") LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 8 });
        int layers = model.Graph.Initializer.Select(t => t.Name).Concat(model.Graph.Node.Select(n => n.Name))
            .Select(n => System.Text.RegularExpressions.Regex.Match(n, @"layers\.(\d+)\.")).Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value)).Distinct().Count();
        foreach (var half in new[] { Fp16, Bf16 })
        {
            using var converted = Half(model, half, out var report);
            var g = converted.Graph;
            var types = ElementTypes.Infer(g);
            // The tables: what Cos and Sin make, and everything computed from them alone.
            var tables = new HashSet<string>();
            var constants = g.Initializer.Select(t => t.Name).Concat(g.Node.Where(n => n.OpType == "Constant").Select(n => n.Output[0])).ToHashSet();
            foreach (var n in g.Node)
                if (n.OpType is "Cos" or "Sin" || n.Input.Any(tables.Contains) && n.Input.All(i => i == "" || tables.Contains(i) || constants.Contains(i)))
                    tables.UnionWith(n.Output);
            var rotations = g.Node.Where(n => n.OpType == "Mul" && n.Input.Any(tables.Contains) && n.Input.Any(i => !tables.Contains(i) && !constants.Contains(i))).ToList();
            Assert.That(rotations, Has.Count.EqualTo(4 * layers), "q·cos, rotate_half(q)·sin, and k's, in each layer");
            Assert.That(rotations.Select(n => types[n.Output[0]]), Is.All.EqualTo(half), "the rotation computes in half");
            // (TorchScript exports keep the float32 `.to(x.dtype)` of the float32 export: those stay, reading float32.)
            var tableCasts = g.Node.Where(n => n.OpType == "Cast" && tables.Contains(n.Input[0]) && Attrs.Int(n, "to", 0) != F32).ToList();
            Assert.That(tableCasts.Select(n => Attrs.Int(n, "to", 0)), Is.EqualTo(new[] { (long)half, half }), "cos and sin, each cast once");
            TestContext.Out.WriteLine($"{arch} {export} {HalfPrecision.Suffix(half)}: {layers} layers, {report}");
        }
    }

    /// <summary>A table moved together with other float32 data (Concat of cos(p) and p itself) stays float32 through
    /// that op, and is cast once where the activations read it: the graph loads and computes float32's logits.</summary>
    [Test]
    public void ATableConcatenatedWithOtherFloatDataStaysFloat32ThroughTheConcat()
    {
        var n = new Net(17);
        n.Input("input_ids", (int)DT.Int64, "batch", "sequence");
        n.Input("position_ids", (int)DT.Int64, "batch", "sequence");
        var x = n.Embedding("input_ids", "model.embed_tokens.weight", 64, 2);
        var p = n.Unsqueeze(n.Op("Cast", ["position_ids"], ("to", (long)F32)), 2);
        var rotary = n.Op("Concat", [n.Op("Cos", p), n.Op("Mul", p, n.F(0.1f))], ("axis", -1L));
        var h = n.Linear(n.Op("Mul", x, rotary), "model.layers.0.mlp.up_proj", 2, 8, LinearStyle.Dynamo);
        n.Output(n.Linear(h, "lm_head", 8, 64, LinearStyle.Dynamo), "logits", "batch", "sequence", 64);
        using var model = n.Model();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["up_proj"], R = 2 });
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(new long[] { 1, 5, 9, 63, 2, 7 }, 2, 3),
            ["position_ids"] = HostTensor.Of(new long[] { 0, 1, 2, 0, 1, 2 }, 2, 3),
        };
        var expected = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        using var fp16 = Half(model, Fp16, out _);
        var types = ElementTypes.Infer(fp16.Graph);
        var concat = fp16.Graph.Node.Single(n => n.OpType == "Concat");
        Assert.That(concat.Input.Select(i => types[i]).Append(types[concat.Output[0]]), Is.All.EqualTo(F32));
        var product = fp16.Graph.Node.Single(n => n.OpType == "Mul" && n.Input.Any(i => i.StartsWith(concat.Output[0])));
        Assert.That(types[product.Output[0]], Is.EqualTo(Fp16), "the activations read the table in half");
        var actual = OrtRun.Run(fp16, feeds, ["logits"])["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(actual, expected), Is.LessThan(5e-3f * expected.Max(Math.Abs)));
    }

    /// <summary>Two rows of 24 tokens, the second right-padded by 5.</summary>
    static Dictionary<string, HostTensor> TinyFeeds()
    {
        var rng = new Random(1);
        return new()
        {
            ["input_ids"] = HostTensor.Of(Enumerable.Range(0, 48).Select(_ => (long)rng.Next(0, 511)).ToArray(), 2, 24),
            ["attention_mask"] = HostTensor.Of(Enumerable.Range(0, 48).Select(i => i >= 43 ? 0L : 1L).ToArray(), 2, 24),
        };
    }

    /// <summary>The pass types values without running the graph; ONNX Runtime agrees on every value of every export
    /// the tests have, before and after the conversion.</summary>
    [Test]
    public void InferredElementTypesEqualTheRuntimes()
    {
        var models = new List<(string, OnnxModel)> { ("tiny", OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"))) };
        foreach (var arch in new[] { "llama", "gpt2" })
            foreach (var export in new[] { "dynamo", "torchscript" })
                models.Add(($"{arch} {export}", EngineFixtures.InjectedModel(arch, export)));
        foreach (var a in Architectures.All.Where(a => a.Trainable))
        {
            var m = a.Build();
            LoraInjector.Inject(m, new LoraConfig { TargetModules = ["all-linear"], R = 2 });
            models.Add((a.Name, m));
        }
        int checkedValues = 0;
        foreach (var (name, model) in models)
        {
            if (LoraModel.Read(model) is null) LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2 });
            foreach (bool half in new[] { false, true })
            {
                if (half && name.EndsWith("fp16")) continue;
                using var graph = Training.Engine.TrainingGraph.Build(model, compute: half ? Training.Engine.ComputeType.Float16 : Training.Engine.ComputeType.Float32);
                var probed = Autodiff.ValueTable.Probe(graph.Eval, ProbeFeeds(graph, 2, 5), ProbeFeeds(graph, 3, 6), graph.Frozen.Values);
                var inferred = ElementTypes.Infer(graph.Eval.Graph);
                foreach (var value in graph.Eval.Graph.Node.SelectMany(n => n.Output).Where(o => o != ""))
                {
                    Assert.That(inferred[value], Is.EqualTo(probed.ElemType(value)), $"{name} ({(half ? "fp16" : "fp32")}): value '{value}'");
                    checkedValues++;
                }
            }
            model.Dispose();
        }
        TestContext.Out.WriteLine($"{models.Count} models, {checkedValues} values");
    }

    static Dictionary<string, HostTensor> ProbeFeeds(Training.Engine.TrainingGraph graph, int batch, int sequence)
    {
        var feeds = graph.Parameters.ToDictionary(p => p, p => HostTensor.Of(graph.InitialValues[p], graph.ParameterShapes[p]));
        foreach (var input in graph.BatchInputs)
            feeds[input] = HostTensor.Of(Enumerable.Range(0, batch * sequence).Select(i => input.Contains("position") ? (long)(i % sequence) : 1L).ToArray(), batch, sequence);
        return feeds;
    }
}
