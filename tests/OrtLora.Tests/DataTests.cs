using Parquet;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>Reading the Parquet fixtures in ../shared/data (written by pyarrow) and rendering their rows.</summary>
public class DataTests
{
    static string DataFile(string name) => Shared.Require("data", name);

    /// <summary>The null count pyarrow wrote into each row group's column statistics.</summary>
    static long PyarrowNullCount(string path, string column) => PyarrowNullCountAsync(path, column).GetAwaiter().GetResult();

    static async Task<long> PyarrowNullCountAsync(string path, string column)
    {
        await using var reader = await ParquetReader.CreateAsync(path);
        var field = reader.Schema.GetDataFields().Single(f => f.Name == column);
        long nulls = 0;
        for (int g = 0; g < reader.RowGroupCount; g++)
        {
            using var rowGroup = reader.OpenRowGroupReader(g);
            nulls += rowGroup.GetStatistics(field)!.NullCount!.Value;
        }
        return nulls;
    }

    [Test]
    public void AlpacaSnappyStreamsFiveRowGroups()
    {
        using var data = ParquetDataset.Open(DataFile("alpaca_5000.parquet"));
        Assert.That(data.Format, Is.EqualTo(DatasetFormat.Instruction));
        Assert.That(data.Columns, Is.EqualTo(new[] { "instruction", "input", "output" }));
        Assert.That(data.RowGroupRowCounts, Is.EqualTo(new long[] { 1000, 1000, 1000, 1000, 1000 }));
        Assert.That(data.Summary.RowsRead, Is.Zero, "nothing read before asked");
        var group3 = data.ReadRowGroup(3);
        Assert.That(group3, Has.Count.EqualTo(1000));
        Assert.That(data.Summary.RowsRead, Is.EqualTo(1000), "one row group read, not the file");
        var summary = data.Scan();
        Assert.That(summary.RowsRead, Is.EqualTo(5000));
        Assert.That(summary.SkippedNull, Is.EqualTo(PyarrowNullCount(DataFile("alpaca_5000.parquet"), "output")));
        // Two Alpaca rows have an empty output: nothing to learn, so skipped as empty.
        var usable = data.ReadAll().Count();
        Assert.That(summary.SkippedEmpty, Is.EqualTo(5000 - usable));
        Assert.That(summary.SkippedEmpty, Is.EqualTo(2));
    }

    [Test]
    public void ZstdFileWithoutDictionaryIsTheFirst500Rows()
    {
        using var small = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"));
        using var large = ParquetDataset.Open(DataFile("alpaca_5000.parquet"));
        var a = small.ReadRowGroup(0);
        var b = large.ReadRowGroup(0).Take(500).ToList();
        Assert.That(a, Is.EqualTo(b));
        Assert.That(small.Scan(), Is.EqualTo(new DataSummary(500, 0, 0)));
        var withInput = a.OfType<InstructionRecord>().Count(r => r.Input.Length > 0);
        Assert.That(withInput, Is.InRange(150, 250), "about 40% of Alpaca rows have an input");
    }

    [Test]
    public void ChatFileHoldsTheSameConversations()
    {
        using var chat = ParquetDataset.Open(DataFile("alpaca_500.chat.parquet"));
        using var alpaca = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"));
        Assert.That(chat.Format, Is.EqualTo(DatasetFormat.Chat));
        Assert.That(chat.Columns, Is.EqualTo(new[] { "messages" }));
        var chats = chat.ReadRowGroup(0);
        var rows = alpaca.ReadRowGroup(0);
        Assert.That(chats, Has.Count.EqualTo(500));
        for (int i = 0; i < 500; i++)
        {
            var row = (InstructionRecord)rows[i]!;
            var user = row.Input.Length > 0 ? row.Instruction + "\n" + row.Input : row.Instruction;
            Assert.That(((ChatRecord)chats[i]!).Messages,
                Is.EqualTo(new[] { new ChatMessage("user", user), new ChatMessage("assistant", row.Output) }), $"row {i}");
        }
        var again = chat.ReadRowGroup(0);
        Assert.That(((ChatRecord)again[499]!).Messages, Is.EqualTo(((ChatRecord)chats[499]!).Messages), "a row group reads again");
    }

    [Test]
    public void TextFileSkipsNullsAndEmptyStrings()
    {
        var path = DataFile("text_300.nulls.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That(data.Format, Is.EqualTo(DatasetFormat.Text));
        var rows = data.ReadRowGroup(0);
        var summary = data.Summary;
        Assert.That(summary.RowsRead, Is.EqualTo(300));
        Assert.That(summary.SkippedNull, Is.EqualTo(PyarrowNullCount(path, "text")).And.GreaterThan(0));
        Assert.That(summary.SkippedEmpty, Is.GreaterThan(0));
        Assert.That(rows.Count(r => r is null), Is.EqualTo(summary.SkippedNull + summary.SkippedEmpty));
        Assert.That(rows.OfType<TextRecord>().All(r => r.Text.Trim().Length > 0));
        Assert.That(data.Summary.ToString(), Does.Contain("300 rows read").And.Contain($"{summary.SkippedNull} skipped null"));
    }

    [Test]
    public void ChosenFormatAndTextColumn()
    {
        using var text = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"), DatasetFormat.Text, textColumn: "output");
        Assert.That(text.ReadRowGroup(0)[0], Is.EqualTo(new TextRecord("No")));
    }

    [Test]
    public void AlpacaPromptIsStanfordsTemplate()
    {
        using var data = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"));
        var rows = data.ReadRowGroup(0).Cast<InstructionRecord>().ToList();
        var withInput = rows.First(r => r.Input.Length > 0);
        var noInput = rows.First(r => r.Input.Length == 0);
        Assert.That(AlpacaTemplate.Prompt(withInput), Is.EqualTo(
            "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n" +
            $"### Instruction:\n{withInput.Instruction}\n\n### Input:\n{withInput.Input}\n\n### Response:\n"));
        Assert.That(AlpacaTemplate.Prompt(noInput), Is.EqualTo(
            "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
            $"### Instruction:\n{noInput.Instruction}\n\n### Response:\n"));
        var example = new ExampleRenderer(ChatTemplate.ChatMl, addBos: true).Render(0, rows[0]);
        Assert.That(example.Text, Is.EqualTo("<bos>" + AlpacaTemplate.Prompt(rows[0]) + rows[0].Output + "<eos>"));
    }

    [Test]
    public void MissingFileWrongColumnAndDamagedFilesGiveOneClearMessage()
    {
        var dir = Shared.TempDir();
        var missing = Path.Combine(dir, "missing.parquet");
        Assert.That(() => ParquetDataset.Open(missing), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo($"data file not found: {missing}"));

        var alpaca = DataFile("alpaca_500.zstd.parquet");
        Assert.That(() => ParquetDataset.Open(alpaca, DatasetFormat.Text),
            Throws.TypeOf<OrtLoraException>().With.Message.EqualTo($"{alpaca}: no column 'text' for text data; the file has columns: instruction, input, output"));
        Assert.That(() => ParquetDataset.Open(alpaca, DatasetFormat.Chat),
            Throws.TypeOf<OrtLoraException>().With.Message.Contains("no column 'messages'").And.Message.Contains("instruction, input, output"));
        var text = DataFile("text_300.nulls.parquet");
        Assert.That(() => ParquetDataset.Open(text, textColumn: "body"),
            Throws.TypeOf<OrtLoraException>().With.Message.Contains(text).And.Message.Contains("(text)").And.Message.Contains("columns (text)"));

        var bytes = File.ReadAllBytes(DataFile("alpaca_5000.parquet"));
        var truncated = Path.Combine(dir, "truncated.parquet");
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        Assert.That(() => ParquetDataset.Open(truncated), Throws.TypeOf<OrtLoraException>()
            .With.Message.StartsWith($"{truncated} is not a readable Parquet file"));
        var foreign = Shared.Require("tokenizers", "llama2-tokenizer.model");
        Assert.That(() => ParquetDataset.Open(foreign), Throws.TypeOf<OrtLoraException>()
            .With.Message.StartsWith($"{foreign} is not a readable Parquet file"));
        // a .json file is read as JSON data (datasets' json loader): a JSON document that is not rows says so
        var document = Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json");
        Assert.That(() => ParquetDataset.Open(document), Throws.TypeOf<OrtLoraException>()
            .With.Message.StartsWith($"{document}: one JSON document, not data"));

        // Footer intact, a data page damaged: the message names the file and the row group.
        var damaged = Path.Combine(dir, "damaged.parquet");
        var copy = (byte[])bytes.Clone();
        for (int i = 400_000; i < 400_400; i++) copy[i] ^= 0x5A;
        File.WriteAllBytes(damaged, copy);
        using var data = ParquetDataset.Open(damaged);
        Assert.That(() => data.Scan(), Throws.TypeOf<OrtLoraException>().With.Message.StartsWith($"{damaged}: cannot read row group"));
    }

    sealed class NumberRow { public long text { get; set; } }
    sealed class ShareGptRow { public List<ShareGptTurn>? messages { get; set; } }
    sealed class ShareGptTurn { public string? from { get; set; } public string? value { get; set; } }

    [Test]
    public void ColumnsOfTheWrongShapeAreNamed()
    {
        var numbers = Shared.WriteParquet([new NumberRow { text = 1 }], "numbers.parquet");
        Assert.That(() => ParquetDataset.Open(numbers), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo($"{numbers}: column 'text' holds Int64, not text"));
        var shareGpt = Shared.WriteParquet([new ShareGptRow { messages = [new() { from = "human", value = "hi" }] }], "sharegpt.parquet");
        Assert.That(() => ParquetDataset.Open(shareGpt), Throws.TypeOf<OrtLoraException>()
            .With.Message.EqualTo($"{shareGpt}: column 'messages' must be a list of {{role, content}}; its fields are: from, value"));
    }

    sealed class InstructionOnlyRow { public string? instruction { get; set; } public string? output { get; set; } }
    sealed class ChatRow { public List<ChatTurn?>? messages { get; set; } }
    sealed class ChatTurn { public string? role { get; set; } public string? content { get; set; } }

    [Test]
    public void InstructionRowsWithoutInputColumnAndWithNulls()
    {
        var path = Shared.WriteParquet([
            new InstructionOnlyRow { instruction = "Say hi.", output = "Hi" },
            new InstructionOnlyRow { instruction = null, output = "x" },
            new InstructionOnlyRow { instruction = "Say", output = " " },
            new InstructionOnlyRow { instruction = "Count", output = "1 2 3" },
        ], "instructions.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That(data.Format, Is.EqualTo(DatasetFormat.Instruction));
        Assert.That(data.ReadRowGroup(0), Is.EqualTo(new DataRecord?[]
            { new InstructionRecord("Say hi.", "", "Hi"), null, null, new InstructionRecord("Count", "", "1 2 3") }));
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(4, 1, 1)));
    }

    [Test]
    public void ChatRowsWithNothingToLearnAreSkipped()
    {
        ChatTurn Turn(string? role, string? content) => new() { role = role, content = content };
        var path = Shared.WriteParquet([
            new ChatRow { messages = [Turn("user", "Hi"), Turn("assistant", "Hello")] },
            new ChatRow { messages = null },
            new ChatRow { messages = [] },
            new ChatRow { messages = [Turn("user", "Hi")] },
            new ChatRow { messages = [Turn("user", "Hi"), Turn("assistant", null)] },
            new ChatRow { messages = [Turn("system", "Be kind"), Turn("user", "Hi"), Turn("assistant", "Hey")] },
        ], "chats.parquet");
        using var data = ParquetDataset.Open(path);
        var rows = data.ReadRowGroup(0);
        Assert.That(rows.Select(r => r is null), Is.EqualTo(new[] { false, true, true, true, true, false }));
        Assert.That(((ChatRecord)rows[5]!).Messages.Select(m => m.Role), Is.EqualTo(new[] { "system", "user", "assistant" }));
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(6, 2, 2)), "null list and null content: null; empty list and no assistant: empty");
    }

    sealed class AlpacaRow { public string? instruction { get; set; } public string? input { get; set; } public string? output { get; set; } }

    /// <summary>A dataset split into shards, as the Hugging Face Hub stores one (data/train-0000K-of-0000N.parquet): the
    /// directory, or a pattern, reads as one table, rows in the files' name order, so positions, the eval split and the
    /// records are those of the single file; a shard with other columns, a pattern matching nothing, an empty directory are
    /// one error each.</summary>
    [Test]
    public void ShardedDatasetsReadAsOneTable()
    {
        List<(long Index, DataRecord Record)> whole;
        using (var single = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"))) whole = [.. single.ReadAll()];
        var rows = whole.Select(r => (InstructionRecord)r.Record).Select(r => new AlpacaRow { instruction = r.Instruction, input = r.Input, output = r.Output }).ToList();
        var dir = Shared.TempDir();
        int[] sizes = [200, 150, 150];
        for (int k = 0, start = 0; k < sizes.Length; start += sizes[k], k++)
            Parquet.Serialization.ParquetSerializer.SerializeAsync(rows.Skip(start).Take(sizes[k]), Path.Combine(dir, $"train-{k:D5}-of-00003.parquet"),
                new Parquet.ParquetOptions { RowGroupSize = 64 }).GetAwaiter().GetResult();
        // Written last, named first: the directory reads by name, not by time.
        File.Copy(Path.Combine(dir, "train-00002-of-00003.parquet"), Path.Combine(dir, "eval-00000-of-00001.parquet"));

        using (var pattern = ParquetDataset.Open(Path.Combine(dir, "train-*.parquet")))
        {
            Assert.That(pattern.RowCount, Is.EqualTo(500));
            Assert.That(pattern.RowGroupCount, Is.EqualTo(4 + 3 + 3), "64-row groups in each file");
            Assert.That(pattern.ReadAll().ToList(), Is.EqualTo(whole), "the same records at the same indices");
            Assert.That(pattern.Format, Is.EqualTo(DatasetFormat.Instruction));
        }
        // From the command line too: the pattern shows the single file's first rows, token for token.
        var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny");
        string Shown(string data) => LoraTestKit.OrtloraOk("show-data", data, "--tokenizer", tiny, "--rows", "3").Out.Split('\n', 2)[1];
        Assert.That(Shown(Path.Combine(dir, "train-*.parquet")), Is.EqualTo(Shown(DataFile("alpaca_500.zstd.parquet"))));
        using (var all = ParquetDataset.Open(dir))
        {
            Assert.That(all.RowCount, Is.EqualTo(650), "every .parquet file of the directory");
            Assert.That(all.ReadAll().Take(150).Select(r => r.Record), Is.EqualTo(whole.Skip(350).Select(r => r.Record)), "eval-* sorts first");
        }

        var other = Shared.TempDir();
        File.Copy(Path.Combine(dir, "train-00000-of-00003.parquet"), Path.Combine(other, "a.parquet"));
        var stray = Shared.WriteParquet([new NumberRow { text = 1 }], "b.parquet");
        File.Copy(stray, Path.Combine(other, "b.parquet"));
        Assert.That(() => ParquetDataset.Open(other), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo(
            $"{Path.Combine(other, "b.parquet")}: its columns (text int64) differ from those of {Path.Combine(other, "a.parquet")} " +
            "(instruction string, input string, output string); the files of one dataset share a schema"));
        Assert.That(() => ParquetDataset.Open(Path.Combine(dir, "test-*.parquet")), Throws.TypeOf<OrtLoraException>()
            .With.Message.EqualTo($"{Path.Combine(dir, "test-*.parquet")}: no file matches"));
        var empty = Shared.TempDir();
        Assert.That(() => ParquetDataset.Open(empty), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo($"{empty}: no .parquet file in the directory"));
    }
}
