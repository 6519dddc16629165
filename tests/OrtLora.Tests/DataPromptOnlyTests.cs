using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>TRL's prompt-only datasets (what GRPOTrainer reads): a prompt column, text or messages, and any other
/// columns, handed to reward functions as text. Nothing to train on by itself: SFT and DPO data refuse it.</summary>
public class DataPromptOnlyTests
{
    sealed class Meta { public string? source { get; set; } }
    sealed class TextRow
    {
        public string? prompt { get; set; }
        public string? solution { get; set; }
        public int answer { get; set; }
        public double score { get; set; }
        public float? weight { get; set; }
        public bool passed { get; set; }
        public long? id { get; set; }
        public decimal price { get; set; }
        public List<string>? tags { get; set; }
        public Meta? meta { get; set; }
    }
    sealed class Turn { public string? role { get; set; } public string? content { get; set; } }
    sealed class ConversationRow { public List<Turn?>? prompt { get; set; } public string? tools { get; set; } public string? solution { get; set; } }
    sealed class PromptCompletionRow { public string? prompt { get; set; } public string? completion { get; set; } }
    sealed class QuestionRow { public string? question { get; set; } }
    sealed class NumberPromptRow { public int prompt { get; set; } }

    static Turn T(string role, string content) => new() { role = role, content = content };

    static string Write(string name, string text)
    {
        var path = Path.Combine(Shared.TempDir(), name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Every scalar column but the prompt is in Columns, by name, as invariant text whatever the culture
    /// (de-DE would write 0,1); lists and structs are not; null stays null. The required int column before the double
    /// one is the order in which Parquet.Net's nullable read once gave the double's second value as null.</summary>
    [Test, SetCulture("de-DE")]
    public void TextPromptsCarryTheirOtherScalarColumnsAsText()
    {
        var path = Shared.WriteParquet([
            new TextRow { prompt = "What is 6*7?", solution = "42", answer = 42, score = 0.1, weight = 0.1f, passed = true, id = 9007199254740993L,
                price = 1.25m, tags = ["math"], meta = new Meta { source = "gsm8k" } },
            new TextRow { prompt = "Name a prime.", solution = null, answer = -7, score = 1.0 / 3, weight = null, passed = false, id = null,
                price = -3m, tags = null, meta = null },
        ], "prompts.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.ConversationalPrompts, data.IsConversational), Is.EqualTo((DatasetFormat.Prompt, false, false)));
        var rows = data.ReadRowGroup(0).Cast<PromptRecord>().ToList();
        Assert.That(rows.Select(r => r.Prompt), Is.EqualTo(new[] { "What is 6*7?", "Name a prime." }));
        Assert.That(rows[0].Columns, Is.EqualTo(new Dictionary<string, string?>
        {
            ["solution"] = "42", ["answer"] = "42", ["score"] = "0.1", ["weight"] = "0.1", ["passed"] = "true", ["id"] = "9007199254740993",
            ["price"] = "1.25",
        }));
        Assert.That(rows[1].Columns, Is.EqualTo(new Dictionary<string, string?>
        {
            ["solution"] = null, ["answer"] = "-7", ["score"] = "0.3333333333333333", ["weight"] = null, ["passed"] = "false", ["id"] = null,
            ["price"] = "-3",
        }));
        Assert.That(rows[0].Columns.Keys, Is.EqualTo(new[] { "solution", "answer", "score", "weight", "passed", "id", "price" }), "file order; tags and meta left out");
        Assert.That(double.Parse(rows[1].Columns["score"]!, System.Globalization.CultureInfo.InvariantCulture), Is.EqualTo(1.0 / 3), "round-trips");
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(2, 0, 0)));
    }

    [Test]
    public void NullAndEmptyPromptsAreSkippedAndCounted()
    {
        var path = Shared.WriteParquet([
            new TextRow { prompt = null, answer = 1 },
            new TextRow { prompt = "", answer = 2 },
            new TextRow { prompt = " \n", answer = 3 },
            new TextRow { prompt = "ok", answer = 4 },
        ], "skipped.parquet");
        using var data = ParquetDataset.Open(path);
        var rows = data.ReadRowGroup(0);
        Assert.That(rows.Select(r => r is null), Is.EqualTo(new[] { true, true, true, false }));
        Assert.That(((PromptRecord)rows[3]!).Columns["answer"], Is.EqualTo("4"), "a row's columns are its own, not the group's first");
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(4, 1, 2)));
    }

    /// <summary>A conversational prompt's messages (a system and a user turn), its tools apart from Columns; a null
    /// prompt, an empty message list and a message without content are skipped and counted.</summary>
    [Test]
    public void ConversationalPromptsKeepTheirMessagesAndTools()
    {
        const string tools = """[{"type": "function", "function": {"name": "add", "parameters": {}}}]""";
        var path = Shared.WriteParquet([
            new ConversationRow { prompt = [T("system", "Answer with a number."), T("user", "6*7?")], tools = tools, solution = "42" },
            new ConversationRow { prompt = null, solution = "1" },
            new ConversationRow { prompt = [], solution = "2" },
            new ConversationRow { prompt = [T("user", null!)], solution = "3" },
            new ConversationRow { prompt = [T("user", "Hi")], tools = " ", solution = null },
        ], "chat_prompts.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.ConversationalPrompts, data.IsConversational), Is.EqualTo((DatasetFormat.Prompt, true, true)));
        var rows = data.ReadRowGroup(0);
        Assert.That(rows.Select(r => r is null), Is.EqualTo(new[] { false, true, true, true, false }));
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(5, 2, 1)), "null prompt and the message without content: null; no messages: empty");
        var first = (ChatPromptRecord)rows[0]!;
        Assert.That(first.Prompt, Is.EqualTo(new[] { new ChatMessage("system", "Answer with a number."), new ChatMessage("user", "6*7?") }));
        Assert.That(first.Tools, Is.EqualTo(tools));
        Assert.That(first.Columns, Is.EqualTo(new Dictionary<string, string?> { ["solution"] = "42" }), "tools is the template's, not a reward column");
        var last = (ChatPromptRecord)rows[4]!;
        Assert.That((last.Tools, last.Columns["solution"]), Is.EqualTo(((string?)null, (string?)null)), "blank tools: none");
    }

    /// <summary>Detected only where no other format claims the prompt column; named explicitly, a prompt-completion file
    /// reads as prompts with the completion among the columns (a reference answer).</summary>
    [Test]
    public void DetectionAndAnExplicitFormat()
    {
        var pc = Shared.WriteParquet([new PromptCompletionRow { prompt = "The sky is", completion = " blue." }], "pc.parquet");
        using (var detected = ParquetDataset.Open(pc)) Assert.That(detected.Format, Is.EqualTo(DatasetFormat.PromptCompletion));
        using (var data = ParquetDataset.Open(pc, DatasetFormat.Prompt))
        {
            var row = (PromptRecord)data.ReadRowGroup(0)[0]!;
            Assert.That((data.Format, row.Prompt), Is.EqualTo((DatasetFormat.Prompt, "The sky is")));
            Assert.That(row.Columns, Is.EqualTo(new Dictionary<string, string?> { ["completion"] = " blue." }));
        }
        var question = Shared.WriteParquet([new QuestionRow { question = "?" }], "question.parquet");
        Assert.That(() => ParquetDataset.Open(question), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo(
            $"{question}: cannot tell the data format from its columns (question); expected 'text' (text), 'instruction'/'input'/'output' (instruction), " +
            "'prompt'/'completion' (prompt-completion), 'messages' (chat), 'chosen'/'rejected' (preference) or 'prompt' alone (prompt-only, for `ortlora grpo`)"));
        Assert.That(() => ParquetDataset.Open(question, DatasetFormat.Prompt), Throws.TypeOf<OrtLoraException>()
            .With.Message.EqualTo($"{question}: no column 'prompt' for prompt-only data; the file has columns: question"));
        var number = Shared.WriteParquet([new NumberPromptRow { prompt = 1 }], "number_prompt.parquet");
        Assert.That(() => ParquetDataset.Open(number), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo($"{number}: column 'prompt' holds Int32, not text"));
    }

    [Test]
    public void FormatNames()
    {
        Assert.That(ParquetDataset.FormatName(DatasetFormat.Prompt), Is.EqualTo("prompt-only"));
        Assert.That(ParquetDataset.ParseFormat("prompt-only"), Is.EqualTo(DatasetFormat.Prompt));
        Assert.That(ParquetDataset.ParseFormat("prompt_only"), Is.EqualTo(DatasetFormat.Prompt));
        Assert.That(() => ParquetDataset.ParseFormat("prompt"), Throws.TypeOf<OrtLoraException>());
    }

    /// <summary>JSON Lines: numbers and booleans arrive as their JSON text, an object as its JSON text (JsonLines keeps
    /// every non-message value as text); messages keep an assistant's tool calls.</summary>
    [Test]
    public void JsonLinesPromptsReadAsInParquet()
    {
        var text = Write("grpo.jsonl", """
            {"prompt": "What is 6*7?", "solution": 42, "score": 0.5, "ok": true, "note": null, "meta": {"a": 1}}
            {"prompt": null, "solution": 1, "score": 1, "ok": false, "note": "x", "meta": null}
            """);
        using (var data = ParquetDataset.Open(text))
        {
            Assert.That(data.Format, Is.EqualTo(DatasetFormat.Prompt));
            var row = (PromptRecord)data.ReadRowGroup(0)[0]!;
            Assert.That(row.Prompt, Is.EqualTo("What is 6*7?"));
            Assert.That(row.Columns, Is.EqualTo(new Dictionary<string, string?> { ["solution"] = "42", ["score"] = "0.5", ["ok"] = "true", ["note"] = null, ["meta"] = """{"a":1}""" }));
            Assert.That(data.Summary, Is.EqualTo(new DataSummary(2, 1, 0)));
        }
        var chat = Write("grpo_chat.jsonl", """
            {"prompt": [{"role": "user", "content": "Add 2 and 3."}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]}, {"role": "tool", "name": "add", "tool_call_id": "c1", "content": "5"}], "tools": [{"type": "function", "function": {"name": "add"}}], "solution": 5}
            """);
        using var conversational = ParquetDataset.Open(chat);
        var record = (ChatPromptRecord)conversational.ReadRowGroup(0)[0]!;
        Assert.That(record.Prompt.Select(m => (m.Role, m.Content, m.Name, m.ToolCallId)), Is.EqualTo(new[] { ("user", "Add 2 and 3.", (string?)null, (string?)null), ("assistant", "", null, null), ("tool", "5", "add", "c1") }));
        Assert.That(record.Prompt[1].ToolCalls, Is.EqualTo(new[] { new ToolCall("add", """{"a":2,"b":3}""", "c1") }));
        Assert.That(record.Tools, Is.EqualTo("""[{"type":"function","function":{"name":"add"}}]"""));
        Assert.That(record.Columns, Is.EqualTo(new Dictionary<string, string?> { ["solution"] = "5" }));
    }

    /// <summary>SFT and DPO data (TrainingData, so train, eval and show-data) refuse prompt-only data, detected or named,
    /// with one error naming the file, not a failure at the first row.</summary>
    [Test]
    public void TrainingDataRefusesPromptOnlyData()
    {
        var path = Shared.WriteParquet([new ConversationRow { prompt = [T("user", "6*7?")], solution = "42" }], "grpo_only.parquet");
        var tokenizer = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        string Refusal(string file) => $"{file}: prompt-only data (a 'prompt' column and no completion) has nothing to learn from by itself: " +
                                       "it is for `ortlora grpo`, which samples completions and scores them with reward functions";
        Assert.That(() => TrainingData.Open(path, tokenizer, new DataOptions()), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo(Refusal(path)));
        var pc = Shared.WriteParquet([new PromptCompletionRow { prompt = "Q", completion = "A" }], "pc.parquet");
        Assert.That(() => TrainingData.Open(pc, tokenizer, new DataOptions { Format = DatasetFormat.Prompt }), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo(Refusal(pc)));

        var show = LoraTestKit.Ortlora("show-data", path, "--tokenizer", LoraTestKit.Tiny(""));
        Assert.That((show.ExitCode, show.Error), Is.EqualTo((1, $"error: {Refusal(path)}\n")));
        show = LoraTestKit.Ortlora("show-data", pc, "--tokenizer", LoraTestKit.Tiny(""), "--dataset-format", "prompt-only");
        Assert.That((show.ExitCode, show.Error), Is.EqualTo((1, $"error: {Refusal(pc)}\n")));
    }
}
