using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests.Unseen;

/// <summary>Checks that the tests of modules_to_save, trainable tokens and trained biases share on every export style.</summary>
public static class UnseenChecks
{
    public static float[] Logits(OnnxModel model, Architecture arch) => OrtRun.Run(model, UnseenArchitectureTests.Feeds(arch), ["logits"])["logits"].Floats;

    /// <summary>The same computation in another session: float32 agrees to rounding, fp16 activations to a unit in the last place.</summary>
    /// <summary>The token embedding's module name (GPT-NeoX calls it embed_in).</summary>
    public static string Embedding(Architecture arch) => arch.Name == "gpt-neox" ? "embed_in" : "embed_tokens";

    /// <summary>The styles whose LM head reads the token embedding's table.</summary>
    public static bool TiedHead(Architecture arch) => arch.Name is "qwen2" or "gemma-mqa-gelu-op";

    public static float Exact(Architecture arch) => arch.HalfActivations ? 4e-3f : 1e-5f;

    /// <summary>The adapter exported from <paramref name="model"/> (injected with <paramref name="config"/>, then moved to
    /// give <paramref name="trained"/>): re-injected into a fresh model, activated as an ONNX Runtime adapter on a fresh
    /// injection, and merged, each gives the trained logits; the merged graph has the original's ops.</summary>
    /// <returns>the exported adapter</returns>
    public static PeftAdapter ExportReinjectAndMerge(Architecture arch, OnnxModel model, LoraConfig config, float[] trained)
    {
        var exported = AdapterExporter.Export(model);
        using (var reloaded = arch.Build())
        {
            LoraInjector.Inject(reloaded, exported);
            Assert.That(Shared.MaxAbsDiff(Logits(reloaded, arch), trained), Is.LessThan(Exact(arch)), "exported adapter re-injected");
        }
        Assert.That(Shared.MaxAbsDiff(UnseenArchitectureTests.RuntimeAdapterLogits(arch, exported, config), trained), Is.LessThan(Exact(arch)), "runtime adapter");
        int layers = LoraModel.Read(model)!.ByLayer().Count(group => !group[0].Embedding); // linear layers lose a DequantizeLinear
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch), trained), Is.LessThan(arch.Name.Contains("fp16") ? 2e-2f : 1e-4f), "merged");
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(arch.MergedHistogram(layers)), "merged graph has the original's ops");
        return exported;
    }

    /// <summary>d loss / d parameter[index] by central differences of the session's eval loss, from <paramref name="start"/>.</summary>
    public static double CentralDifference(Training.Engine.TrainingSession session, IReadOnlyDictionary<string, float[]> start,
        Training.Engine.Batch batch, string parameter, int index, double h)
    {
        double LossAt(double delta)
        {
            var moved = start.ToDictionary(kv => kv.Key, kv => (float[])kv.Value.Clone());
            moved[parameter][index] += (float)delta;
            session.SetParameters(moved);
            return session.EvalLoss(batch);
        }
        return (LossAt(h) - LossAt(-h)) / (2 * h);
    }
}
