using System.Text.Json.Nodes;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using OrtLora.Training.Reward;
using static OrtLora.Tests.LoraTestKit;
using Batch = OrtLora.Training.Engine.Batch;

namespace OrtLora.Tests;

/// <summary>Reward modelling (`ortlora reward`, TRL's RewardTrainer): a causal LM export turned into the sequence
/// classifier AutoModelForSequenceClassification makes of it (<see cref="SequenceClassifier"/>), the Bradley–Terry loss
/// (<see cref="RewardLoss"/>) against its formula on plain runs of the classifier, its gradients against central
/// differences, the pairs tokenized whole as TRL tokenizes them, and the command end to end.</summary>
public class RewardModelTests
{
    const int Rows = 4, Length = 12;

    static OnnxModel Classifier(string path, long padId, int seed = 1)
    {
        var model = OnnxModel.Load(path);
        SequenceClassifier.FromCausalLm(model, padId, 0.02, seed);
        return model;
    }

    /// <summary>The LM head's row for <paramref name="token"/> in PyTorch's [out, in] layout, read through the Transposes
    /// the export put between the weight and the head's MatMul.</summary>
    static float[] HeadRow(OnnxModel model, int token)
    {
        var g = new GraphEditor(model.Graph);
        var node = g.Producer(model.Graph.Output.First(o => o.Name == "logits").Name)!;
        while (node.OpType != "MatMul") node = g.Producer(node.Input[0])!;
        var value = node.Input[1];
        bool stored = true; // stored [in, out] as MatMul reads it, unless a Transpose follows
        while (g.Initializer(value) is null) { var p = g.Producer(value)!; if (p.OpType == "Transpose") stored = !stored; value = p.Input[0]; }
        var weight = g.Initializer(value)!;
        var values = model.ReadFloats(weight);
        long rows = weight.Dims[0], cols = weight.Dims[1];
        return stored ? Enumerable.Range(0, (int)rows).Select(i => values[i * cols + token]).ToArray() : values.AsSpan((int)(token * cols), (int)cols).ToArray();
    }

    static Dictionary<string, HostTensor> Feeds(OnnxModel model, long[] ids, long[] mask, int rows, int length)
    {
        var feeds = new Dictionary<string, HostTensor>();
        foreach (var input in model.Graph.Input.Select(i => i.Name))
            feeds[input] = input switch
            {
                "input_ids" => HostTensor.Of(ids, rows, length),
                "attention_mask" => HostTensor.Of(mask, rows, length),
                "position_ids" => HostTensor.Of(Enumerable.Range(0, rows * length).Select(i => (long)(i % length)).ToArray(), rows, length),
                _ => feeds.GetValueOrDefault(input) ?? throw new InvalidOperationException($"unexpected input {input}"),
            };
        return feeds;
    }

    /// <summary>With the score head set to the LM head's row for token t, each row's score is the causal LM's logit of t
    /// at the row's last non-pad token: a full row's last position, a right-padded row's last real token, and, where the
    /// pad token is also EOS, the token before a final EOS (what LlamaForSequenceClassification reads). On graphs/tiny and
    /// on both exporters' Llama and GPT-2 fixtures.</summary>
    [TestCase("tiny", "")]
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void TheScoreIsTheHeadAtTheLastNonPadToken(string arch, string file)
    {
        var path = arch == "tiny" ? Tiny("model.onnx") : Shared.Peft(arch, file);
        const long pad = 0;
        const int token = 5;
        using var causal = OnnxModel.Load(path);
        int[] real = [Length, 7, 9];
        var rng = new Random(2);
        var ids = new long[3 * Length];
        var mask = new long[3 * Length];
        for (int row = 0; row < 3; row++)
            for (int t = 0; t < real[row]; t++) { ids[row * Length + t] = rng.Next(1, 40); mask[row * Length + t] = 1; }
        ids[2 * Length + 8] = pad; // row 2 ends with an EOS that is the pad token: its score is read one token earlier
        var logits = OrtRun.Run(causal, Feeds(causal, ids, mask, 3, Length), ["logits"])["logits"].Floats;
        int vocab = logits.Length / (3 * Length);

        using var classifier = Classifier(path, pad);
        Assert.That(SequenceClassifier.IsClassifier(classifier), Is.True);
        Assert.That(classifier.Graph.Output.Select(o => o.Name), Is.EqualTo(new[] { "logits" }));
        var score = classifier.Graph.Initializer.Single(t => t.Name == SequenceClassifier.ScoreWeight);
        Tensors.SetRaw(score, Tensors.FloatsToBytes(HeadRow(causal, token), score.DataType));
        var scores = OrtRun.Run(classifier, Feeds(classifier, ids, mask, 3, Length), ["logits"])["logits"];
        Assert.That(scores.Shape, Is.EqualTo(new long[] { 3, 1 }));
        int[] last = [Length - 1, 6, 7];
        for (int row = 0; row < 3; row++)
        {
            double expected = logits[(row * Length + last[row]) * vocab + token];
            Assert.That(scores.Floats[row], Is.EqualTo(expected).Within(1e-4 * Math.Max(1, Math.Abs(expected))), $"row {row}");
        }
        Assert.That(classifier.Graph.Initializer.Any(t => t.Name == "lm_head.weight"), Is.False, "an untied LM head is gone");
    }

    /// <summary>Two pairs (chosen, rejected, chosen, rejected) of different lengths, every real token labelled, as
    /// <see cref="PreferenceEncoder.EncodeWhole"/> labels them; padding 511 (the tiny tokenizer's pad and EOS).</summary>
    static Batch PairBatch(int rows = Rows)
    {
        var rng = new Random(11);
        var ids = Enumerable.Repeat(511L, rows * Length).ToArray();
        var mask = new long[rows * Length];
        var labels = Enumerable.Repeat(-100L, rows * Length).ToArray();
        int[] lengths = [12, 9, 10, 6];
        for (int row = 0; row < Rows; row++)
            for (int t = 0; t < lengths[row]; t++)
            {
                int i = row * Length + t;
                ids[i] = labels[i] = t == lengths[row] - 1 ? 511 : rng.Next(1, 500);
                mask[i] = 1;
            }
        // filler rows of a batch padded to a fixed shape attend to one pad token and hold no label
        for (int row = Rows; row < rows; row++) mask[row * Length] = 1;
        return new Batch(ids, mask, labels, rows, Length);
    }

    static OnnxModel InjectedClassifier()
    {
        var model = Classifier(Tiny("model.onnx"), padId: 511);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 4, ModulesToSave = [SequenceClassifier.ScoreModule], TaskType = "SEQ_CLS" });
        RandomizeB(model, std: 0.3f);
        var score = model.Graph.Initializer.Single(t => ModulesToSave.IsWeight(t.Name));
        var rng = new Random(5);
        Tensors.SetRaw(score, Tensors.FloatsToBytes(model.ReadFloats(score).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), score.DataType));
        return model;
    }

    static Dictionary<string, float[]> Values(OnnxModel model, TrainingSession session) =>
        session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));

    static double Softplus(double x) => Math.Log(1 + Math.Exp(x));

    /// <summary>Margins of TRL's margin column: the pair's on its chosen row, 0 on the rejected.</summary>
    static readonly float[] Margins = [0.7f, 0, -1.5f, 0];

    /// <summary>The loss, the rows' scores and the count of pairs ranked right against TRL's compute_loss written out on
    /// a plain ONNX Runtime run of the classifier: mean −log σ(c − r − m), plus k·mean (c + r)².</summary>
    [TestCase(0.0, false)]
    [TestCase(0.05, false)]
    [TestCase(0.0, true)]
    [TestCase(0.05, true)]
    public void LossAndScoresEqualTrlsFormulaOnPlainLogits(double center, bool withMargins)
    {
        using var model = InjectedClassifier();
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss, CenterRewardsCoefficient: center);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var batch = withMargins ? PairBatch() with { RowValues = Margins } : PairBatch();
        var scores = OrtRun.Run(model, Feeds(model, batch.InputIds, batch.AttentionMask, Rows, Length), ["logits"])["logits"].Floats;
        double expected = 0;
        int right = 0;
        for (int pair = 0; pair < Rows / 2; pair++)
        {
            double c = scores[2 * pair], r = scores[2 * pair + 1], m = withMargins ? Margins[2 * pair] : 0;
            expected += (Softplus(r + m - c) + center * (c + r) * (c + r)) / (Rows / 2);
            right += c > r ? 1 : 0;
        }
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));
        Assert.That(Math.Abs(expected - Math.Log(2)), Is.GreaterThan(1e-2), "the scores differ within the pairs");
        Assert.That(correct, Is.EqualTo(right));
        for (int row = 0; row < Rows; row++)
            Assert.That(session.LastSequenceLogps[row], Is.EqualTo(scores[row]).Within(1e-5 * Math.Max(1, Math.Abs(scores[row]))), $"row {row}");
        Assert.That(session.LastReferenceLogps, Is.All.EqualTo(0f), "a reward model has no reference");
    }

    /// <summary>The closed-form gradient at the logits, through the pooling's GatherND to the score head and the
    /// adapters, against central differences of the eval graph's loss.</summary>
    [TestCase(0.0, false)]
    [TestCase(0.05, true)]
    public void GradientsMatchCentralDifferences(double center, bool withMargins)
    {
        using var model = InjectedClassifier();
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss, CenterRewardsCoefficient: center);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var values = Values(model, session);
        var batch = withMargins ? PairBatch() with { RowValues = Margins } : PairBatch();
        var (_, gradients) = session.ComputeGradients(batch);
        Assert.That(gradients.Keys, Has.Some.Contains("score"));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains("score"));
    }

    /// <summary>The fixtures' real exports, turned into classifiers: the backward runs through each exporter's attention
    /// and GPT-2's fused c_attn to the score head, and matches central differences.</summary>
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void RealExportsTrainAsRewardModels(string arch, string file)
    {
        using var model = Classifier(Shared.Peft(arch, file), padId: 0);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, ModulesToSave = [SequenceClassifier.ScoreModule] });
        Assert.That(LoraModel.Read(model)!.Adapters.Select(a => a.Module), Has.None.Contains("score"), "all-linear leaves the head to modules_to_save");
        RandomizeB(model, std: 0.3f);
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var batch = PairBatch() is var b ? b with { InputIds = [.. b.InputIds.Select(id => id == 511 ? 0 : 1 + id % 300)], Labels = [.. b.Labels.Select(l => l == -100 ? l : 1 + l % 300)] } : null!;
        var values = Values(model, session);
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(double.IsFinite(loss), Is.True);
        // a small step: GPT-2's gradients of c_attn here curve enough for 2e-2 to be 6% off (1e-3 agrees to 2e-4)
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains(".h.0.") || p.Contains("score"), step: 1e-3f);
    }

    static IEnumerable<Unseen.Architecture> UnseenExports() => Unseen.Architectures.All.Where(a => a.Trainable);

    /// <summary>Every trainable export style of the Unseen set (fused projections, Gemm heads, KV caches, opset-23
    /// attention, ORT GenAI builder graphs, fp16 weights behind Casts, int32 tokens, float masks) turns into a classifier
    /// that trains: the score head gets a gradient and a step lowers the loss.</summary>
    [TestCaseSource(nameof(UnseenExports))]
    public void EveryExportStyleTrainsAsARewardModel(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        SequenceClassifier.FromCausalLm(model, padId: 0, initializerRange: 0.5, seed: 1);
        Assert.That(SequenceClassifier.IsClassifier(model), Is.True);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, ModulesToSave = [SequenceClassifier.ScoreModule] });
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var rng = new Random(4);
        int[] lengths = [6, 4, 5, 3];
        var ids = new long[4 * 6];
        var labels = Enumerable.Repeat(-100L, 24).ToArray();
        var mask = new long[24];
        for (int r = 0; r < 4; r++)
            for (int t = 0; t < lengths[r]; t++) { ids[r * 6 + t] = labels[r * 6 + t] = rng.Next(1, (int)Unseen.Architectures.Vocab); mask[r * 6 + t] = 1; }
        var batch = new Batch(ids, mask, labels, 4, 6);
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(double.IsFinite(loss), Is.True);
        Assert.That(gradients.Where(kv => kv.Key.Contains("score")).Sum(kv => kv.Value.Sum(x => (double)x * x)), Is.GreaterThan(0));
        for (int i = 0; i < 5; i++) session.Step(batch, 1e-2f);
        Assert.That(session.EvalLoss(batch), Is.LessThan(0.9 * loss)); // relative: some random heads start near zero loss
    }

    /// <summary>`--fp16` on a classifier: the frozen model in float16, the pooling's gather in float32 (its gradient's
    /// scatter-add has no float16 CPU kernel); the loss and gradients within 1e-2 and 2e-2 of float32's.</summary>
    [Test]
    public void Fp16GradientsMatchFloat32()
    {
        using var model = InjectedClassifier();
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        using var full = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        using var half = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options, Compute: ComputeType.Float16));
        // GradScaler's first 2^16 overflows this head's float16 gradient (a skipped step in training): a smaller scale
        var state = half.GetOptimizerState();
        state["loss_scale"] = SafeTensor.FromFloats([1], [256]);
        half.SetOptimizerState(state);
        var (expectedLoss, expected) = full.ComputeGradients(PairBatch());
        var (loss, gradients) = half.ComputeGradients(PairBatch());
        Assert.That(loss, Is.EqualTo(expectedLoss).Within(1e-2));
        foreach (var (name, g) in gradients)
            Assert.That(Shared.MaxAbsDiff(g, expected[name]), Is.LessThan(2e-2 * expected[name].Max(Math.Abs) + 1e-6), name);
    }

    /// <summary>A batch padded to a fixed shape ends in filler pairs: they count for nothing in the loss and the gradients.</summary>
    [Test]
    public void FillerPairsCountForNothing()
    {
        using var model = InjectedClassifier();
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var (loss, gradients) = session.ComputeGradients(PairBatch());
        var (paddedLoss, paddedGradients) = session.ComputeGradients(PairBatch(Rows + 2));
        Assert.That(paddedLoss, Is.EqualTo(loss).Within(1e-6));
        foreach (var (name, g) in gradients)
            for (int i = 0; i < g.Length; i++) Assert.That(paddedGradients[name][i], Is.EqualTo(g[i]).Within(1e-6 + 1e-4 * Math.Abs(g[i])), name);
    }

    static readonly Lazy<TextTokenizer> TinyTokenizer = new(() => TokenizerLoader.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny")));

    /// <summary>TRL tokenizes prompt + completion as one text with EOS appended (once), where DPO tokenizes them apart;
    /// pairs longer than max_length are dropped; every token is labelled.</summary>
    [Test]
    public void PairsAreTokenizedWholeWithEos()
    {
        var tokenizer = TinyTokenizer.Value;
        int eos = tokenizer.EosId!.Value;
        var encoder = new PreferenceEncoder(tokenizer, ChatTemplate.ChatMl, 64, 512, null, keepEnd: true);
        var row = new PreferenceRecord("The capital of Fra", "nce is Paris.", "nce is Rome.<|endoftext|>");
        var (chosen, rejected) = encoder.EncodeWhole(3, row)!.Value;
        Assert.That(chosen.InputIds, Is.EqualTo(tokenizer.Encode("The capital of France is Paris.").Append(eos)));
        Assert.That(rejected.InputIds, Is.EqualTo(tokenizer.Encode("The capital of France is Rome.").Append(eos)), "an EOS already written is not doubled");
        Assert.That(chosen.Labels, Is.EqualTo(chosen.InputIds));
        Assert.That(chosen.RowIndex, Is.EqualTo(3));
        var (dpoChosen, _) = encoder.Encode(3, row)!.Value;
        Assert.That(dpoChosen.InputIds, Is.Not.EqualTo(chosen.InputIds), "DPO tokenizes the prompt and the completion apart (here across a word)");

        var shortEncoder = new PreferenceEncoder(tokenizer, ChatTemplate.ChatMl, chosen.InputIds.Length - 1, 512, null, keepEnd: true);
        Assert.That(shortEncoder.EncodeWhole(3, row), Is.Null, "a pair longer than max_length is dropped, not cut");
    }

    /// <summary>TRL's margin column, as a Parquet double column and as JSON Lines numbers (read as text): each pair's margin
    /// reaches its chosen row of the batch, a null one is 0, and a column that is no number is one error.</summary>
    [Test]
    public void TheMarginColumnReachesTheChosenRows()
    {
        var rows = new[]
        {
            new { prompt = "Q1?", chosen = " yes", rejected = " no", margin = (double?)1.5 },
            new { prompt = "Q2?", chosen = " up", rejected = " down", margin = (double?)null },
            new { prompt = "Q3?", chosen = " left", rejected = " right", margin = (double?)-0.25 },
        };
        var parquet = Shared.WriteParquet(rows, "margins.parquet");
        var jsonl = Path.Combine(Shared.TempDir(), "margins.jsonl");
        File.WriteAllLines(jsonl, rows.Select(r => System.Text.Json.JsonSerializer.Serialize(r)));
        foreach (var file in new[] { parquet, jsonl })
        {
            using var data = TrainingData.Open(file, TinyTokenizer.Value, new DataOptions { BatchSize = 3, Shuffle = false, RewardModeling = true });
            var batch = data.Batches(new DataPosition(0, 0)).Single();
            Assert.That(batch.RowValues, Is.EqualTo(new[] { 1.5f, 0, 0, 0, -0.25f, 0 }), file);
        }
        var bad = Path.Combine(Shared.TempDir(), "bad.jsonl");
        File.WriteAllText(bad, "{\"prompt\": \"Q\", \"chosen\": \" a\", \"rejected\": \" b\", \"margin\": \"big\"}\n");
        using var badData = TrainingData.Open(bad, TinyTokenizer.Value, new DataOptions { BatchSize = 1, RewardModeling = true });
        var error = Assert.Throws<OrtLoraException>(() => badData.Batches(new DataPosition(0, 0)).ToList())!;
        Assert.That(error.Message, Does.Contain("bad.jsonl").And.Contain("margin 'big'"));
    }

    [Test]
    public void ConversationsAreRenderedWholeAndBosIsAddedWhereTheTokenizerAddsIt()
    {
        var tokenizer = TinyTokenizer.Value;
        var encoder = new PreferenceEncoder(tokenizer, ChatTemplate.ChatMl, 256, 512, null, keepEnd: true);
        var chat = new ChatPreferenceRecord([new ChatMessage("user", "Hi")], [new ChatMessage("assistant", "Hello")], [new ChatMessage("assistant", "Go away")]);
        var (chosen, rejected) = encoder.EncodeWhole(0, chat)!.Value;
        Assert.That(chosen.InputIds, Is.EqualTo(tokenizer.Encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")));
        Assert.That(rejected.InputIds, Is.EqualTo(tokenizer.Encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nGo away<|im_end|>\n")));

        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var (withBos, _) = new PreferenceEncoder(llama, ChatTemplate.ChatMl, 256, 512, null, keepEnd: true).EncodeWhole(0, new PreferenceRecord("The sky is", " blue", " green"))!.Value;
        Assert.That(withBos.InputIds, Is.EqualTo(new[] { llama.BosId!.Value }.Concat(llama.Encode("The sky is blue")).Append(llama.EosId!.Value)));
    }

    /// <summary>`ortlora reward` on the embedded tiny model: the causal LM becomes a classifier, the adapters and the score
    /// head learn to rank 30 pairs (memorized: the model's weights are random; at 3e-3 it converged whatever the float
    /// rounding, where 1e-2 went up and down and ended anywhere from 0.1 to 0.65), the adapter is PEFT's SEQ_CLS form, and the
    /// merged classifier and the base with the adapter both score as training's last evaluation; the merged folder is a
    /// reward model GRPO can load.</summary>
    [Test]
    public void RewardTrainsMergesAndEvaluates()
    {
        var dir = Shared.TempDir();
        var data = Tiny("demo_preferences_eval.parquet");
        var run = OrtloraOk("reward", Tiny("model.onnx"), "--data", data, "--eval-data", data, "-o", dir, "--target-modules", "all-linear",
            "--max-steps", "60", "--learning-rate", "3e-3", "--logging-steps", "20", "--eval-steps", "30", "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("causal LM: its LM head is replaced by a score head"));
        var records = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        var evals = records.Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That((double)evals[0]["eval_loss"]!, Is.EqualTo(Math.Log(2)).Within(0.02), "the fresh head scores near zero");
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan(0.3));
        Assert.That((double)evals[^1]["eval_accuracy"]!, Is.GreaterThan(0.85));
        var logged = records.First(r => r.ContainsKey("loss") && r.ContainsKey("accuracy"));
        foreach (var key in new[] { "min_reward", "mean_reward", "max_reward", "margin", "num_tokens" }) Assert.That(logged.ContainsKey(key), key);
        Assert.That((double)logged["min_reward"]!, Is.LessThanOrEqualTo((double)logged["mean_reward"]!));

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That((string?)config["task_type"], Is.EqualTo("SEQ_CLS"));
        Assert.That(config["modules_to_save"]!.AsArray().Select(n => (string?)n), Is.EqualTo(new[] { "score" }));
        Assert.That(SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors")).Keys, Has.Member("base_model.model.score.weight"));

        double last = (double)evals[^1]["eval_loss"]!;
        var merged = Path.Combine(dir, "merged", "model.onnx");
        foreach (var args in new[] { new[] { "eval", merged, "--data", data }, ["eval", Tiny("model.onnx"), "--adapter", dir, "--data", data] })
        {
            var eval = OrtloraOk(args);
            var loss = double.Parse(eval.Out.Split("eval_loss ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            Assert.That(loss, Is.EqualTo(last).Within(2e-4), string.Join(' ', args));
            Assert.That(eval.Out, Does.Contain("accuracy"));
        }
        // the adapter merged into the plain export (as `merge --adapter` folds any PEFT adapter) is the same classifier
        var mergedAgain = Path.Combine(Shared.TempDir(), "model.onnx");
        OrtloraOk("merge", Tiny("model.onnx"), "--adapter", dir, "-o", mergedAgain);
        foreach (var file in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" }) File.Copy(Tiny(file), Path.Combine(Path.GetDirectoryName(mergedAgain)!, file));
        var again = OrtloraOk("eval", mergedAgain, "--data", data);
        Assert.That(double.Parse(again.Out.Split("eval_loss ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(last).Within(2e-4));
        var generate = Ortlora("generate", merged, "--prompt", "Hello");
        Assert.That(generate.ExitCode, Is.Not.Zero);
        Assert.That(generate.Error, Does.Contain("sequence classifier"));

        using var rewardModel = Training.Grpo.RewardModel.Load(Path.Combine(dir, "merged"));
        var scores = rewardModel.Score([new Training.Grpo.RewardInput("What is the capital of France?", " Paris.", 3, false, new Dictionary<string, string?>())]);
        var ids = TinyTokenizer.Value.Encode("What is the capital of France? Paris.").Select(i => (long)i).ToArray();
        using var classifier = OnnxModel.Load(merged);
        var direct = OrtRun.Run(classifier, Feeds(classifier, ids, [.. ids.Select(_ => 1L)], 1, ids.Length), ["logits"])["logits"].Floats[0];
        Assert.That(scores[0], Is.EqualTo(direct).Within(1e-5), "GRPO's reward-model scorer reads the merged classifier");
    }

    /// <summary>TRL's disable_dropout (on by default for reward, distill, online-dpo and xpo) turns PEFT's lora_dropout
    /// off in the training graphs, as TRL zeroes every nn.Dropout; `--disable-dropout false` keeps it.</summary>
    [Test]
    public void DisableDropoutTurnsLoraDropoutOff()
    {
        using var model = Classifier(Tiny("model.onnx"), padId: 511);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], R = 4, LoraDropout = 0.2, ModulesToSave = [SequenceClassifier.ScoreModule] });
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        int Dropouts(bool disable)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options, DisableDropout: disable));
            return session.Graph.Gradients.Graph.Node.Count(n => n.OpType == "Dropout");
        }
        Assert.That(Dropouts(disable: false), Is.EqualTo(2 * 4), "one a LoRA input: q and v of 4 layers");
        Assert.That(Dropouts(disable: true), Is.Zero);
        var dir = Shared.TempDir();
        OrtloraOk("reward", Tiny("model.onnx"), "--data", Tiny("demo_preferences_eval.parquet"), "-o", dir, "--lora-dropout", "0.2", "--max-steps", "2",
            "--disable-dropout", "false", "--plain-log");
        Assert.That(JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!["lora_dropout"]!.GetValue<double>(), Is.EqualTo(0.2));

        // `train`: on for preference data (TRL's DPOConfig default), off for SFT (SFTConfig has no such option)
        string[] Train(string data, params string[] extra) =>
            ["train", Tiny("model.onnx"), "--data", Tiny(data), "-o", Shared.TempDir(), "--lora-dropout", "0.2", "--max-steps", "1", "--plain-log", .. extra];
        const string Off = "lora_dropout 0.2 is off while training";
        Assert.That(OrtloraOk(Train("demo_preferences_eval.parquet")).Out, Does.Contain(Off));
        Assert.That(OrtloraOk(Train("demo_preferences_eval.parquet", "--disable-dropout", "false")).Out, Does.Not.Contain(Off));
        Assert.That(OrtloraOk(Train("demo_eval.parquet")).Out, Does.Not.Contain(Off));
        Assert.That(OrtloraOk(Train("demo_eval.parquet", "--disable-dropout", "true")).Out, Does.Contain(Off));
    }

    /// <summary>`show-data --reward` prints each pair as `reward` tokenizes it: whole, ending with EOS; a pair over
    /// --max-length is reported dropped.</summary>
    [Test]
    public void ShowDataShowsPairsAsTheRewardModelReadsThem()
    {
        var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny");
        var shown = OrtloraOk("show-data", Tiny("demo_preferences_eval.parquet"), "--tokenizer", tiny, "--reward", "--rows", "1").Out;
        Assert.That(shown, Does.Contain("each sequence whole").And.Contain("row 0 chosen").And.Contain("row 0 rejected"));
        Assert.That(shown, Does.Contain("The review is positive.<|endoftext|>").And.Contain("The review is negative.<|endoftext|>"));
        Assert.That(shown, Does.Not.Contain("⟦"));
        var cut = OrtloraOk("show-data", Tiny("demo_preferences_eval.parquet"), "--tokenizer", tiny, "--reward", "--rows", "1", "--max-length", "10").Out;
        Assert.That(cut, Does.Contain("row 0: longer than 10 tokens (dropped from training)"));
    }

    [Test]
    public void MisuseIsOneClearError()
    {
        using (var causal = OnnxModel.Load(Tiny("model.onnx")))
        {
            LoraInjector.Inject(causal, new LoraConfig { R = 2 });
            var error = Assert.Throws<OrtLoraException>(() => new TrainingSession(causal,
                new TrainingSessionOptions(new AdamWOptions(), Preference: new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss))))!;
            Assert.That(error.Message, Does.Contain("logits are [").And.Contain("a causal LM"));
        }
        var dir = Shared.TempDir();
        var sft = Ortlora("reward", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", dir, "--max-steps", "1");
        Assert.That(sft.ExitCode, Is.Not.Zero);
        Assert.That(sft.Error, Does.Contain("demo.parquet").And.Contain("preference pairs"));
        var negative = Ortlora("reward", Tiny("model.onnx"), "--data", Tiny("demo_preferences.parquet"), "-o", dir, "--center-rewards-coefficient", "-1");
        Assert.That(negative.Error, Does.Contain("--center-rewards-coefficient"));
        var injected = Path.Combine(dir, "injected.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", injected);
        var again = Ortlora("reward", injected, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--data", Tiny("demo_preferences.parquet"),
            "-o", Path.Combine(dir, "out"), "--max-steps", "1");
        Assert.That(again.ExitCode, Is.Not.Zero);
        Assert.That(again.Error, Does.Contain("plain export"));
        Assert.That(Directory.Exists(Path.Combine(dir, "out", "merged")), Is.False);
    }
}
