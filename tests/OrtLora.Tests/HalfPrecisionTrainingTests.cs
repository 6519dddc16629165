using System.Text.Json.Nodes;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using TrainingSession = OrtLora.Training.Engine.TrainingSession;
using static OrtLora.Tests.LoraTestKit;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>Mixed-precision training (--fp16, --bf16): the frozen model in half, LoRA parameters, branches, loss and
/// AdamW in float32, against PEFT's float32 numbers on the fixtures.</summary>
public class HalfPrecisionTrainingTests
{
    static TrainingSession Session(OnnxModel model, ComputeType compute) =>
        new(model, new TrainingSessionOptions(new AdamWOptions(), Compute: compute));

    /// <summary>Tolerances against PEFT (float32): loss 1e-3, each gradient tensor 1e-2 of its largest element, the
    /// 20-step AdamW trajectory 2e-3. Measured: loss 4e-6, gradients 1.1e-3 (llama) and 7.8e-4 (gpt2), trajectory
    /// within 5e-4 of float32's.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(Models))]
    public void Fp16LossGradientsAndTrajectoryTrackPeft(string arch, string file)
    {
        var reference = Reference(arch);
        using var model = EngineFixtures.InjectedModel(arch, file.Split('.')[1]);
        using var session = Session(model, ComputeType.Float16);
        var (loss, grads) = session.ComputeGradients(EngineFixtures.ReferenceBatch(reference));
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-3), "loss");
        double worst = 0;
        foreach (var (p, g) in grads)
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            double relative = Shared.MaxAbsDiff(g, expected) / expected.Max(Math.Abs);
            worst = Math.Max(worst, relative);
            Assert.That(relative, Is.LessThan(1e-2), p);
        }
        var trajectory = reference["traj.loss"].AsFloats();
        double worstStep = 0;
        for (int step = 0; step < trajectory.Length; step++)
        {
            float l = session.Step(EngineFixtures.ReferenceBatch(reference, "traj.", step % 4), 5e-3f);
            worstStep = Math.Max(worstStep, Math.Abs(l - trajectory[step]));
            Assert.That(l, Is.EqualTo(trajectory[step]).Within(2e-3), $"step {step}");
        }
        TestContext.Out.WriteLine($"{arch} {file}: loss {Math.Abs(loss - reference["loss"].AsFloats()[0]):G3}, worst gradient {worst:G3} of max, trajectory {worstStep:G3}");

        // What trains is float32 (parameters and moments are graph inputs of the step graph), the frozen weights half.
        Assert.That(session.Scaler!.SkippedSteps, Is.EqualTo(0));
        var stepGraph = session.Graph.BuildStep(new AdamWOptions());
        var inputTypes = stepGraph.Graph.Input.ToDictionary(i => i.Name, i => i.Type.TensorType.ElemType);
        foreach (var p in session.ParameterNames)
            Assert.That(new[] { inputTypes[p], inputTypes[TrainingGraph.ExpAvgOf(p)], inputTypes[TrainingGraph.ExpAvgSqOf(p)] },
                Is.All.EqualTo((int)DT.Float), p);
        Assert.That(stepGraph.Graph.Initializer.Where(t => Tensors.ElementCount(t.Dims) > 1000).Select(t => t.DataType), Is.All.EqualTo((int)DT.Float16));
    }

    /// <summary>A model past protobuf's 2 GB (TinyLlama's 1.1B parameters are 4.4 GB in float32) builds its half-compute
    /// training graph: the weights are converted in an inline copy made in memory, never serialized (the GPU race's
    /// TinyLlama export failed here with OutOfSpaceException, 2026-12-04). A 1-layer LLaMA whose embedding and lm_head
    /// are made 4.3M × 64 each (zeros, cheap to make): 2.2 GB.</summary>
    [Test]
    public void HalfComputeBuildsAModelPastProtobufsTwoGigabytes()
    {
        const int vocab = 4_300_000, hidden = 64;
        var shape = new OrtLora.Graphs.LlamaShape("past-2gb", hidden, 1, 2, 1, 128, 32, TieWordEmbeddings: false);
        using var model = OrtLora.Graphs.LlamaGraph.Build(shape, 7);
        foreach (var t in model.Graph.Initializer.Where(t => t.Name is "model.embed_tokens.weight" or "lm_head.weight"))
        {
            t.Dims[0] = vocab;
            Tensors.SetRaw(t, new byte[(long)vocab * hidden * sizeof(float)]);
        }
        model.Graph.Output.Single(o => o.Name == "logits").Type.TensorType.Shape.Dim[2].DimValue = vocab;
        LoraInjector.Inject(model, new LoraConfig { R = 2, LoraAlpha = 4, TargetModules = ["all-linear"] });
        Assert.That(model.Graph.Initializer.Sum(Tensors.ByteSize), Is.GreaterThan(int.MaxValue));

        using var graph = TrainingGraph.Build(model, compute: ComputeType.BFloat16);
        // The frozen embedding and lm_head in bfloat16 (half of 2.2 GB); what trains is LoRA's float32 A and B.
        var big = graph.Frozen.Values.Values.Select(v => v.GetTensorTypeAndShape()).Where(s => s.ElementCount >= vocab).ToList();
        Assert.That(big.Select(s => s.ElementDataType), Is.EqualTo(Enumerable.Repeat(Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16, 2)));
        Assert.That(graph.Parameters, Has.Count.EqualTo(7 * 2));
    }

    /// <summary>Half compute reads each weight as it converts it, from wherever the model keeps it: weights computed on
    /// read (LlamaGraph's lazy weights, as PiSSA's residual base is) and weights in a side file give the frozen half
    /// weights and the initial LoRA values that the same model held inline gives, byte for byte.</summary>
    [Test]
    public void HalfComputeReadsWeightsKeptElsewhereAsInlineOnes()
    {
        OnnxModel Injected(bool lazy)
        {
            var model = OrtLora.Graphs.LlamaGraph.Build(OrtLora.Graphs.LlamaShape.Tiny, 11, new OrtLora.Graphs.LlamaOptions(LazyWeights: lazy));
            LoraInjector.Inject(model, new LoraConfig { R = 4, TargetModules = ["all-linear"], Seed = 5 });
            return model;
        }
        using var inline = Injected(lazy: false);
        using var lazy = Injected(lazy: true);
        Assert.That(lazy.IsDeferred("model.layers.0.self_attn.q_proj.weight"), Is.True);
        var dir = Shared.TempDir();
        inline.Save(Path.Combine(dir, "model.onnx"), externalData: true);
        using var external = OnnxModel.Load(Path.Combine(dir, "model.onnx"));
        Assert.That(external.HasExternalData, Is.True);

        using var expected = TrainingGraph.Build(inline, compute: ComputeType.Float16);
        foreach (var model in new[] { lazy, external })
        {
            using var actual = TrainingGraph.Build(model, compute: ComputeType.Float16);
            Assert.That(actual.Frozen.Values.Keys, Is.EquivalentTo(expected.Frozen.Values.Keys));
            foreach (var (name, value) in expected.Frozen.Values)
                Assert.That(actual.Frozen.Values[name].GetTensorMutableRawData().ToArray(), Is.EqualTo(value.GetTensorMutableRawData().ToArray()), name);
            foreach (var p in expected.Parameters) Assert.That(actual.InitialValues[p], Is.EqualTo(expected.InitialValues[p]), p);
        }
        Assert.That(expected.Frozen.Values["model.embed_tokens.weight"].GetTensorTypeAndShape().ElementDataType,
            Is.EqualTo(Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Float16));
    }

    static IEnumerable<Unseen.Architecture> Float32Exports() => Unseen.Architectures.All.Where(a => a.Trainable && !a.HalfActivations);

    /// <summary>Every float32 export style of the Unseen set (fused projections, Gemm layers, KV caches, opset-23
    /// Attention/RotaryEmbedding/RMSNormalization, fp16 weights behind Casts, int32 tokens, float masks): fp16 loss
    /// within 1e-2 and each gradient within 2e-2 of its largest element of float32's; an fp16 step lowers the loss.</summary>
    [TestCaseSource(nameof(Float32Exports))]
    public void Fp16GradientsMatchFloat32OnUnseenExports(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        RandomizeB(model, std: 0.3f);
        var rng = new Random(2);
        var ids = Enumerable.Range(0, 10).Select(_ => (long)rng.Next(1, (int)Unseen.Architectures.Vocab)).ToArray();
        var mask = Enumerable.Range(0, 10).Select(i => i is 5 or 6 ? 0L : 1L).ToArray(); // row 1 left-padded by two
        var batch = new Batch(ids, mask, ids.Select((t, i) => mask[i] == 0 ? -100 : t).ToArray(), 2, 5);
        using var full = Session(model, ComputeType.Float32);
        using var half = Session(model, ComputeType.Float16);
        var (expectedLoss, expected) = full.ComputeGradients(batch);
        var (loss, grads) = half.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(expectedLoss).Within(1e-2), "loss");
        double worst = grads.Max(kv => Shared.MaxAbsDiff(kv.Value, expected[kv.Key]) / expected[kv.Key].Max(Math.Abs));
        TestContext.Out.WriteLine($"{arch}: loss {Math.Abs(loss - expectedLoss):G3}, worst gradient {worst:G3} of its max");
        Assert.That(worst, Is.LessThan(2e-2));
        half.Step(batch, 1e-2f);
        Assert.That(half.OptimizerStep, Is.EqualTo(1));
        Assert.That(half.EvalLoss(batch), Is.LessThan(loss - 1e-3));
    }

    [Test]
    public void LossScalingSkipsOverflowingStepsAndHalvesTheScale()
    {
        var reference = Reference("llama");
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        using var session = Session(model, ComputeType.Float16);
        // 2^24 · d loss/d logits overflows float16's 65504 on the way back.
        var state = session.GetOptimizerState();
        state["loss_scale"] = SafeTensor.FromFloats([1], [1 << 24]);
        session.SetOptimizerState(state);
        var before = session.GetParameters();
        var batch = EngineFixtures.ReferenceBatch(reference);
        session.Step(batch, 1e-2f);
        Assert.That(session.LastGradNorm, Is.NaN.Or.EqualTo(float.PositiveInfinity), "the first step's gradients overflow");
        Assert.That(session.OptimizerStep, Is.EqualTo(0), "and its update is skipped");
        foreach (var (p, v) in session.GetParameters()) Assert.That(v, Is.EqualTo(before[p]), p);
        while (session.OptimizerStep == 0 && session.Scaler!.SkippedSteps < 20) session.Step(batch, 1e-2f);
        Assert.That(session.OptimizerStep, Is.EqualTo(1), "a lower scale gets through");
        Assert.That(session.Scaler!.Scale, Is.EqualTo((1 << 24) / MathF.Pow(2, session.Scaler.SkippedSteps)));
        Assert.That(float.IsFinite(session.LastGradNorm));
        Assert.That(Shared.MaxAbsDiff(session.GetParameters().Values.First(), before.Values.First()), Is.GreaterThan(0f));

        // Checkpoints carry the scaler, as the Trainer saves GradScaler's state.
        using var resumed = Session(model, ComputeType.Float16);
        resumed.SetOptimizerState(session.GetOptimizerState());
        Assert.That((resumed.Scaler!.Scale, resumed.Scaler.GoodSteps), Is.EqualTo((session.Scaler.Scale, 1)));
    }

    [Test]
    public void LossScaleDoublesAfterTwoThousandFiniteSteps()
    {
        var scaler = new LossScaler();
        for (int i = 0; i < LossScaler.GrowthInterval - 1; i++) Assert.That(scaler.Update(1f));
        Assert.That(scaler.Scale, Is.EqualTo(LossScaler.InitialScale));
        scaler.Update(1f);
        Assert.That(scaler.Scale, Is.EqualTo(2 * LossScaler.InitialScale));
        Assert.That(scaler.Update(float.NaN), Is.False);
        Assert.That((scaler.Scale, scaler.GoodSteps, scaler.SkippedSteps), Is.EqualTo((LossScaler.InitialScale, 0, 1)));
    }

    /// <summary>CPU has no bfloat16 kernels, but the bfloat16 training graph builds here (its probe runs as float16) and
    /// ONNX Runtime resolves it; only kernel lookup fails. The session refuses CPU up front with one message.</summary>
    [Test]
    public void Bf16TrainingGraphIsConsistentAndCpuIsRefused()
    {
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        using var graph = TrainingGraph.Build(model, compute: ComputeType.BFloat16);
        Assert.That(graph.ScalesLoss, Is.False, "bfloat16 has float32's range: no loss scaling, as torch.amp");
        var step = graph.BuildStep(new AdamWOptions());
        var types = ElementTypes.Infer(step.Graph);
        Assert.That(ElementTypes.Mentioned(step), Does.Contain((int)DT.Bfloat16).And.Not.Contain((int)DT.Float16));
        foreach (var p in graph.Parameters)
            Assert.That(new[] { types[TrainingGraph.GradOf(p)], types[TrainingGraph.Updated(p)] }, Is.All.EqualTo((int)DT.Float), p);
        Assert.That(types[TrainingGraph.Loss], Is.EqualTo((int)DT.Float));
        var error = Assert.Throws<OnnxRuntimeException>(() => new InferenceSession(step.ToByteArray()).Dispose())!;
        Assert.That(error.Message, Does.Contain("Could not find an implementation"));

        var refused = Assert.Throws<OrtLoraException>(() => Session(model, ComputeType.BFloat16).Dispose())!;
        Assert.That(refused.Message, Does.Contain("--device cuda").And.Contain("--fp16"));
    }

    /// <summary>The bfloat16 gradient graph retyped to float32 (bfloat16 weights, float32 arithmetic; see
    /// HalfPrecisionTests.Bf16WeightsAndWiringReproduceFloat32Logits) gives PEFT's loss and gradients within
    /// bfloat16's weight rounding: its backward is wired right, and only the GPU can tell its arithmetic.</summary>
    [Test]
    public void Bf16GradientGraphWithFloat32ArithmeticMatchesPeft()
    {
        var reference = Reference("llama");
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        using var graph = TrainingGraph.Build(model, compute: ComputeType.BFloat16);
        using var emulated = new OnnxModel(ElementTypes.Retype(graph.Gradients, (int)DT.Bfloat16, (int)DT.Float));
        var batch = EngineFixtures.ReferenceBatch(reference);
        var feeds = graph.Parameters.ToDictionary(p => p, p => HostTensor.Of(graph.InitialValues[p], graph.ParameterShapes[p]));
        foreach (var (name, weight) in graph.Frozen.Values) // the shared frozen weights, bfloat16 widened like the graph
        {
            var info = weight.GetTensorTypeAndShape();
            feeds[name] = HostTensor.Of(info.ElementDataType == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16
                ? weight.GetTensorDataAsSpan<BFloat16>().ToArray().Select(b => (float)b).ToArray()
                : weight.GetTensorDataAsSpan<float>().ToArray(), info.Shape);
        }
        feeds["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape);
        feeds["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape);
        feeds[TrainingGraph.Labels] = HostTensor.Of(batch.Labels, batch.Shape);
        var outputs = OrtRun.Run(emulated, feeds);
        float loss = outputs[TrainingGraph.Loss].Floats[0];
        Assert.That(loss, Is.EqualTo(reference["loss"].AsFloats()[0]).Within(1e-2));
        double worst = graph.Parameters.Max(p =>
        {
            var expected = reference["grad." + EngineFixtures.ReferenceName(p)].AsFloats();
            return Shared.MaxAbsDiff(outputs[TrainingGraph.GradOf(p)].Floats, expected) / expected.Max(Math.Abs);
        });
        TestContext.Out.WriteLine($"loss {Math.Abs(loss - reference["loss"].AsFloats()[0]):G3}, worst gradient {worst:G3} of its max");
        Assert.That(worst, Is.LessThan(3e-2));
    }

    static string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    static string[] TrainArgs(string output, params string[] extra) =>
    [
        "train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"), "--target-modules", "all-linear",
        "--r", "4", "--per-device-train-batch-size", "2", "--gradient-accumulation-steps", "2", "--max-steps", "8", "--learning-rate", "5e-3",
        "--max-seq-length", "64", "--logging-steps", "1", "--plain-log", "--merge", "-o", output, .. extra,
    ];

    /// <summary>`ortlora train --fp16` with gradient accumulation: its loss tracks the float32 run's at every step, the
    /// adapter is float32 in PEFT's format, and the merge goes into the original float32 model.</summary>
    [Test]
    public void TrainFp16TracksFloat32AndMergesIntoTheFloat32Model()
    {
        var (fp32, fp16) = (Shared.TempDir(), Shared.TempDir());
        OrtloraOk(TrainArgs(fp32));
        var run = OrtloraOk(TrainArgs(fp16, "--fp16"));
        Assert.That(run.Out, Does.Contain("fp16 compute:"));
        List<double> Losses(string dir, string key) => File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m[key] is not null).Select(m => m[key]!.GetValue<double>()).ToList();
        var (a, b) = (Losses(fp32, "loss"), Losses(fp16, "loss"));
        Assert.That(b, Has.Count.EqualTo(8));
        for (int i = 0; i < a.Count; i++) Assert.That(b[i], Is.EqualTo(a[i]).Within(1e-2), $"train loss, step {i + 1}");
        var (evalA, evalB) = (Losses(fp32, "eval_loss"), Losses(fp16, "eval_loss"));
        Assert.That(evalB[^1], Is.EqualTo(evalA[^1]).Within(1e-2));
        Assert.That(evalB[^1], Is.LessThan(evalB[0] - 0.05), "eval loss goes down");
        TestContext.Out.WriteLine($"train loss fp32 {string.Join(" ", a.Select(l => l.ToString("F4")))}\n          fp16 {string.Join(" ", b.Select(l => l.ToString("F4")))}");

        var adapter = SafeTensors.Read(Path.Combine(fp16, "adapter_model.safetensors"));
        Assert.That(adapter.Values.Select(t => t.DType), Is.All.EqualTo("F32"));
        using var merged = OnnxModel.Load(Path.Combine(fp16, "merged", "model.onnx"));
        using var original = OnnxModel.Load(Tiny("model.onnx"));
        Assert.That(merged.Graph.Initializer.Select(t => t.DataType), Is.EqualTo(original.Graph.Initializer.Select(t => t.DataType)), "merged in float32");
        Assert.That(GraphEditor.OpHistogram(merged.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
    }

    [Test]
    public void Bf16OnCpuAndBothFlagsAreOneClearError()
    {
        var both = Ortlora(TrainArgs(Shared.TempDir(), "--fp16", "--bf16"));
        Assert.That(both.ExitCode, Is.Not.EqualTo(0));
        Assert.That(both.Error, Does.Contain("choose one of --fp16 and --bf16"));
        var bf16 = Ortlora(TrainArgs(Shared.TempDir(), "--bf16"));
        Assert.That(bf16.ExitCode, Is.Not.EqualTo(0));
        Assert.That(bf16.Error, Does.Contain("bfloat16 compute needs").And.Contain("--device cuda"));
    }
}
