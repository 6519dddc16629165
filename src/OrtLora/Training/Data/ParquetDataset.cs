using Parquet;
using Parquet.Schema;
using Parquet.Serialization;

namespace OrtLora.Training.Data;

/// <summary>A Parquet data file read one row group at a time, so a file of any size streams through a bounded
/// amount of memory. Rows keep their index in the file (row group after row group) whether usable or skipped,
/// so positions and the eval split stay stable.</summary>
public sealed partial class ParquetDataset : IDisposable
{
    const string MessagesColumn = "messages";
    const string ToolsColumn = "tools";

    /// <summary>One file of the dataset, and the dataset-wide index of its first row group. A JSON file's stream holds
    /// its rows converted to Parquet (<see cref="JsonLines"/>).</summary>
    sealed record Shard(string Path, Stream Stream, ParquetReader Reader, int FirstGroup);

    readonly List<Shard> _shards;
    readonly Dictionary<int, DataSummary> _summaryByGroup = new();
    readonly long[] _groupStarts;

    /// <param name="columnsOnly">read the schema only: no format detected, no columns required</param>
    /// <param name="labelsOptional">classification rows to predict: the label column may be missing, a label null</param>
    ParquetDataset(string path, List<Shard> shards, DatasetFormat format, string textColumn, bool columnsOnly = false, bool labelsOptional = false,
        string? labelColumn = null, IReadOnlyList<string>? textColumnNames = null, string textColumnDelimiter = " ")
    {
        Path = path;
        _labelsOptional = labelsOptional;
        _labelColumnName = labelColumn;
        _textColumnNames = textColumnNames is { Count: > 0 } ? textColumnNames : null;
        _textColumnDelimiter = textColumnDelimiter;
        _shards = shards;
        TextColumn = textColumn;
        Columns = [.. FirstReader.Schema.Fields.Select(f => f.Name)];
        foreach (var other in shards.Skip(1))
            if (SchemaText(other.Reader) != SchemaText(FirstReader))
                throw new OrtLoraException($"{other.Path}: its columns ({SchemaText(other.Reader)}) differ from those of {shards[0].Path} " +
                                           $"({SchemaText(FirstReader)}); the files of one dataset share a schema");
        RowGroupRowCounts = [.. shards.SelectMany(s => Enumerable.Range(0, s.Reader.RowGroupCount).Select(g => s.Reader.RowGroups[g].RowCount))];
        _groupStarts = new long[RowGroupRowCounts.Count + 1];
        for (int g = 0; g < RowGroupRowCounts.Count; g++) _groupStarts[g + 1] = _groupStarts[g] + RowGroupRowCounts[g];
        if (columnsOnly) return;
        Format = format == DatasetFormat.Auto ? Detect() : format;
        RequireColumns();
    }

    /// <summary>The first file's reader, whose schema every file has.</summary>
    ParquetReader FirstReader => _shards[0].Reader;

    /// <summary>The top-level columns and their kinds: what the readers rely on (writers name a list's inner fields
    /// differently, and read strings as string or ReadOnlyMemory&lt;char&gt;).</summary>
    static string SchemaText(ParquetReader reader) => string.Join(", ", reader.Schema.Fields.Select(f => $"{f.Name} {f switch
    {
        DataField { ClrType: var t } when t == typeof(string) || t == typeof(ReadOnlyMemory<char>) => "string",
        DataField d => d.ClrType.Name.ToLowerInvariant(),
        _ => f.SchemaType.ToString().ToLowerInvariant(),
    }}"));

    /// <summary>The file holding dataset row group <paramref name="group"/>, and the group's index in it.</summary>
    (Shard Shard, int Group) Locate(int group)
    {
        var shard = _shards.Last(s => s.FirstGroup <= group);
        return (shard, group - shard.FirstGroup);
    }

    public string Path { get; }
    /// <summary>Top-level column names, in file order.</summary>
    public IReadOnlyList<string> Columns { get; }
    public DatasetFormat Format { get; }
    public string TextColumn { get; }
    public IReadOnlyList<long> RowGroupRowCounts { get; }
    public int RowGroupCount => RowGroupRowCounts.Count;
    public long RowCount => _groupStarts[^1];
    /// <summary>Index in the file of the first row of row group <paramref name="group"/>.</summary>
    public long RowGroupStart(int group) => _groupStarts[group];

    /// <summary>Counts over the row groups read so far (each counted once however often it is read).</summary>
    public DataSummary Summary => _summaryByGroup.Values.Aggregate(new DataSummary(0, 0, 0), (a, b) => a + b);

    /// <summary>Opens <paramref name="path"/>: a Parquet file, a directory of them (a dataset's shards, read in name
    /// order as one table) or a file pattern (<c>data/train-*.parquet</c>); JSON Lines files (.jsonl, .json) too, read
    /// whole into memory (<see cref="JsonLines"/>). The format is detected from the columns unless given.</summary>
    /// <param name="labelsOptional">classification rows to predict: the label column may be missing, a label null</param>
    /// <param name="labelColumn">classification data: the label column (run_ner's and run_classification's
    /// label_column_name); null: the format's usual names</param>
    /// <param name="textColumnNames">classification data: the text columns, joined into one text with
    /// <paramref name="textColumnDelimiter"/> (run_classification's text_column_names and text_column_delimiter)</param>
    public static ParquetDataset Open(string path, DatasetFormat format = DatasetFormat.Auto, string textColumn = "text", bool labelsOptional = false,
        string? labelColumn = null, IReadOnlyList<string>? textColumnNames = null, string textColumnDelimiter = " ") =>
        Open(path, format, textColumn, columnsOnly: false, labelsOptional, labelColumn, textColumnNames, textColumnDelimiter);

    static ParquetDataset Open(string path, DatasetFormat format, string textColumn, bool columnsOnly, bool labelsOptional = false, string? labelColumn = null,
        IReadOnlyList<string>? textColumnNames = null, string textColumnDelimiter = " ")
    {
        var shards = new List<Shard>();
        try
        {
            foreach (var file in Files(path))
            {
                Stream stream = JsonLines.Is(file) ? new MemoryStream(JsonLines.ToParquet(file)) : File.OpenRead(file);
                try
                {
                    var reader = ParquetReader.CreateAsync(stream, leaveStreamOpen: true).GetAwaiter().GetResult();
                    shards.Add(new Shard(file, stream, reader, shards.Sum(s => s.Reader.RowGroupCount)));
                }
                catch (Exception e) when (e is not OrtLoraException)
                {
                    stream.Dispose();
                    throw new OrtLoraException($"{file} is not a readable Parquet file (truncated or another format?): {e.Message}", e);
                }
            }
            return new ParquetDataset(path, shards, format, textColumn, columnsOnly, labelsOptional, labelColumn, textColumnNames, textColumnDelimiter);
        }
        catch
        {
            foreach (var shard in shards) Close(shard);
            throw;
        }
    }

    /// <summary>The columns of the data at <paramref name="path"/> (its first file's), without choosing a format.</summary>
    public static IReadOnlyList<string> ReadColumns(string path)
    {
        using var data = Open(path, DatasetFormat.Auto, "text", columnsOnly: true);
        return data.Columns;
    }

    /// <summary>The files a data path names, in the order their rows are numbered.</summary>
    static List<string> Files(string path)
    {
        if (File.Exists(path)) return [path];
        var (dir, pattern) = Directory.Exists(path) ? (path, "*.parquet") : (System.IO.Path.GetDirectoryName(path) is { Length: > 0 } d ? d : ".", System.IO.Path.GetFileName(path));
        bool isPattern = Directory.Exists(path) || pattern.IndexOfAny(['*', '?']) >= 0;
        if (!isPattern || !Directory.Exists(dir)) throw new OrtLoraException($"data file not found: {path}");
        var files = Directory.GetFiles(dir, pattern).Order(StringComparer.Ordinal).ToList();
        // a directory of JSON Lines files where it has no Parquet ones
        if (files.Count == 0 && Directory.Exists(path)) files = [.. Directory.GetFiles(dir, "*.jsonl").Order(StringComparer.Ordinal)];
        return files.Count > 0 ? files : throw new OrtLoraException($"{path}: no {(Directory.Exists(path) ? ".parquet file in the directory" : "file matches")}");
    }

    DatasetFormat Detect()
    {
        if (Columns.Contains(MessagesColumn)) return DatasetFormat.Chat;
        if (Columns.Contains("chosen") && Columns.Contains("rejected")) return DatasetFormat.Preference;
        if (Columns.Contains("prompt") && Columns.Contains("completion") && Columns.Contains("label")) return DatasetFormat.UnpairedPreference;
        if (Columns.Contains("prompt") && Columns.Contains("completion")) return DatasetFormat.PromptCompletion;
        if (Columns.Contains("prompt") && !new[] { "completion", "chosen", "rejected", MessagesColumn }.Any(Columns.Contains)) return DatasetFormat.Prompt;
        if (Columns.Contains("instruction") && Columns.Contains("output")) return DatasetFormat.Instruction;
        if (Columns.Contains(TextColumn)) return DatasetFormat.Text;
        throw new OrtLoraException($"{Path}: cannot tell the data format from its columns ({string.Join(", ", Columns)}); " +
                                   $"expected '{TextColumn}' (text), 'instruction'/'input'/'output' (instruction), 'prompt'/'completion' (prompt-completion), " +
                                   $"'{MessagesColumn}' (chat), 'chosen'/'rejected' (preference) or 'prompt' alone (prompt-only, for `ortlora grpo`)");
    }

    void RequireColumns()
    {
        if (_textColumnNames is not null && Format != DatasetFormat.Classification)
            throw new OrtLoraException($"{Path}: --text-column-names is for classification data (run_classification's text_column_names), not {Format} data");
        if (Format == DatasetFormat.Classification) { RequireClassificationColumns(); return; }
        if (Format == DatasetFormat.TokenClassification) { RequireTokenClassificationColumns(); return; }
        var needed = Format switch
        {
            DatasetFormat.Text => [TextColumn],
            DatasetFormat.Instruction => ["instruction", "output"],
            DatasetFormat.PromptCompletion => ["prompt", "completion"],
            DatasetFormat.Preference => ["chosen", "rejected"],
            DatasetFormat.UnpairedPreference => ["prompt", "completion"],
            DatasetFormat.Prompt => ["prompt"],
            _ => new[] { MessagesColumn },
        };
        foreach (var column in needed)
            if (!Columns.Contains(column))
                throw new OrtLoraException($"{Path}: no column '{column}' for {FormatName(Format)} data; " +
                                           $"the file has columns: {string.Join(", ", Columns)}");
        if (Format == DatasetFormat.Chat) RequireMessageFields(MessagesColumn);
        else if (Format is DatasetFormat.PromptCompletion or DatasetFormat.Preference or DatasetFormat.UnpairedPreference or DatasetFormat.Prompt)
        {
            // TRL's two kinds: all columns text (standard), or all lists of messages (conversational). Preference
            // data's prompt column is optional (TRL's implicit prompt: the chosen and rejected columns' common start).
            if (Format == DatasetFormat.Preference && Columns.Contains("prompt")) needed = [.. needed, "prompt"];
            ConversationalPrompts = FirstReader.Schema.Fields.First(f => f.Name == needed[0]) is not DataField;
            foreach (var column in needed)
                if (ConversationalPrompts) RequireMessageFields(column);
                else RequireStringColumn(column);
        }
        else foreach (var column in needed.Append("input").Where(Columns.Contains)) RequireStringColumn(column);
        // TRL's tools column: the JSON array of function schemas a conversation offers.
        if (IsConversational && Columns.Contains(ToolsColumn)) RequireStringColumn(ToolsColumn);
        if (Format == DatasetFormat.UnpairedPreference) RequireLabelColumn();
    }

    void RequireStringColumn(string column)
    {
        var field = FirstReader.Schema.Fields.First(f => f.Name == column);
        if (field is DataField { ClrType: var type } && (type == typeof(string) || type == typeof(ReadOnlyMemory<char>))) return;
        var what = field is DataField data ? data.ClrType.Name : field.SchemaType.ToString().ToLowerInvariant();
        throw new OrtLoraException($"{Path}: column '{column}' holds {what}, not text");
    }

    /// <summary>The name --dataset-format takes for a format (prompt-completion for PromptCompletion).</summary>
    public static string FormatName(DatasetFormat format) => format switch
    {
        DatasetFormat.PromptCompletion => "prompt-completion",
        DatasetFormat.UnpairedPreference => "unpaired-preference",
        DatasetFormat.Prompt => "prompt-only",
        DatasetFormat.TokenClassification => "token-classification",
        _ => format.ToString().ToLowerInvariant(),
    };

    /// <summary>A --dataset-format value: one of the <see cref="FormatName"/>s, '_' read as '-' (prompt_only).</summary>
    public static DatasetFormat ParseFormat(string name)
    {
        var key = name.ToLowerInvariant().Replace('_', '-');
        foreach (var format in Enum.GetValues<DatasetFormat>()) if (FormatName(format) == key) return format;
        throw new OrtLoraException($"unknown dataset format '{name}'; expected {string.Join(", ", Enum.GetValues<DatasetFormat>().Select(FormatName))}");
    }

    /// <summary>Prompt-completion, preference or prompt-only data whose columns are lists of messages (TRL's conversational kind).</summary>
    public bool ConversationalPrompts { get; private set; }

    /// <summary>Rows go through a chat template: chat data, or the conversational kind of the prompt formats.</summary>
    public bool IsConversational => Format == DatasetFormat.Chat || ConversationalPrompts;

    /// <summary>Chat data is a list of structs with string fields role and content.</summary>
    void RequireMessageFields(string column)
    {
        var prefix = column + "/";
        var fields = FirstReader.Schema.GetDataFields().Where(f => f.Path.ToString()!.StartsWith(prefix)).Select(f => f.Name).ToList();
        if (!fields.Contains("role") || !fields.Contains("content"))
            throw new OrtLoraException($"{Path}: column '{column}' must be a list of {{role, content}}; its fields are: " +
                                       (fields.Count == 0 ? "none (not a list of structs)" : string.Join(", ", fields)));
    }

    /// <summary>The rows of one row group, indexed like the file's rows in that group: a record, or null for a
    /// row skipped as null/empty.</summary>
    public IReadOnlyList<DataRecord?> ReadRowGroup(int group)
    {
        try
        {
            var rows = Format switch
            {
                DatasetFormat.Text => ReadText(group),
                DatasetFormat.Instruction => ReadInstructions(group),
                DatasetFormat.PromptCompletion when ConversationalPrompts => ReadConversationalPromptCompletions(group),
                DatasetFormat.PromptCompletion => ReadPromptCompletions(group),
                DatasetFormat.Preference when ConversationalPrompts => ReadConversationalPreferences(group),
                DatasetFormat.Preference => ReadPreferences(group),
                DatasetFormat.UnpairedPreference when ConversationalPrompts => ReadConversationalUnpaired(group),
                DatasetFormat.UnpairedPreference => ReadUnpaired(group),
                DatasetFormat.Prompt when ConversationalPrompts => ReadConversationalPrompts(group),
                DatasetFormat.Prompt => ReadPrompts(group),
                DatasetFormat.Classification => ReadClassifications(group),
                DatasetFormat.TokenClassification => ReadTokenClassifications(group),
                _ => ReadChats(group),
            };
            _summaryByGroup[group] = new DataSummary(rows.Count, rows.Count(r => r.Skip == Skip.Null), rows.Count(r => r.Skip == Skip.Empty));
            return [.. rows.Select(r => r.Record)];
        }
        catch (Exception e) when (e is not OrtLoraException)
        {
            var (shard, local) = Locate(group);
            throw new OrtLoraException($"{shard.Path}: cannot read row group {local} (file damaged?): {e.Message}", e);
        }
    }

    /// <summary>Every row of the file in order, with its index; skipped rows are left out.</summary>
    public IEnumerable<(long Index, DataRecord Record)> ReadAll()
    {
        for (int g = 0; g < RowGroupCount; g++)
        {
            var rows = ReadRowGroup(g);
            for (int i = 0; i < rows.Count; i++)
                if (rows[i] is { } record) yield return (_groupStarts[g] + i, record);
        }
    }

    /// <summary>Reads the whole file once (streamed) and returns its summary.</summary>
    public DataSummary Scan()
    {
        for (int g = 0; g < RowGroupCount; g++) if (!_summaryByGroup.ContainsKey(g)) ReadRowGroup(g);
        return Summary;
    }

    enum Skip { None, Null, Empty }
    readonly record struct Row(DataRecord? Record, Skip Skip);

    static Skip Check(params string?[] required) =>
        required.Any(v => v is null) ? Skip.Null : required.Any(string.IsNullOrWhiteSpace) ? Skip.Empty : Skip.None;

    List<Row> ReadText(int group)
    {
        var text = ReadStrings(group, TextColumn);
        return [.. text.Select(t => Check(t) is var skip && skip == Skip.None ? new Row(new TextRecord(t!), skip) : new Row(null, skip))];
    }

    List<Row> ReadInstructions(int group)
    {
        var instruction = ReadStrings(group, "instruction");
        var input = Columns.Contains("input") ? ReadStrings(group, "input") : new string?[instruction.Length];
        var output = ReadStrings(group, "output");
        var rows = new List<Row>(instruction.Length);
        for (int i = 0; i < instruction.Length; i++)
        {
            var skip = Check(instruction[i], output[i]);
            rows.Add(skip == Skip.None ? new Row(new InstructionRecord(instruction[i]!, input[i] ?? "", output[i]!), skip) : new Row(null, skip));
        }
        return rows;
    }

    List<Row> ReadPromptCompletions(int group)
    {
        var prompt = ReadStrings(group, "prompt");
        var completion = ReadStrings(group, "completion");
        // An empty prompt is allowed (pure completion), an empty completion leaves nothing to learn.
        return [.. prompt.Select((p, i) => Check(completion[i]) is var skip && p is null ? new Row(null, Skip.Null)
            : skip == Skip.None ? new Row(new PromptCompletionRecord(p!, completion[i]!), skip) : new Row(null, skip))];
    }

    string?[] ReadStrings(int group, string column)
    {
        var field = FirstReader.Schema.Fields.First(f => f.Name == column) as DataField
                    ?? throw new OrtLoraException($"{Path}: column '{column}' is nested; a string column is needed");
        var (shard, local) = Locate(group);
        using var rowGroup = shard.Reader.OpenRowGroupReader(local);
        var values = new string?[rowGroup.RowCount];
        rowGroup.ReadAsync(field, values.AsMemory()!).GetAwaiter().GetResult();
        return values;
    }

    List<Row> ReadChats(int group)
    {
        var rows = Deserialize<ChatRow>(group);
        return [.. rows.Select(ToChatRow)];
    }

    List<Row> ReadConversationalPromptCompletions(int group)
    {
        var rows = Deserialize<PromptCompletionRow>(group);
        return [.. rows.Select(r => r.prompt is null ? new Row(null, Skip.Null)
            : ToChatRow([.. r.prompt, .. r.completion ?? []], r.completion is null ? -1 : r.prompt.Count, r.tools))];
    }

    /// <summary>A row group's rows as objects of nested columns (lists of message structs).</summary>
    IList<T> Deserialize<T>(int group) where T : class, new()
    {
        var (shard, local) = Locate(group);
        shard.Stream.Position = 0;
        return ParquetSerializer.DeserializeAsync<T>(shard.Stream, rowGroupIndex: local).GetAwaiter().GetResult().Data;
    }

    static Row ToChatRow(ChatRow row) => ToChatRow(row.messages, 0, row.tools);

    /// <summary>Messages as read; null with the reason when a message lacks its role or content.</summary>
    static (List<ChatMessage>? Messages, Skip Skip) ToMessages(List<ChatMessageRow?> rows)
    {
        var messages = new List<ChatMessage>(rows.Count);
        foreach (var m in rows)
        {
            var calls = m?.tool_calls?.Where(c => c?.function?.name is not null)
                .Select(c => new ToolCall(c!.function!.name!, c.function.arguments ?? "{}", c.id, c.type ?? "function")).ToList();
            // An assistant message that calls tools may have no text.
            var skip = calls is { Count: > 0 } ? Check(m!.role) : Check(m?.role, m?.content);
            if (skip != Skip.None) return (null, skip);
            messages.Add(new ChatMessage(m!.role!.Trim(), m.content ?? "", calls is { Count: > 0 } ? calls : null, m.name, m.tool_call_id));
        }
        return (messages, Skip.None);
    }

    /// <summary>A conversation whose assistant turns from <paramref name="trainedFrom"/> on are learned (-1: no completion).</summary>
    static Row ToChatRow(List<ChatMessageRow?>? rows, int trainedFrom, string? tools)
    {
        if (rows is null || trainedFrom < 0) return new Row(null, Skip.Null);
        if (rows.Count == 0) return new Row(null, Skip.Empty);
        var (messages, skip) = ToMessages(rows);
        if (messages is null) return new Row(null, skip);
        var record = new ChatRecord(messages, trainedFrom, string.IsNullOrWhiteSpace(tools) ? null : tools);
        // Nothing to learn from a chat without an assistant turn (in the completion).
        if (!Enumerable.Range(0, messages.Count).Any(record.Trains)) return new Row(null, Skip.Empty);
        return new Row(record, Skip.None);
    }

    // Shapes for Parquet.Net's deserializer: list<struct<role: string, content: string, ...>>, Hugging Face's message
    // format; fields a file lacks stay null.
    sealed class ChatRow { public List<ChatMessageRow?>? messages { get; set; } public string? tools { get; set; } }
    sealed class PromptCompletionRow
    {
        public List<ChatMessageRow?>? prompt { get; set; }
        public List<ChatMessageRow?>? completion { get; set; }
        public string? tools { get; set; }
    }
    sealed class ChatMessageRow
    {
        public string? role { get; set; }
        public string? content { get; set; }
        public List<ToolCallRow?>? tool_calls { get; set; }
        public string? name { get; set; }
        public string? tool_call_id { get; set; }
    }
    sealed class ToolCallRow { public string? id { get; set; } public string? type { get; set; } public FunctionRow? function { get; set; } }
    sealed class FunctionRow { public string? name { get; set; } public string? arguments { get; set; } }

    static void Close(Shard shard)
    {
        shard.Reader.DisposeAsync().AsTask().GetAwaiter().GetResult();
        shard.Stream.Dispose();
    }

    public void Dispose()
    {
        foreach (var shard in _shards) Close(shard);
    }
}
