using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests.Unseen;

/// <summary>modules_to_save (the LM head and the token embedding trained whole) on every export style: heads stored
/// [in, out] and [out, in], tied to the embedding or not, weights in fp16 behind a Cast, fully fp16, quantized.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenModulesToSaveTests
{
    static readonly Architecture[] All = Architectures.All;

    /// <summary>The head and the token embedding; only the embedding where the head is stored quantized (refused, below).</summary>
    static string[] Saved(Architecture arch) => arch.Name == "gpt-neox" ? ["embed_out", "embed_in"] : arch.QuantizedWeights ? ["embed_tokens"] : ["lm_head", "embed_tokens"];

    // Canonical on a GenAI builder export, whose packed qkv_proj then takes Hugging Face's q, k, v as runtime adapters.
    static LoraConfig Config(Architecture arch) => new() { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, ModulesToSave = [.. Saved(arch)], Variant = arch.GenAi ? "canonical" : "performant" };
    static LoraModel Inject(OnnxModel model, Architecture arch) => LoraInjector.Inject(model, Config(arch));

    static float[] Logits(OnnxModel model, Architecture arch) => UnseenChecks.Logits(model, arch);

    /// <summary>What training would do to the copies: small random changes, so that every later check can fail.</summary>
    static void Perturb(OnnxModel model, LoraModel lora, float std)
    {
        var rng = new Random(11);
        foreach (var saved in lora.SavedModules)
        {
            var t = model.Graph.Initializer.Single(i => i.Name == saved.Weight);
            var values = model.ReadFloats(t).Select(v => v + (float)(rng.NextDouble() * 2 - 1) * std).ToArray();
            Tensors.SetRaw(t, Tensors.FloatsToBytes(values, t.DataType));
        }
    }

    /// <summary>Inject copies the weights (the logits stay), training the copies changes them, the exported PEFT adapter
    /// re-injected and the merged model both give the trained logits, and merge gives back the original's ops with the
    /// weights in their own type.</summary>
    [TestCaseSource(nameof(All))]
    public void SavedModulesExportAndMerge(Architecture arch)
    {
        using var model = arch.Build();
        var before = Logits(model, arch);
        var types = model.Graph.Initializer.ToDictionary(t => t.Name, t => t.DataType);
        var lora = Inject(model, arch);
        Assert.That(lora.SavedModules.Select(s => s.Kind), Is.EqualTo(arch.QuantizedWeights ? new[] { "embedding" } : ["linear", "embedding"]));
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch), before), Is.LessThan(1e-6f), "the copies compute what the weights did");
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var adaptersOnly = Logits(model, arch);
        Perturb(model, lora, 0.05f);
        var trained = Logits(model, arch);
        Assert.That(Shared.MaxAbsDiff(trained, adaptersOnly), Is.GreaterThan(1e-2f), "the model reads the copies");

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch), trained);
        Assert.That(exported.Config.ModulesToSave, Is.EqualTo(Saved(arch)));
        foreach (var saved in lora.SavedModules)
        {
            var tensor = exported.Tensors[ModulesToSave.PeftKey(saved.Module)];
            // PyTorch's layout: an embedding is [vocabulary, hidden] and so is a head's nn.Linear weight [out, in].
            Assert.That(tensor.Shape, Is.EqualTo(new[] { Architectures.Vocab, Architectures.Hidden }), saved.Module);
        }
        Assert.That(model.Graph.Initializer.Select(t => t.Name), Has.None.Contains("modules_to_save"));
        foreach (var saved in lora.SavedModules)
            Assert.That(model.Graph.Initializer.Where(t => t.Name.StartsWith(saved.Original)).Select(t => t.DataType), Has.All.EqualTo(types[saved.Original]),
                $"{saved.Module}: merged in the original's type");
    }

    /// <summary>The gradients of the copies (one [vocabulary, hidden] matrix each) against central differences of the
    /// loss, the head's along its largest component, the embedding's too; rows of tokens the batch does not contain get
    /// exactly zero.</summary>
    [TestCaseSource(nameof(All))]
    public void SavedModuleGradientsMatchFiniteDifferences(Architecture arch)
    {
        if (!arch.Trainable) return;
        using var model = arch.Build();
        var lora = Inject(model, arch);
        LoraTestKit.RandomizeB(model, std: 0.3f);
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0),
            Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL));
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (loss, grads) = session.ComputeGradients(batch);
        var start = session.GetParameters();
        foreach (var saved in lora.SavedModules)
        {
            Assert.That(grads.ContainsKey(saved.Weight), saved.Module);
            var g = grads[saved.Weight];
            var (index, largest) = g.Select((v, i) => (i, v)).MaxBy(x => Math.Abs(x.v));
            // fp16 weights: the step is rounded to 11 bits where the copy is cast, so a longer one
            bool half = arch.Name.Contains("fp16");
            double numeric = UnseenChecks.CentralDifference(session, start, batch, saved.Weight, index, half ? 5e-2 : 1e-2);
            Assert.That(largest, Is.EqualTo(numeric).Within((arch.HalfActivations ? 2e-3 : 3e-4) + (half ? 3e-2 : 1e-2) * Math.Abs(numeric)), $"{saved.Module}[{index}]");
            if (saved.Kind != "embedding") continue;
            // A token's row has a gradient when it sits where the loss reads it: attended and not the last of its row
            // (whose prediction has no label); padded positions are masked out of every query.
            var read = batch.InputIds.Where((_, i) => batch.AttentionMask[i] == 1 && i % batch.SequenceLength != batch.SequenceLength - 1).ToHashSet();
            var seen = batch.InputIds.ToHashSet();
            long hidden = Architectures.Hidden;
            for (long token = 0; token < Architectures.Vocab; token++)
            {
                var row = g.Skip((int)(token * hidden)).Take((int)hidden).ToArray();
                if (read.Contains(token)) Assert.That(row.Max(Math.Abs), Is.GreaterThan(0f), $"row {token} (in the batch)");
                else if (!seen.Contains(token)) Assert.That(row.Max(Math.Abs), Is.EqualTo(0f), $"row {token} (not in the batch)");
            }
        }
        session.SetParameters(start);
        for (int step = 0; step < 3; step++) session.Step(batch, learningRate: 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(loss - 1e-3), "three AdamW steps lower the loss");
    }

    [Test]
    public void AQuantizedHeadIsRefusedByName()
    {
        var arch = All.Single(a => a.Name == "llama-int8-weights-qdq");
        using var model = arch.Build();
        var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], ModulesToSave = ["lm_head"] }));
        Assert.That(e!.Message, Does.Contain("'lm_head' is stored quantized"));
    }
}
