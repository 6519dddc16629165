using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>Training on and generating with ORT GenAI builder exports (see <see cref="GenAiBuilderExport"/>): the gradient graph replaces
/// GroupQueryAttention and SkipSimplifiedLayerNormalization by primitives; eval keeps ORT's kernels.</summary>
public class GenAiBuilderTests
{
    static readonly Architecture GenAi = Architectures.All.Single(a => a.Name == "genai-builder-gqa");

    /// <summary>Right-padded rows, as ortlora's batches are: the decomposed graph's loss equals the kernels' (the padded
    /// positions count for nothing), and the step graph has no contrib op left.</summary>
    [Test]
    public void RightPaddedBatchesScoreAlikeInBothGraphs()
    {
        using var model = GenAi.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        Assert.That(session.Graph.Gradients.Graph.Node.Where(n => n.Domain == "com.microsoft").Select(n => n.OpType), Is.Empty);
        Assert.That(session.Graph.Eval.Graph.Node.Count(n => n.OpType == "GroupQueryAttention"), Is.EqualTo(2), "eval keeps the kernel");
        var rng = new Random(8);
        const int batch = 3, sequence = 7;
        var ids = Enumerable.Range(0, batch * sequence).Select(_ => (long)rng.Next(1, (int)Architectures.Vocab)).ToArray();
        int[] lengths = [7, 5, 2];
        var mask = Enumerable.Range(0, batch * sequence).Select(i => i % sequence < lengths[i / sequence] ? 1L : 0L).ToArray();
        var labels = ids.Select((t, i) => mask[i] == 1 ? t : -100).ToArray();
        var padded = new Training.Engine.Batch(ids, mask, labels, batch, sequence);
        var (loss, _) = session.ComputeGradients(padded);
        Assert.That(session.EvalLoss(padded), Is.EqualTo(loss).Within(1e-5 * loss));
        // and the padding changes nothing for the rows' own tokens: row 1 alone, unpadded, scores the same tokens alike
        var row = new Training.Engine.Batch(ids.Skip(sequence).Take(5).ToArray(), Enumerable.Repeat(1L, 5).ToArray(), labels.Skip(sequence).Take(5).ToArray(), 1, 5);
        var rowOnly = new Training.Engine.Batch(ids, mask, Enumerable.Range(0, batch * sequence).Select(i => i / sequence == 1 ? labels[i] : -100).ToArray(), batch, sequence);
        Assert.That(session.EvalLoss(rowOnly), Is.EqualTo(session.EvalLoss(row)).Within(1e-5));
    }

    /// <summary>Generation on the builder's cache (GroupQueryAttention appending to past_key_values): decoding with the
    /// cache gives the logits of recomputing the whole sequence at every step.</summary>
    [Test]
    public void CachedDecodingMatchesRecomputing()
    {
        using var model = GenAi.Build();
        using var session = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
        using var lm = new Inference.CausalLmSession(session);
        Assert.That(lm.HasKvCache, Is.True);
        using var cached = lm.Start(useCache: true);
        using var full = lm.Start(useCache: false);
        int[] prompt = [3, 1, 4, 1, 5];
        var a = lm.Step(cached, prompt);
        var b = lm.Step(full, prompt);
        for (int step = 0; step < 8; step++)
        {
            Assert.That(Shared.MaxAbsDiff(a, b), Is.LessThan(1e-4f), $"step {step}");
            int next = Inference.Sampler.ArgMax(a);
            (a, b) = (lm.Step(cached, [next]), lm.Step(full, [next]));
        }
        Assert.That(cached.UsesCache, Is.True);
    }

    static float[] Logits(OnnxModel model) => OrtRun.Run(model, UnseenArchitectureTests.Feeds(GenAi), ["logits"])["logits"].Floats;

    /// <summary>PEFT adapters use Hugging Face's names: the export of a builder model writes self_attn.* for attn.* and
    /// the packed qkv_proj as q_proj, k_proj, v_proj (a performant adapter's A shared, B cut by rows); target_modules
    /// lists those names. An adapter with only q_proj and v_proj (PEFT's default targets) injects into the packed layer
    /// (k's part zero), computes what it should, and exports back to the same two modules.</summary>
    [TestCase("performant")]
    [TestCase("canonical")]
    public void AdaptersTravelUnderHuggingFaceNames(string variant)
    {
        using var model = GenAi.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["qkv_proj", "o_proj"], R = 2, LoraAlpha = 4, Variant = variant });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var exported = AdapterExporter.Export(model);
        var modules = exported.Modules().Select(m => m.Path).ToList();
        Assert.That(modules, Is.EquivalentTo(new[]
        {
            "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
            "model.layers.1.self_attn.o_proj",
        }), "layer 1's q, k, v are MatMuls of their own, not targeted by qkv_proj");
        Assert.That(exported.Config.TargetModules, Is.EquivalentTo(new[] { "q_proj", "k_proj", "v_proj", "o_proj" }));
        var k = exported.Modules().Single(m => m.Path.EndsWith("0.self_attn.k_proj"));
        Assert.That(k.B.Shape, Is.EqualTo(new long[] { GenAiBuilderExport.KvHeads * GenAiBuilderExport.HeadSize, 2 }));
        var adapted = Logits(model);

        using (var reloaded = GenAi.Build())
        {
            LoraInjector.Inject(reloaded, exported);
            Assert.That(Shared.MaxAbsDiff(Logits(reloaded), adapted), Is.LessThan(1e-5f), "re-injected");
        }

        if (variant == "canonical")
            foreach (var asFile in new[] { false, true })
                Assert.That(Shared.MaxAbsDiff(UnseenArchitectureTests.RuntimeAdapterLogits(GenAi, exported,
                    new LoraConfig { TargetModules = ["qkv_proj", "o_proj"], R = 2, LoraAlpha = 4, Variant = variant }, asFile), adapted),
                    Is.LessThan(1e-5f), asFile ? "an .onnx_adapter file" : "a PEFT directory, as a runtime adapter");

        // Without k_proj: the same as the model with k's rows of the update removed.
        foreach (var key in exported.Tensors.Keys.Where(key => key.Contains("layers.0.self_attn.k_proj")).ToList()) exported.Tensors.Remove(key);
        using var partial = GenAi.Build();
        var lora = LoraInjector.Inject(partial, exported);
        var packed = lora.Adapters.Where(a => a.Module == "model.layers.0.attn.qkv_proj").ToList();
        Assert.That(packed.Select(a => a.Part!.Index), Is.EqualTo(new[] { 0, 1, 2 }));
        var kB = partial.Graph.Initializer.Single(t => t.Name == packed[1].LoraB);
        Assert.That(partial.ReadFloats(kB), Has.All.EqualTo(0f), "k's part is zero");
        Assert.That(Shared.MaxAbsDiff(Logits(partial), adapted), Is.GreaterThan(1e-3f), "k's update is gone");
        var again = AdapterExporter.Export(partial);
        Assert.That(again.Modules().Select(m => m.Path), Has.None.Contains("k_proj").And.Some.EndsWith("0.self_attn.q_proj"));
        foreach (var (key, tensor) in again.Tensors) Assert.That(tensor.AsFloats(), Is.EqualTo(exported.Tensors[key].AsFloats()), key);
    }

    /// <summary>GroupQueryAttention's sliding window (local_window_size, as Mistral- and Phi-3-style builder models set it),
    /// softcap and smooth softmax, each against ORT's kernel: the decomposed graph's loss equals the kernels' (eval), and the gradients
    /// match central differences of that loss.</summary>
    [TestCase("local_window_size", 2L)]
    [TestCase("local_window_size", 4L)]
    [TestCase("softcap", 3L)]
    [TestCase("smooth_softmax", 1L)]
    public void SlidingWindowAndSoftcapMatchTheKernel(string attribute, long value)
    {
        using var model = GenAi.Build();
        foreach (var node in model.Graph.Node.Where(n => n.OpType == "GroupQueryAttention"))
        {
            node.Attribute.Remove(node.Attribute.Single(a => a.Name == "local_window_size"));
            node.Attribute.Add(attribute == "softcap" ? Attrs.Make("softcap", (float)value) : Attrs.Make(attribute, value));
        }
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0),
            Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL));
        var rng = new Random(2);
        var ids = Enumerable.Range(0, 2 * 9).Select(_ => (long)rng.Next(1, (int)Architectures.Vocab)).ToArray();
        var batch = new Training.Engine.Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 9);
        var (loss, grads) = session.ComputeGradients(batch);
        Assert.That(session.EvalLoss(batch), Is.EqualTo(loss).Within(1e-5 * loss), "decomposition and kernel agree");
        using var plain = GenAi.Build();
        LoraInjector.Inject(plain, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        LoraTestKit.RandomizeB(plain, std: 0.3f);
        using var full = new Training.Engine.TrainingSession(plain, new TrainingSessionOptions(new AdamWOptions()));
        Assert.That(Math.Abs(full.EvalLoss(batch) - loss), Is.GreaterThan(1e-4), $"{attribute} {value} changes the loss");
        var start = session.GetParameters();
        var (parameter, index, largest) = grads.SelectMany(kv => kv.Value.Select((v, i) => (kv.Key, i, v))).MaxBy(x => Math.Abs(x.v));
        double numeric = UnseenChecks.CentralDifference(session, start, batch, parameter, index, 1e-2);
        Assert.That(largest, Is.EqualTo(numeric).Within(3e-4 + 1e-2 * Math.Abs(numeric)), $"{parameter}[{index}]");
    }

    /// <summary>What the decomposition does not cover is one error each, naming the node.</summary>
    [Test]
    public void PositionIdsAreRefusedByName()
    {
        using var model = GenAi.Build();
        var gqa = model.Graph.Node.First(n => n.OpType == "GroupQueryAttention");
        while (gqa.Input.Count < 10) gqa.Input.Add("");
        gqa.Input[9] = "input_ids"; // int64 [batch, sequence], as position_ids are
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"] });
        var e = Assert.Throws<OrtLoraException>(() => TrainingGraph.Build(model).Dispose());
        Assert.That(e!.Message, Does.Contain("GroupQueryAttention node '/model/layers.0/attn/GroupQueryAttention': input 9"));
    }
}
