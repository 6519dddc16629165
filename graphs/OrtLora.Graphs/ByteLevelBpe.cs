using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace OrtLora.Graphs;

/// <summary>A GPT-2-style byte-level BPE vocabulary: 256 byte tokens, then one token per merge, then special tokens.
/// Saved in GPT-2's own file format (vocab.json + merges.txt), so any GPT-2 tokenizer implementation loads it.</summary>
/// <param name="Tokens">Token strings by id (byte b is id b, learned tokens follow), special tokens excluded.</param>
/// <param name="Merges">Merge rules in priority order; two rules may make the same token ("a"+"bc", "ab"+"c").</param>
public sealed record ByteLevelBpe(IReadOnlyList<string> Tokens, IReadOnlyList<(string Left, string Right)> Merges, IReadOnlyList<string> SpecialTokens)
{
    /// <summary>GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with at most one leading space.</summary>
    public static readonly Regex PreTokenizer = new(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
        RegexOptions.Compiled | RegexOptions.CultureInvariant);

    /// <summary>GPT-2's byte → printable character table: printable Latin-1 bytes stand for themselves, the rest
    /// are shifted to U+0100 and above (so a space is 'Ġ').</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    static char[] BuildByteToChar()
    {
        var table = new char[256];
        int next = 256;
        for (int b = 0; b < 256; b++)
        {
            bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
            table[b] = printable ? (char)b : (char)next++;
        }
        return table;
    }

    public int VocabSize => Tokens.Count + SpecialTokens.Count;

    /// <summary>Id of a special token (they follow the learned tokens).</summary>
    public int SpecialId(string token) => Tokens.Count + SpecialTokens.ToList().IndexOf(token);

    /// <summary>Learns merges from <paramref name="texts"/> until the vocabulary (special tokens included) has
    /// <paramref name="vocabSize"/> tokens: repeatedly joins the most frequent adjacent pair inside pre-tokenized
    /// words (ties: the pair whose tokens sort first, ordinally), as Hugging Face's BPE trainer does.</summary>
    public static ByteLevelBpe Train(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specialTokens)
    {
        var wordCounts = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (Match m in PreTokenizer.Matches(text))
                wordCounts[m.Value] = wordCounts.GetValueOrDefault(m.Value) + 1;
        var words = wordCounts.OrderBy(w => w.Key, StringComparer.Ordinal)
            .Select(w => (Symbols: Encoding.UTF8.GetBytes(w.Key).Select(b => (int)b).ToList(), Count: w.Value)).ToList();

        var tokens = Enumerable.Range(0, 256).Select(b => ByteToChar[b].ToString()).ToList();
        var ids = tokens.Select((t, i) => (t, i)).ToDictionary(p => p.t, p => p.i, StringComparer.Ordinal);
        var merges = new List<(string, string)>();
        while (tokens.Count + specialTokens.Count < vocabSize)
        {
            var pairCounts = new Dictionary<(int, int), long>();
            foreach (var (symbols, count) in words)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    pairCounts[(symbols[i], symbols[i + 1])] = pairCounts.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            if (pairCounts.Count == 0)
                throw new OrtLoraException($"the training text is too small for a vocabulary of {vocabSize} (stopped at {tokens.Count})");
            var best = pairCounts.OrderByDescending(p => p.Value)
                .ThenBy(p => tokens[p.Key.Item1], StringComparer.Ordinal)
                .ThenBy(p => tokens[p.Key.Item2], StringComparer.Ordinal).First().Key;
            var joined = tokens[best.Item1] + tokens[best.Item2];
            if (!ids.TryGetValue(joined, out int merged))
            {
                ids[joined] = merged = tokens.Count;
                tokens.Add(joined);
            }
            merges.Add((tokens[best.Item1], tokens[best.Item2]));
            foreach (var (symbols, _) in words) ApplyMerge(symbols, best, merged);
        }
        return new ByteLevelBpe(tokens, merges, specialTokens);
    }

    static void ApplyMerge(List<int> symbols, (int Left, int Right) pair, int merged)
    {
        for (int i = 0; i + 1 < symbols.Count; i++)
            if (symbols[i] == pair.Left && symbols[i + 1] == pair.Right)
            {
                symbols[i] = merged;
                symbols.RemoveAt(i + 1);
            }
    }

    /// <summary>Token ids of <paramref name="text"/> (no special tokens), by the textbook rule: within each pre-token,
    /// repeatedly apply the highest-priority merge that occurs. A reference to check other implementations against.</summary>
    public List<int> Encode(string text)
    {
        var rank = new Dictionary<(string, string), int>();
        for (int i = 0; i < Merges.Count; i++) rank.TryAdd(Merges[i], i);
        var ids = Tokens.Select((t, i) => (t, i)).ToDictionary(p => p.t, p => p.i, StringComparer.Ordinal);
        var result = new List<int>();
        foreach (Match m in PreTokenizer.Matches(text))
        {
            var symbols = Encoding.UTF8.GetBytes(m.Value).Select(b => ByteToChar[b].ToString()).ToList();
            while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (rank.TryGetValue((symbols[i], symbols[i + 1]), out int r) && r < bestRank) (best, bestRank) = (i, r);
                if (best < 0) break;
                var (left, right) = Merges[bestRank];
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == left && symbols[i + 1] == right) { symbols[i] = left + right; symbols.RemoveAt(i + 1); }
            }
            result.AddRange(symbols.Select(s => ids[s]));
        }
        return result;
    }

    /// <summary>vocab.json: {"token": id, ...} in id order, non-ASCII characters written as themselves (as GPT-2's file).</summary>
    public string VocabJson()
    {
        var options = new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, options))
        {
            writer.WriteStartObject();
            var all = Tokens.Concat(SpecialTokens).ToList();
            for (int id = 0; id < all.Count; id++) writer.WriteNumber(all[id], id);
            writer.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>merges.txt: a version line, then one "left right" pair per line in merge order.</summary>
    public string MergesText()
    {
        var text = new StringBuilder("#version: 0.2\n");
        foreach (var (left, right) in Merges) text.Append(left).Append(' ').Append(right).Append('\n');
        return text.ToString();
    }
}
