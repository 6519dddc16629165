using System.Text.Json.Nodes;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using TrainingSession = OrtLora.Training.Engine.TrainingSession;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>NEFTune (--neftune-noise-alpha): uniform noise of magnitude α/√(S·d) on the token embeddings, in the
/// training graphs only.</summary>
public class EngineNeftuneTests
{
    const int B = 4, S = 32;

    static Batch RandomBatch(int seed)
    {
        var rng = new Random(seed);
        var ids = Enumerable.Range(0, B * S).Select(_ => (long)rng.Next(LlamaShape.Tiny.VocabSize)).ToArray();
        return new Batch(ids, Enumerable.Repeat(1L, ids.Length).ToArray(), ids, B, S);
    }

    /// <summary>The noise drawn for a micro-batch: inside ±α/√(S·d) (transformers' magnitude, S the padded length),
    /// reaching its bounds, centred, with a uniform's variance (m²/3); another step or micro-batch draws anew, the same
    /// arguments draw the same numbers.</summary>
    [Test]
    public void TheNoiseIsUniformWithTransformersMagnitude()
    {
        const int hidden = 64;
        var draw = NeftuneNoise.Draw(alpha: 5, seed: 11, step: 3, microBatch: 0, B, S, hidden);
        double magnitude = 5 / Math.Sqrt(S * hidden);
        Assert.That(draw, Has.Length.EqualTo(B * S * hidden));
        Assert.That(draw.Max(Math.Abs), Is.LessThanOrEqualTo(magnitude).And.GreaterThan(magnitude * 0.999));
        double mean = draw.Average(v => (double)v);
        double variance = draw.Average(v => (v - mean) * (v - mean));
        Assert.That(Math.Abs(mean), Is.LessThan(0.02 * magnitude));
        Assert.That(variance, Is.EqualTo(magnitude * magnitude / 3).Within(3).Percent);
        Assert.That(NeftuneNoise.Draw(5, 11, 3, 0, B, S, hidden), Is.EqualTo(draw));
        foreach (var other in new[] { NeftuneNoise.Draw(5, 11, 4, 0, B, S, hidden), NeftuneNoise.Draw(5, 11, 3, 1, B, S, hidden), NeftuneNoise.Draw(5, 12, 3, 0, B, S, hidden) })
        {
            Assert.That(Shared.MaxAbsDiff(draw, other), Is.GreaterThan(magnitude));
            double correlation = draw.Zip(other, (a, b) => (double)a * b).Sum() / (draw.Length * magnitude * magnitude / 3);
            Assert.That(Math.Abs(correlation), Is.LessThan(0.02), "independent draws");
        }
    }

    /// <summary>The graph adds the fed noise to the token embedding: in the tiny model's forward, the embedding the first
    /// layer reads minus the Gather's output is the noise.</summary>
    [Test]
    public void TheGraphAddsTheFedNoiseToTheTokenEmbedding()
    {
        using var model = EngineFixtures.TinyWithLora();
        var proto = model.Proto.Clone();
        var g = new GraphEditor(proto.Graph);
        long width = NeftuneNoise.Apply(g, model.Source);
        Assert.That(width, Is.EqualTo(LlamaShape.Tiny.HiddenSize));
        var add = proto.Graph.Node.Single(n => n.Name == "neftune/Add");
        Assert.That(g.Producer(add.Input[0])!.OpType, Is.EqualTo("Gather"));
        foreach (var value in new[] { add.Input[0], add.Output[0] }) proto.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = value });
        var batch = RandomBatch(1);
        var noise = NeftuneNoise.Draw(5, 1, 0, 0, B, S, width);
        using var session = new InferenceSession(proto.ToByteArray());
        var feeds = new Dictionary<string, OrtValue>
        {
            ["input_ids"] = OrtValue.CreateTensorValueFromMemory(batch.InputIds, [B, S]),
            ["attention_mask"] = OrtValue.CreateTensorValueFromMemory(batch.AttentionMask, [B, S]),
            [NeftuneNoise.Input] = OrtValue.CreateTensorValueFromMemory(noise, [B, S, width]),
        };
        try
        {
            using var outputs = session.Run(new RunOptions(), feeds.Keys.ToArray(), feeds.Values.ToArray(), [add.Input[0], add.Output[0]]);
            var clean = outputs[0].GetTensorDataAsSpan<float>().ToArray();
            var noisy = outputs[1].GetTensorDataAsSpan<float>().ToArray();
            Assert.That(Shared.MaxAbsDiff(noisy.Zip(clean, (a, b) => a - b).ToArray(), noise), Is.LessThan(1e-6f));
            Assert.That(proto.Graph.Node.Where(n => n.Input.Contains(add.Input[0])).Select(n => n.OpType).Order(), Is.EqualTo(new[] { "Add", "Shape" }),
                "nothing reads the clean embedding but the noise's Add");
        }
        finally { foreach (var v in feeds.Values) v.Dispose(); }
    }

    /// <summary>Only the training graphs carry the noise: eval losses equal those of a session without it. Steps differ
    /// (the noise moves the loss) and still train. With gradient checkpointing the recomputed segments read the
    /// forward's noise: a checkpointed session (same seed, so the same draws) gives the same losses and parameters.</summary>
    [TestCase(ComputeType.Float32)] [TestCase(ComputeType.Float16)]
    public void OnlyTrainingSeesTheNoiseAndCheckpointingReplaysTheForwardsNoise(ComputeType compute)
    {
        using var model = EngineFixtures.TinyWithLora();
        RandomizeB(model, std: 0.1f);
        var batch = RandomBatch(2);
        var eval = RandomBatch(3);
        (float[] Losses, double Eval, Dictionary<string, float[]> Parameters) Train(double alpha, bool checkpointing)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), NeftuneNoiseAlpha: alpha,
                GradientCheckpointing: checkpointing, Seed: 5, Compute: compute));
            if (checkpointing) Assert.That(Checkpoints.CountSegments(session.Graph.Gradients.Graph), Is.GreaterThanOrEqualTo(1));
            double evalBefore = session.EvalLoss(eval);
            var losses = Enumerable.Range(0, 6).Select(_ => session.Step(batch, learningRate: 5e-3f, maxGradNorm: 1f)).ToArray();
            Assert.That(session.Graph.Eval.Graph.Input.Any(i => i.Name == NeftuneNoise.Input), Is.False, "eval graph has no noise");
            Assert.That(session.Graph.Gradients.Graph.Input.Count(i => i.Name == NeftuneNoise.Input), Is.EqualTo(alpha > 0 ? 1 : 0));
            return (losses, evalBefore, session.GetParameters());
        }
        var plain = Train(0, false);
        var noisy = Train(5, false);
        var noisyCheckpointed = Train(5, true);
        Assert.That(noisy.Eval, Is.EqualTo(plain.Eval));
        Assert.That(noisy.Losses[0], Is.Not.EqualTo(plain.Losses[0]).Within(1e-5), "the noise reaches the training loss");
        Assert.That(noisy.Losses[^1], Is.LessThan(noisy.Losses[0]), "it trains");
        // float16: ORT fuses a checkpointed forward differently, which moves float16 roundings (EngineCheckpointingTests);
        // a different draw would move the loss by about the noise's own effect, 0.1 here
        bool half = compute == ComputeType.Float16;
        Assert.That(noisyCheckpointed.Losses, Is.EqualTo(noisy.Losses).Within(half ? 1e-3 : 1e-5));
        if (half) return;
        foreach (var (p, values) in noisy.Parameters)
            Assert.That(Shared.MaxAbsDiff(noisyCheckpointed.Parameters[p], values), Is.LessThan(1e-5f), p);
    }

    /// <summary>`train --neftune-noise-alpha 5` as a user runs it: the step-0 eval is untouched and the training losses
    /// move. The noise is a function of (seed, step, micro-batch), so --cuda-graphs (the noise through a fixed buffer)
    /// trains the same, and a run resumed from a checkpoint ends with the adapter of the uninterrupted run, byte for byte.</summary>
    [Test]
    public void TrainCommandTakesTheNoise()
    {
        string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);
        string[] Args(string dir, params string[] extra) =>
        [
            "train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"), "--r", "4",
            "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--max-steps", "6", "--logging-steps", "1", "--plain-log",
            "--max-seq-length", "128", "-o", dir, .. extra,
        ];
        (List<JsonNode> Metrics, string Dir) Run(params string[] extra)
        {
            var dir = Shared.TempDir();
            OrtloraOk(Args(dir, extra));
            return (File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!).ToList(), dir);
        }
        double Eval0(List<JsonNode> m) => m.First(x => x["eval_loss"] is not null)["eval_loss"]!.GetValue<double>();
        double[] Losses(List<JsonNode> m) => m.Where(x => x["loss"] is not null).Select(x => x["loss"]!.GetValue<double>()).ToArray();
        var plain = Run().Metrics;
        var (noisy, dir) = Run("--neftune-noise-alpha", "5", "--save-steps", "3");
        Assert.That(Eval0(noisy), Is.EqualTo(Eval0(plain)));
        Assert.That(Losses(noisy)[0], Is.Not.EqualTo(Losses(plain)[0]).Within(1e-4));
        Assert.That(Losses(noisy)[^1], Is.LessThan(Losses(noisy)[0]));

        var padded = Run("--neftune-noise-alpha", "5", "--pad-to-max-length").Metrics;
        var graphs = Run("--neftune-noise-alpha", "5", "--cuda-graphs").Metrics;
        Assert.That(Losses(graphs), Is.EqualTo(Losses(padded)).Within(1e-5), "--cuda-graphs: the same noise through a fixed buffer");

        var adapter = File.ReadAllBytes(Path.Combine(dir, Lora.PeftAdapter.WeightsFile));
        File.Delete(Path.Combine(dir, Lora.PeftAdapter.WeightsFile));
        OrtloraOk(Args(dir, "--neftune-noise-alpha", "5", "--save-steps", "3", "--resume-from-checkpoint", Path.Combine(dir, "checkpoint-3")));
        Assert.That(File.ReadAllBytes(Path.Combine(dir, Lora.PeftAdapter.WeightsFile)), Is.EqualTo(adapter), "resumed: the same draws");
    }
}
