using System.Text.Json.Nodes;
using Onnx;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Grpo;
using static OrtLora.Tests.LoraTestKit;
using static OrtLora.Tests.TrainGrpoTests;

namespace OrtLora.Tests;

/// <summary>Reward models (<c>--reward-funcs model:PATH</c>, <see cref="RewardModel"/>) as TRL scores with one: logits[:, 0]
/// of a sequence classifier over prompt + completion, tokenized by the reward model's tokenizer without special tokens; a
/// conversational prompt's messages and the completion through that tokenizer's chat template. The reward model here is
/// a toy ONNX sequence classifier over the tiny model's tokenizer: its score is how many of the (unmasked) tokens
/// contain an "e", plus 100 for each BOS, so a BOS that should not be there shows.</summary>
public class GrpoRewardModelTests
{
    static readonly Lazy<string> ECounter = new(() => WriteECounter(Path.Combine(Shared.TempDir(), "e-counter")));

    static string TinyFile(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    /// <summary>input_ids, attention_mask → logits [batch, 1] = Σ over unmasked tokens of W[id].</summary>
    static string WriteECounter(string dir, string? chatTemplate = null)
    {
        Directory.CreateDirectory(dir);
        foreach (var file in new[] { "vocab.json", "merges.txt" }) File.Copy(TinyFile(file), Path.Combine(dir, file));
        // a tokenizer that puts BOS first when it encodes with special tokens, which TRL's reward inputs are not
        var config = JsonNode.Parse(File.ReadAllText(TinyFile("tokenizer_config.json")))!;
        config["add_bos_token"] = true;
        if (chatTemplate is not null) config["chat_template"] = chatTemplate;
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config.ToJsonString());
        var tokenizer = TokenizerLoader.Load(dir);
        var weights = Enumerable.Range(0, tokenizer.VocabSize).Select(id => id == tokenizer.BosId ? 100f : tokenizer.Decode([id]).Contains('e') ? 1f : 0f).ToArray();
        var graph = new GraphProto { Name = "e_counter" };
        var editor = new GraphEditor(graph);
        graph.Input.Add(Value("input_ids", "batch", "sequence"));
        graph.Input.Add(Value("attention_mask", "batch", "sequence"));
        editor.AddInitializer(Tensors.FromFloats("W", [tokenizer.VocabSize, 1], weights));
        editor.AddInitializer(Tensors.FromInt64("axis1", [1], [1]));
        editor.AddInitializer(Tensors.FromInt64("axis2", [1], [2]));
        var perToken = editor.Add("Gather", ["W", "input_ids"]); // [b, s, 1]
        var mask = editor.Add("Unsqueeze", [editor.Add("Cast", ["attention_mask"], attributes: ("to", (long)TensorProto.Types.DataType.Float)), "axis2"]);
        editor.Add("ReduceSum", [editor.Add("Mul", [perToken, mask]), "axis1"], outputs: ["logits"], attributes: ("keepdims", 0L));
        var logits = Value("logits", "batch", 1);
        logits.Type.TensorType.ElemType = (int)TensorProto.Types.DataType.Float;
        graph.Output.Add(logits);
        var proto = new ModelProto { IrVersion = 8, Graph = graph, ProducerName = "ortlora-tests" };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        new OnnxModel(proto).Save(Path.Combine(dir, "model.onnx"));
        return dir;
    }

    static ValueInfoProto Value(string name, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is int n ? new TensorShapeProto.Types.Dimension { DimValue = n } : new TensorShapeProto.Types.Dimension { DimParam = (string)d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)TensorProto.Types.DataType.Int64, Shape = shape } } };
    }

    static int CountE(TextTokenizer tokenizer, string text) => tokenizer.Encode(text, addBos: false).Count(id => tokenizer.Decode([id]).Contains('e'));

    static readonly Dictionary<string, string?> NoColumns = [];

    [Test]
    public void ATextPromptIsScoredWithItsCompletionWithoutSpecialTokens()
    {
        using var reward = RewardModel.Load(ECounter.Value);
        Assert.That(reward.Name, Is.EqualTo("e-counter"), "named by its folder, as TRL names a reward model by its id");
        var tokenizer = TokenizerLoader.Load(ECounter.Value);
        Assert.That(tokenizer.AddsBos, Is.True, "this tokenizer adds BOS with special tokens: the reward model's inputs have none");
        var inputs = new[]
        {
            new RewardInput("What is the capital of France?", " The capital of France is Paris.", 8, false, NoColumns),
            new RewardInput("Name a vegetable.", " Lettuce, cheese and three eggs.", 9, false, NoColumns),
        };
        var scores = reward.Score(inputs);
        for (int i = 0; i < inputs.Length; i++)
            Assert.That(scores[i], Is.EqualTo(CountE(tokenizer, inputs[i].Prompt + inputs[i].Completion)));
        Assert.That(scores[1], Is.GreaterThan(3));
        // the same file named directly
        using var byFile = RewardModel.Load(Path.Combine(ECounter.Value, "model.onnx"));
        Assert.That(byFile.Name, Is.EqualTo("e-counter"));
        Assert.That(byFile.Score(inputs), Is.EqualTo(scores));
    }

    [Test]
    public void AConversationIsRenderedByTheRewardTokenizersTemplate()
    {
        using var reward = RewardModel.Load(ECounter.Value);
        var input = new RewardInput("(the policy's rendering)", "Paris.", 2, false, NoColumns,
            [new ChatMessage("system", "Be brief."), new ChatMessage("user", "Where is the tower?")]);
        var tokenizer = TokenizerLoader.Load(ECounter.Value);
        Assert.That(tokenizer.Decode(reward.Ids(input)),
            Is.EqualTo("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is the tower?<|im_end|>\n<|im_start|>assistant\nParis.<|im_end|>\n"),
            "the tiny tokenizer has no template of its own: ChatML, the completion as the assistant's closed turn");
        Assert.That(reward.Score([input])[0], Is.EqualTo(reward.Ids(input).Count(id => tokenizer.Decode([id]).Contains('e'))));
    }

    /// <summary>A reward tokenizer's own template, with chat_template_kwargs (TRL passes them to the reward model's
    /// template too).</summary>
    [Test]
    public void TheRewardTokenizersOwnTemplateReadsTheKwargs()
    {
        var dir = WriteECounter(Path.Combine(Shared.TempDir(), "templated"),
            "{% if greeting is defined %}{{ greeting }}{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}");
        var input = new RewardInput("(unused)", "Paris.", 2, false, NoColumns, [new ChatMessage("user", "Where?")]);
        var tokenizer = TokenizerLoader.Load(dir);
        using (var plain = RewardModel.Load(dir))
            Assert.That(tokenizer.Decode(plain.Ids(input)), Is.EqualTo("user: Where?\nassistant: Paris.\n"));
        using var greeted = RewardModel.Load(dir, """{"greeting": "Hello. "}""");
        Assert.That(tokenizer.Decode(greeted.Ids(input)), Is.EqualTo("Hello. user: Where?\nassistant: Paris.\n"));
    }

    [Test]
    public void GrpoTrainsTowardTheRewardModelsScore()
    {
        var dir = Shared.TempDir();
        OrtloraOk(With(GrpoArgs(dir, "--max-steps", "20", "--log-completions"), "--reward-funcs", "model:" + ECounter.Value));
        var metrics = Metrics(dir);
        var reward = Series(metrics, "reward");
        Assert.That(Series(metrics, "rewards/e-counter/mean"), Is.EqualTo(reward));
        Assert.That(reward.TakeLast(3).Average(), Is.GreaterThan(reward.Take(3).Average() + 1), "more tokens with an e");
        var tokenizer = TokenizerLoader.Load(ECounter.Value);
        var logged = File.ReadAllLines(Path.Combine(dir, "completions.jsonl")).Select(l => JsonNode.Parse(l)!).Take(32).ToList();
        foreach (var c in logged)
            Assert.That(c["e-counter"]!.GetValue<double>(), Is.EqualTo(CountE(tokenizer, c["prompt"]!.GetValue<string>() + c["completion"]!.GetValue<string>())));
    }

    [Test]
    public void MistakesAreOneClearError()
    {
        var missing = Path.Combine(Shared.TempDir(), "nowhere");
        Assert.That(() => RewardFunctions.Parse("model:" + missing, 8), Throws.TypeOf<OrtLoraException>().With.Message.Contains(missing).And.Message.Contains("not found"));
        Assert.That(() => RewardFunctions.Parse("model:", 8), Throws.TypeOf<OrtLoraException>().With.Message.Contains("model needs the path"));
        // a causal LM is not a sequence classifier
        var lm = Ortlora(With(GrpoArgs(Shared.TempDir(), "--max-steps", "1"), "--reward-funcs", "model:" + TinyFile("model.onnx")));
        Assert.That(lm.ExitCode, Is.EqualTo(1));
        Assert.That(lm.Error, Does.Contain("model.onnx").And.Contain("[batch, labels]"));
    }
}
