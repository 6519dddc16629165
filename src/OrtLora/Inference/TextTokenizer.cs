using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace OrtLora.Inference;

/// <summary>What generation needs from a tokenizer: text to ids (with BOS where the model family adds it),
/// ids to text, and the special ids.</summary>
public interface ITextTokenizer
{
    IReadOnlyList<int> Encode(string text);
    string Decode(IEnumerable<int> ids);
    int? EosId { get; }
    int? BosId { get; }
}

/// <summary>Microsoft.ML.Tokenizers behind <see cref="ITextTokenizer"/>: a SentencePiece .model (Llama: BOS added),
/// or GPT-2 style byte-level BPE files (vocab.json + merges.txt, or encoder.json + vocab.bpe) in a directory.</summary>
public sealed class MlTextTokenizer : ITextTokenizer
{
    readonly Tokenizer _tokenizer;
    public int? EosId { get; }
    public int? BosId { get; }
    readonly bool _addBos;

    MlTextTokenizer(Tokenizer tokenizer, int? bosId, int? eosId, bool addBos)
    {
        _tokenizer = tokenizer;
        BosId = bosId;
        EosId = eosId;
        _addBos = addBos;
    }

    public IReadOnlyList<int> Encode(string text)
    {
        var ids = _tokenizer.EncodeToIds(text);
        return _addBos && BosId is { } bos && (ids.Count == 0 || ids[0] != bos) ? [bos, .. ids] : ids;
    }

    public string Decode(IEnumerable<int> ids) => _tokenizer.Decode(ids.Where(id => id != BosId));

    /// <summary>Loads a tokenizer from a file or a directory that holds one (see the class summary).</summary>
    public static MlTextTokenizer Load(string path)
    {
        try
        {
            if (File.Exists(path) && path.EndsWith(".model", StringComparison.OrdinalIgnoreCase)) return SentencePiece(path);
            if (Directory.Exists(path))
            {
                var model = Directory.GetFiles(path, "*.model").FirstOrDefault();
                if (ByteLevelFiles(path) is { } files) return ByteLevel(files.Vocab, files.Merges);
                if (model is not null) return SentencePiece(model);
            }
        }
        catch (Exception e) when (e is not OrtLoraException)
        {
            throw new OrtLoraException($"{path}: cannot load tokenizer ({e.Message})", e);
        }
        throw new OrtLoraException($"{path}: no tokenizer found (expected a SentencePiece .model, or vocab.json + merges.txt, or encoder.json + vocab.bpe)");
    }

    static (string Vocab, string Merges)? ByteLevelFiles(string dir)
    {
        foreach (var (vocab, merges) in new[] { ("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe") })
        {
            var v = Directory.GetFiles(dir, "*" + vocab).FirstOrDefault();
            var m = Directory.GetFiles(dir, "*" + merges).FirstOrDefault();
            if (v is not null && m is not null) return (v, m);
        }
        return null;
    }

    static MlTextTokenizer SentencePiece(string path)
    {
        using var stream = File.OpenRead(path);
        var t = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        return new MlTextTokenizer(t, t.BeginningOfSentenceId, t.EndOfSentenceId, addBos: true);
    }

    /// <summary>GPT-2's pre-tokenizer split (contractions, letters, digits, other, whitespace not before a word).</summary>
    static readonly Regex Gpt2Split = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.Compiled);

    static MlTextTokenizer ByteLevel(string vocabPath, string mergesPath)
    {
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath))
            ?? throw new OrtLoraException($"{vocabPath}: empty vocabulary");
        // merges files start with a "#version" line; each other line is one merge "a b".
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
        int? eos = vocab.TryGetValue("<|endoftext|>", out var id) ? id : null;
        var special = eos is { } e ? new Dictionary<string, int> { ["<|endoftext|>"] = e } : null;
        var t = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(Gpt2Split, special),
            SpecialTokens = special,
        });
        return new MlTextTokenizer(t, null, eos, addBos: false);
    }
}
