using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Graphs;

/// <summary>Writes a generated model and its Hugging Face-style config.json into a directory.</summary>
public static class ModelFiles
{
    public static string WriteModel(LlamaShape shape, int seed, string directory, LlamaOptions options, bool? externalData = null,
        int bosTokenId = -1, int eosTokenId = -1)
    {
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, "model.onnx");
        using var model = LlamaGraph.Build(shape, seed, options);
        model.Save(path, externalData);
        WriteAtomically(Path.Combine(directory, "config.json"), ConfigJson(shape, bosTokenId, eosTokenId));
        return path;
    }

    /// <summary>The shape as Hugging Face's LlamaConfig would save it, for tools that read config.json.</summary>
    public static string ConfigJson(LlamaShape shape, int bosTokenId = -1, int eosTokenId = -1)
    {
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("LlamaForCausalLM"),
            ["model_type"] = "llama",
            ["hidden_size"] = shape.HiddenSize,
            ["num_hidden_layers"] = shape.NumHiddenLayers,
            ["num_attention_heads"] = shape.NumAttentionHeads,
            ["num_key_value_heads"] = shape.NumKeyValueHeads,
            ["head_dim"] = shape.HeadDim,
            ["intermediate_size"] = shape.IntermediateSize,
            ["vocab_size"] = shape.VocabSize,
            ["tie_word_embeddings"] = shape.TieWordEmbeddings,
            ["rope_theta"] = shape.RopeTheta,
            ["rms_norm_eps"] = shape.RmsNormEps,
            ["initializer_range"] = shape.InitializerRange,
            ["max_position_embeddings"] = shape.MaxPositionEmbeddings,
            ["hidden_act"] = "silu",
            ["torch_dtype"] = "float32",
        };
        if (bosTokenId >= 0) config["bos_token_id"] = bosTokenId;
        if (eosTokenId >= 0) config["eos_token_id"] = eosTokenId;
        return config.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n";
    }

    /// <summary>Temp file then rename, so an interrupted run never leaves a half-written file.</summary>
    public static void WriteAtomically(string path, string text) => WriteAtomically(path, System.Text.Encoding.UTF8.GetBytes(text));

    public static void WriteAtomically(string path, byte[] bytes)
    {
        var tmp = path + $".tmp{Environment.ProcessId}";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }
}
