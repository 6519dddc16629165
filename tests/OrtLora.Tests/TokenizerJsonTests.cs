using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>A Llama 2 tokenizer.json (SentencePiece-style BPE with byte fallback) against Google's sentencepiece ids.
/// No Hugging Face Llama tokenizer.json is among the fixtures, so the test writes one from the Llama 2 .model the way
/// Hugging Face's LlamaConverter does (vocabulary = pieces by id; merges = every split of a piece into two pieces,
/// ordered by the joined piece's score), then loads it as any tokenizer.json.</summary>
public class TokenizerJsonTests
{
    internal sealed record Piece(string Text, float Score, int Type);

    internal static List<Piece> ReadSentencePieceModel(string path)
    {
        var pieces = new List<Piece>();
        var input = new CodedInputStream(File.ReadAllBytes(path));
        uint tag;
        while ((tag = input.ReadTag()) != 0)
        {
            if (WireFormat.GetTagFieldNumber(tag) != 1) { input.SkipLastField(); continue; }
            var message = new CodedInputStream(input.ReadBytes().ToByteArray());
            string text = "";
            float score = 0;
            int type = 1;
            uint inner;
            while ((inner = message.ReadTag()) != 0)
                switch (WireFormat.GetTagFieldNumber(inner))
                {
                    case 1: text = message.ReadString(); break;
                    case 2: score = message.ReadFloat(); break;
                    case 3: type = message.ReadInt32(); break;
                    default: message.SkipLastField(); break;
                }
            pieces.Add(new Piece(text, score, type));
        }
        return pieces;
    }

    internal static JsonObject LlamaTokenizerJson(List<Piece> pieces, bool legacy)
    {
        var ids = pieces.Select((p, i) => (p.Text, i)).ToDictionary(x => x.Text, x => x.i);
        var merges = new List<(float Score, int Id, int Left, int Right, string L, string R)>();
        for (int id = 0; id < pieces.Count; id++)
        {
            var text = pieces[id].Text;
            for (int cut = 1; cut < text.Length; cut++)
            {
                if (char.IsLowSurrogate(text[cut])) continue;
                if (ids.TryGetValue(text[..cut], out var l) && ids.TryGetValue(text[cut..], out var r))
                    merges.Add((pieces[id].Score, id, l, r, text[..cut], text[cut..]));
            }
        }
        var ordered = merges.OrderByDescending(m => m.Score).ThenBy(m => m.Id).ThenBy(m => m.Left).ThenBy(m => m.Right);
        var vocab = new JsonObject();
        foreach (var (text, id) in ids) vocab[text] = id;
        var added = new JsonArray();
        foreach (var (token, id) in new[] { ("<unk>", 0), ("<s>", 1), ("</s>", 2) })
            added.Add(new JsonObject { ["id"] = id, ["content"] = token, ["special"] = true });
        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["post_processor"] = JsonNode.Parse("""{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}}]}"""),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["fuse_unk"] = true, ["byte_fallback"] = true,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray([.. ordered.Select(m => (JsonNode)JsonValue.Create($"{m.L} {m.R}"))]),
            },
        };
        if (legacy)
            root["normalizer"] = JsonNode.Parse("""{"type":"Sequence","normalizers":[{"type":"Prepend","prepend":"▁"},{"type":"Replace","pattern":{"String":" "},"content":"▁"}]}""");
        else
            root["pre_tokenizer"] = JsonNode.Parse("""{"type":"Metaspace","replacement":"▁","prepend_scheme":"first","split":false}""");
        return root;
    }

    internal static readonly Lazy<List<Piece>> LlamaPieces = new(() => ReadSentencePieceModel(Shared.Require("tokenizers", "llama2-tokenizer.model")));

    [Test]
    public void DirectoryPrefersTheSentencePieceModelOverItsJsonRestatement()
    {
        var dir = Shared.TempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), LlamaTokenizerJson(LlamaPieces.Value, legacy: true).ToJsonString());
        File.Copy(Shared.Require("tokenizers", "llama2-tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
        Assert.That(TokenizerLoader.Load(dir).Source, Is.EqualTo(Path.Combine(dir, "tokenizer.model")));
        File.Delete(Path.Combine(dir, "tokenizer.model"));
        Assert.That(TokenizerLoader.Load(dir).Source, Is.EqualTo(Path.Combine(dir, "tokenizer.json")));
    }

    [Test]
    public void UnsupportedTokenizerJsonModelIsNamed()
    {
        var path = Path.Combine(Shared.TempDir(), "tokenizer.json");
        File.WriteAllText(path, """{"model": {"type": "WordPiece", "vocab": {"a": 0}}}""");
        Assert.That(() => TokenizerLoader.Load(path), Throws.TypeOf<OrtLoraException>()
            .With.Message.StartsWith($"{path}: tokenizer.json model type WordPiece is not supported"));
    }

    [TestCase(true)]
    [TestCase(false)]
    public void Llama2TokenizerJsonMatchesSentencePiece(bool legacy)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Shared.Require("tokenizers", "reference_ids.json")));
        var texts = doc.RootElement.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToArray();
        var expected = doc.RootElement.GetProperty("llama2_sentencepiece_with_bos").EnumerateArray()
            .Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        var dir = Shared.TempDir();
        var json = Path.Combine(dir, "tokenizer.json");
        File.WriteAllText(json, LlamaTokenizerJson(LlamaPieces.Value, legacy).ToJsonString());

        var tokenizer = TokenizerLoader.Load(json);
        Assert.That((tokenizer.Kind, tokenizer.BosId, tokenizer.EosId, tokenizer.VocabSize, tokenizer.AddsBos), Is.EqualTo(("sentencepiece", (int?)1, (int?)2, 32000, true)));
        var fromModel = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var differing = new List<int>();
        for (int i = 0; i < texts.Length; i++)
        {
            var ids = tokenizer.Encode(texts[i], addBos: true);
            Assert.That(ids, Is.EqualTo(fromModel.Encode(texts[i], addBos: true)), $"text #{i}: same as from the .model");
            if (!ids.SequenceEqual(expected[i])) differing.Add(i);
            Assert.That(tokenizer.Decode(ids, skipSpecialTokens: true), Is.EqualTo(texts[i]), $"decode of #{i}");
        }
        Assert.That(differing, Is.Empty, "texts whose ids differ from sentencepiece's");
    }
}
