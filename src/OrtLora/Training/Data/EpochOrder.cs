namespace OrtLora.Training.Data;

/// <summary>The order rows are visited in an epoch, reproducible from (seed, epoch): row groups in a shuffled order,
/// rows shuffled within each group. Shuffling within row groups keeps reading streamed (one group in memory at a
/// time). Also the deterministic eval split, decided per row index.</summary>
public sealed class EpochOrder(ParquetDataset dataset, int seed, bool shuffle)
{
    /// <summary>The rows of <paramref name="epoch"/> from epoch-order index <paramref name="startIndex"/> on:
    /// (epoch-order index, row index in the file, the record or null if skipped).</summary>
    public IEnumerable<(long OrderIndex, long RowIndex, DataRecord? Record)> Rows(int epoch, long startIndex = 0)
    {
        var groups = Permutation(dataset.RowGroupCount, Mix(seed, epoch, -1));
        long orderStart = 0;
        foreach (var group in groups)
        {
            var count = dataset.RowGroupRowCounts[group];
            if (orderStart + count <= startIndex) { orderStart += count; continue; }
            var rows = dataset.ReadRowGroup(group);
            var within = Permutation(rows.Count, Mix(seed, epoch, group));
            for (int i = (int)Math.Max(0, startIndex - orderStart); i < within.Length; i++)
                yield return (orderStart + i, dataset.RowGroupStart(group) + within[i], rows[within[i]]);
            orderStart += count;
        }
    }

    int[] Permutation(int n, ulong state)
    {
        var order = Enumerable.Range(0, n).ToArray();
        if (!shuffle) return order;
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)(Next(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        return order;
    }

    /// <summary>Whether row <paramref name="rowIndex"/> belongs to the eval split of fraction <paramref name="fraction"/>.</summary>
    public static bool IsEval(long rowIndex, double fraction, int seed)
    {
        if (fraction <= 0) return false;
        ulong state = Mix(seed, -7, rowIndex);
        return (Next(ref state) >> 11) * (1.0 / (1UL << 53)) < fraction;
    }

    static ulong Mix(int seed, long a, long b) => SplitMix64.Stream((uint)seed, (ulong)a, (ulong)b);

    static ulong Next(ref ulong state) => SplitMix64.Next(ref state);
}
