using System.Text.Json;
using OrtLora.Cli;
using OrtLora.Inference;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>The generate verb end to end on the toy cached model with a ten-letter byte-level vocabulary.</summary>
public class GenerateCommandTests
{
    /// <summary>The toy model saved with a byte-level BPE tokenizer: "a".."j" are ids 0..9, id 10 is EOS.</summary>
    static string ToyModelDirectory()
    {
        var dir = Shared.TempDir();
        using var model = GenerateToyModels.CachedModel();
        model.Save(Path.Combine(dir, "model.onnx"));
        var vocab = Enumerable.Range(0, 10).ToDictionary(i => ((char)('a' + i)).ToString(), i => i);
        vocab["<|endoftext|>"] = 10;
        File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n");
        return dir;
    }

    static (int Code, string Out, string Err) Run(params string[] args) => DeployCliRunner.Run(args);

    [Test]
    public void PrintsTheGreedyContinuationUpToEos()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        // Peer: full-recompute argmax with the plain runner, stopping at EOS (10) or after 8 tokens.
        using var model = OnnxModel.Load(modelPath);
        var sequence = new List<long> { 0, 1, 2 };
        var expected = "";
        for (int step = 0; step < 8; step++)
        {
            var n = sequence.Count;
            var logits = OrtRun.Run(model, new Dictionary<string, HostTensor>
            {
                ["input_ids"] = HostTensor.Of(sequence.ToArray(), 1, n),
                ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, n).ToArray(), 1, n),
                ["position_ids"] = HostTensor.Of(Enumerable.Range(0, n).Select(i => (long)i).ToArray(), 1, n),
                ["past_key_values.0.key"] = HostTensor.Of(Array.Empty<float>(), 1, 1, 0, GenerateToyModels.Dim),
                ["past_key_values.0.value"] = HostTensor.Of(Array.Empty<float>(), 1, 1, 0, GenerateToyModels.Dim),
            }, ["logits"])["logits"].Floats;
            int next = Sampler.ArgMax(logits.AsSpan(logits.Length - GenerateToyModels.Vocab));
            if (next == 10) break;
            expected += (char)('a' + next);
            sequence.Add(next);
        }
        Assert.That(expected, Is.Not.Empty, "the toy model continues before EOS");
        var (code, output, error) = Run("generate", modelPath, "--prompt", "abc", "--max-new-tokens", "8");
        Assert.That(code, Is.EqualTo(0), error);
        Assert.That(output, Is.EqualTo(expected + Environment.NewLine));
        Assert.That(error, Does.Contain("kv cache"));
        var (code2, output2, error2) = Run("generate", modelPath, "--prompt", "abc", "--max-new-tokens", "8", "--no-kv-cache");
        Assert.That((code2, output2), Is.EqualTo((0, output)), error2);
        Assert.That(error2, Does.Contain("full recompute"));
    }

    [Test]
    public void BadOptionsAndMismatchedTokenizerGiveOneLineErrors()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        var (code, _, error) = Run("generate", modelPath, "--prompt", "abc", "--top-p", "0");
        Assert.That((code, error.Trim()), Is.EqualTo((1, "error: --top-p must be in (0, 1]")));
        (code, _, error) = Run("generate", modelPath, "--prompt", "abc", "--min-p", "1.5");
        Assert.That((code, error.Trim()), Is.EqualTo((1, "error: --min-p must be in [0, 1]")));
        File.WriteAllText(Path.Combine(dir, "vocab.json"), "{\"a\": 0, \"z\": 99}");
        (code, _, error) = Run("generate", modelPath, "--prompt", "z");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(error, Does.Contain("token id 99 is outside the model's vocabulary of 11"));
    }

    /// <summary>generate on a device: a missing provider library or a CPU-only build is one line naming it, nothing printed.</summary>
    [Test]
    public void AMissingDeviceIsOneClearError()
    {
        var modelPath = Path.Combine(ToyModelDirectory(), "model.onnx");
        var missing = Path.Combine(Shared.TempDir(), "no-such-provider.so");
        var (code, output, error) = Run("generate", modelPath, "--prompt", "abc", "--device", "cuda", "--ep-library", missing);
        Assert.That((code, error.Trim(), output), Is.EqualTo((1, $"error: {missing}: execution provider library not found", "")));
        (code, output, error) = Run("generate", modelPath, "--prompt", "abc", "--device", "cuda");
        Assert.That((code, output), Is.EqualTo((1, "")));
        Assert.That(error, Does.Contain("--device cuda").And.Contain("--ep-library"));
    }

    [Test]
    public void SeededSamplingIsReproducibleAndSeedsDiffer()
    {
        var modelPath = Path.Combine(ToyModelDirectory(), "model.onnx");
        string Sample(int seed)
        {
            var (code, output, error) = Run("generate", modelPath, "--prompt", "abc", "--max-new-tokens", "8", "--temperature", "1.5", "--seed", seed.ToString());
            Assert.That(code, Is.EqualTo(0), error);
            return output;
        }
        Assert.That(Sample(1), Is.EqualTo(Sample(1)));
        Assert.That(Enumerable.Range(2, 6).Select(Sample).Distinct().Count(), Is.GreaterThan(1), "different seeds sample differently");
    }

    [Test]
    public void EosIdsFromGenerationConfigAlsoStop()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        var (_, free, _) = Run("generate", modelPath, "--prompt", "abc", "--max-new-tokens", "8");
        Assert.That(free.Trim(), Has.Length.GreaterThan(1), "the toy continues for a few letters");
        int second = free[1] - 'a';
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), $"{{\"eos_token_id\": [10, {second}]}}");
        var (code, stopped, error) = Run("generate", modelPath, "--prompt", "abc", "--max-new-tokens", "8");
        Assert.That(code, Is.EqualTo(0), error);
        Assert.That(stopped.Trim(), Is.EqualTo(free[..1]), "stops at the second token, which is not printed");
    }

    /// <summary>`generate --data`: every prompt of a prompt-only file (here of 3, 1, 7 and 2 letters) gets, greedily,
    /// what `generate --prompt` prints for it alone; a batch of one row writes the same file; `--reward-funcs` scores
    /// each completion and prints the mean. The toy model takes attention_mask but ignores it (its logits average every
    /// position's embedding), so left padding would change its answers: the first padded batch's check against the
    /// prompts run alone catches that, and the groups are decoded one at a time (batched they gave "cffb" for "abc"
    /// where alone gives "hfff").</summary>
    [Test]
    public void DataGeneratesEachPromptAsThePromptAlone()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        string[] prompts = ["abc", "j", "abcdefg", "ba"];
        var data = Path.Combine(dir, "prompts.jsonl");
        File.WriteAllLines(data, prompts.Select(p => JsonSerializer.Serialize(new { prompt = p, answer = "a" })));
        var output = Path.Combine(dir, "out.jsonl");
        var (code, stdout, error) = Run("generate", modelPath, "--data", data, "-o", output, "--max-new-tokens", "8", "--reward-funcs", "contains:answer");
        Assert.That(code, Is.EqualTo(0), error);
        var lines = File.ReadAllLines(output).Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.That(lines.Select(l => l.GetProperty("prompt").GetString()), Is.EqualTo(prompts));
        for (int i = 0; i < prompts.Length; i++)
        {
            var alone = Run("generate", modelPath, "--prompt", prompts[i], "--max-new-tokens", "8");
            Assert.That(lines[i].GetProperty("completion").GetString() + Environment.NewLine, Is.EqualTo(alone.Out), $"prompt {prompts[i]}");
        }
        double mean = lines.Average(l => l.GetProperty("contains:answer").GetDouble());
        Assert.That(lines.Select(l => l.GetProperty("contains:answer").GetDouble()),
            Is.EqualTo(lines.Select(l => l.GetProperty("completion").GetString()!.Contains('a') ? 1.0 : 0.0)));
        Assert.That(stdout, Does.Contain("4 completions of 4 prompts").And.Contain($"contains:answer: mean {mean:F4}"));
        var oneRow = Path.Combine(dir, "one_row.jsonl");
        Assert.That(Run("generate", modelPath, "--data", data, "-o", oneRow, "--max-new-tokens", "8", "--batch-size", "1").Code, Is.EqualTo(0));
        Assert.That(File.ReadAllText(oneRow), Is.EqualTo(File.ReadAllText(output).Replace(",\"contains:answer\":1", "").Replace(",\"contains:answer\":0", "")));
    }

    /// <summary>Sampled, several completions a prompt: each completion's seed comes from (seed, row, its number), so the
    /// file is the same whatever the batch size, and another seed gives other completions.</summary>
    [Test]
    public void SampledCompletionsDoNotDependOnTheBatch()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        var data = Path.Combine(dir, "prompts.jsonl");
        File.WriteAllLines(data, new[] { "abc", "j", "abcdefg" }.Select(p => JsonSerializer.Serialize(new { prompt = p })));
        string Generate(string name, params string[] extra)
        {
            var path = Path.Combine(dir, name);
            var (code, _, error) = Run(["generate", modelPath, "--data", data, "-o", path, "--max-new-tokens", "6", "--temperature", "1.5",
                "--num-return-sequences", "3", .. extra]);
            Assert.That(code, Is.EqualTo(0), error);
            return File.ReadAllText(path);
        }
        var batched = Generate("a.jsonl", "--seed", "5");
        Assert.That(batched.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(9));
        Assert.That(Generate("b.jsonl", "--seed", "5", "--batch-size", "2"), Is.EqualTo(batched));
        Assert.That(Generate("c.jsonl", "--seed", "6"), Is.Not.EqualTo(batched));
    }

    [Test]
    public void DataMistakesAreOneClearError()
    {
        var dir = ToyModelDirectory();
        var modelPath = Path.Combine(dir, "model.onnx");
        var data = Path.Combine(dir, "prompts.jsonl");
        File.WriteAllLines(data, [JsonSerializer.Serialize(new { prompt = "abc" })]);
        var output = Path.Combine(dir, "out.jsonl");
        var noOutput = Run("generate", modelPath, "--data", data);
        Assert.That((noOutput.Code, noOutput.Err), Is.EqualTo((1, noOutput.Err)));
        Assert.That(noOutput.Err, Does.Contain("--data needs --output"));
        var texts = Path.Combine(dir, "texts.jsonl");
        File.WriteAllLines(texts, [JsonSerializer.Serialize(new { text = "abc" })]);
        var notPrompts = Run("generate", modelPath, "--data", texts, "-o", output);
        Assert.That(notPrompts.Code, Is.EqualTo(1));
        Assert.That(notPrompts.Err, Does.Contain("texts.jsonl"));
        var column = Run("generate", modelPath, "--data", data, "-o", output, "--reward-funcs", "exact_match:answer");
        Assert.That(column.Code, Is.EqualTo(1));
        Assert.That(column.Err, Does.Contain("'answer'").And.Contain("prompts.jsonl"));
        Assert.That(File.Exists(output), Is.False, "no partial output");
        Assert.That(Directory.GetFiles(dir, "*.tmp"), Is.Empty);
    }
}
