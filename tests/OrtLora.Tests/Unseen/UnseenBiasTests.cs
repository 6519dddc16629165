using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>PEFT's bias="all" / "lora_only" on the export styles that have biases: Qwen2's q/k/v biases, OPT's Gemm
/// biases and LayerNorm biases, GPT-NeoX's; the others have none, which is one error.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenBiasTests
{
    static readonly Architecture[] All = Architectures.All;

    static LoraConfig Config(Architecture arch, string bias) =>
        new() { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, Bias = bias, Variant = arch.GenAi ? "canonical" : "performant" };

    static float[] Logits(OnnxModel model, Architecture arch) => UnseenChecks.Logits(model, arch);

    [TestCaseSource(nameof(All))]
    public void TrainedBiasesExportAndMerge(Architecture arch)
    {
        using var model = arch.Build();
        var originals = model.Graph.Initializer.Where(t => t.Name.EndsWith(".bias")).ToDictionary(t => t.Name, t => t.DataType);
        var before = Logits(model, arch);
        if (arch.GenAi)
        {
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, Config(arch, "all")));
            Assert.That(e!.Message, Does.Contain("on an ORT GenAI builder export"));
            return;
        }
        if (!model.Graph.Node.Any(n => n.OpType == "Gemm" && n.Input.Count > 2) && originals.Count == 0)
        {
            var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, Config(arch, "all")));
            Assert.That(e!.Message, Does.Contain("bias 'all': the model has no bias to train"));
            return;
        }
        var lora = LoraInjector.Inject(model, Config(arch, "all"));
        Assert.That(lora.TrainedBiases.Select(b => b.Original), Is.SupersetOf(originals.Keys), "every *.bias, as PEFT's 'all' takes them");
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch), before), Is.LessThan(1e-6f));
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var adaptersOnly = Logits(model, arch);
        var rng = new Random(5);
        foreach (var bias in lora.TrainedBiases)
        {
            var t = model.Graph.Initializer.Single(i => i.Name == bias.Weight);
            Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v + (float)(rng.NextDouble() - 0.5)).ToArray(), t.DataType));
        }
        var trained = Logits(model, arch);
        Assert.That(Shared.MaxAbsDiff(trained, adaptersOnly), Is.GreaterThan(1e-2f), "the model reads the trained biases");

        var exported = UnseenChecks.ExportReinjectAndMerge(arch, model, Config(arch, "all"), trained);
        Assert.That(exported.Config.Bias, Is.EqualTo("all"));
        Assert.That(exported.Tensors.Keys.Where(TrainedBiases.IsBias).ToList(), Has.Count.EqualTo(lora.TrainedBiases.Count));
        foreach (var (name, type) in originals)
            Assert.That(model.Graph.Initializer.Single(t => t.Name == name).DataType, Is.EqualTo(type), name);
    }

    /// <summary>lora_only takes the adapted layers' biases only; the biases' gradients match central differences.</summary>
    [TestCase("qwen2")]
    [TestCase("opt-gemm")]
    [TestCase("gpt-neox")]
    public void LoraOnlyBiasesTrain(string name)
    {
        var arch = All.Single(a => a.Name == name);
        using var model = arch.Build();
        var lora = LoraInjector.Inject(model, Config(arch, "lora_only"));
        Assert.That(lora.TrainedBiases, Is.Not.Empty);
        Assert.That(lora.TrainedBiases.Select(b => b.Module), Is.SubsetOf(lora.Adapters.Select(a => a.Module)), "adapted layers only");
        LoraTestKit.RandomizeB(model, std: 0.3f);
        using var session = new Training.Engine.TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0),
            Optimization: GraphOptimizationLevel.ORT_DISABLE_ALL));
        var batch = UnseenArchitectureTests.TrainBatch(arch);
        var (_, grads) = session.ComputeGradients(batch);
        var start = session.GetParameters();
        // The three largest components over all biases (a bias on k alone has none without rotary: q·b is the same for
        // every key, which softmax ignores); steps of 0.05 keep the float32 loss's rounding out of the difference.
        foreach (var (weight, index, largest) in lora.TrainedBiases.SelectMany(b => grads[b.Weight].Select((v, i) => (b.Weight, i, v)))
                     .OrderByDescending(x => Math.Abs(x.v)).Take(3))
        {
            double numeric = UnseenChecks.CentralDifference(session, start, batch, weight, index, 5e-2);
            Assert.That(largest, Is.EqualTo(numeric).Within(3e-4 + 2e-2 * Math.Abs(numeric)), $"{weight}[{index}]");
        }
    }
}
