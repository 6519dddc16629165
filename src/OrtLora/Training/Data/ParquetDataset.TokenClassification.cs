using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet.Data;
using Parquet.Schema;

namespace OrtLora.Training.Data;

/// <summary>Token classification rows (what transformers' token-classification example, run_ner.py, reads: CoNLL-2003's
/// shape): a column of words (<c>tokens</c>, or the dataset text field) and a column holding one label a word
/// (<c>ner_tags</c>, else <c>tags</c>, <c>labels</c>, <c>label</c>, <c>pos_tags</c>, <c>chunk_tags</c>). Both are lists:
/// Parquet list columns (pyarrow's, with nullable elements or not), or JSON arrays in a JSON Lines file. The labels are
/// integers (a datasets ClassLabel, whose names the file's "huggingface" metadata may carry) or names.</summary>
public sealed partial class ParquetDataset
{
    /// <summary>The column of words (set for <see cref="DatasetFormat.TokenClassification"/> data).</summary>
    public string? WordsColumn { get; private set; }

    static readonly string[] WordColumns = ["tokens", "words"];
    static readonly string[] TagColumns = ["ner_tags", "tags", "labels", "label", "pos_tags", "chunk_tags"];

    void RequireTokenClassificationColumns()
    {
        WordsColumn = Columns.Contains(TextColumn) ? TextColumn : WordColumns.FirstOrDefault(Columns.Contains)
            ?? throw new OrtLoraException($"{Path}: no column of words ('tokens', or --dataset-text-field) for token classification data; " +
                                          $"the file has columns: {string.Join(", ", Columns)}");
        RequireListColumn(WordsColumn, "words");
        LabelColumn = FindLabelColumn(TagColumns, "token classification data");
        if (LabelColumn is not null) RequireListColumn(LabelColumn, "labels");
    }

    /// <summary>A list of scalars (Parquet), or text (a JSON Lines file's JSON arrays, read row by row).</summary>
    void RequireListColumn(string column, string what)
    {
        var field = FirstReader.Schema.Fields.First(f => f.Name == column);
        bool ok = field is ListField { Item: DataField { ClrType: var t } } && (t == typeof(string) || t == typeof(ReadOnlyMemory<char>) || ScalarText(t) is not null)
                  || field is DataField { IsArray: false, ClrType: var s } && (s == typeof(string) || s == typeof(ReadOnlyMemory<char>));
        if (!ok)
            throw new OrtLoraException($"{Path}: column '{column}' holds {Describe(field)}; token classification takes a list of {what} a row " +
                                       "(a Parquet list of strings or integers, or a JSON array)");
    }

    static string Describe(Field field) => field switch
    {
        ListField { Item: DataField d } => $"lists of {d.ClrType.Name}",
        DataField d => d.ClrType.Name + " values",
        _ => field.SchemaType.ToString().ToLowerInvariant(),
    };

    List<Row> ReadTokenClassifications(int group)
    {
        var words = ReadLists(group, WordsColumn!);
        var labels = LabelColumn is null ? null : ReadLists(group, LabelColumn);
        var rows = new List<Row>(words.Length);
        long first = RowGroupStart(group);
        for (int i = 0; i < words.Length; i++)
        {
            var rowWords = words[i];
            var rowLabels = labels?[i];
            if (rowWords is null || labels is not null && rowLabels is null && !_labelsOptional) { rows.Add(new Row(null, Skip.Null)); continue; }
            if (rowWords.Length == 0 || rowWords.Any(w => w is null)) { rows.Add(new Row(null, Skip.Empty)); continue; }
            if (rowLabels is not null && rowLabels.Length != rowWords.Length)
                throw new OrtLoraException($"{Path}: row {first + i}: {rowWords.Length} words and {rowLabels.Length} labels in '{LabelColumn}'; token classification takes one label a word");
            if (rowLabels is not null && !_labelsOptional && rowLabels.Any(l => l is null))
                throw new OrtLoraException($"{Path}: row {first + i}: a null label in '{LabelColumn}'; every word of a training row needs its label");
            rows.Add(new Row(new TokenClassificationRecord(rowWords!, rowLabels is null ? [] : [.. rowLabels.Select(l => l?.Trim() ?? "")]), Skip.None));
        }
        return rows;
    }

    /// <summary>A list column's rows: each a list of its elements as text (null elements null), or null for a null list.</summary>
    string?[]?[] ReadLists(int group, string column)
    {
        var field = FirstReader.Schema.Fields.First(f => f.Name == column);
        if (field is DataField) return [.. ReadStrings(group, column).Select((json, i) => json is null ? null : JsonList(json, column, RowGroupStart(group) + i))];
        var leaf = (DataField)((ListField)field).Item;
        var (shard, local) = Locate(group);
        using var rowGroup = shard.Reader.OpenRowGroupReader(local);
        using var raw = rowGroup.ReadRawColumnDataBaseAsync(leaf).GetAwaiter().GetResult(); // pooled buffers, returned on dispose
        var values = RawValues(raw);
        var definitions = raw.DefinitionLevels.ToArray();
        var repetitions = raw.RepetitionLevels.ToArray();
        // Dremel's levels: repetition 0 opens a row; the full definition level is a value, one less (when the element
        // is nullable) a null element, the level below that an empty list, anything lower a null list.
        int full = leaf.MaxDefinitionLevel, nullElement = leaf.IsNullable ? full - 1 : -1, empty = full - (leaf.IsNullable ? 2 : 1);
        var rows = new List<string?[]?>((int)rowGroup.RowCount);
        List<string?>? current = null;
        bool open = false;
        int next = 0;
        for (int i = 0; i < definitions.Length; i++)
        {
            if (repetitions[i] == 0)
            {
                if (open) rows.Add(current is null ? null : [.. current]);
                open = true;
                current = definitions[i] >= empty ? [] : null;
            }
            if (definitions[i] == full) current!.Add(values[next++]);
            else if (definitions[i] == nullElement) current!.Add(null);
        }
        if (open) rows.Add(current is null ? null : [.. current]);
        return [.. rows];
    }

    /// <summary>A raw column's stored (non-null) values, as text.</summary>
    static string[] RawValues(RawColumnData raw) => raw switch
    {
        RawColumnData<ReadOnlyMemory<char>> s => [.. s.Values.ToArray().Select(v => v.ToString())],
        RawColumnData<long> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<int> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<short> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<sbyte> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<byte> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<ushort> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<uint> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<ulong> v => [.. v.Values.ToArray().Select(x => x.ToString(CultureInfo.InvariantCulture))],
        RawColumnData<bool> v => [.. v.Values.ToArray().Select(x => x ? "true" : "false")],
        RawColumnData<double> v => [.. v.Values.ToArray().Select(x => x.ToString("R", CultureInfo.InvariantCulture))],
        RawColumnData<float> v => [.. v.Values.ToArray().Select(x => x.ToString("R", CultureInfo.InvariantCulture))],
        _ => throw new OrtLoraException($"a list column of {raw.GetType().GetGenericArguments().FirstOrDefault()?.Name} values is neither words nor labels"),
    };

    /// <summary>The scalar element types <see cref="RawValues"/> reads as text (null for others).</summary>
    static string? ScalarText(Type t) =>
        t == typeof(long) || t == typeof(int) || t == typeof(short) || t == typeof(sbyte) || t == typeof(byte) || t == typeof(ushort)
        || t == typeof(uint) || t == typeof(ulong) || t == typeof(bool) ? t.Name : null;

    /// <summary>A JSON Lines file's list (its JSON text): strings as they are, numbers as written.</summary>
    string?[] JsonList(string json, string column, long row)
    {
        JsonNode? node;
        try { node = JsonNode.Parse(json); }
        catch (JsonException) { node = null; }
        if (node is not JsonArray array)
            throw new OrtLoraException($"{Path}: row {row}: '{column}' is not a list (token classification takes a list of words and one of labels a row): {Shorten(json)}");
        return [.. array.Select(e => e switch
        {
            null => null,
            JsonValue v when v.TryGetValue<string>(out var s) => s,
            JsonValue v when v.GetValueKind() is JsonValueKind.Number or JsonValueKind.True or JsonValueKind.False => v.ToJsonString(),
            _ => throw new OrtLoraException($"{Path}: row {row}: '{column}' holds {Shorten(e.ToJsonString())}; its elements are words or labels"),
        })];
    }

    static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "...";

    /// <summary>The class names of a label column that a Hugging Face datasets file declares (its "huggingface" schema
    /// metadata: a ClassLabel, or a sequence of ClassLabel for token labels), as run_glue and run_ner read
    /// features[label].names; null when the file says nothing (a JSON Lines file, pyarrow's own).</summary>
    public IReadOnlyList<string>? DeclaredClassNames(string column)
    {
        if (!FirstReader.CustomMetadata.TryGetValue("huggingface", out var json)) return null;
        try
        {
            var feature = JsonNode.Parse(json)?["info"]?["features"]?[column];
            // datasets' Sequence (before 4.0) and List wrap the element's feature
            while (feature?["_type"]?.GetValue<string>() is "Sequence" or "List" or "LargeList") feature = feature["feature"];
            if (feature?["_type"]?.GetValue<string>() != "ClassLabel" || feature["names"] is not JsonArray names) return null;
            var list = names.Select(n => n?.GetValue<string>()).ToList();
            return list.Count > 0 && list.All(n => n is not null) ? [.. list.Select(n => n!)] : null;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException) { return null; }
    }
}
