using System.Globalization;
using Parquet.Schema;

namespace OrtLora.Training.Data;

/// <summary>TRL's prompt-only rows (what GRPOTrainer reads): a prompt, text or messages, and the row's other columns,
/// which reward functions receive (a reference answer, a test case).</summary>
public sealed partial class ParquetDataset
{
    List<Row> ReadPrompts(int group)
    {
        var prompt = ReadStrings(group, "prompt");
        var columns = ReadOtherColumns(group);
        return [.. prompt.Select((p, i) => Check(p) is var skip && skip != Skip.None ? new Row(null, skip)
            : new Row(new PromptRecord(p!, columns(i)), Skip.None))];
    }

    List<Row> ReadConversationalPrompts(int group)
    {
        var rows = Deserialize<PromptRow>(group);
        var columns = ReadOtherColumns(group);
        return [.. rows.Select((row, i) =>
        {
            if (row.prompt is null) return new Row(null, Skip.Null);
            if (row.prompt.Count == 0) return new Row(null, Skip.Empty);
            var (prompt, skip) = ToMessages(row.prompt);
            if (prompt is null) return new Row(null, skip);
            return new Row(new ChatPromptRecord(prompt, string.IsNullOrWhiteSpace(row.tools) ? null : row.tools, columns(i)), Skip.None);
        })];
    }

    /// <summary>The columns a reward function is handed: every top-level scalar column but the prompt (and a
    /// conversational row's tools, which the prompt's rendering takes), as text; a row's values by its index in the group.
    /// Lists and structs are left out: they have no single text a reward function could parse back.</summary>
    Func<int, IReadOnlyDictionary<string, string?>> ReadOtherColumns(int group)
    {
        var values = new List<(string Name, string?[] Values)>();
        foreach (var field in FirstReader.Schema.Fields)
        {
            if (field.Name == "prompt" || ConversationalPrompts && field.Name == ToolsColumn) continue;
            if (field is DataField { IsArray: false } data && ReadAsText(group, data) is { } text) values.Add((field.Name, text));
        }
        return i => values.ToDictionary(c => c.Name, c => c.Values[i]);
    }

    /// <summary>A scalar column's values as text, written so that a reward function reads back the value stored:
    /// booleans as true/false, numbers in the invariant culture, doubles and floats in their shortest round-trip form;
    /// null for a column of another kind (dates, bytes).</summary>
    string?[]? ReadAsText(int group, DataField field)
    {
        var type = field.ClrType;
        if (type == typeof(string) || type == typeof(ReadOnlyMemory<char>)) return ReadStrings(group, field.Name);
        if (type == typeof(bool)) return ReadValues<bool>(group, field, b => b ? "true" : "false");
        if (type == typeof(double)) return ReadValues<double>(group, field, d => d.ToString("R", CultureInfo.InvariantCulture));
        if (type == typeof(float)) return ReadValues<float>(group, field, f => f.ToString("R", CultureInfo.InvariantCulture));
        if (type == typeof(decimal)) return ReadValues<decimal>(group, field, Invariant);
        if (type == typeof(int)) return ReadValues<int>(group, field, Invariant);
        if (type == typeof(long)) return ReadValues<long>(group, field, Invariant);
        if (type == typeof(short)) return ReadValues<short>(group, field, Invariant);
        if (type == typeof(sbyte)) return ReadValues<sbyte>(group, field, Invariant);
        if (type == typeof(byte)) return ReadValues<byte>(group, field, Invariant);
        if (type == typeof(ushort)) return ReadValues<ushort>(group, field, Invariant);
        if (type == typeof(uint)) return ReadValues<uint>(group, field, Invariant);
        if (type == typeof(ulong)) return ReadValues<ulong>(group, field, Invariant);
        return null;
    }

    static string Invariant<T>(T value) where T : IFormattable => value.ToString(null, CultureInfo.InvariantCulture);

    /// <summary>A column of <typeparamref name="T"/> as text. A required column is read as values, not nullable
    /// values: Parquet.Net 6.1 reading a required column into nullable values after another such read of the same file
    /// gave nulls for stored values (an int column, then a double one).</summary>
    string?[] ReadValues<T>(int group, DataField field, Func<T, string> text) where T : struct
    {
        var (shard, local) = Locate(group);
        using var rowGroup = shard.Reader.OpenRowGroupReader(local);
        if (!field.IsNullable)
        {
            var required = new T[rowGroup.RowCount];
            rowGroup.ReadAsync(field, required.AsMemory()).GetAwaiter().GetResult();
            return [.. required.Select(text)];
        }
        var values = new T?[rowGroup.RowCount];
        rowGroup.ReadAsync(field, values.AsMemory()).GetAwaiter().GetResult();
        return [.. values.Select(v => v is { } value ? text(value) : null)];
    }

    sealed class PromptRow
    {
        public List<ChatMessageRow?>? prompt { get; set; }
        public string? tools { get; set; }
    }
}
