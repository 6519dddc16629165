using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests.Unseen;

/// <summary>Weight-only quantized exports (DequantizeLinear before MatMul: int8 per channel, uint4 in blocks): the
/// host's dequantization, which merge and DoRA use, against ONNX Runtime's; and what ONNX Runtime computes with them.</summary>
public class QuantizedWeightsTests
{
    static readonly Architecture[] Quantized = Architectures.All.Where(a => a.QuantizedWeights).ToArray();

    /// <summary>Every DequantizeLinear of the model, run on the host, gives ONNX Runtime's values exactly.</summary>
    [TestCaseSource(nameof(Quantized))]
    public void HostDequantizationEqualsOnnxRuntimes(Architecture arch)
    {
        using var model = arch.Build();
        var g = new GraphEditor(model.Graph);
        var dequantizers = model.Graph.Node.Where(n => n.OpType == "DequantizeLinear").ToList();
        Assert.That(dequantizers, Has.Count.EqualTo(arch.Targets.Length + 1), "every layer all-linear adapts, and the head");
        var proto = model.Proto.Clone();
        proto.Graph.Output.Clear();
        foreach (var dq in dequantizers) proto.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = dq.Output[0] });
        using var session = new InferenceSession(proto.ToByteArray(), OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL));
        var outputs = OrtRun.Run(session, UnseenArchitectureTests.Feeds(arch));
        foreach (var dq in dequantizers)
        {
            var host = Dequantize.Run(model, g, dq);
            Assert.That(host, Is.EqualTo(outputs[dq.Output[0]].Floats), dq.Name);
            Assert.That(host.Distinct().Count(), Is.GreaterThan(8), "real values, not one constant");
        }
    }

    /// <summary>ONNX Runtime fuses DequantizeLinear + MatMul into MatMulNBits, which by default on CPU quantizes the
    /// activations to int8. ortlora's sessions ask for float32 compute (accuracy level 1): the quantized model then gives
    /// the logits of its dequantized float twin (what merge writes with B = 0), where ORT's default is ~1e-2 off.</summary>
    [TestCaseSource(nameof(Quantized))]
    public void QuantizedModelsComputeTheirDequantizedWeights(Architecture arch)
    {
        using var model = arch.Build();
        using var dequantized = arch.Build();
        LoraInjector.Inject(dequantized, new LoraConfig { TargetModules = ["all-linear"], R = 2 });
        LoraMerger.Merge(dequantized);
        var feeds = UnseenArchitectureTests.Feeds(arch);
        var reference = OrtRun.Run(dequantized, feeds, ["logits"], GraphOptimizationLevel.ORT_DISABLE_ALL)["logits"].Floats;
        var ours = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(ours, reference), Is.LessThan(1e-5f));
        using var ortDefaults = new SessionOptions { LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR };
        using var session = new InferenceSession(model.ToBytes(), ortDefaults);
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(session, feeds, ["logits"])["logits"].Floats, reference), Is.GreaterThan(1e-3f),
            "ONNX Runtime's default (int8 activations) differs: the option matters");
    }

    /// <summary>PiSSA and OLoRA rewrite the base weight to W − scale·B·A, which integers cannot hold: refused by name.</summary>
    [Test]
    public void ResidualInitsAreRefusedOnQuantizedWeights()
    {
        using var model = Quantized[0].Build();
        var error = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, Init = "olora" }));
        Assert.That(error!.Message, Does.Contain("stored quantized"));
    }
}
