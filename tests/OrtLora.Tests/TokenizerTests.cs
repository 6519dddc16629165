using System.Text.Json;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>Tokenization against the peers in ../shared/tokenizers/reference_ids.json: Hugging Face tokenizers for
/// GPT-2, Google's sentencepiece for Llama 2.</summary>
public class TokenizerTests
{
    sealed record Reference(string[] Texts, int[][] Gpt2, int[][] Llama, int LlamaBos, int LlamaEos, int LlamaVocab);

    static Reference LoadReference()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Shared.Require("tokenizers", "reference_ids.json")));
        var root = doc.RootElement;
        int[][] Ids(string key) => root.GetProperty(key).EnumerateArray().Select(a => a.EnumerateArray().Select(x => x.GetInt32()).ToArray()).ToArray();
        return new Reference(root.GetProperty("texts").EnumerateArray().Select(t => t.GetString()!).ToArray(),
            Ids("gpt2"), Ids("llama2_sentencepiece_with_bos"),
            root.GetProperty("llama2_bos_id").GetInt32(), root.GetProperty("llama2_eos_id").GetInt32(), root.GetProperty("llama2_vocab").GetInt32());
    }

    static void AssertAll(TextTokenizer tokenizer, string[] texts, int[][] expected, bool addBos)
    {
        Assert.That(texts, Has.Length.EqualTo(45));
        var mismatches = new List<string>();
        for (int i = 0; i < texts.Length; i++)
        {
            var ids = tokenizer.Encode(texts[i], addBos);
            if (!ids.SequenceEqual(expected[i]))
                mismatches.Add($"#{i} differs: {JsonSerializer.Serialize(texts[i][..Math.Min(50, texts[i].Length)])}\n  got  {string.Join(",", ids.Take(16))}\n  want {string.Join(",", expected[i].Take(16))}");
            Assert.That(tokenizer.Decode(ids, skipSpecialTokens: true), Is.EqualTo(texts[i]), $"decode of text #{i}");
        }
        Assert.That(mismatches, Is.Empty, string.Join("\n", mismatches));
    }

    [Test]
    public void Gpt2TokenizerJsonMatchesHuggingFace()
    {
        var r = LoadReference();
        var tokenizer = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        Assert.That(tokenizer.Kind, Is.EqualTo("hf-bpe"));
        AssertAll(tokenizer, r.Texts, r.Gpt2, addBos: false);
        Assert.That(tokenizer.VocabSize, Is.EqualTo(50257));
        Assert.That(tokenizer.EosId, Is.EqualTo(50256));
        Assert.That(tokenizer.AddsBos, Is.False, "GPT-2 puts no BOS first");
    }

    [Test]
    public void Gpt2EncoderAndMergesFilesMatchHuggingFace()
    {
        var r = LoadReference();
        var tokenizer = TokenizerLoader.Load(Shared.Require("tokenizers", "gpt2-encoder.json"));
        Assert.That(tokenizer.Kind, Is.EqualTo("gpt2-bpe"));
        AssertAll(tokenizer, r.Texts, r.Gpt2, addBos: false);
        var fromMerges = TokenizerLoader.Load(Shared.Require("tokenizers", "gpt2-vocab.bpe"));
        Assert.That(fromMerges.Encode(r.Texts[0]), Is.EqualTo(r.Gpt2[0]));
        Assert.That(tokenizer.VocabSize, Is.EqualTo(50257));
        Assert.That((tokenizer.BosId, tokenizer.EosId, tokenizer.PadTokenId, tokenizer.PadId), Is.EqualTo(((int?)50256, (int?)50256, (int?)null, 50256)));
    }

    [Test]
    public void Llama2SentencePieceMatchesSentencePiece()
    {
        var r = LoadReference();
        var tokenizer = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        Assert.That(tokenizer.Kind, Is.EqualTo("sentencepiece"));
        AssertAll(tokenizer, r.Texts, r.Llama, addBos: true);
        Assert.That((tokenizer.BosId, tokenizer.EosId, tokenizer.VocabSize), Is.EqualTo(((int?)r.LlamaBos, (int?)r.LlamaEos, r.LlamaVocab)));
        Assert.That(tokenizer.AddsBos, Is.True);
    }

    [Test]
    public void SpecialTokensWrittenInTextBecomeTheirIds()
    {
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        Assert.That(llama.Encode("</s>"), Is.EqualTo(new[] { 2 }));
        var gpt2 = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        Assert.That(gpt2.Encode("Hello<|endoftext|>"), Is.EqualTo(new[] { 15496, 50256 }));
    }

    [Test]
    public void DirectoryPicksTokenizerJsonAndReadsTokenizerConfig()
    {
        var dir = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"),
            """{"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"}, "pad_token": "!", "add_bos_token": true}""");
        var tokenizer = TokenizerLoader.Load(dir);
        Assert.That(tokenizer.Kind, Is.EqualTo("hf-bpe"));
        Assert.That((tokenizer.BosId, tokenizer.EosId, tokenizer.PadTokenId, tokenizer.AddsBos), Is.EqualTo(((int?)50256, (int?)50256, (int?)0, true)));
        Assert.That(tokenizer.Encode("Hello world", addBos: true), Is.EqualTo(new[] { 50256, 15496, 995 }));
    }

    [Test]
    public void AddedTokensOfTokenizerJsonAreOneTokenEach()
    {
        // A GPT-2 tokenizer extended for ChatML, as fine-tuning recipes do.
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json")))!;
        root["added_tokens"] = System.Text.Json.Nodes.JsonNode.Parse(
            """[{"id": 50257, "content": "<|im_start|>", "special": true}, {"id": 50258, "content": "<|im_end|>", "special": true}]""");
        var dir = Shared.TempDir();
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), root.ToJsonString());
        var tokenizer = TokenizerLoader.Load(dir);
        Assert.That(tokenizer.VocabSize, Is.EqualTo(50259));
        var plain = tokenizer.Encode("user\nHi");
        Assert.That(tokenizer.Encode("<|im_start|>user\nHi<|im_end|>"), Is.EqualTo(new[] { 50257 }.Concat(plain).Append(50258)));
        Assert.That(tokenizer.Decode([50257, .. plain, 50258]), Is.EqualTo("<|im_start|>user\nHi<|im_end|>"));
        Assert.That(tokenizer.Decode([50257, .. plain, 50258], skipSpecialTokens: true), Is.EqualTo("user\nHi"));
    }

    [Test]
    public void DirectoryWithSentencePieceModelAndGpt2Files()
    {
        var sp = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "llama2-tokenizer.model"), Path.Combine(sp, "tokenizer.model"));
        Assert.That(TokenizerLoader.Load(sp).Encode("Hello world", true), Is.EqualTo(new[] { 1, 15043, 3186 }));
        var gpt2 = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "gpt2-encoder.json"), Path.Combine(gpt2, "vocab.json"));
        File.Copy(Shared.Require("tokenizers", "gpt2-vocab.bpe"), Path.Combine(gpt2, "merges.txt"));
        Assert.That(TokenizerLoader.Load(gpt2).Encode("Hello world"), Is.EqualTo(new[] { 15496, 995 }));
    }

    [Test]
    public void BadTokenizerPathsGiveOneClearMessage()
    {
        var dir = Shared.TempDir();
        var missing = Path.Combine(dir, "nope.model");
        Assert.That(() => TokenizerLoader.Load(missing), Throws.TypeOf<OrtLoraException>().With.Message.Contains(missing));
        Assert.That(() => TokenizerLoader.Load(dir), Throws.TypeOf<OrtLoraException>().With.Message.Contains("no tokenizer in").And.Message.Contains(dir));
        var broken = Path.Combine(dir, "tokenizer.model");
        File.WriteAllBytes(broken, File.ReadAllBytes(Shared.Require("tokenizers", "llama2-tokenizer.model"))[..1000]);
        Assert.That(() => TokenizerLoader.Load(broken), Throws.TypeOf<OrtLoraException>().With.Message.Contains(broken));
        var lonely = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "gpt2-encoder.json"), Path.Combine(lonely, "vocab.json"));
        Assert.That(() => TokenizerLoader.Load(Path.Combine(lonely, "vocab.json")),
            Throws.TypeOf<OrtLoraException>().With.Message.Contains("merges.txt or vocab.bpe"));
    }
}
