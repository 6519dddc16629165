using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>OpsetRaise: a model moved to a later opset computes what it did.</summary>
public class OpsetRaiseTests
{
    /// <summary>The TorchScript LLaMA fixture (opset 17, RMSNorm's ReduceMean with an axes attribute) raised to 18 and
    /// 21 gives the same logits bit for bit; its ReduceMean nodes read their axes as an input.</summary>
    [TestCase(18)] [TestCase(21)]
    public void RaisedExportsComputeTheSame(int target)
    {
        var reference = Reference("llama");
        using var model = OnnxModel.Load(Shared.Peft("llama", "model.torchscript.onnx"));
        Assert.That(model.Opset(), Is.EqualTo(17));
        var before = Logits(model, reference);
        var reduces = model.Graph.Node.Where(n => n.OpType == "ReduceMean").ToList();
        Assert.That(reduces, Is.Not.Empty);
        Assert.That(reduces.All(n => Attrs.Find(n, "axes") is not null), "opset 17 keeps axes as an attribute");

        Assert.That(OpsetRaise.Raise(model.Proto, target, model.Source), Is.EqualTo(17));
        Assert.That(model.Opset(), Is.EqualTo(target));
        Assert.That(reduces.All(n => Attrs.Find(n, "axes") is null && n.Input.Count == 2), "axes as an input from opset 18");
        Assert.That(Logits(model, reference), Is.EqualTo(before));
    }

    /// <summary>`ortlora quantize --bits 4` on that export: the model loads and its logits stay near the float model's.</summary>
    [Test]
    public void FourBitsOnAnOpset17Export()
    {
        var output = Path.Combine(Shared.TempDir(), "q4.onnx");
        OrtloraOk("quantize", Shared.Peft("llama", "model.torchscript.onnx"), "-o", output, "--bits", "4");
        var reference = Reference("llama");
        var floats = Logits(Shared.Peft("llama", "model.torchscript.onnx"), reference);
        var quantized = Logits(output, reference);
        double Rms(IEnumerable<double> v) => Math.Sqrt(v.Average(x => x * x));
        double relative = Rms(quantized.Zip(floats, (a, b) => (double)a - b)) / Rms(floats.Select(x => (double)x));
        Assert.That(relative, Is.LessThan(0.3).And.GreaterThan(1e-3));
    }

    /// <summary>An op whose meaning changed on the way is refused by name, and the model is left as it was.</summary>
    [Test]
    public void AChangedOpIsRefusedByName()
    {
        var model = new ModelProto { IrVersion = 8, Graph = new GraphProto() };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        var node = new NodeProto { OpType = "GroupNormalization", Name = "gn" };
        node.Input.AddRange(["x", "scale", "bias"]);
        node.Output.Add("y");
        model.Graph.Node.Add(node);
        var e = Assert.Throws<OrtLoraException>(() => OpsetRaise.Raise(model, 21, "m.onnx"));
        Assert.That(e!.Message, Is.EqualTo("m.onnx: node 'gn' (GroupNormalization) means something else from opset 21; cannot move the model from opset 18 to 21"));
        Assert.That(model.OpsetImport[0].Version, Is.EqualTo(18));
    }
}
