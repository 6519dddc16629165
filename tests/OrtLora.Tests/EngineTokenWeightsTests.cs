using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The loss of weighted tokens (<see cref="TrainingGraph.TokenWeighted"/>), GRPO's policy gradient: Σ w·nll over
/// the labelled tokens with each label's weight a graph input, whole and in chunks through the lm_head.</summary>
public class EngineTokenWeightsTests
{
    const int Rows = 3, Length = 16;

    /// <summary>Rows with a prompt (labels -100), completions of different lengths, right padding.</summary>
    static Batch PromptCompletionBatch()
    {
        var rng = new Random(5);
        int vocab = Graphs.LlamaShape.Tiny.VocabSize;
        int[] lengths = [16, 11, 13], prompts = [5, 4, 6];
        var ids = new long[Rows * Length];
        var mask = new long[Rows * Length];
        var labels = new long[Rows * Length];
        for (int row = 0; row < Rows; row++)
            for (int t = 0; t < Length; t++)
            {
                int i = row * Length + t;
                ids[i] = rng.Next(vocab);
                mask[i] = t < lengths[row] ? 1 : 0;
                labels[i] = t < prompts[row] || t >= lengths[row] ? -100 : ids[i];
            }
        return new Batch(ids, mask, labels, Rows, Length);
    }

    /// <summary>A weight for each labelled token, and large values where there is no label (which must not count).</summary>
    static float[] Weights(Batch batch, Func<int, int, float> weight) =>
        [.. batch.Labels.Select((label, i) => label == -100 ? 1000f : weight(i / Length, i % Length))];

    static OnnxModel Injected()
    {
        var model = OnnxModel.Load(LoraTestKit.Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        return model;
    }

    /// <summary>Each labelled token's −log p(label) from a plain run of the model's logits (position t predicts t + 1).</summary>
    static double WeightedNll(OnnxModel model, Batch batch, float[] weights, double temperature = 1)
    {
        var feeds = new Dictionary<string, HostTensor> { ["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape), ["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape) };
        var logits = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        int vocab = logits.Length / (Rows * Length);
        double total = 0;
        for (int row = 0; row < Rows; row++)
            for (int t = 0; t + 1 < Length; t++)
            {
                int next = row * Length + t + 1;
                if (batch.Labels[next] == -100) continue;
                var z = logits.AsSpan((row * Length + t) * vocab, vocab);
                double max = double.NegativeInfinity, sum = 0;
                foreach (var v in z) max = Math.Max(max, v / temperature);
                foreach (var v in z) sum += Math.Exp(v / temperature - max);
                total += weights[next] * -(z[(int)batch.Labels[next]] / temperature - max - Math.Log(sum));
            }
        return total;
    }

    /// <summary>With weight 1/N on each of the N labelled tokens the loss is the causal-LM loss: the same loss, gradients
    /// and tokens predicted right as a session of the plain loss.</summary>
    [TestCase(1)]
    [TestCase(4)]
    public void WeightsOfOneOverTheCountGiveTheMeanLoss(int chunks)
    {
        using var model = Injected();
        using var plain = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: chunks));
        using var weighted = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: chunks, TokenWeighted: true));
        var batch = PromptCompletionBatch();
        // the first position's label predicts nothing (no logits before it)
        int counted = batch.Labels.Where((l, i) => l != -100 && i % Length != 0).Count();
        var uniform = batch with { TokenWeights = Weights(batch, (_, _) => 1f / counted) };

        var (expectedLoss, expectedGradients) = plain.ComputeGradients(batch);
        var (loss, gradients) = weighted.ComputeGradients(uniform);
        Assert.That(loss, Is.EqualTo(expectedLoss).Within(1e-5 * expectedLoss));
        foreach (var (name, expected) in expectedGradients)
        {
            double scale = expected.Max(v => Math.Abs(v));
            Assert.That(scale, Is.GreaterThan(0), name);
            for (int i = 0; i < expected.Length; i++) Assert.That(gradients[name][i], Is.EqualTo(expected[i]).Within(1e-4 * scale), $"{name}[{i}]");
        }
        var (_, plainCorrect) = plain.Evaluate(batch);
        var (_, weightedCorrect) = weighted.Evaluate(uniform);
        Assert.That(weightedCorrect, Is.EqualTo(plainCorrect), "accuracy counts each labelled token once, whatever its weight");
    }

    /// <summary>Signed weights (a positive and a negative advantage per row, as GRPO's): the loss is Σ w·nll of plain
    /// logits, and its gradient matches central differences, whole and chunked.</summary>
    /// <remarks>With a temperature the loss reads logits / T, as TRL scores GRPO's completions.</remarks>
    [TestCase(1, 1.0)]
    [TestCase(3, 1.0)]
    [TestCase(3, 0.7)]
    public void SignedWeightsGiveTheirWeightedSumAndItsGradient(int chunks, double temperature)
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: chunks, TokenWeighted: true,
            LogitsTemperature: temperature));
        var batch = PromptCompletionBatch();
        float[] advantages = [1.3f, -0.7f, -2f];
        var weighted = batch with { TokenWeights = Weights(batch, (row, t) => advantages[row] / 10f * (1 + 0.1f * t)) };

        var (loss, gradients) = session.ComputeGradients(weighted);
        double expected = WeightedNll(model, batch, weighted.TokenWeights!, temperature);
        Assert.That(Math.Abs(expected), Is.GreaterThan(0.1));
        Assert.That(loss, Is.EqualTo(expected).Within(2e-5 * Math.Abs(expected)));
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.EvalLoss(weighted));
    }

    [Test]
    public void ABatchWithoutWeightsIsRefused()
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), TokenWeighted: true));
        var e = Assert.Throws<OrtLoraException>(() => session.EvalLoss(PromptCompletionBatch()));
        Assert.That(e!.Message, Does.Contain("token weights"));
    }
}
