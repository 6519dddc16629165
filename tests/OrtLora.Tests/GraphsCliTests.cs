using OrtLora.Graphs;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>The graphs command line: what it accepts, the one clear message for what it does not, and a variant
/// written to a directory.</summary>
public class GraphsCliTests
{
    [TestCase(new[] { "nope" }, "unknown shape 'nope'")]
    [TestCase(new[] { "smollm2-135m" }, "give an output directory with -o DIR")]
    [TestCase(new[] { "tiny", "--seed", "x" }, "unexpected argument '--seed'")]
    [TestCase(new[] { "tiny", "--kv-cache" }, "give -o DIR for a variant")]
    [TestCase(new[] { "tiny", "-o" }, "unexpected argument '-o'")]
    public void BadArgumentsGiveOneMessage(string[] args, string expected)
    {
        var e = Assert.Throws<OrtLoraException>(() => GraphsRequest.Parse(args));
        Assert.That(e!.Message, Does.Contain(expected));
    }

    [Test]
    public void ShapesAreFoundByNameOrAlias()
    {
        Assert.That(LlamaShape.Find("TinyLlama-1.1B"), Is.SameAs(LlamaShape.TinyLlama_1_1B));
        Assert.That(LlamaShape.Find("~100m"), Is.SameAs(LlamaShape.Llama100M));
        Assert.That(GraphsRequest.Parse([]), Is.Null, "no arguments: usage");
    }

    [Test]
    public void ShapesThatDoNotDivideAreRefused()
    {
        var bad = LlamaShape.Tiny with { Name = "bad", NumKeyValueHeads = 3 };
        var e = Assert.Throws<OrtLoraException>(() => LlamaGraph.Build(bad, 1));
        Assert.That(e!.Message, Does.Contain("shape 'bad'"));
    }

    [Test]
    public void KvCacheVariantWrittenToADirectoryHasOptimumsNames()
    {
        var dir = Shared.TempDir();
        GraphsRequest.Parse(["tiny", "-o", dir, "--kv-cache", "--position-ids"])!.Run();
        Assert.That(File.Exists(Path.Combine(dir, "config.json")), Is.True);
        using var model = OnnxModel.Load(Path.Combine(dir, "model.onnx"));
        var layers = LlamaShape.Tiny.NumHiddenLayers;
        Assert.That(model.Graph.Input.Select(i => i.Name), Is.EqualTo(
            new[] { "input_ids", "attention_mask", "position_ids" }
                .Concat(Enumerable.Range(0, layers).SelectMany(i => new[] { $"past_key_values.{i}.key", $"past_key_values.{i}.value" }))));
        Assert.That(model.Graph.Output.Select(o => o.Name), Is.EqualTo(
            new[] { "logits" }.Concat(Enumerable.Range(0, layers).SelectMany(i => new[] { $"present.{i}.key", $"present.{i}.value" }))));
        Assert.That(Directory.GetFiles(dir).Where(f => f.Contains(".tmp")), Is.Empty);
    }
}
