using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>trainable_token_indices (rows of chosen tokens trained, PEFT's TrainableTokens) on every export style: the
/// token embedding, and the LM head where it has its own weight ([in, out] or [out, in]); a tied head reads the
/// embedding's rows.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenTrainableTokensTests
{
    static readonly Architecture[] All = Architectures.All;
    static readonly List<long> Tokens = [3, 7, 11, 40];

    static string Head(Architecture arch) => arch.Name == "gpt-neox" ? "embed_out" : "lm_head";

    /// <summary>The embedding (PEFT's list form), and the head by name where it is a float weight of its own.</summary>
    static LoraConfig Config(Architecture arch)
    {
        var tokens = new Dictionary<string, List<long>> { [""] = Tokens };
        if (!UnseenChecks.TiedHead(arch) && !arch.QuantizedWeights) tokens[Head(arch)] = [.. Tokens];
        return new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, TrainableTokenIndices = tokens, Variant = arch.GenAi ? "canonical" : "performant" };
    }

    static float[] Logits(OnnxModel model, Architecture arch) => UnseenChecks.Logits(model, arch);

    static void Perturb(OnnxModel model, LoraModel lora)
    {
        var rng = new Random(13);
        foreach (var rows in lora.TrainableTokens)
        {
            var t = model.Graph.Initializer.Single(i => i.Name == rows.Rows);
            Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v + (float)(rng.NextDouble() * 2 - 1) * 0.5f).ToArray(), t.DataType));
        }
    }

    [TestCaseSource(nameof(All))]
    public void TokenRowsExportAndMerge(Architecture arch)
    {
        using var model = arch.Build();
        var before = Logits(model, arch);
        var lora = LoraInjector.Inject(model, Config(arch));
        Assert.That(lora.TrainableTokens, Has.Count.EqualTo(Config(arch).TrainableTokenIndices.Count));
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch), before), Is.LessThan(1e-6f), "the rows start as the table's");
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var adaptersOnly = Logits(model, arch);
        Perturb(model, lora);
        var trained = Logits(model, arch);
        Assert.That(Shared.MaxAbsDiff(trained, adaptersOnly), Is.GreaterThan(1e-2f), "the model reads the rows");
        if (UnseenChecks.TiedHead(arch))
        {
            // One table with the rows written in, read by the embedding's Gather and by the head's Transpose.
            var scatter = model.Graph.Node.Single(n => n.OpType == "ScatterND");
            Assert.That(model.Graph.Node.Where(n => n.Input.Contains(scatter.Output[0])).Select(n => n.OpType), Is.EquivalentTo(new[] { "Gather", "Transpose" }));
        }

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch), trained);
        Assert.That(exported.Config.TrainableTokenIndices, Is.EqualTo(Config(arch).TrainableTokenIndices));
        foreach (var rows in lora.TrainableTokens)
            Assert.That(exported.Tensors[rows.Rows].Shape, Is.EqualTo(new[] { Tokens.Count, Architectures.Hidden }), rows.Module);
    }

    /// <summary>The rows' gradients against central differences of the loss; where the head has its own weight they
    /// also equal the matching rows of the gradient of the whole table (modules_to_save), an independent path (Gather's
    /// scatter-add, MatMul's product) to the same numbers.</summary>
    [TestCaseSource(nameof(All))]
    public void TokenRowGradients(Architecture arch)
    {
        if (!arch.Trainable) return;
        using var model = arch.Build();
        var lora = LoraInjector.Inject(model, Config(arch));
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0), Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new Training.Engine.TrainingSession(model, options);
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (loss, grads) = session.ComputeGradients(batch);
        var start = session.GetParameters();
        bool half = arch.Name.Contains("fp16");
        foreach (var rows in lora.TrainableTokens)
        {
            var g = grads[rows.Rows];
            var (index, largest) = g.Select((v, i) => (i, v)).MaxBy(x => Math.Abs(x.v));
            Assert.That(Math.Abs(largest), Is.GreaterThan(1e-4f), rows.Module);
            double numeric = UnseenChecks.CentralDifference(session, start, batch, rows.Rows, index, half ? 5e-2 : 1e-2);
            Assert.That(largest, Is.EqualTo(numeric).Within((arch.HalfActivations ? 2e-3 : 3e-4) + (half ? 3e-2 : 1e-2) * Math.Abs(numeric)), $"{rows.Module}[{index}]");
        }
        if (UnseenChecks.TiedHead(arch)) return;

        using var whole = arch.Build();
        var saved = LoraInjector.Inject(whole, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4,
            ModulesToSave = arch.QuantizedWeights ? [UnseenChecks.Embedding(arch)] : [UnseenChecks.Embedding(arch), Head(arch)] });
        // The same A (same seed) and B (zero): the same model, so the same gradients.
        using var wholeSession = new Training.Engine.TrainingSession(whole, options);
        var (wholeLoss, wholeGrads) = wholeSession.ComputeGradients(batch);
        Assert.That(wholeLoss, Is.EqualTo(loss).Within(1e-6 * loss));
        foreach (var rows in lora.TrainableTokens)
        {
            var table = wholeGrads[saved.SavedModules.Single(s => s.Module == rows.Module).Weight];
            long hidden = Architectures.Hidden;
            var expected = Tokens.SelectMany(t => table.Skip((int)(t * hidden)).Take((int)hidden)).ToArray();
            Assert.That(Shared.MaxAbsDiff(grads[rows.Rows], expected), Is.LessThan(1e-5f * expected.Max(Math.Abs) + 1e-7f), rows.Module);
        }
    }


    [Test]
    public void MistakesAreOneErrorEach()
    {
        var qwen = All.Single(a => a.Name == "qwen2");
        using (var model = qwen.Build())
        {
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig
                { TrainableTokenIndices = new() { ["embed_tokens"] = [1], ["lm_head"] = [1] } }));
            Assert.That(e!.Message, Does.Contain("module 'lm_head' reads the same weight as 'model.embed_tokens' (tied embeddings)"));
        }
        var llama = All.Single(a => a.Name == "llama-opset23-rmsnorm");
        foreach (var (tokens, message) in new (List<long>, string)[]
                 { ([1, 64], "trainable token 64 of 'model.embed_tokens' is outside its vocabulary of 64"), ([2, 2], "trainable token 2 of 'model.embed_tokens' is listed twice") })
        {
            using var model = llama.Build();
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TrainableTokenIndices = new() { [""] = tokens } }));
            Assert.That(e!.Message, Does.Contain(message));
        }
        using (var model = llama.Build())
        {
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig
                { ModulesToSave = ["embed_tokens"], TrainableTokenIndices = new() { ["embed_tokens"] = [1] } }));
            Assert.That(e!.Message, Does.Contain("module 'model.embed_tokens' is in modules_to_save (trained whole)"));
        }
    }
}
