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

/// <summary>Token classification (`ortlora classify --task-type TOKEN_CLS`: AutoModelForTokenClassification with the
/// Trainer, run_ner.py, PEFT's TOKEN_CLS): the head [num_labels, hidden] with its bias at every token of a causal LM
/// export, the unshifted cross-entropy at the labelled tokens against its formula on plain runs, its gradients against
/// central differences, the classifier's dropout, and the command end to end.</summary>
public class TokenClassificationTests
{
    const int Rows = 3, Length = 8, Classes = 5;
    static readonly int[] RowLengths = [8, 5, 6];

    static OnnxModel InjectedTokenClassifier(string path, int classes = Classes)
    {
        var model = OnnxModel.Load(path);
        SequenceClassifier.FromCausalLm(model, padId: 0, 0.02, seed: 1, numLabels: classes, perToken: true);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 4, ModulesToSave = [SequenceClassifier.ScoreModule], TaskType = "TOKEN_CLS" });
        RandomizeB(model, std: 0.3f);
        var rng = new Random(5);
        foreach (var head in model.Graph.Initializer.Where(t => ModulesToSave.IsWeight(t.Name) || t.Name == TrainedBiases.PeftKey(SequenceClassifier.ScoreModule)))
            Tensors.SetRaw(head, Tensors.FloatsToBytes(model.ReadFloats(head).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray(), head.DataType));
        return model;
    }

    /// <summary>Three right-padded rows whose tokens carry a class or -100 (a word's later tokens, BOS), as
    /// `classify --task-type TOKEN_CLS` labels them; a class at position 0 too, which a shifted loss would never read.</summary>
    static Batch TokenBatch(int vocab = 500, int rows = Rows)
    {
        var rng = new Random(11);
        var ids = new long[rows * Length];
        var mask = new long[rows * Length];
        var labels = Enumerable.Repeat(-100L, rows * Length).ToArray();
        for (int row = 0; row < Rows; row++)
            for (int t = 0; t < RowLengths[row]; t++)
            {
                ids[row * Length + t] = rng.Next(1, vocab);
                mask[row * Length + t] = 1;
                if (rng.NextDouble() < 0.7) labels[row * Length + t] = rng.Next(Classes);
            }
        for (int row = Rows; row < rows; row++) mask[row * Length] = 1; // filler rows: one attended token, no label
        return new Batch(ids, mask, labels, rows, Length);
    }

    /// <summary>transformers' CrossEntropyLoss over the labelled tokens (ignore_index -100), not shifted, with the
    /// Trainer's LabelSmoother when ε &gt; 0; and the tokens whose arg-max is their class.</summary>
    static (double Loss, int Right, int[] Predicted) CrossEntropy(float[] logits, Batch batch, double smoothing)
    {
        double loss = 0;
        int right = 0, counted = 0;
        var predicted = new int[batch.BatchSize * batch.SequenceLength];
        for (int i = 0; i < batch.Labels.Length; i++)
        {
            var z = logits.AsSpan(i * Classes, Classes).ToArray().Select(v => (double)v).ToArray();
            predicted[i] = Array.IndexOf(z, z.Max());
            if (batch.Labels[i] == -100) continue;
            double max = z.Max(), logSum = max + Math.Log(z.Sum(v => Math.Exp(v - max)));
            var logp = z.Select(v => v - logSum).ToArray();
            loss += (1 - smoothing) * -logp[batch.Labels[i]] + smoothing * -logp.Average();
            right += predicted[i] == batch.Labels[i] ? 1 : 0;
            counted++;
        }
        return (loss / counted, right, predicted);
    }

    [TestCase(0.0)]
    [TestCase(0.1)]
    public void LossIsTheUnshiftedCrossEntropyAtLabelledTokens(double smoothing)
    {
        using var model = InjectedTokenClassifier(Tiny("model.onnx"));
        Assert.That(SequenceClassifier.NumLabels(model), Is.Null, "no id2label yet: not told from a causal LM");
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: smoothing, TokenClassification: true));
        var batch = TokenBatch();
        var logits = ClassificationTests.PlainLogits(model, batch);
        Assert.That(logits, Has.Length.EqualTo(Rows * Length * Classes));
        var (expected, right, predicted) = CrossEntropy(logits, batch, smoothing);
        var (loss, correct) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(expected).Within(1e-5 * Math.Max(1, expected)));
        Assert.That(Math.Abs(expected - Math.Log(Classes)), Is.GreaterThan(1e-2), "the head separates the classes");
        Assert.That(correct, Is.EqualTo(right));
        Assert.That(right, Is.GreaterThan(0).And.LessThan(batch.Labels.Count(l => l != -100)), "some tokens right, some wrong: the count is tested");
        Assert.That(session.LastSequenceLogps.Select(p => (int)p), Is.EqualTo(predicted), "every token's prediction comes back");
        // the filler rows of a padded batch change nothing
        var padded = TokenBatch(rows: Rows + 2);
        Assert.That(session.Evaluate(padded).Loss, Is.EqualTo(loss).Within(1e-6));
    }

    [Test]
    public void GradientsMatchCentralDifferences()
    {
        using var model = InjectedTokenClassifier(Tiny("model.onnx"));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), LabelSmoothing: 0.1, TokenClassification: true));
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var batch = TokenBatch();
        var (_, gradients) = session.ComputeGradients(batch);
        Assert.That(gradients.Keys, Has.Member(TrainedBiases.PeftKey(SequenceClassifier.ScoreModule)), "the head's bias trains with its weight");
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains("score"));
    }

    /// <summary>The fixtures' real exports as 5-class token classifiers: the backward runs through each exporter's
    /// attention (and GPT-2's fused c_attn) to the head, and matches central differences.</summary>
    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void RealExportsTrainAsTokenClassifiers(string arch, string file)
    {
        using var model = InjectedTokenClassifier(Shared.Peft(arch, file));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), TokenClassification: true));
        var batch = TokenBatch(vocab: 300);
        var values = session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(loss, Is.EqualTo(CrossEntropy(ClassificationTests.PlainLogits(model, batch), batch, 0).Loss).Within(1e-5 * Math.Max(1, loss)));
        EnginePreferenceLossTests.MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch).Loss,
            p => p.Contains("layers.0.") || p.Contains(".h.0.") || p.Contains("score"), step: 1e-3f);
    }

    static IEnumerable<Unseen.Architecture> UnseenExports() => Unseen.Architectures.All.Where(a => a.Trainable);

    /// <summary>Every trainable export style of the Unseen set (fused projections, Gemm heads, KV caches, opset-23
    /// attention, ORT GenAI builder graphs, float16 weights or activations, quantized heads, int32 tokens) turns into a
    /// 5-class token classifier whose head's weight and bias get gradients and whose loss falls in 5 steps.</summary>
    [TestCaseSource(nameof(UnseenExports))]
    public void EveryExportStyleTrainsAsATokenClassifier(Unseen.Architecture arch)
    {
        using var model = arch.Build();
        SequenceClassifier.FromCausalLm(model, padId: 0, initializerRange: 0.5, seed: 1, numLabels: Classes, perToken: true);
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2, LoraAlpha = 4, ModulesToSave = [SequenceClassifier.ScoreModule] });
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), TokenClassification: true, ClassifierDropout: 0.1));
        var batch = TokenBatch(vocab: (int)Unseen.Architectures.Vocab);
        var (loss, gradients) = session.ComputeGradients(batch);
        Assert.That(double.IsFinite(loss), Is.True);
        foreach (var head in new[] { ModulesToSave.WeightName(SequenceClassifier.ScoreModule), TrainedBiases.PeftKey(SequenceClassifier.ScoreModule) })
            Assert.That(gradients[head].Sum(x => (double)x * x), Is.GreaterThan(0), head);
        double before = session.Evaluate(batch).Loss;
        for (int i = 0; i < 5; i++) session.Step(batch, 1e-2f);
        Assert.That(session.Evaluate(batch).Loss, Is.LessThan(0.9 * before));
    }

    /// <summary>GenericForTokenClassification's dropout before the head: in the gradient graphs only, on the head's
    /// input, so a training step's loss is not the evaluation's; --disable-dropout (TRL's) turns it off.</summary>
    [Test]
    public void ClassifierDropoutIsOnTheHeadInputWhileTraining()
    {
        using var model = InjectedTokenClassifier(Tiny("model.onnx"));
        using var dropped = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), TokenClassification: true, ClassifierDropout: 0.5));
        Assert.That(dropped.Graph.Gradients.Graph.Node.Count(n => n.OpType == "Dropout" && n.Name.StartsWith("classifier_dropout")), Is.EqualTo(1));
        Assert.That(dropped.Graph.Eval.Graph.Node.Any(n => n.OpType == "Dropout"), Is.False, "evaluation runs without it");
        var batch = TokenBatch();
        var (trainingLoss, _) = dropped.ComputeGradients(batch);
        Assert.That(Math.Abs(trainingLoss - dropped.Evaluate(batch).Loss), Is.GreaterThan(1e-4), "half the hidden units dropped change the loss");
        using var off = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), TokenClassification: true, ClassifierDropout: 0.5, DisableDropout: true));
        Assert.That(off.Graph.Gradients.Graph.Node.Any(n => n.OpType == "Dropout"), Is.False);
    }

    /// <summary>NER data a template makes: people (B-PER I-PER) who went to places (B-LOC I-LOC), in JSON Lines with
    /// tag names, or as a Parquet file of lists (tokens: strings; ner_tags: integers, with datasets' ClassLabel names in
    /// the file's metadata, as datasets' to_parquet writes them).</summary>
    internal static string NerData(string dir, string name, int rows, int seed)
    {
        string[] people = ["Anna", "Bob Smith", "Carla", "David Jones", "Emma", "Frank Miller"], places = ["Paris", "New York", "Berlin", "San Francisco", "Rome", "Los Angeles"],
            verbs = ["went to", "flew to", "lives in", "visited", "moved to"];
        var rng = new Random(seed);
        var lines = new List<(List<string> Tokens, List<string> Tags)>();
        for (int i = 0; i < rows; i++)
        {
            var tokens = new List<string>();
            var tags = new List<string>();
            void Add(string text, string? type)
            {
                var words = text.Split(' ');
                for (int w = 0; w < words.Length; w++) { tokens.Add(words[w]); tags.Add(type is null ? "O" : (w == 0 ? "B-" : "I-") + type); }
            }
            if (rng.Next(2) == 0) Add("Yesterday ,", null);
            Add(people[rng.Next(people.Length)], "PER");
            Add(verbs[rng.Next(verbs.Length)], null);
            Add(places[rng.Next(places.Length)], "LOC");
            lines.Add((tokens, tags));
        }
        var path = Path.Combine(dir, name);
        if (name.EndsWith(".jsonl"))
        {
            File.WriteAllLines(path, lines.Select(l => new JsonObject { ["tokens"] = new JsonArray([.. l.Tokens.Select(t => (JsonNode?)t)]), ["ner_tags"] = new JsonArray([.. l.Tags.Select(t => (JsonNode?)t)]) }.ToJsonString()));
            return path;
        }
        string[] names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"];
        var metadata = new JsonObject
        {
            ["info"] = new JsonObject
            {
                ["features"] = new JsonObject
                {
                    ["tokens"] = new JsonObject { ["feature"] = new JsonObject { ["dtype"] = "string", ["_type"] = "Value" }, ["_type"] = "Sequence" },
                    ["ner_tags"] = new JsonObject { ["feature"] = new JsonObject { ["names"] = new JsonArray([.. names.Select(n => (JsonNode?)n)]), ["_type"] = "ClassLabel" }, ["_type"] = "Sequence" },
                },
            },
        };
        Parquet.Serialization.ParquetSerializer.SerializeAsync(lines.Select(l => new NerRow { tokens = [.. l.Tokens], ner_tags = [.. l.Tags.Select(t => (long?)Array.IndexOf(names, t))] }), path,
            customMetadata: new Dictionary<string, string> { ["huggingface"] = metadata.ToJsonString() }).GetAwaiter().GetResult();
        return path;
    }

    sealed class NerRow { public List<string?>? tokens { get; set; } public List<long?>? ner_tags { get; set; } }

    /// <summary>`ortlora classify --task-type TOKEN_CLS` on the embedded tiny model: the causal LM becomes a 5-class
    /// token classifier whose adapters and head learn the entities (seqeval's f1 from under 0.3 to over 0.9); the adapter
    /// is PEFT's TOKEN_CLS form with the score's weight and bias; the merged folder's config.json is a
    /// ForTokenClassification's with the tags; the merged model, the base with the adapter and `merge --adapter`'s model
    /// all evaluate as training's last evaluation.</summary>
    [Test]
    public void ClassifyTokensTrainsMergesAndEvaluates()
    {
        var dir = Shared.TempDir();
        var train = NerData(dir, "train.parquet", 200, seed: 1);
        var eval = NerData(dir, "eval.jsonl", 40, seed: 2);
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", train, "--eval-data", eval, "-o", output,
            "--target-modules", "all-linear", "--num-train-epochs", "2", "--learning-rate", "2e-3", "--eval-steps", "25", "--merge", "--plain-log");
        // the classes are the Parquet file's ClassLabel names, in their order; the JSON Lines eval file's names map onto them
        Assert.That(run.Out, Does.Contain("score head [5, hidden] with a bias").And.Contain("5 labels: 0 O, 1 B-PER, 2 I-PER, 3 B-LOC, 4 I-LOC"));
        var evals = File.ReadAllLines(Path.Combine(output, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).Where(r => r.ContainsKey("eval_loss")).ToList();
        Assert.That((double)evals[0]["eval_f1"]!, Is.LessThan(0.3), "a fresh head finds few entities");
        Assert.That((double)evals[^1]["eval_f1"]!, Is.GreaterThan(0.9));
        Assert.That((double)evals[^1]["eval_accuracy"]!, Is.GreaterThan(0.9));
        Assert.That(evals[^1].ContainsKey("eval_precision") && evals[^1].ContainsKey("eval_recall"), Is.True);

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.That((string?)config["task_type"], Is.EqualTo("TOKEN_CLS"));
        Assert.That((string?)config["bias"], Is.EqualTo("none"), "the head's bias travels as modules_to_save's, not as bias=all");
        var tensors = SafeTensors.Read(Path.Combine(output, "adapter_model.safetensors"));
        Assert.That(tensors["base_model.model.score.weight"].Shape, Is.EqualTo(new long[] { 5, 128 }));
        Assert.That(tensors["base_model.model.score.bias"].AsFloats().Max(Math.Abs), Is.GreaterThan(1e-3), "the bias trained from zero");
        var merged = Path.Combine(output, "merged", "model.onnx");
        var mergedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "merged", "config.json")))!;
        Assert.That((string?)mergedConfig["id2label"]!["3"], Is.EqualTo("B-LOC"));
        Assert.That(mergedConfig["architectures"]!.AsArray().Select(a => (string?)a), Has.All.EndsWith("ForTokenClassification"));
        Assert.That(mergedConfig.AsObject().ContainsKey("problem_type"), Is.False);

        double last = (double)evals[^1]["eval_loss"]!, f1 = (double)evals[^1]["eval_f1"]!;
        var mergedAgain = Path.Combine(Shared.TempDir(), "model.onnx");
        OrtloraOk("merge", Tiny("model.onnx"), "--adapter", output, "-o", mergedAgain);
        foreach (var file in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" }) File.Copy(Tiny(file), Path.Combine(Path.GetDirectoryName(mergedAgain)!, file));
        ClassificationTests.AssertEvaluationsMatch([["eval", merged, "--data", eval], ["eval", Tiny("model.onnx"), "--adapter", output, "--data", eval], ["eval", mergedAgain, "--data", eval]],
            last, "eval_f1", f1, 1e-4, "tokens classified");
        Assert.That(Ortlora("generate", merged, "--prompt", "Hello").Error, Does.Contain("token classifier"));

        // run_ner's do_predict: each word's tag, which agree with the accuracy; the words without labels get the same
        double accuracy = (double)evals[^1]["eval_accuracy"]!;
        var predictions = Path.Combine(Shared.TempDir(), "tags.jsonl");
        Assert.That(OrtloraOk("eval", merged, "--data", eval, "--predictions", predictions).Out, Does.Contain("predictions: " + predictions));
        var lines = File.ReadAllLines(predictions).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(lines, Has.Count.EqualTo(40));
        var pairs = lines.SelectMany(l => l["labels"]!.AsArray().Zip(l["predictions"]!.AsArray(), (t, p) => ((string?)t, (string?)p))).ToList();
        Assert.That(lines.All(l => l["tokens"]!.AsArray().Count == l["predictions"]!.AsArray().Count), Is.True);
        Assert.That(pairs.Count(p => p.Item1 == p.Item2) / (double)pairs.Count, Is.EqualTo(accuracy).Within(1e-9));
        var unlabelled = Path.Combine(Shared.TempDir(), "test.jsonl");
        File.WriteAllLines(unlabelled, lines.Select(l => new JsonObject { ["tokens"] = l["tokens"]!.DeepClone() }.ToJsonString()));
        var testPredictions = Path.Combine(Shared.TempDir(), "test_tags.jsonl");
        Assert.That(OrtloraOk("eval", merged, "--data", unlabelled, "--predictions", testPredictions).Out, Does.Contain("40 rows predicted, without labels"));
        Assert.That(File.ReadAllLines(testPredictions).Select(l => JsonNode.Parse(l)!["predictions"]!.ToJsonString()), Is.EqualTo(lines.Select(l => l["predictions"]!.ToJsonString())));
        Assert.That(Ortlora("eval", merged, "--data", unlabelled).Error, Does.Contain("no labels to score").And.Contain("--predictions"));
    }

    /// <summary>A token classifier's run resumes from a checkpoint byte for byte (the head's weight and bias are in it);
    /// --label-all-tokens labels every token of a word.</summary>
    [Test]
    public void ResumesAndLabelsAllTokens()
    {
        var data = NerData(Shared.TempDir(), "train.jsonl", 40, seed: 4);
        AssertResumedRunEndsLikeStraight(dir => ["classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", data, "-o", dir, "--max-steps", "4",
            "--save-steps", "2", "--learning-rate", "2e-3", "--classifier-dropout", "0", "--plain-log"], "checkpoint-4");
        var first = OrtloraOk("show-data", data, "--dataset-format", "token-classification", "--tokenizer", Tiny(""), "--rows", "1").Out;
        var all = OrtloraOk("show-data", data, "--dataset-format", "token-classification", "--tokenizer", Tiny(""), "--rows", "1", "--label-all-tokens").Out;
        Assert.That(first, Does.Contain("B-PER"));
        Assert.That(Count(all, "I-"), Is.GreaterThan(Count(first, "I-")), "a word's later tokens take its label, as I-");
    }

    /// <summary>GPT-2's family names its token classifier's head <c>classifier</c> (GPT2ForTokenClassification), as
    /// PEFT then saves it; classifier_dropout comes from config.json as transformers reads it. A model folder whose
    /// config.json says gpt2 trains, saves, merges and evaluates with that head.</summary>
    [Test]
    public void GptFamiliesNameTheHeadClassifier()
    {
        var dir = Shared.TempDir();
        foreach (var file in new[] { "model.onnx", "vocab.json", "merges.txt", "tokenizer_config.json" }) File.Copy(Tiny(file), Path.Combine(dir, file));
        File.WriteAllText(Path.Combine(dir, "config.json"), new JsonObject { ["model_type"] = "gpt2", ["architectures"] = new JsonArray("GPT2LMHeadModel"), ["classifier_dropout"] = 0.25 }.ToJsonString());
        var model = Path.Combine(dir, "model.onnx");
        Assert.That(SequenceClassifier.TokenHeadModule(model), Is.EqualTo("classifier"));
        Assert.That(SequenceClassifier.ClassifierDropout(model), Is.EqualTo(0.25));
        Assert.That((SequenceClassifier.TokenHeadModule(Tiny("model.onnx")), SequenceClassifier.ClassifierDropout(Tiny("model.onnx"))), Is.EqualTo(("score", 0.1)), "a Llama: score, the default dropout");
        var data = NerData(dir, "train.jsonl", 40, seed: 5);
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("classify", model, "--task-type", "TOKEN_CLS", "--data", data, "--eval-data", data, "-o", output, "--max-steps", "6", "--learning-rate", "2e-3",
            "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("classifier head [5, hidden] with a bias").And.Contain("modules_to_save (classifier)"));
        var tensors = SafeTensors.Read(Path.Combine(output, "adapter_model.safetensors"));
        Assert.That(tensors.Keys, Is.SupersetOf(new[] { "base_model.model.classifier.weight", "base_model.model.classifier.bias" }));
        Assert.That(tensors.Keys.Any(k => k.Contains("score")), Is.False);
        var mergedConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "merged", "config.json")))!;
        Assert.That((string?)mergedConfig["architectures"]![0], Is.EqualTo("GPT2ForTokenClassification"));
        double last = EvalLosses(output)[^1];
        foreach (var args in new[] { new[] { "eval", Path.Combine(output, "merged", "model.onnx"), "--data", data }, ["eval", model, "--adapter", output, "--data", data] })
            Assert.That(double.Parse(OrtloraOk(args).Out.Split("eval_loss ")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(last).Within(2e-4), string.Join(' ', args));
    }

    /// <summary>--label-column-name picks the label column (run_ner's and run_classification's label_column_name) for
    /// token and sequence data; `eval --label-all-tokens` scores every token of a word, as training with it does.</summary>
    [Test]
    public void LabelColumnNameAndLabelAllTokensInEval()
    {
        var dir = Shared.TempDir();
        var renamed = Path.Combine(dir, "renamed.jsonl");
        File.WriteAllLines(renamed, File.ReadAllLines(NerData(dir, "ner.jsonl", 40, seed: 6)).Select(l => JsonNode.Parse(l)!.AsObject() is var o
            ? new JsonObject { ["tokens"] = o["tokens"]!.DeepClone(), ["entity"] = o["ner_tags"]!.DeepClone() }.ToJsonString() : ""));
        var missing = Ortlora("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", renamed, "-o", Path.Combine(dir, "a"), "--max-steps", "1");
        Assert.That(missing.Error, Does.Contain("renamed.jsonl: no column 'ner_tags' or 'tags'").And.Contain("tokens, entity"));
        var wrong = Ortlora("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", renamed, "--label-column-name", "tag", "-o", Path.Combine(dir, "b"), "--max-steps", "1");
        Assert.That(wrong.Error, Does.Contain("no column 'tag' (--label-column-name)"));
        var output = Path.Combine(dir, "out");
        var run = OrtloraOk("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", renamed, "--label-column-name", "entity", "-o", output,
            "--max-steps", "2", "--merge", "--plain-log");
        Assert.That(run.Out, Does.Contain("5 labels: 0 B-LOC, 1 B-PER, 2 I-LOC, 3 I-PER, 4 O"));
        var merged = Path.Combine(output, "merged", "model.onnx");
        long Tokens(string text) => long.Parse(text.Split(" tokens classified")[0].Split('(')[^1].Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture);
        long first = Tokens(OrtloraOk("eval", merged, "--data", renamed, "--label-column-name", "entity").Out);
        long all = Tokens(OrtloraOk("eval", merged, "--data", renamed, "--label-column-name", "entity", "--label-all-tokens").Out);
        var words = File.ReadAllLines(renamed).Sum(l => JsonNode.Parse(l)!["tokens"]!.AsArray().Count);
        Assert.That(first, Is.EqualTo(words), "a word's first token each");
        Assert.That(all, Is.GreaterThan(first), "every token of a word");
        Assert.That(Ortlora("eval", Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--label-all-tokens").Error, Does.Contain("not one"));
        // a sequence classifier's label column too
        var sentiment = Path.Combine(dir, "sentiment.jsonl");
        File.WriteAllLines(sentiment, [new JsonObject { ["text"] = "good", ["sentiment"] = "pos" }.ToJsonString(), new JsonObject { ["text"] = "bad", ["sentiment"] = "neg" }.ToJsonString()]);
        using var file = ParquetDataset.Open(sentiment, DatasetFormat.Classification, labelColumn: "sentiment");
        Assert.That(ClassLabels.From(file).ToString(), Is.EqualTo("2 labels: 0 neg, 1 pos"));
    }

    static int Count(string text, string what) => (text.Length - text.Replace(what, "").Length) / what.Length;

    [Test]
    public void MisuseIsOneClearError()
    {
        var dir = Shared.TempDir();
        var data = NerData(dir, "train.jsonl", 12, seed: 3);
        var sequence = Ortlora("classify", Tiny("model.onnx"), "--data", data, "-o", Path.Combine(dir, "a"), "--max-steps", "1");
        Assert.That(sequence.ExitCode, Is.Not.Zero);
        Assert.That(sequence.Error, Does.Contain("train.jsonl"));
        var allTokens = Ortlora("classify", Tiny("model.onnx"), "--data", data, "-o", Path.Combine(dir, "b"), "--max-steps", "1", "--label-all-tokens");
        Assert.That(allTokens.Error, Does.Contain("TOKEN_CLS"));
        var dropout = Ortlora("classify", Tiny("model.onnx"), "--data", data, "-o", Path.Combine(dir, "b"), "--max-steps", "1", "--classifier-dropout", "0.2");
        Assert.That(dropout.Error, Does.Contain("--classifier-dropout").And.Contain("TOKEN_CLS"));
        var mismatched = Path.Combine(dir, "mismatched.jsonl");
        File.WriteAllLines(mismatched, [new JsonObject { ["tokens"] = new JsonArray("Anna", "went"), ["ner_tags"] = new JsonArray("B-PER") }.ToJsonString()]);
        var lengths = Ortlora("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", mismatched, "-o", Path.Combine(dir, "c"), "--max-steps", "1");
        Assert.That(lengths.Error, Does.Contain("mismatched.jsonl").And.Contain("row 0").And.Contain("2 words and 1 labels"));
        var notLists = Path.Combine(dir, "text.jsonl");
        File.WriteAllLines(notLists, [new JsonObject { ["tokens"] = "Anna went", ["ner_tags"] = "B-PER O" }.ToJsonString()]);
        var text = Ortlora("classify", Tiny("model.onnx"), "--task-type", "TOKEN_CLS", "--data", notLists, "-o", Path.Combine(dir, "d"), "--max-steps", "1");
        Assert.That(text.Error, Does.Contain("text.jsonl").And.Contain("is not a list"));
        var asSft = Ortlora("train", Tiny("model.onnx"), "--data", data, "--dataset-format", "token-classification", "-o", Path.Combine(dir, "e"), "--max-steps", "1");
        Assert.That(asSft.Error, Does.Contain("--task-type TOKEN_CLS"));
        foreach (var sub in new[] { "a", "b", "c", "d", "e" }) Assert.That(File.Exists(Path.Combine(dir, sub, "adapter_model.safetensors")), Is.False);
    }
}
