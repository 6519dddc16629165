namespace OrtLora.Training.Data;

/// <summary>An example as tokens. <see cref="Labels"/> is aligned with <see cref="InputIds"/> (the model shifts, as
/// Hugging Face causal LMs do): the token id where the model learns the token, -100 where it only reads it.</summary>
public sealed record TokenizedExample(long RowIndex, int[] InputIds, int[] Labels)
{
    public int Length => InputIds.Length;
    /// <summary>A value for a loss that reads one a row: a reward model's chosen sequence holds the pair's margin (TRL's
    /// margin column; 0 without one), a regression's row its target.</summary>
    public float RowValue { get; init; }
    /// <summary>A multi-label classification row's classes, multi-hot [num_labels] (the BCE loss's targets); null for
    /// other rows.</summary>
    public float[]? RowTargets { get; init; }
    public int TrainedTokens => Labels.Count(l => l != ExampleEncoder.IgnoreIndex);
}

/// <summary>Tokenizes rendered examples and labels them. Text between BOS/EOS segments is encoded as one string, so
/// tokens form exactly as they would for the whole text; each token then takes the trainability of the segment it
/// starts in, found by encoding the text up to each segment boundary (a token spanning the boundary counts as the
/// later segment's). Sequences longer than <see cref="MaxSeqLength"/> are cut at the end.</summary>
public sealed class ExampleEncoder(TextTokenizer tokenizer, int maxSeqLength)
{
    /// <summary>The label PyTorch's cross-entropy ignores.</summary>
    public const int IgnoreIndex = -100;

    public TextTokenizer Tokenizer => tokenizer;
    public int MaxSeqLength { get; } = maxSeqLength > 0 ? maxSeqLength
        : throw new OrtLoraException($"--max-seq-length must be positive, got {maxSeqLength}");

    /// <summary>The example's token ids, whole (no truncation, trained tokens or not): a prompt for generation.</summary>
    public int[] Ids(Example example) => Tokens(example).Ids.ToArray();

    /// <summary>The example's tokens and labels, or null when truncation left no trained token.</summary>
    public TokenizedExample? Encode(Example example)
    {
        var (ids, labels) = Tokens(example);
        if (ids.Count > MaxSeqLength)
        {
            ids.RemoveRange(MaxSeqLength, ids.Count - MaxSeqLength);
            labels.RemoveRange(MaxSeqLength, labels.Count - MaxSeqLength);
        }
        return labels.Any(l => l != IgnoreIndex) ? new TokenizedExample(example.RowIndex, [.. ids], [.. labels]) : null;
    }

    (List<int> Ids, List<int> Labels) Tokens(Example example)
    {
        var ids = new List<int>();
        var labels = new List<int>();
        var run = new List<Segment>();
        foreach (var segment in example.Segments)
        {
            if (segment.Special == SpecialToken.None) { run.Add(segment); continue; }
            AppendRun(run, ids, labels);
            run.Clear();
            if ((segment.Special == SpecialToken.Bos ? tokenizer.BosId : tokenizer.EosId) is int id)
            {
                ids.Add(id);
                labels.Add(segment.Trainable ? id : IgnoreIndex);
            }
        }
        AppendRun(run, ids, labels);
        return (ids, labels);
    }

    void AppendRun(List<Segment> run, List<int> ids, List<int> labels)
    {
        var pieces = MergeAlike(run);
        if (pieces.Count == 0) return;
        var full = tokenizer.Encode(string.Concat(pieces.Select(p => p.Text)));
        // starts[k]: index in `full` of the first token of piece k.
        var starts = new int[pieces.Count + 1];
        starts[pieces.Count] = full.Length;
        var prefix = "";
        for (int k = 1; k < pieces.Count; k++)
        {
            prefix += pieces[k - 1].Text;
            starts[k] = Math.Max(starts[k - 1], CommonPrefixLength(tokenizer.Encode(prefix), full));
        }
        for (int k = 0; k < pieces.Count; k++)
            for (int t = starts[k]; t < starts[k + 1]; t++)
            {
                ids.Add(full[t]);
                labels.Add(pieces[k].Trainable ? full[t] : IgnoreIndex);
            }
    }

    /// <summary>Neighbouring segments with the same trainability joined; empty ones dropped.</summary>
    static List<Segment> MergeAlike(List<Segment> run)
    {
        var merged = new List<Segment>();
        foreach (var s in run.Where(s => s.Text.Length > 0))
        {
            if (merged.Count > 0 && merged[^1].Trainable == s.Trainable) merged[^1] = merged[^1] with { Text = merged[^1].Text + s.Text };
            else merged.Add(s);
        }
        return merged;
    }

    static int CommonPrefixLength(int[] a, int[] b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }
}
