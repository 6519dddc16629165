using Microsoft.ML.Tokenizers;

namespace OrtLora.Training.Data;

/// <summary>A loaded tokenizer with the few things training needs: text ↔ ids and the special ids.
/// Wraps a Microsoft.ML.Tokenizers tokenizer, which encodes unless the loader gives an exact encoder of its own
/// (SentencePiece BPE, see <see cref="SentencePieceBpe"/>); built by <see cref="TokenizerLoader"/>.</summary>
public sealed class TextTokenizer
{
    readonly Tokenizer _inner;
    readonly Func<string, IReadOnlyList<int>> _encodeText;
    readonly Dictionary<int, string> _specialById;
    readonly string[] _specialsLongestFirst;

    internal TextTokenizer(Tokenizer inner, string source, string kind, IReadOnlyDictionary<string, int> specialTokens,
        int vocabSize, int? bosId, int? eosId, int? padId, bool addsBos, bool addsEos, TokenizerConfig config,
        Func<string, IReadOnlyList<int>>? encodeText = null)
    {
        Config = config;
        _inner = inner;
        _encodeText = encodeText ?? (text => inner.EncodeToIds(text));
        Source = source;
        Kind = kind;
        SpecialTokens = specialTokens;
        _specialsLongestFirst = [.. specialTokens.Keys.Where(k => k.Length > 0).OrderByDescending(k => k.Length)];
        _specialById = specialTokens.GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.First().Key);
        VocabSize = vocabSize;
        BosId = bosId;
        EosId = eosId;
        PadTokenId = padId;
        AddsBos = addsBos && bosId is not null;
        AddsEos = addsEos && eosId is not null;
    }

    /// <summary>The file the tokenizer was read from.</summary>
    public string Source { get; }
    /// <summary>"sentencepiece", "hf-bpe" (tokenizer.json) or "gpt2-bpe" (vocab.json + merges.txt).</summary>
    public string Kind { get; }
    /// <summary>The tokenizer_config.json beside the tokenizer (empty when there is none); holds the chat template.</summary>
    public TokenizerConfig Config { get; }
    /// <summary>Tokens that are matched whole in text and never split (added tokens, BOS/EOS/UNK).</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }
    /// <summary>Number of rows an embedding needs for every id this tokenizer can produce (max id + 1).</summary>
    public int VocabSize { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    /// <summary>The pad token the tokenizer defines, if any.</summary>
    public int? PadTokenId { get; }
    /// <summary>The id used to fill padding: the pad token, else EOS (as Hugging Face scripts do), else 0.
    /// Padded positions are masked out and labelled -100, so the value never reaches the loss.</summary>
    public int PadId => PadTokenId ?? EosId ?? 0;
    /// <summary>Whether the model expects BOS first in every sequence (Llama: yes; GPT-2: no).</summary>
    public bool AddsBos { get; }
    /// <summary>Whether the tokenizer's own config appends EOS on encode (rare; training appends EOS after responses anyway).</summary>
    public bool AddsEos { get; }

    /// <summary>Token ids for <paramref name="text"/>; special tokens written in the text become their ids.
    /// With <paramref name="addBos"/> BOS comes first when the tokenizer has one, even for empty text
    /// (as SentencePiece and Hugging Face do).</summary>
    public int[] Encode(string text, bool addBos = false)
    {
        var ids = new List<int>();
        if (addBos && BosId is int bos) ids.Add(bos);
        int start = 0;
        // Special tokens are split out here rather than in the package so that every kind of tokenizer treats them
        // alike: the text between them is encoded on its own, as Hugging Face's (legacy) tokenizers do.
        while (start < text.Length)
        {
            var (at, token) = NextSpecial(text, start);
            if (at > start) ids.AddRange(_encodeText(text[start..at]));
            if (token is null) break;
            ids.Add(SpecialTokens[token]);
            start = at + token.Length;
        }
        return [.. ids];
    }

    /// <summary>The first special token at or after <paramref name="start"/> (the longest one where several start
    /// there), or (text.Length, null).</summary>
    (int At, string? Token) NextSpecial(string text, int start)
    {
        int best = text.Length;
        string? bestToken = null;
        foreach (var token in _specialsLongestFirst)
        {
            var at = text.IndexOf(token, start, StringComparison.Ordinal);
            if (at >= 0 && at < best) (best, bestToken) = (at, token);
        }
        return (best, bestToken);
    }

    /// <summary>Text for <paramref name="ids"/>; special tokens are written as their text unless skipped. The text
    /// between special tokens is decoded on its own, mirroring <see cref="Encode"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var text = new System.Text.StringBuilder();
        var run = new List<int>();
        void Flush()
        {
            if (run.Count > 0) text.Append(_inner.Decode(run));
            run.Clear();
        }
        foreach (var id in ids)
        {
            if (!_specialById.TryGetValue(id, out var special)) { run.Add(id); continue; }
            Flush();
            if (!skipSpecialTokens) text.Append(special);
        }
        Flush();
        return text.ToString();
    }

    /// <summary>The id of a token written as text (a special token or a vocabulary entry), or null.</summary>
    public int? TokenId(string token)
    {
        if (SpecialTokens.TryGetValue(token, out var id)) return id;
        return _inner switch
        {
            SentencePieceTokenizer sp when sp.Vocabulary.TryGetValue(token, out var v) => v,
            BpeTokenizer bpe when bpe.Vocabulary.TryGetValue(token, out var v) => v,
            _ => null,
        };
    }

    public override string ToString() =>
        $"{Kind} tokenizer from {Source}: vocab {VocabSize}, bos {BosId?.ToString() ?? "none"}, eos {EosId?.ToString() ?? "none"}, pad {PadTokenId?.ToString() ?? "none"}";
}
