using Parquet.Schema;

namespace OrtLora.Training.Data;

/// <summary>Sequence classification rows (what transformers' text-classification example, run_glue.py, reads): a text
/// column (the dataset text field), or GLUE's pair of text columns (sentence1/sentence2, question1/question2,
/// question/sentence, premise/hypothesis), or GLUE's <c>sentence</c>; and a label column (<c>label</c>, else
/// <c>labels</c>): integers (a datasets ClassLabel), booleans, or names.</summary>
public sealed partial class ParquetDataset
{
    /// <summary>The classification text column (set for <see cref="DatasetFormat.Classification"/> data).</summary>
    public string? ClassificationText { get; private set; }
    /// <summary>The classification label column (set for <see cref="DatasetFormat.Classification"/> data).</summary>
    public string? LabelColumn { get; private set; }
    /// <summary>The second text of a pair (GLUE's sentence2, ...), or null for single texts.</summary>
    public string? ClassificationTextPair { get; private set; }
    /// <summary>The label column holds floats (run_glue's is_regression).</summary>
    public bool LabelIsFloat { get; private set; }
    /// <summary>The label column holds lists of classes (a Parquet list; in JSON Lines, arrays): multi-label
    /// classification, as run_classification.py reads a list-typed label.</summary>
    public bool LabelIsList { get; private set; }
    /// <summary>The label lists are multi-hot floats, a 0 or 1 for each class (what multi_labels_to_ids makes); read as
    /// the list of the classes at 1, and <see cref="MultiHotWidth"/> is num_labels.</summary>
    public bool LabelIsMultiHot { get; private set; }
    /// <summary>The multi-hot lists' length, once a row group is read (every row's must agree).</summary>
    public int? MultiHotWidth { get; private set; }

    readonly bool _labelsOptional;
    /// <summary>The label column asked for (--label-column-name), or null for the format's usual names.</summary>
    readonly string? _labelColumnName;
    /// <summary>Text columns joined into a row's text (run_classification's text_column_names), or null.</summary>
    readonly IReadOnlyList<string>? _textColumnNames;
    readonly string _textColumnDelimiter;

    /// <summary>The label column: the one asked for (which must exist unless labels are optional), else the first of
    /// <paramref name="usual"/> the file has.</summary>
    string? FindLabelColumn(string[] usual, string what)
    {
        if (_labelColumnName is { } asked)
            return Columns.Contains(asked) ? asked : _labelsOptional ? null
                : throw new OrtLoraException($"{Path}: no column '{asked}' (--label-column-name) for {what}; the file has columns: {string.Join(", ", Columns)}");
        return usual.FirstOrDefault(Columns.Contains)
            ?? (_labelsOptional ? null
                : throw new OrtLoraException($"{Path}: no column {string.Join(" or ", usual.Select(c => $"'{c}'"))} for {what}; the file has columns: {string.Join(", ", Columns)}"));
    }

    /// <summary>GLUE's text pairs, run_glue.py's task_to_keys.</summary>
    static readonly (string First, string Second)[] TextPairs = [("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"), ("premise", "hypothesis")];

    void RequireClassificationColumns()
    {
        if (_textColumnNames is { } names)
        {
            foreach (var name in names.Where(n => !Columns.Contains(n)))
                throw new OrtLoraException($"{Path}: no column '{name}' (--text-column-names); the file has columns: {string.Join(", ", Columns)}");
            foreach (var name in names) RequireStringColumn(name);
            ClassificationText = names[0];
            FindClassificationLabel();
            return;
        }
        var pair = Columns.Contains(TextColumn) ? default : TextPairs.FirstOrDefault(p => Columns.Contains(p.First) && Columns.Contains(p.Second));
        ClassificationTextPair = pair.Second;
        ClassificationText = Columns.Contains(TextColumn) ? TextColumn : pair.First ?? (Columns.Contains("sentence") ? "sentence"
            : throw new OrtLoraException($"{Path}: no text column ('{TextColumn}', a pair such as 'sentence1'/'sentence2', or 'sentence') for classification data; " +
                                         $"the file has columns: {string.Join(", ", Columns)}"));
        if (ClassificationTextPair is { } second) RequireStringColumn(second);
        RequireStringColumn(ClassificationText);
        FindClassificationLabel();
    }

    void FindClassificationLabel()
    {
        LabelColumn = FindLabelColumn(["label", "labels"], "classification data");
        if (LabelColumn is null) return; // rows to predict
        var field = FirstReader.Schema.Fields.First(f => f.Name == LabelColumn);
        if (field is ListField { Item: DataField { ClrType: var element } })
        {
            // a float list is multi-hot (a 0 or 1 for every class); others list the classes that apply
            LabelIsMultiHot = element == typeof(double) || element == typeof(float);
            if (!LabelIsMultiHot) RequireListColumn(LabelColumn, "labels");
            LabelIsList = true;
            return;
        }
        var type = (field as DataField)?.ClrType;
        if (field is not DataField { IsArray: false } || type == typeof(DateTime) || type == typeof(DateTimeOffset) || type == typeof(byte[]))
            throw new OrtLoraException($"{Path}: column '{LabelColumn}' holds {(field is DataField d ? d.ClrType.Name + (d.IsArray ? " lists" : "") : field.SchemaType.ToString().ToLowerInvariant())}; " +
                "classification takes one label a row: integers (0 .. num_labels - 1), booleans, names, or numbers for a regression " +
                "(or lists of them for multi-label classification)");
        LabelIsFloat = type == typeof(double) || type == typeof(float) || type == typeof(decimal);
    }

    List<Row> ReadClassifications(int group)
    {
        var text = ReadStrings(group, ClassificationText!);
        var pair = ClassificationTextPair is { } second ? ReadStrings(group, second) : null;
        var joined = _textColumnNames?.Skip(1).Select(c => ReadStrings(group, c)).ToList() ?? [];
        var labelSets = LabelIsList ? ReadLists(group, LabelColumn!) : null;
        var labels = LabelColumn is null ? new string?[text.Length]
            : LabelIsList ? [.. labelSets!.Select(l => l is null ? null : "")]
            : ReadAsText(group, (DataField)FirstReader.Schema.Fields.First(f => f.Name == LabelColumn))
              ?? throw new OrtLoraException($"{Path}: column '{LabelColumn}' cannot be read as class labels");
        var rows = new List<Row>(text.Length);
        for (int i = 0; i < text.Length; i++)
        {
            // a row to predict needs no label; an empty list of labels is a row where no class applies
            string?[] texts = [text[i], .. pair is null ? [] : new[] { pair[i] }, .. joined.Select(column => column[i])];
            var skip = Check([.. texts, .. _labelsOptional || LabelIsList && labels[i] == "" ? [] : new[] { labels[i] }]);
            if (skip != Skip.None) { rows.Add(new Row(null, skip)); continue; }
            // JSON Lines: a row's labels as a JSON array (an empty one: no class applies)
            var set = labelSets?[i] is { } listed ? LabelIsMultiHot ? MultiHot(listed, RowGroupStart(group) + i) : [.. listed.Select(l => l?.Trim() ?? "")]
                : labels[i]?.TrimStart().StartsWith('[') == true ? JsonList(labels[i]!, LabelColumn!, RowGroupStart(group) + i).Select(l => l?.Trim() ?? "").ToList() : null;
            if (set is not null && set.Any(l => l == ""))
                throw new OrtLoraException($"{Path}: row {RowGroupStart(group) + i}: a null or empty label in '{LabelColumn}'");
            // run_classification's text_column_names: the columns joined into one text, no pair
            var rowText = joined.Count == 0 ? text[i]! : string.Join(_textColumnDelimiter, texts);
            rows.Add(new Row(new ClassificationRecord(rowText, set is null ? labels[i]?.Trim() ?? "" : "") { TextPair = pair?[i], LabelSet = set }, Skip.None));
        }
        return rows;
    }

    /// <summary>A multi-hot row as the indices of its classes; values other than 0 and 1, or a row of another length than
    /// the others, name the file and the row.</summary>
    List<string> MultiHot(string?[] values, long row)
    {
        if (MultiHotWidth is { } width && width != values.Length)
            throw new OrtLoraException($"{Path}: row {row}: a multi-hot list of {values.Length} values; other rows have {width} (one for each class)");
        MultiHotWidth = values.Length;
        var set = new List<string>();
        for (int c = 0; c < values.Length; c++)
            switch (values[c])
            {
                case "1": set.Add(c.ToString(System.Globalization.CultureInfo.InvariantCulture)); break;
                case "0": break;
                default: throw new OrtLoraException($"{Path}: row {row}: '{values[c]}' in the multi-hot list of '{LabelColumn}'; a class is 0 or 1 (soft labels are not taken)");
            }
        return set;
    }
}
