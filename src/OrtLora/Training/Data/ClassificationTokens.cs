namespace OrtLora.Training.Data;

/// <summary>A classification row's tokens as the tokenizer encodes it for run_glue.py (tokenizer(text, text_pair,
/// truncation=True, max_length)): each text between its special tokens (BOS where the tokenizer adds one, EOS where it
/// adds one; a pair is two such runs, as Llama's tokenizers template a pair), the texts cut so that the whole fits
/// max_length, a pair's longer text first (truncation longest_first).</summary>
public static class ClassificationTokens
{
    /// <returns>the ids, and whether the texts were cut to fit</returns>
    public static (int[] Ids, bool Cut) Encode(TextTokenizer tokenizer, string text, string? pair, int maxLength)
    {
        int? bos = tokenizer.AddsBos ? tokenizer.BosId : null, eos = tokenizer.AddsEos ? tokenizer.EosId : null;
        var first = tokenizer.Encode(text).ToList();
        var second = pair is null ? null : tokenizer.Encode(pair).ToList();
        int room = maxLength - ((bos is null ? 0 : 1) + (eos is null ? 0 : 1)) * (second is null ? 1 : 2);
        if (room <= 0) throw new OrtLoraException($"--max-length {maxLength} leaves no room for text between the special tokens");
        bool cut = first.Count + (second?.Count ?? 0) > room;
        while (first.Count + (second?.Count ?? 0) > room)
        {
            var longer = second is null || first.Count > second.Count ? first : second;
            longer.RemoveAt(longer.Count - 1);
        }
        IEnumerable<int> Wrapped(List<int> ids) => [.. bos is { } b ? [b] : Array.Empty<int>(), .. ids, .. eos is { } e ? [e] : Array.Empty<int>()];
        return ([.. Wrapped(first), .. second is null ? [] : Wrapped(second)], cut);
    }
}
