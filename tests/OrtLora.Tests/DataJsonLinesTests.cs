using OrtLora.Graphs;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>JSON data files as Hugging Face's datasets reads them (JSON Lines, or one JSON array): the same records as
/// the same rows in Parquet, for every format; errors name the file and the line.</summary>
public class DataJsonLinesTests
{
    static string Write(string name, string text)
    {
        var path = Path.Combine(Shared.TempDir(), name);
        File.WriteAllText(path, text);
        return path;
    }

    static List<DataRecord?> Records(string path)
    {
        using var data = ParquetDataset.Open(path);
        return [.. Enumerable.Range(0, data.RowGroupCount).SelectMany(data.ReadRowGroup)];
    }

    [Test]
    public void TextInstructionAndPromptCompletionRowsReadAsInParquet()
    {
        var text = Write("text.jsonl", """
            {"text": "Once upon a time.", "id": 1}
            {"text": null, "id": 2}

            {"text": "  ", "id": 3}
            """);
        using (var data = ParquetDataset.Open(text))
        {
            Assert.That(data.Format, Is.EqualTo(DatasetFormat.Text));
            Assert.That(data.ReadRowGroup(0), Is.EqualTo(new DataRecord?[] { new TextRecord("Once upon a time."), null, null }));
            Assert.That(data.Summary, Is.EqualTo(new DataSummary(3, 1, 1)), "the blank line is no row; null and empty are counted");
        }
        var alpaca = Write("alpaca.jsonl", """{"instruction": "Add.", "input": "2 2", "output": "4"}""" + "\n" + """{"instruction": "Hi", "output": "Hello"}""");
        Assert.That(Records(alpaca), Is.EqualTo(new DataRecord?[] { new InstructionRecord("Add.", "2 2", "4"), new InstructionRecord("Hi", "", "Hello") }));
        var pairs = Write("pairs.json", """[{"prompt": "The sky is", "chosen": " blue", "rejected": " green"}]""");
        Assert.That(Records(pairs), Is.EqualTo(new DataRecord?[] { new PreferenceRecord("The sky is", " blue", " green") }), "a JSON array file");
    }

    /// <summary>Messages with tool calls (arguments as a JSON object, as datasets often hold them) and a tools column of
    /// schemas read as the same rows written to Parquet do; a list-of-parts content becomes its text.</summary>
    [Test]
    public void ConversationsWithToolCallsReadAsInParquet()
    {
        var path = Write("chat.jsonl", """
            {"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "name": "weather", "tool_call_id": "c1", "content": "Sunny"}, {"role": "assistant", "content": [{"type": "text", "text": "It is sunny."}]}], "tools": [{"type": "function", "function": {"name": "weather"}}]}
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
            """);
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.IsConversational), Is.EqualTo((DatasetFormat.Chat, true)));
        var rows = data.ReadRowGroup(0).Cast<ChatRecord>().ToList();
        var first = rows[0];
        Assert.That(first.Messages.Select(m => m.Role), Is.EqualTo(new[] { "user", "assistant", "tool", "assistant" }));
        var call = first.Messages[1].ToolCalls!.Single();
        Assert.That((call.Name, call.Arguments, call.Id, call.Type), Is.EqualTo(("weather", """{"city":"Paris"}""", "c1", "function")));
        Assert.That((first.Messages[2].Name, first.Messages[2].ToolCallId, first.Messages[2].Content), Is.EqualTo(("weather", "c1", "Sunny")));
        Assert.That(first.Messages[3].Content, Is.EqualTo("It is sunny."));
        Assert.That(first.Tools, Is.EqualTo("""[{"type":"function","function":{"name":"weather"}}]"""));
        Assert.That((rows[1].Messages[1].Content, rows[1].Tools), Is.EqualTo(("Hello", (string?)null)));
    }

    [Test]
    public void BadJsonIsOneErrorNamingTheFileAndLine()
    {
        var broken = Write("broken.jsonl", "{\"text\": \"a\"}\n{\"text\": \n");
        Assert.That(() => ParquetDataset.Open(broken), Throws.TypeOf<OrtLoraException>().With.Message.Contains("broken.jsonl: line 2 is not a JSON object"));
        var mixed = Write("mixed.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": \"text\"}\n");
        Assert.That(() => ParquetDataset.Open(mixed), Throws.TypeOf<OrtLoraException>().With.Message.Contains("mixed.jsonl: line 2: 'messages' holds text here and a list of messages"));
        var empty = Write("empty.jsonl", "\n");
        Assert.That(() => ParquetDataset.Open(empty), Throws.TypeOf<OrtLoraException>().With.Message.Contains("empty.jsonl: no JSON objects"));
    }

    /// <summary>The demo data as JSON Lines trains exactly as the Parquet file: the same adapter, byte for byte.</summary>
    [Test]
    public void TrainingOnJsonLinesEqualsTrainingOnParquet()
    {
        var rows = DemoDataset.Read(Tiny("demo.parquet"));
        var jsonl = Write("demo.jsonl", string.Join("\n", rows.Select(r => System.Text.Json.JsonSerializer.Serialize(
            new Dictionary<string, string> { ["instruction"] = r.Instruction, ["input"] = r.Input, ["output"] = r.Output }))));
        string[] Train(string data, string dir) => ["train", Tiny("model.onnx"), "--data", data, "--target-modules", "q_proj,v_proj", "--r", "4",
            "--max-steps", "4", "--learning-rate", "5e-3", "--plain-log", "-o", dir];
        var (fromParquet, fromJson) = (Shared.TempDir(), Shared.TempDir());
        OrtloraOk(Train(Tiny("demo.parquet"), fromParquet));
        var run = OrtloraOk(Train(jsonl, fromJson));
        Assert.That(run.Out, Does.Contain("demo.jsonl: instruction data"));
        Assert.That(File.ReadAllBytes(Path.Combine(fromJson, "adapter_model.safetensors")),
            Is.EqualTo(File.ReadAllBytes(Path.Combine(fromParquet, "adapter_model.safetensors"))));
    }
}
