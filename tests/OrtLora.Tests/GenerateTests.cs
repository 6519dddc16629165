using Microsoft.ML.OnnxRuntime;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

public class GenerateTests
{
    static InferenceSession SessionOf(OnnxModel model) => new(model.ToBytes(), OrtRun.DefaultOptions());

    [Test]
    public void FirstStepLogitsMatchPeftBaseLogits()
    {
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        var ids = reference["input_ids"].AsInt64s();
        var prompt = ids.Take(24).Select(i => (int)i).ToArray(); // row 0: no padding
        var expected = reference["logits_base"].AsFloats().AsSpan(23 * 320, 320).ToArray();
        using var model = CausalLmSession.Load(Shared.Peft("llama", "model.dynamo.onnx"));
        Assert.That(model.HasKvCache, Is.False);
        using var state = model.Start();
        Assert.That(Shared.MaxAbsDiff(model.Step(state, prompt), expected), Is.LessThan(1e-4f));
    }

    [Test]
    public void GreedyContinuationEqualsArgmaxOfFullRecomputeEachStep()
    {
        var path = Shared.Peft("llama", "model.dynamo.onnx");
        int[] prompt = [1, 17, 99, 250, 3, 42];
        using var generator = new Generator(path);
        var generated = generator.GenerateIds(prompt, new GenerationOptions { MaxNewTokens = 6 }).ToList();
        Assert.That(generated, Has.Count.EqualTo(6));

        // Peer: the plain one-shot runner on the whole sequence, argmax of the last position, step by step.
        using var model = OnnxModel.Load(path);
        var sequence = prompt.Select(i => (long)i).ToList();
        foreach (var token in generated)
        {
            var feeds = new Dictionary<string, HostTensor>
            {
                ["input_ids"] = HostTensor.Of(sequence.ToArray(), 1, sequence.Count),
                ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, sequence.Count).ToArray(), 1, sequence.Count),
            };
            var logits = OrtRun.Run(model, feeds)["logits"].Floats;
            var last = logits.AsSpan(logits.Length - 320);
            Assert.That(token, Is.EqualTo(Sampler.ArgMax(last)), $"token {sequence.Count - prompt.Length}");
            sequence.Add(token);
        }
    }

    [TestCase(false)]
    [TestCase(true)]
    public void CachedAndRecomputedDecodingAgreeStepByStep(bool int32Ids)
    {
        using var model = GenerateToyModels.CachedModel(int32Ids);
        using var session = SessionOf(model);
        using var lm = new CausalLmSession(session);
        Assert.That(lm.HasKvCache, Is.True);
        Assert.That(lm.CacheNames, Is.EqualTo(new[] { ("past_key_values.0.key", "present.0.key"), ("past_key_values.0.value", "present.0.value") }));
        using var cached = lm.Start(useCache: true);
        using var full = lm.Start(useCache: false);
        int[] prompt = [3, 1, 4];
        var a = lm.Step(cached, prompt);
        var b = lm.Step(full, prompt);
        for (int step = 0; step < 8; step++)
        {
            Assert.That(Shared.MaxAbsDiff(a, b), Is.LessThan(1e-5f), $"step {step}");
            int next = Sampler.ArgMax(a);
            a = lm.Step(cached, [next]);
            b = lm.Step(full, [next]);
        }
        Assert.That(cached.UsesCache && !full.UsesCache, Is.True);
    }

    [Test]
    public void GeneratorGivesTheSameGreedyTokensWithAndWithoutCache()
    {
        using var model = GenerateToyModels.CachedModel();
        using var session = SessionOf(model);
        using var generator = new Generator(session);
        int[] prompt = [2, 7];
        var withCache = generator.GenerateIds(prompt, new GenerationOptions { MaxNewTokens = 12 }).ToList();
        var without = generator.GenerateIds(prompt, new GenerationOptions { MaxNewTokens = 12, UseKvCache = false }).ToList();
        Assert.That(withCache, Is.EqualTo(without));
        Assert.That(withCache, Has.Count.EqualTo(12));
    }

    [Test]
    public void StopsRightAfterAStopToken()
    {
        using var model = GenerateToyModels.CachedModel();
        using var session = SessionOf(model);
        using var generator = new Generator(session);
        var free = generator.GenerateIds([2, 7], new GenerationOptions { MaxNewTokens = 12 }).ToList();
        var stopAt = free[3];
        var stopped = generator.GenerateIds([2, 7], new GenerationOptions { MaxNewTokens = 12, StopTokenIds = [stopAt] }).ToList();
        Assert.That(stopped, Is.EqualTo(free.Take(free.IndexOf(stopAt) + 1)));
    }
}
