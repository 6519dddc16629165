using Microsoft.ML.OnnxRuntime;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>The project's own LLaMA builder and the committed tiny model: it computes what Hugging Face's
/// LlamaForCausalLM computes, masks padding and the future, and its KV-cache variant agrees with full recompute.</summary>
public class GraphsTests
{
    static string TinyPath => Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx");

    static InferenceSession Session(OnnxModel model) => new(model.ToBytes(), OrtRun.DefaultOptions());

    static float[] Logits(InferenceSession session, long[][] rows, long[][] masks)
    {
        int batch = rows.Length, seq = rows[0].Length;
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(rows.SelectMany(r => r).ToArray(), batch, seq),
            ["attention_mask"] = HostTensor.Of(masks.SelectMany(r => r).ToArray(), batch, seq),
        };
        return OrtRun.Run(session, feeds, ["logits"])["logits"].Floats;
    }

    static long[] Tokens(int count, int seed, int vocab) =>
        Enumerable.Range(0, count).Select(i => (long)((i * 7919 + seed * 104729 + 13) % vocab)).ToArray();

    static long[] Ones(int n) => Enumerable.Repeat(1L, n).ToArray();

    [Test]
    public void BuilderReproducesHuggingFaceLlamaLogitsWithFixtureWeights()
    {
        // The PEFT fixture's llama is a real LlamaForCausalLM exported by PyTorch (4 heads / 2 kv heads): given its
        // weights, our graph must compute its logits, the right-padded row included.
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        using var fixture = OnnxModel.Load(Shared.Peft("llama", "model.torchscript.onnx"));
        var weights = FixtureWeightsByHuggingFaceName(fixture);
        long[] embed = weights["model.embed_tokens.weight"].Dims, gate = weights["model.layers.0.mlp.gate_proj.weight"].Dims;
        int hidden = (int)embed[1], heads = 4, headDim = hidden / heads;
        var shape = new LlamaShape("fixture", hidden,
            NumHiddenLayers: weights.Keys.Count(k => k.EndsWith("input_layernorm.weight")),
            NumAttentionHeads: heads, NumKeyValueHeads: (int)weights["model.layers.0.self_attn.k_proj.weight"].Dims[0] / headDim,
            IntermediateSize: (int)gate[0], VocabSize: (int)embed[0], TieWordEmbeddings: false, RmsNormEps: 1e-6f);
        using var ours = LlamaGraph.Build(shape, seed: 1);
        foreach (var t in ours.Graph.Initializer)
        {
            Assert.That(t.Dims, Is.EqualTo(weights[t.Name].Dims), t.Name);
            Tensors.SetRaw(t, Tensors.FloatsToBytes(weights[t.Name].Values, t.DataType));
        }
        var logits = OrtRun.Run(ours, Shared.Feeds(reference))["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(logits, reference["logits_base"].AsFloats()), Is.LessThan(1e-4f));
    }

    /// <summary>The TorchScript export's weights under Hugging Face's names, linear weights back to [out, in]: named
    /// initializers lose the <c>model_.</c> prefix; norm weights are found by their Mul node; a pre-transposed <c>onnx::MatMul_N</c> takes its module path from
    /// the MatMul node's name (<c>/model_/model/layers.0/self_attn/q_proj/MatMul</c>).</summary>
    static Dictionary<string, (long[] Dims, float[] Values)> FixtureWeightsByHuggingFaceName(OnnxModel fixture)
    {
        var result = new Dictionary<string, (long[], float[])>();
        foreach (var t in fixture.Graph.Initializer.Where(t => t.Name.StartsWith("model_.")))
            result[t.Name["model_.".Length..]] = (t.Dims.ToArray(), fixture.ReadFloats(t));
        var editor = new GraphEditor(fixture.Graph);
        // The exporter shares one initializer (through Identity nodes) among equal norm weights; the Mul node names the module.
        foreach (var node in fixture.Graph.Node.Where(n => n.OpType == "Mul" && n.Name.StartsWith("/model_/") && n.Name.Contains("norm/")))
            if (Resolve(editor, node.Input[0]) is { } norm)
                result[node.Name["/model_/".Length..node.Name.LastIndexOf('/')].Replace('/', '.') + ".weight"] = (norm.Dims.ToArray(), fixture.ReadFloats(norm));
        foreach (var node in fixture.Graph.Node.Where(n => n.OpType == "MatMul" && n.Name.StartsWith("/model_/")))
        {
            if (Resolve(editor, node.Input[1]) is not { } w) continue;
            var module = node.Name["/model_/".Length..^"/MatMul".Length].Replace('/', '.');
            int rows = (int)w.Dims[0], cols = (int)w.Dims[1];
            var values = fixture.ReadFloats(w);
            var transposed = new float[values.Length];
            for (int r = 0; r < rows; r++) for (int c = 0; c < cols; c++) transposed[c * rows + r] = values[r * cols + c];
            result[module + ".weight"] = ([cols, rows], transposed);
        }
        return result;
    }

    /// <summary>The initializer behind a value, looking through the Identity nodes the exporter adds for shared weights.</summary>
    static global::Onnx.TensorProto? Resolve(GraphEditor editor, string value) =>
        editor.Initializer(value) ?? (editor.Producer(value) is { OpType: "Identity" } identity ? Resolve(editor, identity.Input[0]) : null);

    static double Rms(float[] values) => Math.Sqrt(values.Average(v => (double)v * v));

    [Test]
    public void TinyModelRunsAndHasTheDeclaredShape()
    {
        using var model = OnnxModel.Load(TinyPath);
        var shape = LlamaShape.Tiny;
        Assert.That(model.Opset(), Is.EqualTo(18));
        Assert.That(model.Graph.Input.Select(i => i.Name), Is.EqualTo(new[] { "input_ids", "attention_mask" }));
        using var session = Session(model);
        var logits = Logits(session, [Tokens(9, 1, shape.VocabSize), Tokens(9, 2, shape.VocabSize)], [Ones(9), Ones(9)]);
        Assert.That(logits, Has.Length.EqualTo(2 * 9 * shape.VocabSize));
        Assert.That(logits.All(float.IsFinite), Is.True);
        Assert.That(logits.Max() - logits.Min(), Is.GreaterThan(1e-3f), "random weights: logits differ");
    }

    [Test]
    public void ParametersAreNamedAndLaidOutLikeADynamoExport()
    {
        using var model = OnnxModel.Load(TinyPath);
        var editor = new GraphEditor(model.Graph);
        var shape = LlamaShape.Tiny;
        var projections = model.Graph.Initializer.Where(t => t.Name.EndsWith("_proj.weight")).ToList();
        Assert.That(projections, Has.Count.EqualTo(7 * shape.NumHiddenLayers));
        foreach (var w in projections)
        {
            var transpose = editor.Consumers(w.Name).Single();
            Assert.That(transpose.OpType, Is.EqualTo("Transpose"), w.Name);
            Assert.That(editor.Consumers(transpose.Output[0]).Single().OpType, Is.EqualTo("MatMul"), w.Name);
        }
        var q = editor.Initializer("model.layers.0.self_attn.q_proj.weight")!;
        var k = editor.Initializer("model.layers.0.self_attn.k_proj.weight")!;
        var down = editor.Initializer("model.layers.3.mlp.down_proj.weight")!;
        Assert.That(q.Dims, Is.EqualTo(new long[] { 128, 128 }));
        Assert.That(k.Dims, Is.EqualTo(new long[] { 64, 128 }), "[out, in]: 2 kv heads × 32");
        Assert.That(down.Dims, Is.EqualTo(new long[] { 128, 352 }));
        Assert.That(editor.Initializer("model.embed_tokens.weight")!.Dims, Is.EqualTo(new long[] { 512, 128 }));
        Assert.That(editor.Initializer("lm_head.weight"), Is.Null, "tied: lm_head reads the embedding");
        Assert.That(model.ReadFloats(editor.Initializer("model.norm.weight")!).Distinct(), Is.EqualTo(new[] { 1f }));
        long count = model.Graph.Initializer.Sum(t => Tensors.ElementCount(t.Dims));
        Assert.That(count, Is.EqualTo(shape.ParameterCount));
        Assert.That(Rms(model.ReadFloats(q)), Is.EqualTo(shape.InitializerRange).Within(0.002));
        Assert.That(Rms(model.ReadFloats(down)), Is.EqualTo(shape.InitializerRange).Within(0.002));
        Assert.That(Rms(model.ReadFloats(editor.Initializer("model.embed_tokens.weight")!)), Is.EqualTo(shape.EmbeddingStd).Within(0.002));
    }

    [Test]
    public void RightPaddingDoesNotChangeTheRealPositions()
    {
        using var model = OnnxModel.Load(TinyPath);
        using var session = Session(model);
        int vocab = LlamaShape.Tiny.VocabSize, real = 10, padded = 16;
        var row = Tokens(real, 3, vocab);
        var alone = Logits(session, [row], [Ones(real)]);
        var paddedRow = row.Concat(Enumerable.Repeat((long)vocab - 1, padded - real)).ToArray();
        var paddedMask = Ones(real).Concat(new long[padded - real]).ToArray();
        var batch = Logits(session, [Tokens(padded, 4, vocab), paddedRow], [Ones(padded), paddedMask]);
        var realPart = batch.AsSpan(padded * vocab, real * vocab).ToArray();
        Assert.That(Shared.MaxAbsDiff(realPart, alone), Is.LessThan(1e-5f));
    }

    [Test]
    public void MaskedKeysAreIgnoredEvenBeforeTheQuery()
    {
        // A padding hole in the middle of the mask: the result must equal the row with that token removed... only for
        // positions before it; after it, the hole's token must not matter whatever its id.
        using var model = OnnxModel.Load(TinyPath);
        using var session = Session(model);
        int vocab = LlamaShape.Tiny.VocabSize;
        var a = Tokens(8, 5, vocab);
        var b = (long[])a.Clone();
        b[3] = (b[3] + 100) % vocab;
        var mask = new long[] { 1, 1, 1, 0, 1, 1, 1, 1 };
        var both = Logits(session, [a, b], [mask, mask]);
        int half = both.Length / 2;
        var after = (int start) => both.AsSpan(start + 4 * vocab, 4 * vocab).ToArray();
        Assert.That(Shared.MaxAbsDiff(after(0), after(half)), Is.LessThan(1e-5f));
    }

    [Test]
    public void ChangingALaterTokenLeavesEarlierLogitsUnchanged()
    {
        using var model = OnnxModel.Load(TinyPath);
        using var session = Session(model);
        int vocab = LlamaShape.Tiny.VocabSize, seq = 12, changed = 8;
        var a = Tokens(seq, 6, vocab);
        var b = (long[])a.Clone();
        b[changed] = (b[changed] + 1) % vocab;
        var logits = Logits(session, [a, b], [Ones(seq), Ones(seq)]);
        int half = logits.Length / 2;
        var before = (int start) => logits.AsSpan(start, changed * vocab).ToArray();
        var at = (int start) => logits.AsSpan(start + changed * vocab, vocab).ToArray();
        Assert.That(Shared.MaxAbsDiff(before(0), before(half)), Is.LessThan(1e-6f));
        Assert.That(Shared.MaxAbsDiff(at(0), at(half)), Is.GreaterThan(1e-4f), "the changed position itself must change");
    }

    [Test]
    public void KvCacheDecodingMatchesFullRecompute()
    {
        var shape = LlamaShape.Tiny;
        using var full = OnnxModel.Load(TinyPath);
        using var cached = LlamaGraph.Build(shape, GraphsRequest.DefaultSeed, new LlamaOptions(WithKvCache: true));
        using var fullSession = Session(full);
        using var cachedSession = Session(cached);
        int batch = 2, prompt = 6, steps = 5, total = prompt + steps;
        var rows = new[] { Tokens(total, 7, shape.VocabSize), Tokens(total, 8, shape.VocabSize) };

        var past = new Dictionary<string, HostTensor>();
        for (int i = 0; i < shape.NumHiddenLayers; i++)
            foreach (var kind in new[] { "key", "value" })
                past[$"past_key_values.{i}.{kind}"] = HostTensor.Of(Array.Empty<float>(), batch, shape.NumKeyValueHeads, 0, shape.HeadDim);
        for (int end = prompt, start = 0; end <= total; start = end, end++)
        {
            var feeds = new Dictionary<string, HostTensor>(past)
            {
                ["input_ids"] = HostTensor.Of(rows.SelectMany(r => r[start..end]).ToArray(), batch, end - start),
                ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, batch * end).ToArray(), batch, end),
            };
            var outputs = OrtRun.Run(cachedSession, feeds);
            foreach (var name in past.Keys.ToList()) past[name] = outputs[name.Replace("past_key_values", "present")];

            var expected = Logits(fullSession, rows.Select(r => r[..end]).ToArray(), rows.Select(_ => Ones(end)).ToArray());
            var got = outputs["logits"].Floats;
            for (int r = 0; r < batch; r++)
            {
                var lastExpected = expected.AsSpan(((r + 1) * end - 1) * shape.VocabSize, shape.VocabSize).ToArray();
                var lastGot = got.AsSpan(((r + 1) * (end - start) - 1) * shape.VocabSize, shape.VocabSize).ToArray();
                Assert.That(Shared.MaxAbsDiff(lastGot, lastExpected), Is.LessThan(1e-4f), $"row {r}, length {end}");
            }
            Assert.That(past["past_key_values.0.key"].Shape, Is.EqualTo(new long[] { batch, shape.NumKeyValueHeads, end, shape.HeadDim }));
        }
    }

    [Test]
    public void PositionIdsMakeLeftPaddingInvisible()
    {
        // With position_ids = cumsum(mask) − 1 (as Hugging Face's generate computes them) a left-padded row gives the
        // unpadded row's logits; with position_ids = 0..n−1 the variant equals the committed model.
        var shape = LlamaShape.Tiny;
        using var committed = OnnxModel.Load(TinyPath);
        using var withIds = LlamaGraph.Build(shape, GraphsRequest.DefaultSeed, new LlamaOptions(WithPositionIds: true));
        using var committedSession = Session(committed);
        using var session = Session(withIds);
        int real = 9, pad = 4, total = real + pad, vocab = shape.VocabSize;
        var row = Tokens(real, 9, vocab);
        var expected = Logits(committedSession, [row], [Ones(real)]);

        var sameFeeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(row, 1, real),
            ["attention_mask"] = HostTensor.Of(Ones(real), 1, real),
            ["position_ids"] = HostTensor.Of(Enumerable.Range(0, real).Select(i => (long)i).ToArray(), 1, real),
        };
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(session, sameFeeds)["logits"].Floats, expected), Is.LessThan(1e-6f));

        var leftPadded = Enumerable.Repeat((long)vocab - 1, pad).Concat(row).ToArray();
        var mask = new long[pad].Concat(Ones(real)).ToArray();
        var positionIds = Enumerable.Range(0, total).Select(i => (long)Math.Max(0, i - pad)).ToArray();
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(leftPadded, 1, total),
            ["attention_mask"] = HostTensor.Of(mask, 1, total),
            ["position_ids"] = HostTensor.Of(positionIds, 1, total),
        };
        var logits = OrtRun.Run(session, feeds)["logits"].Floats;
        Assert.That(logits.All(float.IsFinite), Is.True, "fully masked padding rows stay finite");
        Assert.That(Shared.MaxAbsDiff(logits[(pad * vocab)..], expected), Is.LessThan(1e-5f));

        // Rotary attention sees only position differences, so a constant shift cannot show that position_ids are
        // read; spreading them out must change the logits.
        sameFeeds["position_ids"] = HostTensor.Of(Enumerable.Range(0, real).Select(i => (long)(3 * i)).ToArray(), 1, real);
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(session, sameFeeds)["logits"].Floats, expected), Is.GreaterThan(1e-3f));
    }

    [Test]
    public void OrtGraphOptimizationsDoNotChangeTheLogits()
    {
        // ORT fuses RMSNorm, rotary and attention patterns at ENABLE_ALL; the plain graph must agree with its fusions.
        using var model = OnnxModel.Load(TinyPath);
        var vocab = LlamaShape.Tiny.VocabSize;
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(Tokens(14, 10, vocab).Concat(Tokens(14, 11, vocab)).ToArray(), 2, 14),
            ["attention_mask"] = HostTensor.Of(Ones(14).Concat(Ones(10)).Concat(new long[4]).ToArray(), 2, 14),
        };
        var plain = OrtRun.Run(model, feeds, level: GraphOptimizationLevel.ORT_DISABLE_ALL)["logits"].Floats;
        var optimized = OrtRun.Run(model, feeds, level: GraphOptimizationLevel.ORT_ENABLE_ALL)["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(plain, optimized), Is.LessThan(1e-5f));
    }

    [Test]
    public void LazyWeightsSavedAsExternalDataEqualTheEagerModel()
    {
        // The path big models take (weights made at save time, streamed to model.onnx.data) on the tiny shape.
        var dir = Shared.TempDir();
        var path = Path.Combine(dir, "model.onnx");
        using (var lazy = LlamaGraph.Build(LlamaShape.Tiny, GraphsRequest.DefaultSeed, new LlamaOptions(LazyWeights: true)))
            lazy.Save(path, externalData: true);
        Assert.That(File.Exists(path + ".data"), Is.True);
        using var reloaded = OnnxModel.Load(path);
        using var committed = OnnxModel.Load(TinyPath);
        Assert.That(reloaded.HasExternalData, Is.True);
        Assert.That(reloaded.ToBytes(), Is.EqualTo(committed.ToBytes()), "same graph and weights once inlined");
    }

    [Test]
    public void BigTensorsAreFilledFromIndependentChunkStreams()
    {
        // A tensor bigger than one chunk is filled in parallel: the result must not depend on scheduling, each chunk
        // must have its own stream, and the whole must still have the requested spread.
        long count = 2 * Weights.ChunkSize + 1000;
        var a = Weights.Normal(3, "model.layers.0.mlp.up_proj.weight", count, 0.02);
        var b = Weights.Normal(3, "model.layers.0.mlp.up_proj.weight", count, 0.02);
        Assert.That(a, Is.EqualTo(b));
        Assert.That(a.AsSpan(0, 1000).ToArray(), Is.Not.EqualTo(a.AsSpan(Weights.ChunkSize, 1000).ToArray()));
        Assert.That(Rms(a), Is.EqualTo(0.02).Within(0.0002));
        Assert.That(Math.Abs(a.Average(v => (double)v)), Is.LessThan(1e-4));
        Assert.That(Weights.Normal(4, "model.layers.0.mlp.up_proj.weight", 1000, 0.02), Is.Not.EqualTo(a[..1000]), "seed matters");
    }

    [TestCase("smollm2-135m", 134_515_008L)]
    [TestCase("tinyllama-1.1b", 1_100_048_384L)]
    [TestCase("~100m", 0L)]
    public void NamedShapesHaveTheirModelsParameterCounts(string name, long expected)
    {
        // Published counts of HuggingFaceTB/SmolLM2-135M and TinyLlama-1.1B (safetensors metadata).
        var shape = LlamaShape.Find(name)!;
        if (expected > 0) Assert.That(shape.ParameterCount, Is.EqualTo(expected));
        else Assert.That(shape.ParameterCount, Is.InRange(90_000_000L, 110_000_000L));
    }

    [Test]
    public void CommittedTinyModelIsWhatTheBuilderMakesNow()
    {
        var dir = Shared.TempDir();
        TinyAssets.Write(dir);
        var committed = Path.GetDirectoryName(TinyPath)!;
        foreach (var file in Directory.GetFiles(dir).Select(Path.GetFileName))
            Assert.That(File.ReadAllBytes(Path.Combine(dir, file!)), Is.EqualTo(File.ReadAllBytes(Path.Combine(committed, file!))),
                $"graphs/tiny/{file} differs from a fresh build: run `dotnet run --project graphs/OrtLora.Graphs -- tiny`");
    }
}
