using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Graphs;
using OrtLora.Inference;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Generation on graphs/tiny (the committed LLaMA-style model, no cache) and the same weights built with a
/// KV cache: the cache must not change a single greedy token.</summary>
public class GenerateTinyTests
{
    static string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    static InferenceSession CachedTiny() =>
        new(LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: true, WithPositionIds: true)).ToBytes(), OrtRun.DefaultOptions());

    [Test]
    public void CachedTinyAgreesWithCommittedTinyStepByStepAndTokenForToken()
    {
        using var plain = new Generator(Tiny("model.onnx"));
        using var cachedSession = CachedTiny();
        using var cached = new Generator(cachedSession);
        Assert.That((plain.HasKvCache, cached.HasKvCache), Is.EqualTo((false, true)));
        var tokenizer = LoadedTokenizer.Load(Tiny(""));
        var prompt = tokenizer.Encode("### Instruction:\nName a color.\n\n### Response:\n");

        // Logits per step: cache path vs the committed (cache-free) model recomputing everything.
        using var a = cached.Model.Start(useCache: true);
        using var b = plain.Model.Start(useCache: false);
        var la = cached.Model.Step(a, prompt);
        var lb = plain.Model.Step(b, prompt);
        for (int step = 0; step < 12; step++)
        {
            Assert.That(Shared.MaxAbsDiff(la, lb), Is.LessThan(1e-4f), $"step {step}");
            int next = Sampler.ArgMax(lb);
            la = cached.Model.Step(a, [next]);
            lb = plain.Model.Step(b, [next]);
        }

        var options = new GenerationOptions { MaxNewTokens = 24 };
        var withCache = cached.GenerateIds(prompt, options).ToList();
        Assert.That(withCache, Is.EqualTo(plain.GenerateIds(prompt, options).ToList()), "committed model, recompute");
        Assert.That(withCache, Is.EqualTo(cached.GenerateIds(prompt, options with { UseKvCache = false }).ToList()), "cached model, recompute");
        var text = string.Concat(cached.GenerateText(tokenizer, "### Instruction:\nName a color.\n\n### Response:\n", options));
        Assert.That(text, Is.EqualTo(string.Concat(plain.GenerateText(tokenizer, "### Instruction:\nName a color.\n\n### Response:\n", options))));
    }

    /// <summary>What `generate --ep-library` loads (every Slice as Gathers, Size as a Shape: <see cref="PluginRewrites"/>)
    /// gives the logits of the model as it is, step by step through the prompt and the KV cache; the committed model has
    /// Slices to rewrite.</summary>
    [Test]
    public void GenerationThroughThePluginRewritesGivesTheSameLogits()
    {
        using var cachedModel = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: true, WithPositionIds: true));
        using var committed = OnnxModel.Load(Tiny("model.onnx"));
        Assert.That(committed.Graph.Node.Count(n => n.OpType == "Slice"), Is.GreaterThan(0), "the committed model has Slices");
        var prompt = LoadedTokenizer.Load(Tiny("")).Encode("### Instruction:\nName a color.\n\n### Response:\n");
        foreach (var (name, model) in new[] { ("committed", committed), ("cached", cachedModel) })
        {
            using var plainSession = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
            using var rewrittenSession = PluginRewrites.Load(model, OrtRun.DefaultOptions());
            using var plain = new Generator(plainSession);
            using var rewritten = new Generator(rewrittenSession);
            using var a = plain.Model.Start();
            using var b = rewritten.Model.Start();
            var (la, lb) = (plain.Model.Step(a, prompt), rewritten.Model.Step(b, prompt));
            for (int step = 0; step < 8; step++)
            {
                Assert.That(Shared.MaxAbsDiff(la, lb), Is.LessThan(1e-5f), $"{name}, step {step}");
                int next = Sampler.ArgMax(la);
                (la, lb) = (plain.Model.Step(a, [next]), rewritten.Model.Step(b, [next]));
            }
        }
    }

    [Test]
    public void GenAiDimensionsOfTinyMatchItsConfigJson()
    {
        using var cached = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: true, WithPositionIds: true));
        var shape = LlamaShape.Tiny;
        foreach (var model in new[] { cached, OnnxModel.Load(Tiny("model.onnx")) })
        {
            var dims = ModelDimensions.Derive(model, Tiny("config.json"));
            Assert.That(dims, Is.EqualTo(new ModelDimensions("llama", shape.VocabSize, shape.HiddenSize, shape.NumHiddenLayers,
                shape.NumAttentionHeads, shape.NumKeyValueHeads, shape.HeadDim, 512)));
        }
    }
}
