using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The eval graph's count of tokens predicted right (TRL's mean_token_accuracy is it over the counted tokens),
/// whole and chunked through the lm_head, against the arg-max of the logits a plain ONNX Runtime run gives.</summary>
public class EngineTokenAccuracyTests
{
    /// <summary>A batch whose labels the tiny model's arg-max gets right at known places (half the counted ones).</summary>
    static (OnnxModel Model, Batch Batch, int Expected) KnownBatch()
    {
        var model = OnnxModel.Load(LoraTestKit.Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 4 });
        LoraTestKit.RandomizeB(model);
        var feeds = LoraTestKit.TinyFeeds();
        var logits = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        var ids = feeds["input_ids"].Int64s;
        int rows = 2, length = 24, vocab = logits.Length / (rows * length);
        long ArgMax(int row, int t) => Enumerable.Range(0, vocab).MaxBy(v => logits[(row * length + t) * vocab + v]);

        // Labels that the arg-max gets right at every third position, wrong at the next, ignored at the third: the count
        // is known without the graph. Position t's label is predicted from t − 1's logits.
        var labels = new long[rows * length];
        int expected = 0;
        for (int row = 0; row < rows; row++)
            for (int t = 0; t < length; t++)
            {
                long best = t > 0 ? ArgMax(row, t - 1) : 0;
                labels[row * length + t] = (t % 3) switch { 0 => best, 1 => (best + 1) % vocab, _ => -100 };
                if (t > 0 && t % 3 == 0) expected++;
            }
        return (model, new Batch(ids, feeds["attention_mask"].Int64s, labels, rows, length), expected);
    }

    [TestCase(1)]
    [TestCase(4)]
    public void CorrectTokensAreTheLogitsArgMaxHits(int chunks)
    {
        var (model, batch, expected) = KnownBatch();
        using var owned = model;
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: chunks));
        if (chunks > 1) Assert.That(session.Graph.Eval.Graph.Node.Count(n => n.Name.Contains("/chunk3")), Is.GreaterThan(0), "the eval head runs in chunks");
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(expected, Is.GreaterThan(10));
        Assert.That(correct, Is.EqualTo(expected));
        Assert.That(loss, Is.EqualTo(session.EvalLoss(batch)));
    }

    /// <summary>Training counts too (TRL's training mean_token_accuracy): a step's count and an accumulated micro-batch's
    /// are those of the parameters before the update, whole and chunked; after the update the count moves with them.</summary>
    [TestCase(1)]
    [TestCase(4)]
    public void StepsCountBeforeTheirUpdate(int chunks)
    {
        var (model, batch, expected) = KnownBatch();
        using var owned = model;
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LossChunks: chunks));
        session.Step(batch, learningRate: 0.05f);
        Assert.That(session.LastCorrectTokens, Is.EqualTo(expected), "the step's forward");
        var after = session.Evaluate(batch).CorrectTokens;
        session.Accumulate(batch, gradScale: 1);
        Assert.That(session.LastCorrectTokens, Is.EqualTo(after), "a micro-batch at the updated parameters");
    }
}
