using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>--modules-to-save, --trainable-token-indices and LoRA on the token embedding as a user runs them: train on
/// graphs/tiny (whose LM head is tied to the embedding), then the adapter directory, the merged model and the in-memory
/// injection of the adapter all agree.</summary>
public class ModulesToSaveTests
{
    static double EvalLoss(params string[] args)
    {
        var result = OrtloraOk(["eval", .. args]);
        var match = Regex.Match(result.Out, @"eval_loss (\d+\.\d+)");
        Assert.That(match.Success, result.Out);
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    /// <summary>Training the head of a tied model trains a copy: the merged model's embedding is the original's byte
    /// for byte, its head is the adapter's tensor, and eval of the merged model, of the plain model with --adapter,
    /// and train's last eval agree.</summary>
    [Test]
    public void TrainingTheTiedHeadLeavesTheEmbeddingAlone()
    {
        var dir = Shared.TempDir();
        var result = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--modules-to-save", "lm_head", "--r", "4", "--learning-rate", "5e-3", "--max-steps", "8", "--eval-steps", "8", "--plain-log", "--merge", "-o", dir);
        Assert.That(result.Out, Does.Contain("1 modules_to_save (lm_head)"));
        using (var probe = OnnxModel.Load(Tiny("model.onnx")))
        {
            LoraInjector.Inject(probe, new LoraConfig { R = 4, ModulesToSave = ["lm_head"] });
            long adapters = probe.Graph.Initializer.Where(t => t.Name.EndsWith(".lora_A.weight") || t.Name.EndsWith(".lora_B.weight")).Sum(t => Tensors.ElementCount(t.Dims));
            Assert.That(result.Out, Does.Contain($"{adapters + 512 * 128:N0} trainable parameters"), "A, B and the head's 512 x 128");
        }

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That(config["modules_to_save"]!.AsArray().Select(n => n!.GetValue<string>()), Is.EqualTo(new[] { "lm_head" }));
        var tensors = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        var head = tensors[ModulesToSave.PeftKey("lm_head")];
        Assert.That(head.Shape, Is.EqualTo(new long[] { 512, 128 }), "nn.Linear's [out, in] = [vocabulary, hidden]");

        using var original = OnnxModel.Load(Tiny("model.onnx"));
        using var merged = OnnxModel.Load(Path.Combine(dir, "merged", "model.onnx"));
        var embedding = original.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight");
        var originalRows = original.ReadFloats(embedding);
        Assert.That(merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight")), Is.EqualTo(originalRows),
            "the embedding the Gather reads is untouched");
        var mergedHead = merged.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight.merged");
        Assert.That(merged.ReadFloats(mergedHead), Is.EqualTo(head.AsFloats()), "the head is the trained copy (stored [out, in] as the original)");
        Assert.That(Shared.MaxAbsDiff(head.AsFloats(), originalRows), Is.GreaterThan(1e-3f), "the head trained");
        Assert.That(GraphEditor.OpHistogram(merged.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));

        var evals = EvalLosses(dir);
        double mergedLoss = EvalLoss(Path.Combine(dir, "merged", "model.onnx"), "--data", Tiny("demo_eval.parquet"));
        Assert.That(mergedLoss, Is.EqualTo(evals[^1]).Within(1e-4));
        Assert.That(mergedLoss, Is.LessThan(evals[0] - 0.5));
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--adapter", dir), Is.EqualTo(mergedLoss).Within(1e-4));
    }

    /// <summary>--trainable-token-indices on the tied tiny model: the merged model differs from the original in the
    /// listed tokens' rows of the one table (which embedding and head share) and nowhere else; those rows are the
    /// adapter's tensor; the adapter injected in memory gives train's last eval loss.</summary>
    [Test]
    public void TrainableTokensChangeOnlyTheirRows()
    {
        var dir = Shared.TempDir();
        long[] tokens = [5, 6, 7, 300];
        var result = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--trainable-token-indices", string.Join(",", tokens), "--r", "4", "--learning-rate", "5e-2", "--max-steps", "6", "--eval-steps", "6",
            "--plain-log", "--merge", "-o", dir);
        Assert.That(result.Out, Does.Contain("4 trainable token rows"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That(config["trainable_token_indices"]!.AsArray().Select(n => n!.GetValue<long>()), Is.EqualTo(tokens), "PEFT's list form: the embedding");
        var rows = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"))["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"];
        Assert.That(rows.Shape, Is.EqualTo(new long[] { 4, 128 }));

        using var original = OnnxModel.Load(Tiny("model.onnx"));
        using var merged = OnnxModel.Load(Path.Combine(dir, "merged", "model.onnx"));
        Assert.That(GraphEditor.OpHistogram(merged.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
        var before = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight"));
        var after = merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight"));
        var trained = rows.AsFloats();
        for (long token = 0; token < 512; token++)
        {
            var row = after.Skip((int)token * 128).Take(128).ToArray();
            int k = Array.IndexOf(tokens, token);
            if (k < 0) Assert.That(row, Is.EqualTo(before.Skip((int)token * 128).Take(128)), $"row {token} untouched");
            else
            {
                Assert.That(row, Is.EqualTo(trained.Skip(k * 128).Take(128)), $"row {token} is the adapter's");
                Assert.That(Shared.MaxAbsDiff(row, before.Skip((int)token * 128).Take(128).ToArray()), Is.GreaterThan(1e-3f), $"row {token} trained");
            }
        }
        var evals = EvalLosses(dir);
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--adapter", dir), Is.EqualTo(evals[^1]).Within(1e-4));
    }

    /// <summary>--ensure-weight-tying (PEFT's ensure_weight_tying) on the tied tiny model: the embedding's copy is read by
    /// the head too, so moving it equals moving the tied original; merged, the model has one table again, read by both;
    /// listing the head as well is one error.</summary>
    [Test]
    public void EnsureWeightTyingKeepsHeadAndEmbeddingOneMatrix()
    {
        using var tied = OnnxModel.Load(Tiny("model.onnx"));
        var lora = LoraInjector.Inject(tied, new LoraConfig { R = 4, ModulesToSave = ["embed_tokens"], EnsureWeightTying = true });
        var copy = tied.Graph.Initializer.Single(t => t.Name == lora.SavedModules.Single().Weight);
        Assert.That(tied.Graph.Initializer.Any(t => t.Name == "model.embed_tokens.weight"), Is.False, "nothing reads the original any more");
        var rng = new Random(3);
        var moved = tied.ReadFloats(copy).Select(v => v + (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray();
        Tensors.SetRaw(copy, Tensors.FloatsToBytes(moved, copy.DataType));

        using var reference = OnnxModel.Load(Tiny("model.onnx"));
        var table = reference.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight");
        Tensors.SetRaw(table, Tensors.FloatsToBytes(moved, table.DataType));
        var expected = OrtRun.Run(reference, TinyFeeds(), ["logits"])["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(tied, TinyFeeds(), ["logits"])["logits"].Floats, expected), Is.LessThan(1e-5f), "the head reads the copy");
        Assert.That(AdapterExporter.Export(tied).Config.ToPeftJson()["ensure_weight_tying"]!.GetValue<bool>(), Is.True);

        LoraMerger.Merge(tied);
        Assert.That(tied.Graph.Initializer.Where(t => t.Dims.SequenceEqual(new long[] { 512, 128 })).Select(t => t.Name), Is.EqualTo(new[] { "model.embed_tokens.weight" }));
        Assert.That(Shared.MaxAbsDiff(OrtRun.Run(tied, TinyFeeds(), ["logits"])["logits"].Floats, expected), Is.LessThan(1e-5f), "merged");
        Assert.That(GraphEditor.OpHistogram(tied.Graph), Is.EqualTo(GraphEditor.OpHistogram(reference.Graph)));

        using var both = OnnxModel.Load(Tiny("model.onnx"));
        var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(both, new LoraConfig { ModulesToSave = ["embed_tokens", "lm_head"], EnsureWeightTying = true }));
        Assert.That(e!.Message, Does.Contain("is tied to 'model.embed_tokens', whose copy it reads with ensure_weight_tying"));
    }

    /// <summary>A trained head needs the gradient of the whole logits: asking for a chunked loss gives the same
    /// gradients as the whole one (the chunks, which give d loss / d h only, are not used).</summary>
    [Test]
    public void ATrainedHeadTakesTheWholeLoss()
    {
        using var model = OnnxModel.Load(Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, ModulesToSave = ["lm_head", "embed_tokens"] });
        RandomizeB(model, std: 0.3f);
        var feeds = TinyFeeds();
        var ids = feeds["input_ids"].Int64s;
        var batch = new Batch(ids, feeds["attention_mask"].Int64s, ids, 2, 24);
        using var whole = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: 1));
        using var chunked = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: 4));
        var (loss, grads) = whole.ComputeGradients(batch);
        var (chunkedLoss, chunkedGrads) = chunked.ComputeGradients(batch);
        Assert.That(chunkedLoss, Is.EqualTo(loss).Within(1e-6 * loss));
        var head = ModulesToSave.WeightName("lm_head");
        Assert.That(grads[head].Max(Math.Abs), Is.GreaterThan(1e-4f));
        foreach (var (p, g) in grads) Assert.That(Shared.MaxAbsDiff(chunkedGrads[p], g), Is.LessThanOrEqualTo(1e-6f * g.Max(Math.Abs) + 1e-9f), p);
    }

    /// <summary>PEFT's ModulesToSaveWrapper copies a whole linear layer, bias too: GPT-2's biased MLP layers train
    /// weight and bias (the bias under PEFT's key, <c>PATH.bias</c>), each its own, though the TorchScript export shares
    /// the (equal) biases of the two layers through an Identity; with trained values the merged model computes the
    /// injected one's logits, has the original's ops (less that Identity), and the adapter injected again into the
    /// plain export gives them too. With bias="all" the other biases train as well, the saved ones once.</summary>
    [Test]
    public void ASavedLayerTrainsItsBiasToo()
    {
        const string file = "model.torchscript.onnx";
        var reference = Reference("gpt2");
        using var model = OnnxModel.Load(Shared.Peft("gpt2", file));
        var lora = LoraInjector.Inject(model, new LoraConfig { R = 2, TargetModules = ["c_attn"], ModulesToSave = ["mlp.c_fc"] });
        Assert.That(lora.SavedModules.Select(m => m.Module), Is.EquivalentTo(new[] { "transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc" }));
        Assert.That(lora.TrainedBiases.Select(b => b.Weight), Is.EquivalentTo(new[] { "base_model.model.transformer.h.0.mlp.c_fc.bias", "base_model.model.transformer.h.1.mlp.c_fc.bias" }));
        using (var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions())))
            Assert.That(session.ParameterNames, Is.SupersetOf(lora.TrainedBiases.Select(b => b.Weight)), "the biases train");
        RandomizeB(model);
        var rng = new Random(3);
        foreach (var t in model.Graph.Initializer.Where(t => t.Name.EndsWith(".c_fc.bias") || ModulesToSave.IsWeight(t.Name)))
            Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v + (float)(rng.NextDouble() - 0.5) * 0.2f).ToArray(), t.DataType));
        var injected = Logits(model, reference);
        var adapter = AdapterExporter.Export(model);
        Assert.That(adapter.Tensors.Keys, Is.SupersetOf(new[] { "base_model.model.transformer.h.0.mlp.c_fc.weight", "base_model.model.transformer.h.0.mlp.c_fc.bias" }));
        Assert.That(adapter.Config.Bias, Is.EqualTo("none"));
        var dir = Shared.TempDir();
        adapter.Save(dir);
        using (var again = OnnxModel.Load(Shared.Peft("gpt2", file)))
        {
            LoraInjector.Inject(again, PeftAdapter.Load(dir));
            Assert.That(Shared.MaxAbsDiff(Logits(again, reference), injected), Is.LessThan(1e-4f));
        }
        using var plain = OnnxModel.Load(Shared.Peft("gpt2", file));
        LoraMerger.Merge(model);
        var ops = GraphEditor.OpHistogram(plain.Graph);
        ops["Identity"]--; // the shared bias's hop, which nothing reads once each layer has its own
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(ops));
        Assert.That(Shared.MaxAbsDiff(Logits(model, reference), injected), Is.LessThan(1e-4f));
        Assert.That(Shared.MaxAbsDiff(Logits(plain, reference), injected), Is.GreaterThan(1e-3f), "the saved layers changed the model");

        using var all = OnnxModel.Load(Shared.Peft("gpt2", file));
        var both = LoraInjector.Inject(all, new LoraConfig { R = 2, TargetModules = ["c_attn"], ModulesToSave = ["mlp.c_fc"], Bias = "all" });
        Assert.That(both.TrainedBiases.Select(b => b.Weight), Has.Member("base_model.model.transformer.h.1.mlp.c_fc.bias").And.Member("base_model.model.transformer.h.0.attn.c_attn.bias"));
        Assert.That(both.TrainedBiases.Select(b => b.Weight), Is.Unique);
        Assert.That(Shared.MaxAbsDiff(Logits(all, reference), reference["logits_base"].AsFloats()), Is.LessThan(1e-4f), "nothing moved yet");
    }

    /// <summary>Each mistake is one error naming the file and the module.</summary>
    [Test]
    public void MistakesAreOneErrorEach()
    {
        var output = Path.Combine(Shared.TempDir(), "out.onnx");
        var unknown = Ortlora("inject", Tiny("model.onnx"), "-o", output, "--modules-to-save", "score");
        Assert.That(unknown.ExitCode, Is.Not.Zero);
        Assert.That(unknown.Error, Does.Contain("model.onnx: modules_to_save 'score': no linear layer or token embedding has that name").And.Contain("lm_head, model.embed_tokens"));
        var both = Ortlora("inject", Tiny("model.onnx"), "-o", output, "--target-modules", "q_proj,lm_head", "--modules-to-save", "lm_head");
        Assert.That(both.ExitCode, Is.Not.Zero);
        Assert.That(both.Error, Does.Contain("module 'lm_head' is both in target_modules and in modules_to_save"));
        Assert.That(File.Exists(output), Is.False, "no partial output");

        // A PEFT directory whose saved head has the wrong shape.
        using var model = OnnxModel.Load(Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { ModulesToSave = ["lm_head"] });
        var adapter = AdapterExporter.Export(model);
        adapter.Tensors[ModulesToSave.PeftKey("lm_head")] = SafeTensor.FromFloats([128, 512], new float[128 * 512]);
        var dir = Shared.TempDir();
        adapter.Save(dir);
        var shape = Ortlora("inject", Tiny("model.onnx"), "-o", output, "--init-from", dir);
        Assert.That(shape.ExitCode, Is.Not.Zero);
        Assert.That(shape.Error, Does.Contain("adapter_model.safetensors: tensor 'base_model.model.lm_head.weight' has shape [128, 512] but the module in").And.Contain("needs [512, 128]"));
    }

    /// <summary>The adapter directory holds PEFT's lora_embedding_A [r, vocabulary] and lora_embedding_B [hidden, r]; A's
    /// columns move only for tokens the training data has. Merged, the embedding's Gather reads the table plus
    /// scale·(B·A)ᵀ (computed here from the saved tensors) while the tied head still reads the original table, byte for
    /// byte, as in the unmerged model; the graph has the original's ops; and eval of the merged model, of the plain model
    /// with --adapter, and train's last eval agree.</summary>
    [Test]
    public void TrainingTheEmbeddingsAdapterMergesIntoTheGatherOnly()
    {
        var dir = Shared.TempDir();
        var result = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--target-modules", "embed_tokens,q_proj,v_proj", "--r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2", "--max-steps", "8",
            "--eval-steps", "8", "--plain-log", "--merge", "-o", dir);
        Assert.That(result.Out, Does.Contain("9 adapters"));

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That(config["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()), Is.EquivalentTo(new[] { "embed_tokens", "q_proj", "v_proj" }));
        var tensors = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        var a = tensors["base_model.model.model.embed_tokens.lora_embedding_A"];
        var b = tensors["base_model.model.model.embed_tokens.lora_embedding_B"];
        Assert.That((a.Shape, b.Shape), Is.EqualTo((new long[] { 4, 512 }, new long[] { 128, 4 })));
        var (av, bv) = (a.AsFloats(), b.AsFloats());
        int moved = Enumerable.Range(0, 512).Count(t => Enumerable.Range(0, 4).Any(k => av[k * 512 + t] != 0));
        Assert.That(moved, Is.InRange(50, 511), "A starts at zero; the columns of tokens the data has move, the others stay");

        using var original = OnnxModel.Load(Tiny("model.onnx"));
        using var merged = OnnxModel.Load(Path.Combine(dir, "merged", "model.onnx"));
        Assert.That(GraphEditor.OpHistogram(merged.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
        var table = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight"));
        Assert.That(merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight")), Is.EqualTo(table), "the head's table");
        var gather = merged.Graph.Node.Single(n => n.OpType == "Gather" && n.Input[0].StartsWith("model.embed_tokens.weight"));
        var adapted = merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == gather.Input[0]));
        var expected = (float[])table.Clone();
        for (int t = 0; t < 512; t++)
            for (int h = 0; h < 128; h++)
                expected[t * 128 + h] += (float)(2.0 * Enumerable.Range(0, 4).Sum(k => (double)bv[h * 4 + k] * av[k * 512 + t]));
        Assert.That(Shared.MaxAbsDiff(adapted, expected), Is.LessThan(1e-5f), "the Gather's table is W + scale·(B·A)ᵀ");
        Assert.That(Shared.MaxAbsDiff(adapted, table), Is.GreaterThan(1e-3f), "the embedding trained");

        var evals = EvalLosses(dir);
        double mergedLoss = EvalLoss(Path.Combine(dir, "merged", "model.onnx"), "--data", Tiny("demo_eval.parquet"));
        Assert.That(mergedLoss, Is.EqualTo(evals[^1]).Within(1e-4));
        Assert.That(mergedLoss, Is.LessThan(evals[0] - 0.3));
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--adapter", dir), Is.EqualTo(mergedLoss).Within(1e-4));
    }
}
