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

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try
        {
            var root = new System.CommandLine.RootCommand();
            foreach (var c in Commands.All()) root.Subcommands.Add(c);
            return (CliRunner.Invoke(root, args), stdout.ToString(), stderr.ToString());
        }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

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
        File.WriteAllText(Path.Combine(dir, "vocab.json"), "{\"a\": 0, \"z\": 99}");
        (code, _, error) = Run("generate", modelPath, "--prompt", "z");
        Assert.That(code, Is.EqualTo(1));
        Assert.That(error, Does.Contain("token id 99 is outside the model's vocabulary of 11"));
    }
}
