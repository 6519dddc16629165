using Microsoft.ML.OnnxRuntime;
using OrtLora.Graphs;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>GRPO's sampler: a group of completions decoded side by side in one batch per step draws what each would
/// alone, with and without the export's KV cache, and with the adapter it is given; several prompts' groups decoded
/// together, the shorter prompts left-padded, draw what each group draws alone.</summary>
public class GrpoSamplerTests
{
    static OnnxModel Injected(bool kvCache, bool positionIds) =>
        WithLora(LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: kvCache, WithPositionIds: positionIds)));

    static OnnxModel WithLora(OnnxModel model)
    {
        LoraInjector.Inject(model, new LoraConfig { R = 4, TargetModules = ["q_proj", "v_proj"] });
        return model;
    }

    /// <summary>A sampler over <paramref name="model"/> with B moved from zero, so that the adapter changes the logits.</summary>
    static PolicySampler MovedSampler(OnnxModel model, SessionOptions options)
    {
        var sampler = new PolicySampler(model, options);
        var parameters = model.Graph.Initializer.Where(t => ModuleNames.IsLoraA(t.Name) || ModuleNames.IsLoraB(t.Name))
            .ToDictionary(t => t.Name, t => model.ReadFloats(t).Select((v, i) => ModuleNames.IsLoraB(t.Name) ? 0.05f * MathF.Sin(i) : v).ToArray());
        sampler.SetParameters(parameters, model.Graph.Initializer.Where(t => parameters.ContainsKey(t.Name)).ToDictionary(t => t.Name, t => t.Dims.ToArray()));
        return sampler;
    }

    static List<GenerationOptions> Options(int rows, int stop, int firstSeed = 1000) => [.. Enumerable.Range(0, rows).Select(r => new GenerationOptions
    {
        MaxNewTokens = 12, Temperature = 1.0, TopK = 40, Seed = firstSeed + r, StopTokenIds = [stop], RepetitionPenalty = r % 2 == 0 ? 1.0 : 1.3,
    })];

    /// <summary>Prompts of 3, 7, 11 and again 7 tokens.</summary>
    static readonly int[][] Prompts = [[5, 17, 3], [8, 250, 99, 42, 7, 300, 12], [77, 3, 250, 11, 5, 17, 3, 99, 42, 8, 123], [400, 2, 31, 64, 9, 18, 200]];

    /// <summary>Completions scored in batches (right-padded to the longest row, split where the logits would exceed the
    /// budget) get each completion's log-probabilities and entropies scored alone, under the policy and the reference.</summary>
    [TestCase(false)]
    [TestCase(true)]
    public void BatchedScoresAreEachCompletionsScoresAlone(bool kvCache)
    {
        using var model = Injected(kvCache, positionIds: kvCache);
        using var options = OrtRun.DefaultOptions();
        using var sampler = MovedSampler(model, options);
        var items = Prompts.Select((p, i) => ((IReadOnlyList<int>)p, (IReadOnlyList<int>)[.. Enumerable.Range(0, 2 + 3 * i).Select(t => (t * 31 + i) % 400)])).ToList();
        const int vocab = 512;
        Assert.That(sampler.CompletionLogps([(Prompts[0], [1])], 1.0, false)[0].Logps, Has.Length.EqualTo(1));
        foreach (bool reference in new[] { false, true })
        {
            var alone = items.Select(it => sampler.CompletionLogps(it.Item1, it.Item2, 0.7, reference)).ToList();
            // a budget of two rows of the longest (11 + 11 tokens): batches of two, then of one
            foreach (long budget in new[] { PolicySampler.LogitsPerBatch, 2L * 22 * vocab })
            {
                var batched = sampler.CompletionLogps(items, 0.7, reference, budget);
                for (int i = 0; i < items.Count; i++)
                {
                    Assert.That(batched[i].Logps, Is.EqualTo(alone[i].Logps).Within(1e-5), $"row {i}, reference {reference}");
                    Assert.That(batched[i].Entropies, Is.EqualTo(alone[i].Entropies).Within(1e-5));
                }
            }
        }
        var policy = sampler.CompletionLogps(items, 0.7, reference: false);
        var start = sampler.CompletionLogps(items, 0.7, reference: true);
        Assert.That(policy.Zip(start).Max(p => p.First.Logps.Zip(p.Second.Logps).Max(x => Math.Abs(x.First - x.Second))), Is.GreaterThan(1e-3),
            "the moved adapter changes the policy's scores");
    }

    [TestCase(false)]
    [TestCase(true)]
    public void AGroupDrawsWhatEachCompletionDrawsAlone(bool kvCache)
    {
        using var model = Injected(kvCache, positionIds: kvCache);
        using var options = OrtRun.DefaultOptions();
        using var sampler = MovedSampler(model, options);
        int[] prompt = [5, 17, 3, 99, 42];
        // a stop token some rows draw: the most likely first token under the moved adapter
        var first = sampler.SampleGroup(prompt, [new GenerationOptions { MaxNewTokens = 1, Temperature = 0 }])[0].Ids[0];
        var group = sampler.SampleGroup(prompt, Options(6, first));
        var alone = Options(6, first).Select(o => sampler.Sample(prompt, o)).ToList();
        Assert.That(group.Select(g => g.Ids), Is.EqualTo(alone.Select(a => a.Ids)));
        Assert.That(group.Select(g => g.Truncated), Is.EqualTo(alone.Select(a => a.Truncated)));
        Assert.That(group.Count(g => !g.Truncated), Is.GreaterThan(0), "some rows stop early");
        Assert.That(group.Count(g => g.Truncated), Is.GreaterThan(0), "some rows run to the limit");
        Assert.That(group.Where(g => g.Truncated).Select(g => g.Ids.Count), Is.All.EqualTo(12));
    }

    /// <summary>Four prompts (3, 7, 11 and 7 tokens), groups of 4 with their own seeds and stop tokens: sampled together
    /// (at most 64 rows a batch, then 8) each group gets the ids and truncation flags it gets alone. Through the KV cache
    /// with position_ids the shorter prompts are left-padded to 11 tokens (16 rows in one batch); without position_ids
    /// only the two 7-token prompts share a batch; without a cache (graphs/tiny's form) each group is decoded alone.</summary>
    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(true, true)]
    public void GroupsDecodedTogetherDrawWhatEachGroupDrawsAlone(bool kvCache, bool positionIds)
    {
        using var model = Injected(kvCache, positionIds);
        using var options = OrtRun.DefaultOptions();
        using var sampler = MovedSampler(model, options);
        // each group's stop token: its prompt's most likely first token, which some rows draw
        var groups = Prompts.Select((prompt, g) => ((IReadOnlyList<int>)prompt, (IReadOnlyList<GenerationOptions>)Options(4,
            sampler.SampleGroup(prompt, [new GenerationOptions { MaxNewTokens = 1, Temperature = 0 }])[0].Ids[0], firstSeed: 1000 + 10 * g))).ToList();
        var alone = groups.Select(g => sampler.SampleGroup(g.Item1, g.Item2)).ToList();
        foreach (int maxRows in new[] { 64, 8 })
        {
            var together = sampler.SampleGroups(groups, maxRows);
            Assert.That(together, Has.Count.EqualTo(4));
            for (int g = 0; g < 4; g++)
            {
                Assert.That(together[g].Select(c => c.Ids), Is.EqualTo(alone[g].Select(c => c.Ids)), $"group {g}, batches of {maxRows} rows");
                Assert.That(together[g].Select(c => c.Truncated), Is.EqualTo(alone[g].Select(c => c.Truncated)), $"group {g}, batches of {maxRows} rows");
            }
        }
        var all = alone.SelectMany(g => g).ToList();
        Assert.That(all.Count(c => !c.Truncated), Is.GreaterThan(0), "some rows stop early");
        Assert.That(all.Count(c => c.Truncated), Is.GreaterThan(0), "some rows run to the limit");
    }

    /// <summary>The logits themselves: prompts of 3, 7 and 11 tokens left-padded by 8, 4 and 0 in one batch give each
    /// row's logits as the row alone gives them; the batch's rows then repeated 2, 1 and 2 times (cache copied) and fed
    /// three more tokens, different for each copy, still do; through the KV cache and without it. On ONNX Runtime's CPU
    /// kernels they were equal to the bit (a masked position adds an exact zero); pads counted as positions instead moved
    /// them by up to 3.6e-6 (rotary angles rounded differently), and unmasked pads by 3.75.</summary>
    [TestCase(false)]
    [TestCase(true)]
    public void PaddedAndRepeatedRowsGiveTheLogitsOfTheRowAlone(bool kvCache)
    {
        using var model = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: kvCache, WithPositionIds: true));
        using var options = OrtRun.DefaultOptions();
        using var lm = new CausalLmSession(new InferenceSession(model.ToBytes(), options), ownsSession: true);
        Assert.That(lm.CanLeftPad, Is.True);
        int[] source = [0, 0, 1, 2, 2];
        int[][] next = [[10, 20, 30], [11, 21, 31], [400, 401, 402], [7, 7, 7], [8, 9, 10]];
        using var prompted = lm.StartGroup(3, useCache: true, leftPadding: [8, 4, 0]);
        var singles = source.Select(_ => lm.Start(useCache: true)).ToArray();
        try
        {
            Assert.That(prompted.UsesCache, Is.EqualTo(kvCache));
            var together = lm.StepGroup(prompted, Prompts.Take(3).ToArray());
            var alone = source.Select((r, i) => lm.Step(singles[i], Prompts[r])).ToArray();
            for (int r = 0; r < 3; r++) Assert.That(Shared.MaxAbsDiff(together[r], alone[Array.IndexOf(source, r)]), Is.LessThan(1e-5f), $"prompt row {r}");
            using var repeated = lm.RepeatRows(prompted, [2, 1, 2]);
            for (int step = 0; step < 3; step++)
            {
                together = lm.StepGroup(repeated, [.. next.Select(n => (IReadOnlyList<int>)[n[step]])]);
                for (int i = 0; i < source.Length; i++)
                    Assert.That(Shared.MaxAbsDiff(together[i], lm.Step(singles[i], [next[i][step]])), Is.LessThan(1e-5f), $"row {i}, step {step}");
            }
        }
        finally { foreach (var s in singles) s.Dispose(); }
    }

    /// <summary>A model without an attention_mask input (graphs/tiny's shape, the mask made inside from input_ids) cannot
    /// be padded: a padded start is refused, and prompts of 3, 7 and 11 tokens sampled together get what each group gets
    /// alone.</summary>
    [Test]
    public void WithoutAnAttentionMaskPaddingIsRefusedAndGroupsStillSample()
    {
        var model = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions());
        var graph = model.Graph;
        graph.Input.Remove(graph.Input.Single(i => i.Name == "attention_mask"));
        var editor = new GraphEditor(graph);
        editor.Add("ConstantOfShape", [editor.Add("Shape", ["input_ids"])], outputs: ["attention_mask"],
            attributes: ("value", Tensors.FromInt64("", [1], [1])));
        editor.TopologicalSort();
        using var injected = WithLora(model);
        using var options = OrtRun.DefaultOptions();
        using (var lm = new CausalLmSession(new InferenceSession(injected.ToBytes(), options), ownsSession: true))
        {
            Assert.That(lm.CanLeftPad, Is.False);
            Assert.Throws<OrtLoraException>(() => lm.StartGroup(2, leftPadding: [0, 4]));
        }
        AssertThreeGroupsDrawAsAlone(injected, options);
    }

    /// <summary>The first three prompts' groups of 4 sampled together get, group by group, what each gets alone: the same
    /// ids (real tokens of the tiny vocabulary) and truncation flags.</summary>
    static void AssertThreeGroupsDrawAsAlone(OnnxModel injected, SessionOptions options)
    {
        using var sampler = MovedSampler(injected, options);
        var groups = Prompts.Take(3).Select((prompt, g) => ((IReadOnlyList<int>)prompt, (IReadOnlyList<GenerationOptions>)Options(4, stop: 1, firstSeed: 1000 + 10 * g))).ToList();
        var together = sampler.SampleGroups(groups);
        for (int g = 0; g < 3; g++)
        {
            var alone = sampler.SampleGroup(groups[g].Item1, groups[g].Item2);
            Assert.That(together[g].Select(c => c.Ids), Is.EqualTo(alone.Select(c => c.Ids)), $"group {g}");
            Assert.That(together[g].Select(c => c.Truncated), Is.EqualTo(alone.Select(c => c.Truncated)), $"group {g}");
            Assert.That(together[g].SelectMany(c => c.Ids), Is.All.InRange(0, 511), "real tokens, not a NaN draw's");
        }
    }

    /// <summary>An export whose attention mask adds −inf (here LlamaGraph's lowest float replaced by it): a left pad's own
    /// query has nothing to attend to, its softmax is NaN, and the NaN reaches the real rows (0·NaN through the pad's
    /// values). The sampler sees the padded prompt step's non-finite logits and decodes those groups one at a time,
    /// unpadded, from then on: each group still gets what it gets alone.</summary>
    [Test]
    public void AMaskOfMinusInfinityFallsBackToGroupsAlone()
    {
        var model = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: true, WithPositionIds: true));
        static float Value(global::Onnx.TensorProto t) => Tensors.BytesToFloats(Tensors.InlineBytes(t), t.DataType)[0];
        var lowest = model.Graph.Node.Where(n => n.OpType == "Constant").Select(n => n.Attribute.Single(a => a.Name == "value").T)
            .Single(t => t.DataType == (int)global::Onnx.TensorProto.Types.DataType.Float && t.Dims.Count == 0 && Value(t) == float.MinValue);
        Tensors.SetRaw(lowest, Tensors.FloatsToBytes([float.NegativeInfinity], lowest.DataType));
        using var injected = WithLora(model);
        using var options = OrtRun.DefaultOptions();
        using (var lm = new CausalLmSession(new InferenceSession(injected.ToBytes(), options), ownsSession: true))
        using (var padded = lm.StartGroup(2, leftPadding: [4, 0]))
        {
            var logits = lm.StepGroup(padded, [Prompts[0], Prompts[1]]);
            Assert.That(logits.Any(row => row.Any(float.IsNaN)), "padding this export does give NaN");
        }
        AssertThreeGroupsDrawAsAlone(injected, options);
    }
}
