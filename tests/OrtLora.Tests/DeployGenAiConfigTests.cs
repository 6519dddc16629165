using System.Text.Json.Nodes;
using OrtLora.Deploy;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>genai_config.json numbers derived from the graph, checked against the fixture's known architecture
/// (the PyTorch config it was exported from: hidden 64, 2 layers, 4 heads / 2 kv heads, head 16, vocab 320).</summary>
public class DeployGenAiConfigTests
{
    [TestCase("model.dynamo.onnx")]
    [TestCase("model.torchscript.onnx")]
    public void LlamaDimensionsComeFromTheGraph(string file)
    {
        using var model = OnnxModel.Load(Shared.Peft("llama", file));
        var dims = ModelDimensions.Derive(model);
        Assert.That(dims, Is.EqualTo(new ModelDimensions("llama", 320, 64, 2, 4, 2, 16, ModelDimensions.DefaultContextLength)));
    }

    [TestCase("model.dynamo.onnx")]
    [TestCase("model.torchscript.onnx")]
    public void Gpt2DimensionsComeFromTheGraph(string file)
    {
        using var model = OnnxModel.Load(Shared.Peft("gpt2", file));
        var dims = ModelDimensions.Derive(model);
        Assert.That((dims.VocabSize, dims.HiddenSize, dims.NumHiddenLayers, dims.HeadSize * dims.NumAttentionHeads), Is.EqualTo((320, 64, 2, 64)));
        Assert.That(dims.NumKeyValueHeads, Is.EqualTo(dims.NumAttentionHeads));
        Assert.That((dims.Type, dims.HeadSize), Is.EqualTo(("gpt2", 16)));
    }

    [Test]
    public void WrittenBesideTheModelWithTokenizerFilesAndHfContextLength()
    {
        var dir = Shared.TempDir();
        var modelPath = Path.Combine(dir, "model.onnx");
        File.Copy(Shared.Peft("llama", "model.dynamo.onnx"), modelPath);
        File.WriteAllText(Path.Combine(dir, "config.json"), "{\"model_type\": \"llama\", \"max_position_embeddings\": 128}");
        var tokenizer = Shared.Require("tokenizers", "llama2-tokenizer.model");
        var warnings = GenAiConfig.WriteBeside(modelPath, tokenizer);
        Assert.That(warnings, Has.Some.Contains("past_key_values"), "the fixture has no KV cache");
        Assert.That(File.Exists(Path.Combine(dir, "llama2-tokenizer.model")), Is.True, "tokenizer copied");
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "genai_config.json")))!;
        var m = config["model"]!;
        Assert.That((m["type"]!.GetValue<string>(), m["context_length"]!.GetValue<int>(), m["vocab_size"]!.GetValue<int>()), Is.EqualTo(("llama", 128, 320)));
        Assert.That((m["bos_token_id"]!.GetValue<int>(), m["eos_token_id"]!.GetValue<int>(), m["pad_token_id"]!.GetValue<int>()), Is.EqualTo((1, 2, 2)));
        var d = m["decoder"]!;
        Assert.That(d["filename"]!.GetValue<string>(), Is.EqualTo("model.onnx"));
        Assert.That((d["hidden_size"]!.GetValue<int>(), d["head_size"]!.GetValue<int>(), d["num_attention_heads"]!.GetValue<int>(),
            d["num_key_value_heads"]!.GetValue<int>(), d["num_hidden_layers"]!.GetValue<int>()), Is.EqualTo((64, 16, 4, 2, 2)));
        Assert.That(d["inputs"]!["attention_mask"]!.GetValue<string>(), Is.EqualTo("attention_mask"));
        Assert.That(config["search"]!["do_sample"]!.GetValue<bool>(), Is.False);
    }

    [Test]
    public void CachedModelGetsPastAndPresentPatterns()
    {
        using var model = GenerateToyModels.CachedModel();
        var inputs = model.Graph.Input.Select(i => i.Name).ToList();
        var dims = new ModelDimensions("llama", 11, 4, 1, 1, 1, 4, 64);
        var config = GenAiConfig.Build(dims, "model.onnx", inputs, model.Graph.Output.Select(o => o.Name).ToList(), null, 10, null, new());
        var d = config["model"]!["decoder"]!;
        Assert.That(d["inputs"]!["past_key_names"]!.GetValue<string>(), Is.EqualTo("past_key_values.%d.key"));
        Assert.That(d["outputs"]!["present_value_names"]!.GetValue<string>(), Is.EqualTo("present.%d.value"));
        Assert.That(string.Format(d["outputs"]!["present_key_names"]!.GetValue<string>().Replace("%d", "{0}"), 0), Is.AnyOf(model.Graph.Output.Select(o => o.Name).ToArray()));
    }
}
