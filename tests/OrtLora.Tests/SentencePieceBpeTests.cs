using System.Text;
using System.Text.Json;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>Runs of repeated characters, where BPE merges tie on score and sentencepiece takes the leftmost pair.
/// The peers' ids (reference_ids.json) cover a run of 300 "a" and leading spaces; other runs are checked against
/// sentencepiece's rule written out plainly below (rescan every adjacent pair, merge the highest-scoring one,
/// leftmost first), which shares no code with the tokenizer's priority queue.</summary>
public class SentencePieceBpeTests
{
    static readonly Lazy<TextTokenizer> FromModel = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model")));

    static readonly string[] Runs =
    [
        .. Enumerable.Range(1, 40).Select(n => new string('a', n)),
        .. Enumerable.Range(1, 12).Select(n => new string(' ', n)),
        .. Enumerable.Range(1, 12).Select(n => "x" + new string(' ', n) + "y"),
        .. Enumerable.Range(1, 10).Select(n => string.Concat(Enumerable.Repeat("ab", n))),
        "ababab", "abababa", "abcabcabc", "aaa bbb  ccc   ddd", "\n\n\n\n\n\n", "1111111111", "!!!!!!!!", "..........",
        "=========", "----------", "ééééééé", "日日日日日", "😀😀😀", "ha ha ha ha ha", "\t\t\t\t",
    ];

    [Test]
    public void RepeatedRunsOfThePeersMatch()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Shared.Require("tokenizers", "reference_ids.json")));
        var texts = doc.RootElement.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var ids = doc.RootElement.GetProperty("llama2_sentencepiece_with_bos").EnumerateArray()
            .Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        var runs = Enumerable.Range(0, texts.Length).Where(i => texts[i].Contains("aaaa") || texts[i].StartsWith("  ")).ToList();
        Assert.That(runs, Is.Not.Empty);
        foreach (var i in runs)
            Assert.That(FromModel.Value.Encode(texts[i], addBos: true), Is.EqualTo(ids[i]), $"text #{i}");
    }

    [Test]
    public void RepeatedRunsFollowSentencePiecesLeftmostRule()
    {
        var pieces = TokenizerJsonTests.LlamaPieces.Value;
        var normal = pieces.Select((p, id) => (p, id)).Where(x => x.p.Type == 1).ToDictionary(x => x.p.Text, x => (x.id, x.p.Score));
        var byId = pieces.Select((p, id) => (p.Text, id)).ToDictionary(x => x.Text, x => x.id);
        foreach (var text in Runs)
        {
            var ids = FromModel.Value.Encode(text);
            Assert.That(ids, Is.EqualTo(LeftmostBpe(text, normal, byId)), JsonSerializer.Serialize(text));
            Assert.That(FromModel.Value.Decode(ids), Is.EqualTo(text));
        }
    }

    [Test]
    public void TokenizerJsonEncodesRunsAsTheModelDoes()
    {
        var json = Path.Combine(Shared.TempDir(), "tokenizer.json");
        File.WriteAllText(json, TokenizerJsonTests.LlamaTokenizerJson(TokenizerJsonTests.LlamaPieces.Value, legacy: false).ToJsonString());
        var fromJson = TokenizerLoader.Load(json);
        foreach (var text in Runs)
            Assert.That(fromJson.Encode(text, addBos: true), Is.EqualTo(FromModel.Value.Encode(text, addBos: true)), JsonSerializer.Serialize(text));
    }

    [Test]
    public void CharactersOutsideTheVocabularyFallBackToTheirBytes()
    {
        // "😀" is not a Llama 2 piece: its four UTF-8 bytes become the pieces <0xF0> <0x9F> <0x98> <0x80>.
        var pieces = TokenizerJsonTests.LlamaPieces.Value.Select(p => p.Text).ToList();
        var ids = FromModel.Value.Encode("😀");
        Assert.That(ids.Select(id => pieces[id]), Is.EqualTo(new[] { "▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>" }));
        Assert.That(FromModel.Value.Decode(ids), Is.EqualTo("😀"));
        Assert.That(FromModel.Value.Encode(""), Is.Empty);
    }

    /// <summary>sentencepiece's BPE for Llama 2 (dummy "▁" prefix, spaces as "▁", byte fallback), the slow plain way.</summary>
    static List<int> LeftmostBpe(string text, Dictionary<string, (int Id, float Score)> normal, Dictionary<string, int> byId)
    {
        if (text.Length == 0) return [];
        var symbols = ("▁" + text.Replace(' ', '▁')).EnumerateRunes().Select(r => r.ToString()).ToList();
        while (true)
        {
            int best = -1;
            float bestScore = float.NegativeInfinity;
            for (int i = 0; i + 1 < symbols.Count; i++)
                if (normal.TryGetValue(symbols[i] + symbols[i + 1], out var piece) && piece.Score > bestScore)
                    (best, bestScore) = (i, piece.Score);
            if (best < 0) break;
            symbols[best] += symbols[best + 1];
            symbols.RemoveAt(best + 1);
        }
        return [.. symbols.SelectMany(s => byId.TryGetValue(s, out var id)
            ? [id]
            : Encoding.UTF8.GetBytes(s).Select(b => byId[$"<0x{b:X2}>"]))];
    }
}

/// <summary>sentencepiece's other normalizer and trainer switches and user-defined pieces, on the Llama 2 model with
/// one field appended (protobuf parsers merge a message field written again into the first and append to a repeated
/// field, so appending to the file is enough).</summary>
public class SentencePieceSwitchTests
{
    static TextTokenizer LlamaWith(int specField, int switchField, bool value) =>
        LlamaWith(specField, inner => { inner.WriteTag(switchField, Google.Protobuf.WireFormat.WireType.Varint); inner.WriteBool(value); });

    static TextTokenizer LlamaWith(int field, Action<Google.Protobuf.CodedOutputStream> write)
    {
        var spec = new MemoryStream();
        var inner = new Google.Protobuf.CodedOutputStream(spec);
        write(inner);
        inner.Flush();
        var model = new MemoryStream();
        model.Write(File.ReadAllBytes(Shared.Require("tokenizers", "llama2-tokenizer.model")));
        var outer = new Google.Protobuf.CodedOutputStream(model);
        outer.WriteTag(field, Google.Protobuf.WireFormat.WireType.LengthDelimited);
        outer.WriteBytes(Google.Protobuf.ByteString.CopyFrom(spec.ToArray()));
        outer.Flush();
        var path = Path.Combine(Shared.TempDir(), "tokenizer.model");
        File.WriteAllBytes(path, model.ToArray());
        return TokenizerLoader.Load(path);
    }

    [Test]
    public void RemoveExtraWhitespacesDropsLeadingTrailingAndRepeatedSpaces()
    {
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var trimming = LlamaWith(specField: 3, switchField: 4, value: true);
        Assert.That(trimming.Encode("   Hello    world  "), Is.EqualTo(llama.Encode("Hello world")));
        Assert.That(trimming.Encode("    "), Is.Empty, "nothing left once the spaces go");
        Assert.That(trimming.Encode("a\t b"), Is.EqualTo(llama.Encode("a\t b")), "only spaces are whitespace to sentencepiece");
    }

    [Test]
    public void WithoutByteFallbackARunOfUnknownCharactersIsOneUnknown()
    {
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var noFallback = LlamaWith(specField: 2, switchField: 35, value: false);
        var unk = llama.TokenId("<unk>")!.Value;
        Assert.That(noFallback.Encode("a😀😀 b"), Is.EqualTo(new[] { llama.TokenId("▁a")!.Value, unk, llama.TokenId("▁b")!.Value }));
        Assert.That(noFallback.Encode("😀x😀"), Is.EqualTo(new[] { llama.TokenId("▁")!.Value, unk, llama.TokenId("x")!.Value, unk }));
    }

    [Test]
    public void UserDefinedPieceIsOneTokenThatNeverMerges()
    {
        // A piece appended to the model (id 32000) of type USER_DEFINED (4), as chat fine-tunes add.
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var extended = LlamaWith(1, piece =>
        {
            piece.WriteTag(1, Google.Protobuf.WireFormat.WireType.LengthDelimited); piece.WriteString("<|user|>");
            piece.WriteTag(2, Google.Protobuf.WireFormat.WireType.Fixed32); piece.WriteFloat(0);
            piece.WriteTag(3, Google.Protobuf.WireFormat.WireType.Varint); piece.WriteInt32(4);
        });
        Assert.That(extended.VocabSize, Is.EqualTo(32001));
        var ids = extended.Encode("a<|user|>b");
        Assert.That(ids, Is.EqualTo(new[] { llama.TokenId("▁a")!.Value, 32000, llama.TokenId("b")!.Value }));
        Assert.That(extended.Decode(ids), Is.EqualTo("a<|user|>b"));
        Assert.That(llama.Encode("a<|user|>b"), Has.Length.GreaterThan(3), "without the piece the text is split up");
    }
}
