using Microsoft.ML.OnnxRuntime;
using OrtLora.Cli;
using OrtLora.Deploy;
using OrtLora.Graphs;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Serving a trained adapter at run time on graphs/tiny: a model with trained B baked in and the fresh
/// injected model (B zero) with the trained values as an ORT adapter must generate the same tokens.</summary>
public class DeployCliTests
{
    const string Prompt = "### Instruction:\nName a color.\n\n### Response:\n";

    /// <summary>(trained, fresh) injected tiny models in one directory with the tokenizer files.</summary>
    static (string Trained, string Fresh) TinyPair()
    {
        var dir = Shared.TempDir();
        foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
            File.Copy(Path.Combine(Shared.RepoRoot, "graphs", "tiny", f), Path.Combine(dir, f));
        var config = new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"], Seed = 1 };
        using var fresh = LlamaGraph.Build(LlamaShape.Tiny, 42);
        LoraInjector.Inject(fresh, config);
        fresh.Save(Path.Combine(dir, "fresh.onnx"));
        // "Training": B gets values large enough to change the greedy continuation.
        var rng = new Random(9);
        foreach (var b in fresh.Graph.Initializer.Where(t => t.Name.EndsWith(".lora_B.weight")))
            Tensors.SetRaw(b, Tensors.FloatsToBytes(Enumerable.Range(0, (int)Tensors.ElementCount(b.Dims)).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), b.DataType));
        fresh.Save(Path.Combine(dir, "trained.onnx"));
        return (Path.Combine(dir, "trained.onnx"), Path.Combine(dir, "fresh.onnx"));
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
    public void RuntimeAdapterGeneratesWhatTheBakedModelGenerates()
    {
        var (trained, fresh) = TinyPair();
        var adapterFile = Path.Combine(Path.GetDirectoryName(trained)!, "trained.onnx_adapter");
        var (code, _, error) = Run("export-adapter", trained, "--format", "onnx-adapter", "-o", adapterFile);
        Assert.That(code, Is.EqualTo(0), error);
        Assert.That(OnnxAdapterFile.Read(adapterFile), Has.Count.EqualTo(4 * 3 * 2), "4 layers × 3 modules × (A, B)");

        var tokenizer = LoadedTokenizer.Load(Path.GetDirectoryName(trained)!);
        var prompt = tokenizer.Encode(Prompt);
        var options = new GenerationOptions { MaxNewTokens = 16 };
        using var baked = new Generator(trained);
        var expected = baked.GenerateIds(prompt, options).ToList();
        using var sessionOptions = OrtRun.DefaultOptions();
        using var session = RuntimeAdapters.OpenOverridable(fresh, sessionOptions, out var scale);
        Assert.That(scale, Is.EqualTo(2.0));
        using var adapter = RuntimeAdapters.Load(adapterFile, session, scale);
        using var generator = new Generator(session);
        Assert.That(generator.GenerateIds(prompt, options, adapter).ToList(), Is.EqualTo(expected), "fresh model + runtime adapter");
        Assert.That(generator.GenerateIds(prompt, options).ToList(), Is.Not.EqualTo(expected), "the adapter changes the continuation");

        var (c1, bakedText, e1) = Run("generate", trained, "--prompt", Prompt, "--max-new-tokens", "16");
        var (c2, adapterText, e2) = Run("generate", fresh, "--prompt", Prompt, "--max-new-tokens", "16", "--adapter", adapterFile);
        Assert.That((c1, c2), Is.EqualTo((0, 0)), e1 + e2);
        Assert.That(adapterText, Is.EqualTo(bakedText));
    }

    [Test]
    public void PeftDirectoryWorksAsARuntimeAdapterToo()
    {
        var (trained, fresh) = TinyPair();
        var peftDir = Path.Combine(Path.GetDirectoryName(trained)!, "peft");
        var (code, _, error) = Run("export-adapter", trained, "-o", peftDir);
        Assert.That(code, Is.EqualTo(0), error);
        var (c1, bakedText, e1) = Run("generate", trained, "--prompt", Prompt, "--max-new-tokens", "12");
        var (c2, adapterText, e2) = Run("generate", fresh, "--prompt", Prompt, "--max-new-tokens", "12", "--adapter", peftDir);
        Assert.That((c1, c2), Is.EqualTo((0, 0)), e1 + e2);
        Assert.That(adapterText, Is.EqualTo(bakedText));
        var (c3, _, e3) = Run("adapters", "convert", peftDir, "-o", Path.Combine(peftDir, "..", "converted.onnx_adapter"));
        Assert.That(c3, Is.EqualTo(0), e3);
        Assert.That(OnnxAdapterFile.Read(Path.Combine(peftDir, "..", "converted.onnx_adapter")).Keys,
            Is.EquivalentTo(SafeTensors.Read(Path.Combine(peftDir, "adapter_model.safetensors")).Keys));
    }
}
