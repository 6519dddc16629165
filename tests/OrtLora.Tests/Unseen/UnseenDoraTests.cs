using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests.Unseen;

/// <summary>DoRA on the export styles the fixtures do not cover (fp16 weights behind Casts, Gemm layers with biases,
/// fused projections, opset-23 ops, cache inputs): the injected model computes the original, merged equals unmerged
/// with random B and m, the exported adapter re-injects exactly, and (where training applies) steps lower the loss.</summary>
[Parallelizable(ParallelScope.None)]
public class UnseenDoraTests
{
    static readonly Architecture[] All = Architectures.All;

    static float[] Logits(OnnxModel model, Architecture arch, Dictionary<string, HostTensor> feeds) => OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;

    [TestCaseSource(nameof(All))]
    public void DoraInjectsMergesExportsAndTrains(Architecture arch)
    {
        var feeds = UnseenArchitectureTests.Feeds(arch);
        using var model = arch.Build();
        var before = Logits(model, arch, feeds);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, LoraAlpha = 8, UseDora = true });
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch, feeds), before), Is.LessThan(arch.HalfActivations ? 2e-3f : 1e-5f), "m = ‖W‖, B = 0: the original");
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var rng = new Random(5);
        foreach (var a in LoraModel.Read(model)!.Adapters)
        {
            var t = model.Graph.Initializer.Single(i => i.Name == a.Magnitude);
            Tensors.SetRaw(t, Tensors.FloatsToBytes(model.ReadFloats(t).Select(v => v * (float)(0.7 + 0.6 * rng.NextDouble())).ToArray(), t.DataType));
        }
        var adapted = Logits(model, arch, feeds);
        Assert.That(Shared.MaxAbsDiff(adapted, before), Is.GreaterThan(1e-2f));

        var exported = AdapterExporter.Export(model);
        Assert.That(exported.Config.UseDora);
        using var reloaded = arch.Build();
        LoraInjector.Inject(reloaded, exported);
        Assert.That(Shared.MaxAbsDiff(Logits(reloaded, arch, feeds), adapted), Is.LessThan(1e-4f * Math.Max(1, adapted.Max(Math.Abs))), "exported adapter re-injected");

        if (arch.Trainable)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
            var batch = UnseenArchitectureTests.TrainBatch(arch);
            float first = session.EvalLoss(batch);
            for (int step = 0; step < 3; step++) session.Step(batch, learningRate: 1e-2f);
            Assert.That(session.EvalLoss(batch), Is.LessThan(first - 1e-3), "three AdamW steps lower the loss");
        }

        int layers = LoraModel.Read(model)!.ByLayer().Count();
        LoraMerger.Merge(model);
        float tolerance = arch.Name.Contains("fp16") ? 2e-2f : 1e-4f * Math.Max(1, adapted.Max(Math.Abs)); // fp16 weights round W' to 11 bits
        Assert.That(Shared.MaxAbsDiff(Logits(model, arch, feeds), adapted), Is.LessThan(tolerance), "merged");
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(arch.MergedHistogram(layers)), "merged graph has the original's ops");
    }
}
