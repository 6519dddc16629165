using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Inference;

/// <summary>End-of-sequence ids a model directory declares beyond the tokenizer's EOS: Hugging Face's
/// generation_config.json and config.json give eos_token_id as one id or a list (Llama 3: end_of_text and eot_id).</summary>
public static class StopTokens
{
    public static IReadOnlyCollection<int> FromModelDirectory(string dir)
    {
        var ids = new HashSet<int>();
        foreach (var name in new[] { "generation_config.json", "config.json" })
        {
            var path = Path.Combine(dir, name);
            if (!File.Exists(path)) continue;
            JsonNode? eos;
            try { eos = JsonNode.Parse(File.ReadAllText(path))?["eos_token_id"]; }
            catch (JsonException e) { throw new OrtLoraException($"{path}: not valid JSON ({e.Message})", e); }
            switch (eos)
            {
                case JsonArray list:
                    foreach (var id in list) if (id is JsonValue v && v.TryGetValue<int>(out var i) && i >= 0) ids.Add(i);
                    break;
                case JsonValue one when one.TryGetValue<int>(out var single) && single >= 0:
                    ids.Add(single);
                    break;
            }
        }
        return ids;
    }
}
