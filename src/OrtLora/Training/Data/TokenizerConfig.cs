using System.Text.Json.Nodes;

namespace OrtLora.Training.Data;

/// <summary>The parts of a Hugging Face <c>tokenizer_config.json</c> training uses: special tokens, whether BOS/EOS
/// are added, added tokens, the chat template. Absent file → all null.</summary>
public sealed record TokenizerConfig(string? BosToken, string? EosToken, string? PadToken, bool? AddBosToken, bool? AddEosToken,
    string? ChatTemplate, IReadOnlyDictionary<string, int> AddedTokens)
{
    public static TokenizerConfig Empty { get; } = new(null, null, null, null, null, null, new Dictionary<string, int>());

    public static TokenizerConfig Read(string directory)
    {
        var path = Path.Combine(directory, "tokenizer_config.json");
        if (!File.Exists(path)) return Empty;
        JsonObject root;
        try { root = JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (Exception e) { throw new OrtLoraException($"{path}: not valid JSON: {e.Message}", e); }
        var added = new Dictionary<string, int>();
        if (root["added_tokens_decoder"] is JsonObject decoder)
            foreach (var (id, token) in decoder)
                if (token?["content"]?.GetValue<string>() is { } content && int.TryParse(id, out var n)) added[content] = n;
        return new TokenizerConfig(TokenText(root["bos_token"]), TokenText(root["eos_token"]), TokenText(root["pad_token"]),
            Bool(root["add_bos_token"]), Bool(root["add_eos_token"]), ChatTemplateText(root["chat_template"]), added);
    }

    /// <summary>The id of a configured token, looked up in the special tokens then the vocabulary.</summary>
    public int? IdOf(string? token, IReadOnlyDictionary<string, int> vocabulary, IReadOnlyDictionary<string, int> specials) =>
        token is null ? null : specials.TryGetValue(token, out var s) ? s : vocabulary.TryGetValue(token, out var v) ? v : null;

    /// <summary>A token is written as "&lt;s&gt;" or as {"content": "&lt;s&gt;", ...}.</summary>
    static string? TokenText(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };

    static bool? Bool(JsonNode? node) => node is JsonValue v && v.TryGetValue<bool>(out var b) ? b : null;

    /// <summary>One template string, or a list of named templates of which "default" is used.</summary>
    static string? ChatTemplateText(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue<string>(out var s) => s,
        JsonArray list => list.OfType<JsonObject>().FirstOrDefault(t => t["name"]?.GetValue<string>() == "default")?["template"]?.GetValue<string>(),
        _ => null,
    };
}
