using System.CommandLine;
using OrtLora.Cli;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Helpers shared by the LoRA tests: the CLI run in-process, logits of a model on the fixture batch,
/// adapters given random B so that merge and export tests can fail.</summary>
public static class LoraTestKit
{
    public static readonly object[] Models =
    [
        new object[] { "llama", "model.dynamo.onnx" },
        new object[] { "llama", "model.torchscript.onnx" },
        new object[] { "gpt2", "model.dynamo.onnx" },
        new object[] { "gpt2", "model.torchscript.onnx" },
    ];

    public sealed record CliResult(int ExitCode, string Out, string Error);

    /// <summary>Runs <c>ortlora ARGS</c> through the CLI's own entry point, capturing stdout and stderr.</summary>
    public static CliResult Ortlora(params string[] args)
    {
        var root = new RootCommand("ortlora");
        foreach (var command in Commands.All()) root.Subcommands.Add(command);
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try { return new CliResult(CliRunner.Invoke(root, args), stdout.ToString(), stderr.ToString()); }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }

    /// <summary>As <see cref="Ortlora"/>, with <paramref name="input"/> as standard input.</summary>
    public static CliResult OrtloraWithInput(string input, params string[] args)
    {
        var oldIn = Console.In;
        Console.SetIn(new StringReader(input));
        try { return Ortlora(args); }
        finally { Console.SetIn(oldIn); }
    }

    public static CliResult OrtloraOk(params string[] args)
    {
        var result = Ortlora(args);
        Assert.That(result.ExitCode, Is.EqualTo(0), $"ortlora {string.Join(' ', args)} failed: {result.Error}");
        return result;
    }

    /// <summary>Runs the command <paramref name="args"/> makes for an output folder in two folders; in the second, deletes
    /// the adapter and <paramref name="lastCheckpoint"/> and resumes from the checkpoint before it. Asserts the resumed run
    /// ends with the straight run's adapter byte for byte; returns both folders.</summary>
    public static (string Straight, string Resumed) AssertResumedRunEndsLikeStraight(Func<string, string[]> args, string lastCheckpoint)
    {
        var straight = Shared.TempDir();
        var resumed = Shared.TempDir();
        OrtloraOk(args(straight));
        OrtloraOk(args(resumed));
        File.Delete(Path.Combine(resumed, "adapter_model.safetensors"));
        Directory.Delete(Path.Combine(resumed, lastCheckpoint), recursive: true);
        OrtloraOk([.. args(resumed), "--resume-from-checkpoint"]);
        Assert.That(File.ReadAllBytes(Path.Combine(resumed, "adapter_model.safetensors")),
            Is.EqualTo(File.ReadAllBytes(Path.Combine(straight, "adapter_model.safetensors"))));
        return (straight, resumed);
    }

    /// <summary>A file of the embedded default model, graphs/tiny.</summary>
    public static string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    /// <summary>The eval_loss entries a `train` run logged to DIR/metrics.jsonl, in order.</summary>
    public static double[] EvalLosses(string dir) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!)
        .Where(m => m["eval_loss"] is not null).Select(m => m["eval_loss"]!.GetValue<double>()).ToArray();

    public static Dictionary<string, SafeTensor> Reference(string arch) => SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));

    public static float[] Logits(OnnxModel model, Dictionary<string, SafeTensor> reference) =>
        OrtRun.Run(model, Shared.Feeds(reference))["logits"].Floats;

    public static float[] Logits(string path, Dictionary<string, SafeTensor> reference)
    {
        using var model = OnnxModel.Load(path);
        return Logits(model, reference);
    }

    /// <summary>Gives every lora_B random values (B starts at zero, which would make merge and export trivially right).</summary>
    public static void RandomizeB(OnnxModel model, int seed = 7, float std = 0.5f)
    {
        var rng = new Random(seed);
        foreach (var adapter in LoraModel.Read(model)!.Adapters)
        {
            var t = model.Graph.Initializer.Single(i => i.Name == adapter.LoraB);
            var values = new float[Tensors.ElementCount(t.Dims)];
            for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() * 2 - 1) * std;
            Tensors.SetRaw(t, Tensors.FloatsToBytes(values, t.DataType));
        }
    }

    /// <summary>Two rows of 24 random tokens for graphs/' tiny LLaMA shape, fully attended.</summary>
    public static Dictionary<string, HostTensor> TinyFeeds()
    {
        var rng = new Random(4);
        var ids = Enumerable.Range(0, 2 * 24).Select(_ => (long)rng.Next(Graphs.LlamaShape.Tiny.VocabSize)).ToArray();
        return new() { ["input_ids"] = HostTensor.Of(ids, 2, 24), ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, ids.Length).ToArray(), 2, 24) };
    }

    public static SortedDictionary<string, int> Histogram(string path)
    {
        using var model = OnnxModel.Load(path);
        return GraphEditor.OpHistogram(model.Graph);
    }
}
