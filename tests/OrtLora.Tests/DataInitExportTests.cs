using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>EVA and CorDA on the four fixture exports (weights behind a Transpose, pre-transposed, GPT-2's Conv1D
/// [in, out], Gemm): each starts from the original model, and CorDA's residual weights merge back exactly.</summary>
public class DataInitExportTests
{
    /// <summary>The reference batch, repeated with its labels: the fixtures ship no tokenizer to encode data with.</summary>
    static IEnumerable<Batch> Batches(Dictionary<string, SafeTensor> reference)
    {
        var ids = reference["input_ids"].AsInt64s();
        var mask = reference["attention_mask"].AsInt64s();
        var shape = reference["input_ids"].Shape;
        for (int i = 0; i < 40; i++)
            yield return new Batch(ids, mask, [.. ids.Zip(mask, (id, m) => m == 0 ? -100 : id)], (int)shape[0], (int)shape[1], new DataPosition(0, i + 1), []);
    }

    [TestCaseSource(typeof(LoraTestKit), nameof(LoraTestKit.Models))]
    public void EvaAndCordaStartFromTheOriginalOnEveryExport(string arch, string file)
    {
        var reference = LoraTestKit.Reference(arch);
        var original = reference["logits_base"].AsFloats();
        float tolerance = 1e-4f * original.Max(Math.Abs);
        foreach (var init in new[] { "eva", "corda" })
        {
            var path = Path.Combine(Shared.TempDir(), "lora.onnx");
            LoraTestKit.OrtloraOk("inject", Shared.Peft(arch, file), "-o", path, "--target-modules", "all-linear", "--r", "2", "--init-lora-weights", init);
            using var model = OnnxModel.Load(path);
            var lora = LoraModel.Read(model)!;
            if (init == "eva") Training.Eva.Initialize(model, lora, _ => Batches(reference));
            else Training.Corda.Initialize(model, lora, Batches(reference));
            Assert.That(Shared.MaxAbsDiff(LoraTestKit.Logits(model, reference), original), Is.LessThan(tolerance), $"{init}: the original model");
            var a = DataInitKit.Values(model, lora.Adapters[0].LoraA);
            Assert.That(a.Any(v => v != 0), Is.True, $"{init}: A is drawn");
            if (init == "corda")
            {
                // B moved: the merged model (residual + scale·B·A folded) computes what the adapted one does
                LoraTestKit.RandomizeB(model, std: 0.3f);
                var adapted = LoraTestKit.Logits(model, reference);
                Assert.That(Shared.MaxAbsDiff(adapted, original), Is.GreaterThan(1e-3f));
                LoraMerger.Merge(model);
                Assert.That(Shared.MaxAbsDiff(LoraTestKit.Logits(model, reference), adapted), Is.LessThan(tolerance), "merged = adapted");
            }
        }
    }
}
