using InferenceSession = Microsoft.ML.OnnxRuntime.InferenceSession;
using OrtValue = Microsoft.ML.OnnxRuntime.OrtValue;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>CUDA graphs' half on the host: every Run of a captured graph binds the same buffers, and training through
/// those fixed buffers (batch and scalars copied in, loss and norm copied out) is training as before. The capture
/// itself (ORT's enable_cuda_graph) needs a GPU; on the CPU the option changes only how values are bound.</summary>
public class EngineFixedAddressTests
{
    static Batch Row(Batch b, int row)
    {
        int s = b.SequenceLength;
        long[] Take(long[] a) => a.AsSpan(row * s, s).ToArray();
        return new Batch(Take(b.InputIds), Take(b.AttentionMask), Take(b.Labels), 1, s);
    }

    /// <summary>The same schedule on two sessions, one with CUDA graphs asked for: losses, norms, parameters and
    /// moments bit for bit equal; and for each (session, graph id), every Run bound the same OrtValues under the same
    /// names. Each graph id runs at least twice, so a per-Run temporary would show. With the state copied back
    /// (CopyStateBack; CUDA graphs' default, null) every run of a session is graph 0.</summary>
    [TestCase(ComputeType.Float32, false)]
    [TestCase(ComputeType.Float16, false)]
    [TestCase(ComputeType.Float32, null)]
    public void FixedAddressesTrainBitForBitAndEveryReplayFindsItsBuffers(ComputeType compute, bool? copyBack)
    {
        var batch = PeftParity.ReadBatch(SafeTensors.Read(Shared.Peft("llama", "reference.safetensors")));
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        var options = new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01), Compute: compute, StaticShapes: true, StateInSessionMemory: true);
        using var plain = new TrainingSession(model, options);
        using var graphs = new TrainingSession(model, options with { CudaGraphs = true, CopyStateBack = copyBack });
        var firstBinding = new Dictionary<(InferenceSession, int), List<(string Name, OrtValue Value)>>();
        var runs = new Dictionary<(InferenceSession, int), int>();
        graphs.RunObserver = (session, id, bound) =>
        {
            if (id < 0) return;
            var key = (session, id);
            runs[key] = runs.GetValueOrDefault(key) + 1;
            if (!firstBinding.TryGetValue(key, out var first)) { firstBinding[key] = [.. bound]; return; }
            Assert.That(bound.Select(b => b.Name), Is.EqualTo(first.Select(b => b.Name)), $"graph {id}: the same names");
            for (int i = 0; i < bound.Count; i++)
                Assert.That(ReferenceEquals(bound[i].Value, first[i].Value), $"graph {id}: '{bound[i].Name}' bound to another buffer than at capture");
        };

        var losses = new List<(float, float)>();
        void Both(Func<TrainingSession, float> action) => losses.Add((action(plain), action(graphs)));
        for (int i = 0; i < 3; i++) Both(s => s.Step(batch, 1e-2f, maxGradNorm: 1f));
        Both(s => s.EvalLoss(batch));
        Both(s => s.EvalLoss(batch));
        for (int i = 0; i < 3; i++) Both(s => s.Accumulate(Row(batch, i % 2), 0.5f));
        Both(s => { s.ApplyAccumulated(1e-2f, maxGradNorm: 1f); return s.LastGradNorm; });
        Both(s => s.Step(batch, 1e-2f));
        Both(s => s.Step(Row(batch, 1), 1e-2f)); // another shape: a new session with its own buffers
        Both(s => s.Step(Row(batch, 1), 1e-2f));
        Both(s => s.ComputeGradients(batch).Loss); // outputs allocated by the Run: not captured (graph id -1)

        foreach (var (expected, actual) in losses) Assert.That(actual, Is.EqualTo(expected));
        Assert.That(losses.Select(l => l.Item1).Distinct().Count(), Is.GreaterThan(5), "the schedule trains");
        var (a, b) = (plain.GetParameters(), graphs.GetParameters());
        foreach (var p in plain.ParameterNames) Assert.That(b[p], Is.EqualTo(a[p]), p);
        var (ma, mb) = (plain.GetOptimizerState(), graphs.GetOptimizerState());
        foreach (var k in ma.Keys) Assert.That(mb[k].Data, Is.EqualTo(ma[k].Data), k);

        Assert.That(runs.Values, Has.All.GreaterThanOrEqualTo(1));
        Assert.That(runs.Count(kv => kv.Value >= 2), Is.GreaterThanOrEqualTo(3), "replays of step, eval and accumulate graphs were checked");
        if (copyBack ?? true) Assert.That(runs.Keys.Select(k => k.Item2).Distinct(), Is.EqualTo(new[] { 0 }), "one graph per session");
        else Assert.That(runs.Keys.Select(k => k.Item2).Distinct(), Is.SupersetOf(new[] { 0, 1, 2 }), "one graph per state parity (and accumulator parity)");
        Assert.That(firstBinding.Values.SelectMany(v => v).Select(v => v.Name), Has.Member(TrainingGraph.LearningRate).And.Member(TrainingGraph.Loss).And.Member("input_ids"));
    }

    /// <summary>A replay repeats the captured random numbers, so training-mode dropout and CUDA graphs are one error at
    /// load naming the node and the way out.</summary>
    [Test]
    public void DropoutIsRefusedWithCudaGraphs()
    {
        using var model = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny, seed: 3);
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj"], LoraDropout = 0.1 });
        var ids = Enumerable.Range(0, 16).Select(i => (long)(i * 7 % 500)).ToArray();
        var batch = new Batch(ids, Enumerable.Repeat(1L, 16).ToArray(), ids, 2, 8);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), CudaGraphs: true));
        var e = Assert.Throws<OrtLoraException>(() => session.Step(batch, 1e-3f))!;
        Assert.That(e.Message, Does.Contain("Dropout").And.Contain("lora_dropout").And.Contain("--lora-dropout 0"));
        Assert.That(session.EvalLoss(batch), Is.GreaterThan(0), "eval has no dropout and still runs");
    }

    /// <summary>Padding a batch to a larger fixed shape (more columns, and a filler row that attends to one pad token and
    /// scores nothing) leaves the loss and the gradients as they were.</summary>
    [Test]
    public void PaddingToAFixedShapeChangesNeitherLossNorGradients()
    {
        var batch = PeftParity.ReadBatch(SafeTensors.Read(Shared.Peft("llama", "reference.safetensors")));
        using var model = EngineFixtures.InjectedModel("llama", "dynamo");
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions()));
        var sequences = Enumerable.Range(0, batch.BatchSize).Select(r =>
        {
            var mask = batch.AttentionMask.AsSpan(r * batch.SequenceLength, batch.SequenceLength).ToArray();
            int length = mask.Count(m => m == 1);
            Assert.That(mask.Skip(length), Has.All.EqualTo(0L), "right-padded");
            var ids = batch.InputIds.AsSpan(r * batch.SequenceLength, length).ToArray();
            var labels = batch.Labels.AsSpan(r * batch.SequenceLength, length).ToArray();
            return new Training.Data.Sequence(ids.Select(i => (int)i).ToArray(), labels.Select(l => (int)l).ToArray(), r + 1, [r]);
        }).ToList();
        var padded = Training.Data.Batching.Pad(sequences, padId: 0, epoch: 0, shape: (batch.BatchSize + 1, batch.SequenceLength + 7));
        Assert.That(padded.Shape, Is.EqualTo(new long[] { batch.BatchSize + 1, batch.SequenceLength + 7 }));
        var engineBatch = new Batch(padded.InputIds, padded.AttentionMask, padded.Labels, padded.BatchSize, padded.SeqLength);

        var (loss, grads) = session.ComputeGradients(batch);
        var (paddedLoss, paddedGrads) = session.ComputeGradients(engineBatch);
        Assert.That(paddedLoss, Is.EqualTo(loss).Within(1e-6 * Math.Abs(loss)));
        foreach (var (p, g) in grads)
            Assert.That(Shared.MaxAbsDiff(paddedGrads[p], g), Is.LessThanOrEqualTo(1e-5f * g.Max(Math.Abs) + 1e-12f), p);
        Assert.That(() => Training.Data.Batching.Pad(sequences, 0, 0, shape: (1, batch.SequenceLength)),
            Throws.TypeOf<OrtLoraException>().With.Message.Contain("do not fit a [1, "));
    }
}
