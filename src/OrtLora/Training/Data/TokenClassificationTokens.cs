namespace OrtLora.Training.Data;

/// <summary>A token classification row's tokens and labels as run_ner.py makes them: tokenizer(words,
/// is_split_into_words=True, truncation=True, max_length) encodes each word on its own, as it reads inside a sentence
/// (with the space before it: SentencePiece's word prefix, or a byte-level BPE's leading space, run_ner's
/// add_prefix_space=True), between the tokenizer's special tokens; a word's first token takes its label and its other
/// tokens -100 (label_all_tokens: the label too, B-X turned into I-X), special tokens -100. The sequence is cut at the
/// end to fit max_length; the words cut away are not scored.</summary>
public static class TokenClassificationTokens
{
    /// <param name="labels">each word's class index; null for a row to predict (every word's first token then holds 0)</param>
    /// <returns>the ids, the labels, each word's first token (-1 for a word cut away or with no token), and whether the
    /// row was cut to fit</returns>
    public static (int[] Ids, int[] Labels, int[] WordStarts, bool Cut) Encode(TextTokenizer tokenizer, IReadOnlyList<string> words, IReadOnlyList<int>? labels,
        int maxLength, bool labelAllTokens = false, ClassLabels? classes = null)
    {
        int? bos = tokenizer.AddsBos ? tokenizer.BosId : null, eos = tokenizer.AddsEos ? tokenizer.EosId : null;
        int room = maxLength - (bos is null ? 0 : 1) - (eos is null ? 0 : 1);
        if (room <= 0) throw new OrtLoraException($"--max-length {maxLength} leaves no room for words between the special tokens");
        var ids = new List<int>();
        var tags = new List<int>();
        var starts = new int[words.Count];
        int offset = bos is null ? 0 : 1;
        bool cut = false;
        for (int w = 0; w < words.Count; w++)
        {
            var pieces = EncodeWord(tokenizer, words[w]);
            starts[w] = pieces.Length > 0 && ids.Count < room ? offset + ids.Count : -1;
            for (int p = 0; p < pieces.Length; p++)
            {
                if (ids.Count == room) { cut = true; break; }
                ids.Add(pieces[p]);
                int label = labels?[w] ?? 0;
                tags.Add(p == 0 ? label : labelAllTokens ? classes?.Inside(label) ?? label : (int)ExampleEncoder.IgnoreIndex);
            }
        }
        int[] Wrap(List<int> inner, int? first, int? last) => [.. first is { } f ? [f] : Array.Empty<int>(), .. inner, .. last is { } l ? [l] : Array.Empty<int>()];
        int ignore = (int)ExampleEncoder.IgnoreIndex;
        return (Wrap(ids, bos, eos), Wrap(tags, bos is null ? null : ignore, eos is null ? null : ignore), starts, cut);
    }

    /// <summary>A word's tokens as it reads after a space: SentencePiece puts its word prefix (▁) on any text it
    /// encodes; a byte-level BPE (GPT-2's) is given the space.</summary>
    public static int[] EncodeWord(TextTokenizer tokenizer, string word) =>
        tokenizer.Kind == "sentencepiece" ? tokenizer.Encode(word) : tokenizer.Encode(" " + word);
}
