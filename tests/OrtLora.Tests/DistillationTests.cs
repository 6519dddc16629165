using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>Knowledge distillation's loss (<see cref="DistillationLoss"/>, TRL's GKD generalized_jsd_loss) against the
/// formula computed here from plain ONNX Runtime runs of the student and the teacher; its gradients against central
/// differences.</summary>
public class DistillationTests
{
    const int Rows = 3, Length = 14, PromptLength = 5;

    /// <summary>Random tokens, the first <see cref="PromptLength"/> of each row read, the rest labelled; rows of different lengths.</summary>
    static Batch Sequences()
    {
        var rng = new Random(21);
        int[] lengths = [14, 10, 12];
        var ids = new long[Rows * Length];
        var mask = new long[Rows * Length];
        var labels = Enumerable.Repeat(-100L, Rows * Length).ToArray();
        for (int row = 0; row < Rows; row++)
            for (int t = 0; t < lengths[row]; t++)
            {
                int i = row * Length + t;
                ids[i] = rng.Next(1, Graphs.LlamaShape.Tiny.VocabSize);
                mask[i] = 1;
                if (t >= PromptLength) labels[i] = ids[i];
            }
        return new Batch(ids, mask, labels, Rows, Length);
    }

    static float[] Logits(OnnxModel model, Batch batch) =>
        OrtRun.Run(model, new Dictionary<string, HostTensor> { ["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape), ["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape) },
            ["logits"])["logits"].Floats;

    static double[] LogSoftmax(ReadOnlySpan<float> z)
    {
        double max = double.NegativeInfinity, sum = 0;
        foreach (var v in z) max = Math.Max(max, v);
        foreach (var v in z) sum += Math.Exp(v - max);
        var result = new double[z.Length];
        for (int i = 0; i < z.Length; i++) result[i] = z[i] - max - Math.Log(sum);
        return result;
    }

    /// <summary>TRL's generalized_jsd_loss written out: per counted position (its next label not -100) the divergence
    /// summed over the vocabulary, then divided by the number of counted positions.</summary>
    static double Expected(float[] student, float[] teacher, Batch batch, double beta)
    {
        int rows = batch.BatchSize, length = batch.SequenceLength, vocab = student.Length / (rows * length);
        double total = 0;
        int counted = 0;
        for (int row = 0; row < rows; row++)
            for (int t = 0; t + 1 < length; t++)
            {
                if (batch.Labels[row * length + t + 1] == -100) continue;
                counted++;
                var s = LogSoftmax(student.AsSpan((row * length + t) * vocab, vocab));
                var q = LogSoftmax(teacher.AsSpan((row * length + t) * vocab, vocab));
                for (int v = 0; v < vocab; v++)
                {
                    if (beta == 0) total += Math.Exp(q[v]) * (q[v] - s[v]);
                    else if (beta == 1) total += Math.Exp(s[v]) * (s[v] - q[v]);
                    else
                    {
                        double m = Math.Log((1 - beta) * Math.Exp(s[v]) + beta * Math.Exp(q[v]));
                        total += beta * Math.Exp(q[v]) * (q[v] - m) + (1 - beta) * Math.Exp(s[v]) * (s[v] - m);
                    }
                }
            }
        return total / counted;
    }

    static OnnxModel Student()
    {
        var model = OnnxModel.Load(LoraTestKit.Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 4 });
        LoraTestKit.RandomizeB(model, std: 0.3f);
        return model;
    }

    static Dictionary<string, float[]> Values(OnnxModel model, TrainingSession session) =>
        session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));

    [TestCase(0.0)]
    [TestCase(0.2)]
    [TestCase(0.5)]
    [TestCase(1.0)]
    public void LossEqualsTrlsGeneralizedJsdOnPlainLogits(double beta)
    {
        using var student = Student();
        using var teacherModel = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny, seed: 9);
        var batch = Sequences();
        var teacher = Logits(teacherModel, batch);
        using var session = new TrainingSession(student, new TrainingSessionOptions(new AdamWOptions(), DistillationBeta: beta));
        session.SetParameters(Values(student, session));
        var expected = Expected(Logits(student, batch), teacher, batch, beta);
        var (loss, _) = session.Evaluate(batch with { TeacherLogits = teacher });
        Assert.That(expected, Is.GreaterThan(1e-3), "the two models differ");
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));

        var (itself, _) = session.Evaluate(batch with { TeacherLogits = Logits(student, batch) });
        Assert.That(itself, Is.EqualTo(0).Within(1e-5), "a model is its own perfect teacher");
    }

    /// <summary>On the fixtures' real exports, with PEFT's own numbers: the student is the base with the fixture's
    /// adapter, the teacher the base alone, and the loss equals the divergence computed from PEFT's logits with the
    /// adapter (`logits`) and without it (`logits_base`); its gradients equal central differences.</summary>
    [TestCaseSource(typeof(LoraTestKit), nameof(LoraTestKit.Models))]
    public void RealExportsAgreeWithPeftsLogits(string arch, string file)
    {
        var export = file.Split('.')[1];
        var reference = LoraTestKit.Reference(arch);
        using var student = EngineFixtures.InjectedModel(arch, export);
        var batch = EngineFixtures.ReferenceBatch(reference) with { TeacherLogits = reference["logits_base"].AsFloats() };
        using var session = new TrainingSession(student, new TrainingSessionOptions(new AdamWOptions(), DistillationBeta: 0.5));
        var (loss, _) = session.Evaluate(batch);
        double expected = Expected(reference["logits"].AsFloats(), reference["logits_base"].AsFloats(), batch, 0.5);
        Assert.That(expected, Is.GreaterThan(1e-4), "the adapter moves the model");
        Assert.That(loss, Is.EqualTo(expected).Within(1e-4 * expected + 1e-6));
        var values = Values(student, session);
        var (_, gradients) = session.ComputeGradients(batch);
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains(".h.0."), step: 1e-3f);
    }

    static IEnumerable<Unseen.Architecture> UnseenExports() => Unseen.Architectures.All.Where(a => a.Trainable);

    /// <summary>Every trainable export style of the Unseen set (fp16 activations included, whose logits the loss reads
    /// upcast) distills toward a fixed random teacher distribution: the loss falls in a few steps.</summary>
    [TestCaseSource(nameof(UnseenExports))]
    public void EveryExportStyleDistills(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4 });
        var batch = Unseen.UnseenArchitectureTests.TrainBatch(arch);
        var rng = new Random(6);
        var teacher = Enumerable.Range(0, batch.BatchSize * batch.SequenceLength * (int)Unseen.Architectures.Vocab).Select(_ => (float)(rng.NextDouble() * 4)).ToArray();
        batch = batch with { TeacherLogits = teacher };
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), DistillationBeta: 0.5));
        double first = session.EvalLoss(batch);
        Assert.That(first, Is.GreaterThan(1e-3));
        for (int i = 0; i < 5; i++) session.Step(batch, 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(first - 1e-3)); // Gemma's is the slowest: 0.661 → 0.656
    }

    [TestCase(0.0)]
    [TestCase(0.5)]
    [TestCase(1.0)]
    public void GradientsMatchCentralDifferences(double beta)
    {
        using var student = Student();
        using var teacherModel = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny, seed: 9);
        var batch = Sequences() is var b ? b with { TeacherLogits = Logits(teacherModel, b) } : null!;
        using var session = new TrainingSession(student, new TrainingSessionOptions(new AdamWOptions(), DistillationBeta: beta));
        var values = Values(student, session);
        session.SetParameters(values);
        var (_, gradients) = session.ComputeGradients(batch);
        Assert.That(gradients.Values.Sum(g => g.Sum(x => (double)x * x)), Is.GreaterThan(1e-10));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss);
    }
}

/// <summary>`ortlora distill` (TRL's GKDTrainer) on the embedded tiny model: a teacher of the same vocabulary, the data's
/// completions and, with --lmbda, the student's own.</summary>
public class DistillCommandTests
{
    /// <summary>Another random model of the tiny shape (so of the tiny tokenizer's vocabulary): a teacher that disagrees.</summary>
    static readonly Lazy<string> Teacher = new(() =>
    {
        var path = Path.Combine(Shared.TempDir(), "teacher.onnx");
        using var model = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny, seed: 9);
        model.Save(path);
        return path;
    });

    static string[] Args(string output, params string[] extra) =>
    [
        "distill", LoraTestKit.Tiny("model.onnx"), "--teacher-model", Teacher.Value, "--data", LoraTestKit.Tiny("demo.parquet"),
        "--eval-data", LoraTestKit.Tiny("demo_eval.parquet"), "--target-modules", "all-linear", "--learning-rate", "5e-3", "--max-new-tokens", "12",
        "--eval-steps", "20", "--logging-steps", "5", "--plain-log", "-o", output, .. extra,
    ];

    static List<System.Text.Json.Nodes.JsonNode> Metrics(string dir) =>
        [.. File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => System.Text.Json.Nodes.JsonNode.Parse(l)!)];

    /// <summary>Off the data's completions (lmbda 0) and on the student's own (lmbda 1), the divergence to the teacher on
    /// held-out completions falls; perplexity, meaningless for a divergence, is not logged; the micro-batches trained
    /// on-policy are counted as lmbda says.</summary>
    /// <remarks>The eval scores the data's completions, which on-policy steps do not train on: they lower it less.</remarks>
    [TestCase("0", 0, 0.75)]
    [TestCase("1", 40, 0.9)]
    [TestCase("0.5", -1, 0.9)]
    public void TheDivergenceToTheTeacherFalls(string lmbda, int onPolicy, double factor)
    {
        var dir = Shared.TempDir();
        var run = LoraTestKit.OrtloraOk(Args(dir, "--lmbda", lmbda, "--max-steps", "40"));
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();
        Assert.That(evals, Has.Count.EqualTo(3));
        Assert.That(evals[0], Is.InRange(0.05, Math.Log(2)), "β = 0.5: the generalized JSD is at most log 2");
        Assert.That(evals[^1], Is.LessThan(factor * evals[0]));
        Assert.That(Metrics(dir).Any(m => m["perplexity"] is not null), Is.False);
        var counted = System.Text.RegularExpressions.Regex.Match(run.Out, @"distillation: (\d+) of 40 micro-batches");
        Assert.That(counted.Success, Is.True, run.Out);
        int n = int.Parse(counted.Groups[1].Value);
        if (onPolicy >= 0) Assert.That(n, Is.EqualTo(onPolicy));
        else Assert.That(n, Is.InRange(10, 30), "about half");
        // `eval --teacher-model` of the base with the adapter scores the divergence as training's last evaluation did
        var eval = LoraTestKit.OrtloraOk("eval", LoraTestKit.Tiny("model.onnx"), "--adapter", dir, "--data", LoraTestKit.Tiny("demo_eval.parquet"), "--teacher-model", Teacher.Value);
        Assert.That(double.Parse(eval.Out.Split("eval_loss ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(evals[^1]).Within(2e-4));
    }

    /// <summary>An on-policy micro-batch keeps each row's prompt and labels the student's completion after it; every
    /// batch carries the teacher's logits of its rows, as a plain run of the teacher gives them.</summary>
    [Test]
    public void OnPolicyBatchesKeepThePromptsAndCarryTheTeachersLogits()
    {
        using var student = OnnxModel.Load(LoraTestKit.Tiny("model.onnx"));
        LoraInjector.Inject(student, new LoraConfig { TargetModules = ["all-linear"], R = 4 });
        var tokenizer = Training.Data.TokenizerLoader.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny"));
        using var data = Training.Data.TrainingData.Open(LoraTestKit.Tiny("demo.parquet"), tokenizer, new Training.Data.DataOptions { BatchSize = 3, Shuffle = false });
        using var session = new TrainingSession(student, new TrainingSessionOptions(new AdamWOptions(), DistillationBeta: 0.5));
        using var distillation = new Training.Distillation(new Training.DistillationOptions(Teacher.Value, Lmbda: 1, MaxNewTokens: 6), student, session, data, seed: 4);
        var original = data.Batches(new Training.Data.DataPosition(0, 0)).First();
        distillation.BeginStep(0);
        var batch = distillation.ForTraining(original);
        Assert.That(distillation.OnPolicy, Is.EqualTo(1));
        int s = batch.SequenceLength, s0 = original.SeqLength;
        for (int r = 0; r < 3; r++)
        {
            int prompt = Enumerable.Range(0, s0).First(t => original.Labels[r * s0 + t] != -100);
            for (int t = 0; t < prompt; t++)
            {
                Assert.That(batch.InputIds[r * s + t], Is.EqualTo(original.InputIds[r * s0 + t]), $"row {r} prompt token {t}");
                Assert.That(batch.Labels[r * s + t], Is.EqualTo(-100));
            }
            int length = (int)batch.AttentionMask.Skip(r * s).Take(s).Sum();
            Assert.That(length - prompt, Is.InRange(1, 6), "the student's completion, at most --max-new-tokens");
            for (int t = prompt; t < length; t++) Assert.That(batch.Labels[r * s + t], Is.EqualTo(batch.InputIds[r * s + t]));
        }
        using var teacher = OnnxModel.Load(Teacher.Value);
        var plain = OrtRun.Run(teacher, new Dictionary<string, HostTensor> { ["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape), ["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape) },
            ["logits"])["logits"].Floats;
        int vocab = Graphs.LlamaShape.Tiny.VocabSize;
        Assert.That(batch.TeacherLogits!.Length, Is.EqualTo(3 * s * vocab));
        for (int r = 0; r < 3; r++)
            for (int t = 0; t < batch.AttentionMask.Skip(r * s).Take(s).Sum(); t++)
                for (int v = 0; v < vocab; v += 97)
                    Assert.That(batch.TeacherLogits[(r * s + t) * vocab + v], Is.EqualTo(plain[(r * s + t) * vocab + v]).Within(1e-4));
    }

    /// <summary>seq_kd: every micro-batch trains on the teacher's own completions (here with no on-policy ones), and the
    /// divergence on the data's completions falls too.</summary>
    [Test]
    public void SequenceLevelKdTrainsOnTheTeachersCompletions()
    {
        var dir = Shared.TempDir();
        var run = LoraTestKit.OrtloraOk(Args(dir, "--seq-kd", "--lmbda", "0", "--max-steps", "20"));
        Assert.That(run.Out, Does.Contain("distillation: 0 of 20 micro-batches trained on the student's own completions, 20 on the teacher's (seq_kd)"));
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();
        Assert.That(evals[^1], Is.LessThan(0.9 * evals[0]));
    }

    [Test]
    public void AResumedRunEndsLikeAStraightOne() =>
        LoraTestKit.AssertResumedRunEndsLikeStraight(dir => Args(dir, "--max-steps", "4", "--save-steps", "2", "--gradient-accumulation-steps", "2", "--seq-kd"), "checkpoint-4");

    [Test]
    public void MisuseIsOneClearError()
    {
        var dir = Shared.TempDir();
        var other = Path.Combine(dir, "other-vocabulary.onnx");
        using (var model = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny with { VocabSize = 600 }, seed: 2)) model.Save(other);
        var mismatch = LoraTestKit.Ortlora(["distill", LoraTestKit.Tiny("model.onnx"), "--teacher-model", other, "--data", LoraTestKit.Tiny("demo.parquet"), "-o", Path.Combine(dir, "a"), "--max-steps", "1"]);
        Assert.That(mismatch.ExitCode, Is.Not.Zero);
        Assert.That(mismatch.Error, Does.Contain("other-vocabulary.onnx").And.Contain("600").And.Contain("512"));
        var pairs = LoraTestKit.Ortlora(["distill", LoraTestKit.Tiny("model.onnx"), "--teacher-model", Teacher.Value, "--data", LoraTestKit.Tiny("demo_preferences.parquet"), "-o", Path.Combine(dir, "b")]);
        Assert.That(pairs.Error, Does.Contain("demo_preferences.parquet").And.Contain("not on preference pairs"));
        var lmbda = LoraTestKit.Ortlora(["distill", LoraTestKit.Tiny("model.onnx"), "--teacher-model", Teacher.Value, "--data", LoraTestKit.Tiny("demo.parquet"), "-o", Path.Combine(dir, "c"), "--lmbda", "2"]);
        Assert.That(lmbda.Error, Does.Contain("--lmbda must be in [0, 1]"));
        var missing = LoraTestKit.Ortlora(["distill", LoraTestKit.Tiny("model.onnx"), "--teacher-model", Path.Combine(dir, "none.onnx"), "--data", LoraTestKit.Tiny("demo.parquet"), "-o", Path.Combine(dir, "d")]);
        Assert.That(missing.Error, Does.Contain("none.onnx"));
        Assert.That(Directory.Exists(Path.Combine(dir, "a", "merged")) || File.Exists(Path.Combine(dir, "a", "adapter_model.safetensors")), Is.False);
    }
}
