using System.Text.Json.Nodes;
using OrtLora.Inference;

namespace OrtLora.Tests;

/// <summary>Text side of generation: tokenizers against the Hugging Face / sentencepiece reference ids, streaming
/// decode against the original texts, sampling against its definition.</summary>
public class GenerateTextTests
{
    static JsonObject ReferenceIds() => JsonNode.Parse(File.ReadAllText(Shared.Require("tokenizers", "reference_ids.json")))!.AsObject();

    static string Gpt2Dir()
    {
        // The byte-level BPE loader wants both files in one directory; the fixture names them encoder.json / vocab.bpe.
        Shared.Require("tokenizers", "gpt2-encoder.json");
        var dir = Shared.TempDir();
        File.Copy(Path.Combine(Shared.Root, "tokenizers", "gpt2-encoder.json"), Path.Combine(dir, "encoder.json"));
        File.Copy(Path.Combine(Shared.Root, "tokenizers", "gpt2-vocab.bpe"), Path.Combine(dir, "vocab.bpe"));
        return dir;
    }

    [Test]
    public void Gpt2TokenizerMatchesHuggingFaceAndStreamsEveryTextBack()
    {
        var reference = ReferenceIds();
        var texts = reference["texts"]!.AsArray().Select(t => t!.GetValue<string>()).ToList();
        var ids = reference["gpt2"]!.AsArray().Select(a => a!.AsArray().Select(i => i!.GetValue<int>()).ToList()).ToList();
        var tokenizer = LoadedTokenizer.Load(Gpt2Dir());
        Assert.That(tokenizer.EosId, Is.EqualTo(50256));
        for (int t = 0; t < texts.Count; t++)
        {
            Assert.That(tokenizer.Encode(texts[t]), Is.EqualTo(ids[t]), $"text {t}");
            var streamer = new TextStreamer(tokenizer);
            var pieces = ids[t].Select(streamer.Push).Where(p => p.Length > 0).ToList();
            pieces.Add(streamer.Flush());
            Assert.That(pieces.Any(p => p.Contains('\uFFFD')), Is.False, $"text {t}: a half character was printed");
            Assert.That(string.Concat(pieces), Is.EqualTo(texts[t]), $"text {t}");
        }
    }

    [Test]
    public void LlamaTokenizerAddsBosAndStreamsNonAsciiText()
    {
        var reference = ReferenceIds();
        var texts = reference["texts"]!.AsArray().Select(t => t!.GetValue<string>()).ToList();
        var ids = reference["llama2_sentencepiece_with_bos"]!.AsArray().Select(a => a!.AsArray().Select(i => i!.GetValue<int>()).ToList()).ToList();
        var tokenizer = LoadedTokenizer.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        Assert.That(tokenizer.BosId, Is.EqualTo(reference["llama2_bos_id"]!.GetValue<int>()));
        Assert.That(tokenizer.EosId, Is.EqualTo(reference["llama2_eos_id"]!.GetValue<int>()));
        int nonAscii = texts.FindIndex(t => t.Any(c => c > 0x7F && char.IsSurrogate(c)));
        Assert.That(nonAscii, Is.GreaterThanOrEqualTo(0), "the fixture has an emoji text");
        foreach (var t in new[] { 0, 1, nonAscii })
        {
            Assert.That(tokenizer.Encode(texts[t]), Is.EqualTo(ids[t]), $"text {t}");
            var streamer = new TextStreamer(tokenizer);
            var pieces = ids[t].Select(streamer.Push).Where(p => p.Length > 0).ToList();
            pieces.Add(streamer.Flush());
            Assert.That(pieces.Any(p => p.Contains('\uFFFD')), Is.False, $"text {t}: a half character was printed");
            Assert.That(string.Concat(pieces), Is.EqualTo(tokenizer.Decode(ids[t])), $"text {t}: streamed pieces join to the full decode");
        }
    }

    [Test]
    public void MissingTokenizerGivesOneClearMessage()
    {
        var dir = Shared.TempDir();
        var e = Assert.Throws<OrtLoraException>(() => LoadedTokenizer.Load(dir))!;
        Assert.That(e.Message, Does.Contain(dir));
    }

    [Test]
    public void GreedyTopKOneAndTinyTopPAllPickTheArgmax()
    {
        float[] logits = [0.1f, 2.5f, -1f, 2.4f];
        Assert.That(new Sampler(new GenerationOptions()).Next(logits), Is.EqualTo(1));
        for (int seed = 0; seed < 20; seed++)
        {
            Assert.That(new Sampler(new GenerationOptions { Temperature = 1, TopK = 1, Seed = seed }).Next(logits), Is.EqualTo(1));
            Assert.That(new Sampler(new GenerationOptions { Temperature = 1, TopP = 0.01, Seed = seed }).Next(logits), Is.EqualTo(1));
        }
    }

    /// <summary>Hugging Face's repetition penalty: seen tokens' positive logits are divided by it, negative ones
    /// multiplied, before the choice; unseen tokens and a penalty of 1 change nothing.</summary>
    [Test]
    public void RepetitionPenaltyLowersSeenTokensAsTransformersDoes()
    {
        float[] logits = [2.0f, 3.0f, -1.0f, -0.4f];
        var penalized = new Sampler(new GenerationOptions { RepetitionPenalty = 2 });
        Assert.That(penalized.Next(logits, [1]), Is.EqualTo(0), "3 / 2 = 1.5 < 2");
        Assert.That(penalized.Next(logits, [0]), Is.EqualTo(1), "an unseen best token stays best");
        Assert.That(new Sampler(new GenerationOptions()).Next(logits, [1]), Is.EqualTo(1), "penalty 1: off");
        float[] negative = [-1.0f, -0.6f];
        Assert.That(penalized.Next(negative, [1]), Is.EqualTo(0), "-0.6 · 2 = -1.2 < -1");
        Assert.That(new Sampler(new GenerationOptions { RepetitionPenalty = 1.5 }).Next([1.0f, 1.4f], [0, 1]), Is.EqualTo(1), "all seen: the order stays");
    }

    [Test]
    public void SamplingFollowsTheTemperedSoftmax()
    {
        // p(1) = e^(ln3 / T) / (1 + e^(ln3 / T)): 0.75 at T = 1, 0.9 at T = 0.5.
        float[] logits = [0f, (float)Math.Log(3)];
        foreach (var (temperature, expected) in new[] { (1.0, 0.75), (0.5, 0.9) })
        {
            var sampler = new Sampler(new GenerationOptions { Temperature = temperature, Seed = 1 });
            int ones = Enumerable.Range(0, 20000).Count(_ => sampler.Next(logits) == 1);
            Assert.That(ones / 20000.0, Is.EqualTo(expected).Within(0.015), $"T={temperature}");
        }
    }

    [Test]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps {0, 1}, renormalised to 0.625 / 0.375; token 2 never appears.
        float[] logits = [(float)Math.Log(0.5), (float)Math.Log(0.3), (float)Math.Log(0.2)];
        var sampler = new Sampler(new GenerationOptions { Temperature = 1, TopP = 0.7, Seed = 3 });
        var counts = new int[3];
        for (int i = 0; i < 20000; i++) counts[sampler.Next(logits)]++;
        Assert.That(counts[2], Is.Zero);
        Assert.That(counts[0] / 20000.0, Is.EqualTo(0.625).Within(0.015));
    }

    /// <summary>Hugging Face's MinPLogitsWarper: tokens below min_p times the top probability are dropped, the rest
    /// renormalized; after top-k, whose survivors it compares with the same top token.</summary>
    [Test]
    public void MinPDropsTokensFarBelowTheTop()
    {
        // 0.5, 0.3, 0.15, 0.05: min_p 0.2 drops below 0.1 (token 3), token 0 then has 0.5 / 0.95; min_p 0.5 keeps {0, 1}
        float[] logits = [(float)Math.Log(0.5), (float)Math.Log(0.3), (float)Math.Log(0.15), (float)Math.Log(0.05)];
        foreach (var (minP, topK, kept, first) in new[] { (0.2, 0, 3, 0.5 / 0.95), (0.5, 0, 2, 0.625), (0.2, 2, 2, 0.625) })
        {
            var sampler = new Sampler(new GenerationOptions { Temperature = 1, MinP = minP, TopK = topK, Seed = 5 });
            var counts = new int[4];
            for (int i = 0; i < 20000; i++) counts[sampler.Next(logits)]++;
            Assert.That(counts.Count(c => c > 0), Is.EqualTo(kept), $"min_p {minP}, top_k {topK}");
            Assert.That(counts[0] / 20000.0, Is.EqualTo(first).Within(0.015), $"min_p {minP}, top_k {topK}");
        }
        Assert.That(new Sampler(new GenerationOptions { Temperature = 1, MinP = 1, Seed = 1 }).Next(logits), Is.Zero, "min_p 1 keeps the top token alone");
    }

    [Test]
    public void InvalidBytesDoNotStallTheStream()
    {
        // GPT-2 id 100 is the lone byte 0xA7, a UTF-8 continuation byte: a run of them never completes a character.
        var tokenizer = LoadedTokenizer.Load(Gpt2Dir());
        var streamer = new TextStreamer(tokenizer);
        var pieces = Enumerable.Range(0, 8).Select(_ => streamer.Push(100)).ToList();
        Assert.That(pieces.Take(3).All(p => p.Length == 0), Is.True, "held while a character could still complete");
        Assert.That(string.Concat(pieces).Length, Is.GreaterThan(0), "released once no character can complete");
        Assert.That(string.Concat(pieces) + streamer.Flush(), Is.EqualTo(tokenizer.Decode(Enumerable.Repeat(100, 8))));
    }
}
