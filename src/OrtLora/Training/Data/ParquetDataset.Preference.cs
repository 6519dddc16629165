using Parquet.Schema;

namespace OrtLora.Training.Data;

/// <summary>TRL's preference rows (prompt, chosen, rejected), standard or conversational. Without a prompt column the
/// prompt is the common start of chosen and rejected, as TRL's extract_prompt finds it. And TRL's unpaired preference
/// rows (prompt, completion, label) for KTO.</summary>
public sealed partial class ParquetDataset
{
    List<Row> ReadPreferences(int group)
    {
        var chosen = ReadStrings(group, "chosen");
        var rejected = ReadStrings(group, "rejected");
        var prompt = Columns.Contains("prompt") ? ReadStrings(group, "prompt") : null;
        var margins = ReadMargins(group);
        var rows = new List<Row>(chosen.Length);
        for (int i = 0; i < chosen.Length; i++)
        {
            if (chosen[i] is null || rejected[i] is null || prompt is not null && prompt[i] is null) { rows.Add(new Row(null, Skip.Null)); continue; }
            var (p, c, r) = prompt is not null ? (prompt[i]!, chosen[i]!, rejected[i]!) : ExtractPrompt(chosen[i]!, rejected[i]!);
            // An empty prompt is allowed; an empty completion has nothing to compare.
            var skip = Check(c, r);
            rows.Add(skip == Skip.None ? new Row(new PreferenceRecord(p, c, r) { Margin = margins?[i] }, skip) : new Row(null, skip));
        }
        return rows;
    }

    List<Row> ReadConversationalPreferences(int group)
    {
        var rows = Deserialize<PreferenceRow>(group);
        var margins = ReadMargins(group);
        return [.. rows.Select((row, i) =>
        {
            if (row.chosen is null || row.rejected is null || Columns.Contains("prompt") && row.prompt is null) return new Row(null, Skip.Null);
            var (chosen, chosenSkip) = ToMessages(row.chosen);
            var (rejected, rejectedSkip) = ToMessages(row.rejected);
            var (prompt, promptSkip) = ToMessages(row.prompt ?? []);
            if (chosen is null || rejected is null || prompt is null) return new Row(null, new[] { chosenSkip, rejectedSkip, promptSkip }.Max());
            if (row.prompt is null) (prompt, chosen, rejected) = ExtractPrompt(chosen, rejected);
            if (chosen.Count == 0 || rejected.Count == 0) return new Row(null, Skip.Empty);
            return new Row(new ChatPreferenceRecord(prompt, chosen, rejected, string.IsNullOrWhiteSpace(row.tools) ? null : row.tools) { Margin = margins?[i] }, Skip.None);
        })];
    }

    /// <summary>TRL's optional margin column (a reward model's target gap between chosen and rejected), any numeric type
    /// or numeric text (JSON Lines); null when the file has none. A null value is a margin of 0.</summary>
    double?[]? ReadMargins(int group)
    {
        if (FirstReader.Schema.Fields.FirstOrDefault(f => f.Name == "margin") is not { } field) return null;
        var text = field is DataField { IsArray: false } data ? ReadAsText(group, data) : null;
        if (text is null) throw new OrtLoraException($"{Path}: column 'margin' holds {field.SchemaType.ToString().ToLowerInvariant()} values, not numbers");
        return [.. text.Select((t, i) => t is null ? (double?)null
            : double.TryParse(t, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var m) && double.IsFinite(m) ? m
            : throw new OrtLoraException($"{Path}: row {RowGroupStart(group) + i}: margin '{t}' is not a finite number"))];
    }

    /// <summary>TRL's extract_prompt: the prompt is chosen's start up to the first place where rejected differs (a
    /// space just before it stays with the completions); chosen and rejected are what follows.</summary>
    static (string Prompt, string Chosen, string Rejected) ExtractPrompt(string chosen, string rejected)
    {
        var (at, differs) = CommonStart(chosen.Length, rejected.Length, i => chosen[i] == rejected[i]);
        if (differs && at > 0 && chosen[at - 1] == ' ') at--;
        return (chosen[..at], chosen[at..], rejected[at..]);
    }

    static (List<ChatMessage>, List<ChatMessage>, List<ChatMessage>) ExtractPrompt(List<ChatMessage> chosen, List<ChatMessage> rejected)
    {
        var (at, _) = CommonStart(chosen.Count, rejected.Count, i => SameMessage(chosen[i], rejected[i]));
        return (chosen[..at], chosen[at..], rejected[at..]);
    }

    /// <summary>The index where two sequences first differ. As TRL's loop leaves it, sequences that never differ within
    /// the shorter one's length split one before its end (the last element counts as the completion).</summary>
    static (int At, bool Differs) CommonStart(int a, int b, Func<int, bool> same)
    {
        int n = Math.Min(a, b);
        for (int i = 0; i < n; i++) if (!same(i)) return (i, true);
        return (Math.Max(0, n - 1), false);
    }

    static bool SameMessage(ChatMessage a, ChatMessage b) =>
        a.Role == b.Role && a.Content == b.Content && a.Name == b.Name && a.ToolCallId == b.ToolCallId
        && (a.ToolCalls ?? []).SequenceEqual(b.ToolCalls ?? []);

    /// <summary>KTO's label: a boolean column, or text "true"/"false" (JSON Lines data).</summary>
    void RequireLabelColumn()
    {
        var field = FirstReader.Schema.Fields.FirstOrDefault(f => f.Name == "label")
            ?? throw new OrtLoraException($"{Path}: no column 'label' for unpaired-preference data; the file has columns: {string.Join(", ", Columns)}");
        if (field is DataField { ClrType: var type } && (type == typeof(bool) || type == typeof(string) || type == typeof(ReadOnlyMemory<char>))) return;
        throw new OrtLoraException($"{Path}: column 'label' holds {(field is DataField d ? d.ClrType.Name : field.SchemaType.ToString().ToLowerInvariant())}, not booleans");
    }

    bool?[] ReadLabels(int group)
    {
        var field = (DataField)FirstReader.Schema.Fields.First(f => f.Name == "label");
        if (field.ClrType == typeof(bool))
        {
            var (shard, local) = Locate(group);
            using var rowGroup = shard.Reader.OpenRowGroupReader(local);
            // A required column as plain values: Parquet.Net 6.1 can read one into nullable values as nulls after another
            // such read (ParquetDataset.Prompts' ReadValues).
            if (!field.IsNullable)
            {
                var required = new bool[rowGroup.RowCount];
                rowGroup.ReadAsync(field, required.AsMemory()).GetAwaiter().GetResult();
                return [.. required.Select(v => (bool?)v)];
            }
            var values = new bool?[rowGroup.RowCount];
            rowGroup.ReadAsync(field, values.AsMemory()).GetAwaiter().GetResult();
            return values;
        }
        var text = ReadStrings(group, "label");
        return [.. text.Select((t, i) => t is null ? (bool?)null : bool.TryParse(t.Trim(), out var b) ? b
            : throw new OrtLoraException($"{Path}: row {RowGroupStart(group) + i}: label '{t}' is not true or false"))];
    }

    List<Row> ReadUnpaired(int group)
    {
        var prompt = ReadStrings(group, "prompt");
        var completion = ReadStrings(group, "completion");
        var label = ReadLabels(group);
        return [.. prompt.Select((p, i) => p is null || completion[i] is null || label[i] is null ? new Row(null, Skip.Null)
            : Check(completion[i]) is var skip && skip != Skip.None ? new Row(null, skip)
            : new Row(new UnpairedPreferenceRecord(p, completion[i]!, label[i]!.Value), Skip.None))];
    }

    List<Row> ReadConversationalUnpaired(int group)
    {
        var rows = Deserialize<PromptCompletionRow>(group);
        var label = ReadLabels(group);
        return [.. rows.Select((row, i) =>
        {
            if (row.prompt is null || row.completion is null || label[i] is null) return new Row(null, Skip.Null);
            var (prompt, promptSkip) = ToMessages(row.prompt);
            var (completion, completionSkip) = ToMessages(row.completion);
            if (prompt is null || completion is null) return new Row(null, promptSkip == Skip.None ? completionSkip : promptSkip);
            if (completion.Count == 0) return new Row(null, Skip.Empty);
            return new Row(new ChatUnpairedPreferenceRecord(prompt, completion, label[i]!.Value, string.IsNullOrWhiteSpace(row.tools) ? null : row.tools), Skip.None);
        })];
    }

    sealed class PreferenceRow
    {
        public List<ChatMessageRow?>? prompt { get; set; }
        public List<ChatMessageRow?>? chosen { get; set; }
        public List<ChatMessageRow?>? rejected { get; set; }
        public string? tools { get; set; }
    }
}
