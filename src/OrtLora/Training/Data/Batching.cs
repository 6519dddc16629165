using OrtLora.Onnx;

namespace OrtLora.Training.Data;

/// <summary>Where the data stream stands: <see cref="Index"/> rows of epoch <see cref="Epoch"/>'s order have been
/// used, then <see cref="SkipBatches"/> batches of the length-sorted group that starts there (--group-by-length).
/// Saved with a checkpoint, it lets a resumed run continue with exactly the next batch.</summary>
public readonly record struct DataPosition(int Epoch, long Index, int SkipBatches = 0)
{
    public override string ToString() => $"epoch {Epoch}, row {Index}" + (SkipBatches > 0 ? $", batch {SkipBatches} of its length group" : "");
}

/// <summary>One training batch as the model takes it: row-major [<see cref="BatchSize"/>, <see cref="SeqLength"/>]
/// int64 arrays, right-padded with the pad id (attention_mask 0, labels -100). <see cref="Next"/> is the position just
/// after this batch; <see cref="Rows"/> the file rows of its examples, in order.</summary>
public sealed record Batch(long[] InputIds, long[] AttentionMask, long[] Labels, int BatchSize, int SeqLength, DataPosition Next, long[] Rows)
{
    public long[] Shape => [BatchSize, SeqLength];
    /// <summary>How many sequences the batch holds (fewer than <see cref="BatchSize"/> rows when padded to a fixed shape).</summary>
    public int Sequences { get; init; }
    /// <summary>Each row's role in KTO's loss (<see cref="Sequence.Role"/>; padding rows 0).</summary>
    public float[] Roles { get; init; } = [];
    /// <summary>Each row's value for a loss that reads one a row (<see cref="Sequence.RowValue"/>; padding rows 0); a
    /// multi-label batch's multi-hot classes, [rows · num_labels].</summary>
    public float[] RowValues { get; init; } = [];
    /// <summary>Positions with a label (what the loss averages over).</summary>
    public int TrainedTokens => Labels.Count(l => l != ExampleEncoder.IgnoreIndex);

    /// <summary>Labels the causal-LM loss counts: it predicts position t from t-1, so column 0 of each row is never
    /// scored. Gradient accumulation and eval weight micro-batches by this, as the loss normalizes by it.</summary>
    public int LossTokens
    {
        get
        {
            int n = 0;
            for (int i = 0; i < Labels.Length; i++)
                if (i % SeqLength != 0 && Labels[i] != ExampleEncoder.IgnoreIndex) n++;
            return n;
        }
    }

    /// <summary>The batch as model inputs: input_ids and attention_mask, and labels when asked.</summary>
    public Dictionary<string, HostTensor> ToFeeds(bool withLabels)
    {
        var feeds = new Dictionary<string, HostTensor>
        {
            ["input_ids"] = HostTensor.Of(InputIds, Shape),
            ["attention_mask"] = HostTensor.Of(AttentionMask, Shape),
        };
        if (withLabels) feeds["labels"] = HostTensor.Of(Labels, Shape);
        return feeds;
    }
}

/// <summary>A token sequence for one row of a batch: one example, or several packed. <see cref="NextIndex"/> is
/// the epoch-order index of the first row not in it.</summary>
public sealed record Sequence(int[] InputIds, int[] Labels, long NextIndex, long[] Rows)
{
    /// <summary>Unpaired preference data (KTO): 1 for a desirable completion, -1 for an undesirable one, 0 for a KL row
    /// (a prompt with another row's completion, scored but not trained).</summary>
    public float Role { get; init; }
    /// <summary>The example's value for a loss that reads one a row (<see cref="TokenizedExample.RowValue"/>).</summary>
    public float RowValue { get; init; }
    /// <summary>A multi-label row's multi-hot classes (<see cref="TokenizedExample.RowTargets"/>).</summary>
    public float[]? RowTargets { get; init; }
}

public static class Batching
{
    /// <summary>Examples one per sequence.</summary>
    public static IEnumerable<Sequence> Single(IEnumerable<(TokenizedExample Example, long NextIndex)> examples) =>
        examples.Select(e => new Sequence(e.Example.InputIds, e.Example.Labels, e.NextIndex, [e.Example.RowIndex]) { RowValue = e.Example.RowValue, RowTargets = e.Example.RowTargets });

    /// <summary>Examples concatenated in order into sequences of at most <paramref name="maxLength"/> tokens; an
    /// example never splits (each is already cut to the maximum), and each keeps its own labels.</summary>
    public static IEnumerable<Sequence> Pack(IEnumerable<(TokenizedExample Example, long NextIndex)> examples, int maxLength)
    {
        var ids = new List<int>();
        var labels = new List<int>();
        var rows = new List<long>();
        long next = 0;
        foreach (var (example, nextIndex) in examples)
        {
            if (rows.Count > 0 && ids.Count + example.Length > maxLength)
            {
                yield return new Sequence([.. ids], [.. labels], next, [.. rows]);
                ids.Clear();
                labels.Clear();
                rows.Clear();
            }
            ids.AddRange(example.InputIds);
            labels.AddRange(example.Labels);
            rows.Add(example.RowIndex);
            next = nextIndex;
        }
        if (rows.Count > 0) yield return new Sequence([.. ids], [.. labels], next, [.. rows]);
    }

    /// <summary>Sequences grouped <paramref name="batchSize"/> at a time (the last batch may be smaller) and padded.</summary>
    /// <param name="fixedLength">pad every batch to this length and to <paramref name="batchSize"/> rows (one shape for
    /// the whole run: what static-shape sessions and CUDA graphs need)</param>
    public static IEnumerable<Batch> Batches(IEnumerable<Sequence> sequences, int batchSize, int padId, int epoch, int? fixedLength = null)
    {
        if (batchSize <= 0) throw new OrtLoraException($"batch size must be positive, got {batchSize}");
        var pending = new List<Sequence>(batchSize);
        foreach (var sequence in sequences)
        {
            pending.Add(sequence);
            if (pending.Count < batchSize) continue;
            yield return Pad(pending, padId, epoch, fixedLength is { } l ? (batchSize, l) : null);
            pending.Clear();
        }
        if (pending.Count > 0) yield return Pad(pending, padId, epoch, fixedLength is { } length ? (batchSize, length) : null);
    }

    /// <summary>The Trainer's group_by_length (its LengthGroupedSampler, over the epoch's shuffled order): groups of
    /// <paramref name="groupSize"/> sequences in stream order, each sorted longest first (stable) and cut into batches,
    /// so a batch holds sequences of similar length and pads little. A batch inside a group is positioned by the group's
    /// start and how many of its batches are done; the group's last batch by the next group's start.</summary>
    /// <param name="from">where the epoch's stream starts (a group start) and how many batches of that group to skip</param>
    public static IEnumerable<Batch> GroupedByLength(IEnumerable<Sequence> sequences, int batchSize, int groupSize, int padId, DataPosition from,
        int? fixedLength = null)
    {
        if (batchSize <= 0 || groupSize < batchSize) throw new OrtLoraException($"batch size {batchSize} and group size {groupSize}: need 0 < batch ≤ group");
        var group = new List<Sequence>(groupSize);
        long start = from.Index;
        int skip = from.SkipBatches;
        IEnumerable<Batch> Emit()
        {
            var sorted = group.OrderByDescending(x => x.InputIds.Length).ToList();
            int count = (sorted.Count + batchSize - 1) / batchSize;
            for (int k = skip; k < count; k++)
            {
                var batch = Pad(sorted.GetRange(k * batchSize, Math.Min(batchSize, sorted.Count - k * batchSize)), padId, from.Epoch,
                    fixedLength is { } l ? (batchSize, l) : null);
                yield return batch with { Next = k == count - 1 ? new DataPosition(from.Epoch, group[^1].NextIndex) : new DataPosition(from.Epoch, start, k + 1) };
            }
            start = group[^1].NextIndex;
            skip = 0;
            group.Clear();
        }
        foreach (var sequence in sequences)
        {
            group.Add(sequence);
            if (group.Count < groupSize) continue;
            foreach (var batch in Emit()) yield return batch;
        }
        if (group.Count > 0) foreach (var batch in Emit()) yield return batch;
    }

    /// <summary>Right padding to the longest sequence (or to <paramref name="shape"/>): pad id, attention 0, label -100.
    /// Rows beyond the sequences given attend to one pad token and score nothing: a row with no attended position
    /// would give a softmax over nothing but masked scores.</summary>
    public static Batch Pad(IReadOnlyList<Sequence> sequences, int padId, int epoch, (int Rows, int Length)? shape = null)
    {
        int longest = sequences.Max(x => x.InputIds.Length);
        if (shape is { } fixedShape && (fixedShape.Length < longest || fixedShape.Rows < sequences.Count))
            throw new OrtLoraException($"{sequences.Count} sequences of up to {longest} tokens do not fit a [{fixedShape.Rows}, {fixedShape.Length}] batch");
        int b = shape?.Rows ?? sequences.Count, s = shape?.Length ?? longest;
        var inputIds = new long[b * s];
        var mask = new long[b * s];
        var labels = new long[b * s];
        Array.Fill(inputIds, padId);
        Array.Fill(labels, ExampleEncoder.IgnoreIndex);
        for (int row = 0; row < sequences.Count; row++)
        {
            var seq = sequences[row];
            for (int t = 0; t < seq.InputIds.Length; t++)
            {
                inputIds[row * s + t] = seq.InputIds[t];
                mask[row * s + t] = 1;
                labels[row * s + t] = seq.Labels[t];
            }
        }
        for (int row = sequences.Count; row < b; row++) mask[row * s] = 1;
        return new Batch(inputIds, mask, labels, b, s, new DataPosition(epoch, sequences[^1].NextIndex), [.. sequences.SelectMany(x => x.Rows)])
            {
                Sequences = sequences.Count, Roles = [.. sequences.Select(x => x.Role), .. new float[b - sequences.Count]],
                RowValues = RowValues(sequences, b),
            };
    }

    /// <summary>Each row's value, padding rows 0; multi-label rows' multi-hot classes, row after row ([rows · num_labels]).</summary>
    static float[] RowValues(IReadOnlyList<Sequence> sequences, int rows)
    {
        if (sequences[0].RowTargets is not { } first) return [.. sequences.Select(x => x.RowValue), .. new float[rows - sequences.Count]];
        return [.. sequences.SelectMany(x => x.RowTargets ?? throw new InvalidOperationException("a multi-label batch with a row without classes")),
            .. new float[(rows - sequences.Count) * first.Length]];
    }
}
