using System.Globalization;
using System.Text.Json;

namespace OrtLora.Training.Data;

/// <summary>The classes of sequence classification data, as transformers' run_glue.py finds them (and of token
/// classification data, as run_ner.py does): integer labels are class indices as they are (a datasets ClassLabel column,
/// whose names the file's metadata may carry), num_labels one more than the largest; other labels (names, booleans) are
/// sorted, and a label's index is its place in that list (the config's id2label). Float labels, or num_labels 1, make a
/// regression (problem_type regression: one output, the MSE loss).</summary>
public sealed class ClassLabels
{
    /// <summary>The class names in index order; null for integer labels.</summary>
    public IReadOnlyList<string>? Names { get; }
    /// <summary>num_labels: the classifier's outputs.</summary>
    public int Count { get; }
    /// <summary>A regression: one output, each row's label a number (<see cref="Target"/>).</summary>
    public bool IsRegression { get; }
    /// <summary>Multi-label classification: each row has a set of classes (<see cref="Targets"/>), each class its own
    /// yes or no (the BCE loss).</summary>
    public bool IsMultiLabel { get; }

    /// <summary>transformers' problem_type.</summary>
    public string ProblemType => IsRegression ? "regression" : IsMultiLabel ? "multi_label_classification" : "single_label_classification";

    public static ClassLabels Regression { get; } = new(null, 1, regression: true);

    ClassLabels(IReadOnlyList<string>? names, int count, bool regression = false, bool multiLabel = false)
    {
        IsRegression = regression;
        IsMultiLabel = multiLabel;
        if (count < 2 && !regression)
            throw new OrtLoraException($"single-label classification needs at least 2 classes, got num_labels {count} " +
                "(give --num-labels when the data shows only one class; --num-labels 1 is a regression on numeric labels)");
        Names = names;
        Count = count;
    }

    /// <summary>The classes of a training file (every row: the eval split's too, as run_glue reads train's labels).</summary>
    /// <param name="numLabels">--num-labels: at least the classes found</param>
    public static ClassLabels From(ParquetDataset train, int? numLabels = null)
    {
        bool tokens = train.Format == DatasetFormat.TokenClassification;
        var seen = new HashSet<string>(StringComparer.Ordinal);
        int sets = 0, single = 0;
        foreach (var (_, record) in train.ReadAll())
            if (record is ClassificationRecord { LabelSet: { } set }) { seen.UnionWith(set); sets++; }
            else if (record is ClassificationRecord row) { seen.Add(row.Label); single++; }
            else if (record is TokenClassificationRecord words) seen.UnionWith(words.Labels);
        if (sets > 0 && single > 0)
            throw new OrtLoraException($"{train.Path}: {sets} rows hold lists of labels and {single} one label; a file is multi-label (lists) or single-label, not both");
        bool multiLabel = sets > 0;
        if (seen.Count == 0 && train.MultiHotWidth is null) throw new OrtLoraException($"{train.Path}: no labelled row");
        if (multiLabel && numLabels == 1) throw new OrtLoraException($"{train.Path}: lists of labels are multi-label classification; --num-labels 1 would make a regression");
        // run_glue's is_regression: a float label column (JSON Lines numbers: any that is not an integer); or num_labels 1
        bool numeric = seen.All(l => double.TryParse(l, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v));
        bool integers = seen.All(l => long.TryParse(l, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out _));
        if (tokens && (numLabels == 1 || numeric && !integers))
            throw new OrtLoraException($"{train.Path}: token classification labels each word with a class (integers or names); " +
                (numLabels == 1 ? "--num-labels 1 would make a regression" : $"'{seen.First(l => !long.TryParse(l, out _))}' is a number but no class index"));
        if (!tokens && !multiLabel && (train.LabelIsFloat || numLabels == 1 || numeric && !integers))
        {
            if (!numeric) throw new OrtLoraException($"{train.Path}: a regression (num_labels 1{(train.LabelIsFloat ? ", a float label column" : "")}) takes numeric labels; " +
                $"'{seen.First(l => !double.TryParse(l, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !double.IsFinite(v))}' is not one");
            if (numLabels is > 1) throw new OrtLoraException($"{train.Path}: float labels are a regression (num_labels 1); --num-labels is {numLabels}");
            return Regression;
        }
        if (integers)
        {
            // datasets mark unlabelled rows (GLUE's test splits) -1: no class to learn
            if (seen.FirstOrDefault(l => !IsIndex(l)) is { } negative)
                throw new OrtLoraException($"{train.Path}: label {negative} is no class index (0 .. num_labels - 1); rows without a label (datasets mark them -1) have nothing to learn");
            if (seen.FirstOrDefault(l => long.Parse(l, CultureInfo.InvariantCulture) > MaxClasses) is { } huge)
                throw new OrtLoraException($"{train.Path}: label {huge} would make num_labels {huge}+1; class indices run from 0 (map the labels to 0 .. K - 1)");
            // multi-hot lists: a class for every position, whether any row has it or not
            int largest = Math.Max(seen.Count == 0 ? -1 : seen.Max(l => int.Parse(l, CultureInfo.InvariantCulture)), (train.MultiHotWidth ?? 0) - 1);
            // a datasets ClassLabel: its names, as run_glue and run_ner take features[label].names
            var declared = train.LabelColumn is { } column ? train.DeclaredClassNames(column) : null;
            int count = numLabels ?? declared?.Count ?? largest + 1;
            if (count <= largest)
                throw new OrtLoraException($"{train.Path}: label {largest} needs num_labels of at least {largest + 1}; " +
                    (numLabels is not null ? $"--num-labels is {numLabels}" : $"the file's ClassLabel names {declared!.Count} classes"));
            if (declared is not null && declared.Count != count)
                throw new OrtLoraException($"{train.Path}: the file's ClassLabel names {declared.Count} classes; --num-labels is {count}");
            return new ClassLabels(declared, count, multiLabel: multiLabel);
        }
        var names = seen.Order(StringComparer.Ordinal).ToList();
        if (numLabels is { } given && given != names.Count)
            throw new OrtLoraException($"{train.Path}: {names.Count} label names ({string.Join(", ", names.Take(8))}{(names.Count > 8 ? ", ..." : "")}); --num-labels is {given}");
        return new ClassLabels(names, names.Count, multiLabel: multiLabel);
    }

    /// <summary>Classes known from a model (its id2label) or a count.</summary>
    public static ClassLabels Of(int count, IReadOnlyList<string>? names = null, bool multiLabel = false) =>
        names is null ? new ClassLabels(null, count, multiLabel: multiLabel)
        : names.Count == count ? new ClassLabels(names, count, multiLabel: multiLabel) : throw new OrtLoraException($"{names.Count} label names for {count} classes");

    /// <summary>These classes as a multi-label classifier's (the model's problem_type says so).</summary>
    public ClassLabels AsMultiLabel() => IsRegression ? throw new OrtLoraException("a regression has no classes to be multi-label") : new ClassLabels(Names, Count, multiLabel: true);

    /// <summary>The largest class index taken as one (a label beyond it is an id, not a class).</summary>
    const int MaxClasses = 100_000;

    static bool IsIndex(string label) => int.TryParse(label, NumberStyles.None, CultureInfo.InvariantCulture, out var index) && index <= MaxClasses;

    /// <summary>A row's class index: a class name, else an index (a datasets ClassLabel's integers, whose names the
    /// classes may carry); a label outside the classes names the file and the row.</summary>
    public int Id(string label, string file, long row)
    {
        if (Names is not null)
            for (int i = 0; i < Names.Count; i++) if (Names[i] == label) return i;
        if (IsIndex(label) && int.Parse(label, CultureInfo.InvariantCulture) is var id && id < Count) return id;
        throw new OrtLoraException(Names is null ? $"{file}: row {row}: label '{label}' is not a class index in 0 .. {Count - 1}"
            : $"{file}: row {row}: label '{label}' is neither one of the classes ({string.Join(", ", Names.Take(12))}{(Names.Count > 12 ? ", ..." : "")}) nor an index in 0 .. {Count - 1}");
    }

    /// <summary>run_ner's b_to_i_label: the class a word's later sub-tokens take with label_all_tokens, I-X for B-X
    /// where the classes have it, else the class itself.</summary>
    public int Inside(int id)
    {
        if (Names is not { } names || !names[id].StartsWith("B-", StringComparison.Ordinal)) return id;
        for (int i = 0; i < names.Count; i++) if (names[i] == "I-" + names[id][2..]) return i;
        return id;
    }

    /// <summary>A multi-label row's classes as multi-hot [num_labels] (run_classification's multi_labels_to_ids).</summary>
    public float[] Targets(IReadOnlyList<string> labels, string file, long row)
    {
        var targets = new float[Count];
        foreach (var label in labels) targets[Id(label, file, row)] = 1;
        return targets;
    }

    /// <summary>A regression row's target; a label that is no finite number names the file and the row.</summary>
    public float Target(string label, string file, long row) =>
        double.TryParse(label, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && double.IsFinite(value) ? (float)value
            : throw new OrtLoraException($"{file}: row {row}: label '{label}' is not a number (the labels of a regression are)");

    /// <summary>The name of class <paramref name="id"/> (its index for integer labels; transformers' LABEL_0 for a
    /// regression's output).</summary>
    public string Name(int id) => IsRegression ? "LABEL_0" : Names?[id] ?? id.ToString(CultureInfo.InvariantCulture);

    /// <summary>transformers' config id2label: {"0": name, ...}.</summary>
    public string Id2LabelJson() =>
        JsonSerializer.Serialize(Enumerable.Range(0, Count).ToDictionary(i => i.ToString(CultureInfo.InvariantCulture), Name));

    /// <summary>Classes from an id2label JSON object (what <see cref="Id2LabelJson"/> writes); labels that are their
    /// own index read back as integer labels.</summary>
    public static ClassLabels FromId2LabelJson(string json, string source)
    {
        Dictionary<string, string>? map;
        try { map = JsonSerializer.Deserialize<Dictionary<string, string>>(json); }
        catch (JsonException e) { throw new OrtLoraException($"{source}: id2label is not a JSON object of names: {e.Message}"); }
        if (map is null || map.Count == 0) throw new OrtLoraException($"{source}: id2label is empty");
        var names = Enumerable.Range(0, map.Count).Select(i => map.TryGetValue(i.ToString(CultureInfo.InvariantCulture), out var n) ? n
            : throw new OrtLoraException($"{source}: id2label has no entry {i}")).ToList();
        return names.Select((n, i) => n == i.ToString(CultureInfo.InvariantCulture)).All(b => b) ? Of(names.Count) : Of(names.Count, names);
    }

    public override string ToString() => IsRegression ? "regression (num_labels 1)" :
        $"{Count} labels{(IsMultiLabel ? " (multi-label)" : "")}" + (Names is null ? "" : $": {string.Join(", ", Names.Take(8).Select((n, i) => $"{i} {n}"))}{(Names.Count > 8 ? ", ..." : "")}");
}
