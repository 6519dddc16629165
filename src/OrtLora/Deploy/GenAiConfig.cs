using System.Text.Json;
using System.Text.Json.Nodes;
using OrtLora.Inference;
using OrtLora.Onnx;

namespace OrtLora.Deploy;

/// <summary>ORT GenAI's genai_config.json for a (merged) decoder, in the layout of its configuration reference:
/// model { type, context_length, vocab_size, bos/eos/pad_token_id, decoder { filename, head_size, hidden_size,
/// num_attention_heads, num_key_value_heads, num_hidden_layers, inputs, outputs } } and search defaults.</summary>
public static class GenAiConfig
{
    public const string FileName = "genai_config.json";

    /// <summary>Tokenizer files ORT GenAI and Hugging Face look for beside the model.</summary>
    static readonly string[] TokenizerFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt",
        "encoder.json", "vocab.bpe", "added_tokens.json", "generation_config.json",
    ];

    public static JsonObject Build(ModelDimensions dims, string modelFileName, IReadOnlyCollection<string> inputNames,
        IReadOnlyCollection<string> outputNames, int? bosId, int? eosId, int? padId, GenerationOptions search)
    {
        var inputs = new JsonObject { ["input_ids"] = "input_ids" };
        if (inputNames.Contains("attention_mask")) inputs["attention_mask"] = "attention_mask";
        if (inputNames.Contains("position_ids")) inputs["position_ids"] = "position_ids";
        var outputs = new JsonObject { ["logits"] = outputNames.Contains("logits") ? "logits" : outputNames.First() };
        // GenAI fills %d with the layer index; ortlora's Generator reads the same names.
        if (inputNames.Contains("past_key_values.0.key"))
        {
            inputs["past_key_names"] = "past_key_values.%d.key";
            inputs["past_value_names"] = "past_key_values.%d.value";
            outputs["present_key_names"] = "present.%d.key";
            outputs["present_value_names"] = "present.%d.value";
        }
        var model = new JsonObject
        {
            ["type"] = dims.Type,
            ["context_length"] = dims.ContextLength,
            ["vocab_size"] = dims.VocabSize,
        };
        if (bosId is { } bos) model["bos_token_id"] = bos;
        if (eosId is { } eos) model["eos_token_id"] = eos;
        if ((padId ?? eosId) is { } pad) model["pad_token_id"] = pad;
        model["decoder"] = new JsonObject
        {
            ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
            ["filename"] = modelFileName,
            ["head_size"] = dims.HeadSize,
            ["hidden_size"] = dims.HiddenSize,
            ["inputs"] = inputs,
            ["outputs"] = outputs,
            ["num_attention_heads"] = dims.NumAttentionHeads,
            ["num_hidden_layers"] = dims.NumHiddenLayers,
            ["num_key_value_heads"] = dims.NumKeyValueHeads,
        };
        return new JsonObject
        {
            ["model"] = model,
            ["search"] = new JsonObject
            {
                ["do_sample"] = search.Temperature > 0,
                ["max_length"] = dims.ContextLength,
                ["min_length"] = 0,
                ["num_beams"] = 1,
                ["num_return_sequences"] = 1,
                ["past_present_share_buffer"] = false,
                ["repetition_penalty"] = 1.0,
                ["temperature"] = search.Temperature > 0 ? search.Temperature : 1.0,
                ["top_k"] = search.TopK > 0 ? search.TopK : 1,
                ["top_p"] = search.TopP,
            },
        };
    }

    /// <summary>Writes genai_config.json beside the model and copies the tokenizer's files there. Returns warnings
    /// (e.g. no KV cache, which ORT GenAI requires).</summary>
    public static IReadOnlyList<string> WriteBeside(string modelPath, string? tokenizerPath = null, GenerationOptions? search = null)
    {
        var dir = Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        tokenizerPath ??= dir;
        var warnings = new List<string>();
        using var model = OnnxModel.Load(modelPath);
        var dims = ModelDimensions.Derive(model, FindHfConfig(dir, tokenizerPath));
        var tokenizer = LoadedTokenizer.Load(tokenizerPath);
        var inputs = model.Graph.Input.Select(i => i.Name).ToList();
        if (!inputs.Contains("past_key_values.0.key"))
            warnings.Add($"{modelPath}: no past_key_values inputs; ORT GenAI needs a decoder exported with its KV cache");
        if (dims.ContextLength == ModelDimensions.DefaultContextLength)
            warnings.Add($"context_length {dims.ContextLength} is a default (no config.json with max_position_embeddings beside the model)");
        var config = Build(dims, Path.GetFileName(modelPath), inputs, model.Graph.Output.Select(o => o.Name).ToList(),
            tokenizer.BosId, tokenizer.EosId, null, search ?? new GenerationOptions());
        CopyTokenizerFiles(tokenizerPath, dir);
        var target = Path.Combine(dir, FileName);
        var tmp = target + $".tmp{Environment.ProcessId}";
        File.WriteAllText(tmp, config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, target, overwrite: true);
        return warnings;
    }

    static string? FindHfConfig(params string[] dirs) =>
        dirs.Select(d => Directory.Exists(d) ? Path.Combine(d, "config.json") : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(d))!, "config.json"))
            .FirstOrDefault(File.Exists);

    static void CopyTokenizerFiles(string tokenizerPath, string targetDir)
    {
        var sources = File.Exists(tokenizerPath) ? [tokenizerPath]
            : TokenizerFiles.Select(f => Path.Combine(tokenizerPath, f)).Where(File.Exists).ToArray();
        foreach (var source in sources)
        {
            var target = Path.Combine(targetDir, Path.GetFileName(source));
            if (Path.GetFullPath(source) != Path.GetFullPath(target)) File.Copy(source, target, overwrite: true);
        }
    }
}
