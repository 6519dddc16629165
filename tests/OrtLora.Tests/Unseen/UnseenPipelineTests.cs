using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests.Unseen;

/// <summary>Whole runs on unseen exports: an Optimum-style decoder with a KV cache trained, merged and decoded with and
/// without its cache; a graph with ORT contrib ops refused for training with a message naming the op.</summary>
public class UnseenPipelineTests
{
    static Architecture KvCache => Architectures.All.Single(a => a.Name == "optimum-kv-cache");

    [Test]
    public void KvCacheExportTrainsMergesAndDecodesTheSameWithAndWithoutItsCache()
    {
        using var model = KvCache.Build();
        var ids = new long[] { 5, 9, 13, 2, 40, 7, 7, 30, 21, 3 };
        var batch = new Training.Engine.Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, 2, 5);
        var before = Logits(model);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        using (var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions())))
        {
            float first = session.EvalLoss(batch);
            for (int step = 0; step < 3; step++) session.Step(batch, learningRate: 1e-2f);
            Assert.That(session.EvalLoss(batch), Is.LessThan(first - 1e-3), "training on an empty past lowers the loss");
            foreach (var (name, values) in session.GetParameters())
                Tensors.SetRaw(model.Graph.Initializer.Single(t => t.Name == name), Tensors.FloatsToBytes(values, (int)DT.Float));
        }
        var trained = Logits(model);
        Assert.That(Shared.MaxAbsDiff(trained, before), Is.GreaterThan(1e-3f), "training changed the model (with a past)");
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Logits(model), trained), Is.LessThan(1e-4f), "merged, with a past");
        Assert.That(model.Graph.Output.Select(o => o.Name), Is.EqualTo(new[] { "logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value" }));

        using var inference = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
        using var decoder = new CausalLmSession(inference);
        using var cached = decoder.Start(useCache: true);
        using var recomputed = decoder.Start(useCache: false);
        var prompt = new[] { 5, 9, 13, 2 };
        var (a, b) = (decoder.Step(cached, prompt), decoder.Step(recomputed, prompt));
        for (int step = 0; step < 6; step++)
        {
            Assert.That(Shared.MaxAbsDiff(a, b), Is.LessThan(1e-4f), $"step {step}");
            int next = Sampler.ArgMax(b);
            (a, b) = (decoder.Step(cached, [next]), decoder.Step(recomputed, [next]));
        }
    }

    /// <summary>Logits with a non-empty past of 3 (random keys and values), the first row left-padded.</summary>
    static float[] Logits(OnnxModel model)
    {
        const int past = 3, seq = 4;
        var rng = new Random(3);
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(new long[] { 1, 2, 3, 4, 60, 61, 62, 63 }, 2, seq),
            ["attention_mask"] = HostTensor.Of(Enumerable.Range(0, 2 * (past + seq)).Select(i => i < 2 ? 0L : 1L).ToArray(), 2, past + seq),
            ["position_ids"] = HostTensor.Of(Enumerable.Range(0, 2 * seq).Select(i => (long)(past + i % seq)).ToArray(), 2, seq),
        };
        for (int l = 0; l < 2; l++)
            foreach (var kind in new[] { "key", "value" })
                feeds[$"past_key_values.{l}.{kind}"] = HostTensor.Of(Enumerable.Range(0, 2 * 2 * past * 8).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray(), 2, 2, past, 8);
        return OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
    }

    [Test]
    public void ContribOpsOnTheGradientPathAreRefusedByName()
    {
        var n = new Net(17);
        n.Proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "com.microsoft", Version = 1 });
        n.Input("input_ids", (int)DT.Int64, "batch_size", "sequence_length");
        var x = n.Embedding("input_ids", "model.embed_tokens.weight", 64, 16);
        var h = n.Linear(x, "model.layers.0.mlp.up_proj", 16, 16, LinearStyle.Dynamo);
        var activated = n.G.Add("BiasGelu", [h, n.Zeros("model.layers.0.mlp.bias", 16)], domain: "com.microsoft");
        var logits = n.Linear(activated, "lm_head", 16, 64, LinearStyle.Dynamo);
        n.Output(logits, "logits", "batch_size", "sequence_length", 64);
        using var model = n.Model();
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"] });
        Assert.That(lora.Adapters.Select(a => a.Module), Is.EqualTo(new[] { "model.layers.0.mlp.up_proj" }));
        var e = Assert.Throws<OrtLoraException>(() => TrainingGraph.Build(model));
        Assert.That(e!.Message, Does.Contain("BiasGelu"));
    }

    /// <summary>Optimum's legacy merged decoder keeps every layer inside the two branches of an If on use_cache_branch.</summary>
    [Test]
    public void LayersOnlyInsideIfBranchesGetAMessageSayingSo()
    {
        var n = new Net(17);
        n.Input("input_ids", (int)DT.Int64, "batch_size", "sequence_length");
        n.Input("use_cache_branch", (int)DT.Bool, 1);
        var x = n.Embedding("input_ids", "model.embed_tokens.weight", 64, 16);
        GraphProto Branch(string name)
        {
            var branch = new GraphProto { Name = name };
            var w = n.Param(n.G.Unique("lm_head.weight"), [16, 64], n.Random(16 * 64, 0.25));
            branch.Node.Add(new NodeProto { OpType = "MatMul", Name = "/lm_head/MatMul", Input = { x, w }, Output = { name + "_logits" } });
            branch.Output.Add(Net.Value(name + "_logits", (int)DT.Float, "batch_size", "sequence_length", 64));
            return branch;
        }
        var cond = n.Op("Squeeze", "use_cache_branch", n.I(0));
        n.G.Add("If", [cond], name: "optimum::if", outputs: ["logits"], attributes: [("then_branch", Branch("with_past")), ("else_branch", Branch("without_past"))]);
        n.Proto.Graph.Output.Add(Net.Value("logits", (int)DT.Float, "batch_size", "sequence_length", 64));
        using var model = n.Model();
        var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"] }));
        Assert.That(e!.Message, Does.Contain("If node 'optimum::if'").And.Contain("merged decoder"));
    }

    /// <summary>`ortlora train --merge` as a user runs it on an Optimum-style decoder with a KV cache: the merged model
    /// equals the base model with the written PEFT adapter injected, past inputs and present outputs intact.</summary>
    [Test]
    public void TrainCommandOnAKvCacheExportWritesAnAdapterAndAMergedModelThatAgree()
    {
        var dir = Shared.TempDir();
        try
        {
            var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny");
            var modelDir = Directory.CreateDirectory(Path.Combine(dir, "model")).FullName;
            foreach (var file in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
                File.Copy(Path.Combine(tiny, file), Path.Combine(modelDir, file));
            using (var exported = Architectures.OptimumDecoder(512)) exported.Save(Path.Combine(modelDir, "model.onnx"));
            var output = Path.Combine(dir, "out");
            LoraTestKit.OrtloraOk("train", Path.Combine(modelDir, "model.onnx"), "--data", Path.Combine(tiny, "demo.parquet"),
                "--target-modules", "all-linear", "--r", "4", "--max-steps", "3", "--per-device-train-batch-size", "2",
                "--max-seq-length", "64", "--learning-rate", "1e-2", "--plain-log", "--merge", "-o", output);

            var adapter = PeftAdapter.Load(output);
            Assert.That(adapter.Tensors.Where(t => t.Key.EndsWith(".lora_B.weight")).SelectMany(t => t.Value.AsFloats()).Any(v => v != 0), "B was trained");
            using var reference = Architectures.OptimumDecoder(512);
            var before = Logits(reference);
            LoraInjector.Inject(reference, adapter);
            var adapted = Logits(reference);
            Assert.That(Shared.MaxAbsDiff(adapted, before), Is.GreaterThan(1e-4f), "the adapter changes the logits");
            using var merged = OnnxModel.Load(Path.Combine(output, "merged", "model.onnx"));
            Assert.That(merged.Graph.Input.Select(i => i.Name), Has.Some.StartsWith("past_key_values."));
            Assert.That(Shared.MaxAbsDiff(Logits(merged), adapted), Is.LessThan(1e-4f), "merged = base + exported adapter");
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
