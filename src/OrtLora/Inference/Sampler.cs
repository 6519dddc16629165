namespace OrtLora.Inference;

/// <summary>How to pick tokens, with Hugging Face generate()'s names and meanings.</summary>
public sealed record GenerationOptions
{
    public int MaxNewTokens { get; init; } = 128;
    /// <summary>0: greedy (argmax). Otherwise logits are divided by it before top-k / top-p sampling.</summary>
    public double Temperature { get; init; }
    /// <summary>Keep only the k most likely tokens (0: all).</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of most likely tokens whose probability reaches top_p (1: all).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Hugging Face's min_p: keep only tokens whose probability is at least min_p times the most likely
    /// token's (0: off). Applied after top-k and top-p, as generate() orders its warpers.</summary>
    public double MinP { get; init; }
    public int? Seed { get; init; }
    /// <summary>Hugging Face's repetition_penalty: the logit of every token already in the sequence (prompt included) is
    /// divided by it when positive, multiplied when negative, before temperature and sampling (1: off).</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Use the model's key/value cache when it has one; false recomputes the whole sequence every step.</summary>
    public bool UseKvCache { get; init; } = true;
    /// <summary>Generation stops after emitting any of these (the tokenizer's EOS is added by the generator).</summary>
    public IReadOnlyCollection<int> StopTokenIds { get; init; } = [];
}

/// <summary>Next-token choice from one row of logits.</summary>
public sealed class Sampler(GenerationOptions options)
{
    readonly Random _random = options.Seed is { } s ? new Random(s) : new Random();

    /// <param name="seen">the sequence's token ids so far, for the repetition penalty</param>
    public int Next(ReadOnlySpan<float> logits, IReadOnlyCollection<int>? seen = null)
    {
        if (options.RepetitionPenalty != 1.0 && seen is { Count: > 0 })
        {
            var penalized = logits.ToArray();
            foreach (var id in seen)
                if ((uint)id < (uint)penalized.Length)
                    penalized[id] = logits[id] < 0 ? (float)(logits[id] * options.RepetitionPenalty) : (float)(logits[id] / options.RepetitionPenalty);
            return Choose(penalized);
        }
        return Choose(logits);
    }

    /// <summary>Draws from softmax(logits / T) restricted to top-k, then top-p, then min-p, walking the vocabulary in index order as
    /// torch.multinomial does after Hugging Face's warpers. A draw costs a few passes over the vocabulary, not a sort of
    /// it. Tokens tied with the last one kept are all kept, as transformers' top-k keeps them.</summary>
    int Choose(ReadOnlySpan<float> logits)
    {
        if (options.Temperature <= 0) return ArgMax(logits);
        int n = logits.Length;
        float max = logits[ArgMax(logits)];
        if (t_weights is null || t_weights.Length < n) t_weights = new double[n];
        var weights = t_weights.AsSpan(0, n);
        // relative to the largest: every weight is in (0, 1], the largest 1
        for (int i = 0; i < n; i++) weights[i] = Math.Exp((logits[i] - max) / options.Temperature);
        double floor = 0;
        if (options.TopK > 0 && options.TopK < n) floor = KthLargest(weights, options.TopK);
        if (options.TopP < 1) floor = Math.Max(floor, NucleusFloor(weights, floor, options.TopP));
        // min_p compares with the most likely token, whose weight is 1 and which top-k and top-p always keep
        if (options.MinP > 0) floor = Math.Max(floor, options.MinP);
        double total = 0;
        foreach (var w in weights) if (w >= floor) total += w;
        double u = _random.NextDouble() * total, cumulative = 0;
        int last = 0;
        for (int i = 0; i < n; i++)
        {
            if (weights[i] < floor) continue;
            cumulative += weights[i];
            last = i;
            if (u < cumulative) return i;
        }
        return last;
    }

    /// <summary>The draw's weights, one buffer per thread rather than per sampler: a GRPO step makes a sampler per
    /// completion, and a vocabulary's worth of doubles is a large-object allocation.</summary>
    [ThreadStatic] static double[]? t_weights;

    /// <summary>The k-th largest weight: a bounded min-heap of the k largest seen.</summary>
    static double KthLargest(ReadOnlySpan<double> weights, int k)
    {
        var heap = new PriorityQueue<double, double>(k);
        foreach (var w in weights)
        {
            if (heap.Count < k) heap.Enqueue(w, w);
            else if (w > heap.Peek()) heap.EnqueueDequeue(w, w);
        }
        return heap.Peek();
    }

    /// <summary>The smallest weight top-p keeps among those at or above <paramref name="floor"/>: the descending
    /// weights are summed up to and including the one that reaches p of the kept mass (at least one is kept). The
    /// weights are first binned by magnitude (eighths of an octave, from their bits); the bins above the one where the
    /// sum reaches p·mass are kept whole, so only that bin is sorted.</summary>
    static double NucleusFloor(ReadOnlySpan<double> weights, double floor, double topP)
    {
        Span<double> binMass = stackalloc double[Bins];
        double mass = 0;
        foreach (var w in weights)
            if (w >= floor) { binMass[Bin(w)] += w; mass += w; }
        double target = topP * mass, above = 0;
        int bin = Bins - 1;
        while (bin > 0 && above + binMass[bin] < target) above += binMass[bin--];
        var members = new List<double>();
        foreach (var w in weights)
            if (w >= floor && Bin(w) == bin) members.Add(w);
        members.Sort();
        for (int i = members.Count - 1; i >= 0; i--)
        {
            above += members[i];
            if (above >= target) return members[i];
        }
        return members.Count > 0 ? members[0] : floor;
    }

    /// <summary>64 octaves below 1 in eighths, and one bin for everything smaller (a weight of 1 is the top bin).</summary>
    const int Bins = 64 * 8 + 2;

    /// <summary>A weight's bin, increasing with it: the exponent and the top three bits of the mantissa.</summary>
    static int Bin(double w)
    {
        long key = (BitConverter.DoubleToInt64Bits(w) >> 49) - ((1023L - 64) << 3);
        return (int)Math.Clamp(key, 0, Bins - 1);
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }
}
