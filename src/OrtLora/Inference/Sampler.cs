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

    int Choose(ReadOnlySpan<float> logits)
    {
        if (options.Temperature <= 0) return ArgMax(logits);
        var order = Enumerable.Range(0, logits.Length).ToArray();
        var scaled = new double[logits.Length];
        for (int i = 0; i < logits.Length; i++) scaled[i] = logits[i] / options.Temperature;
        Array.Sort(order, (a, b) => scaled[b].CompareTo(scaled[a]));
        int keep = options.TopK > 0 ? Math.Min(options.TopK, order.Length) : order.Length;
        var probabilities = Softmax(order.Take(keep).Select(i => scaled[i]).ToArray());
        keep = NucleusSize(probabilities, options.TopP);
        double total = probabilities.Take(keep).Sum();
        double u = _random.NextDouble() * total, cumulative = 0;
        for (int i = 0; i < keep; i++)
        {
            cumulative += probabilities[i];
            if (u < cumulative) return order[i];
        }
        return order[keep - 1];
    }

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    static double[] Softmax(double[] sortedDescending)
    {
        double max = sortedDescending[0];
        var e = sortedDescending.Select(v => Math.Exp(v - max)).ToArray();
        double sum = e.Sum();
        return e.Select(v => v / sum).ToArray();
    }

    /// <summary>How many of the (descending) probabilities top-p keeps: up to and including the one whose cumulative
    /// sum reaches p, at least one.</summary>
    static int NucleusSize(double[] probabilities, double topP)
    {
        if (topP >= 1) return probabilities.Length;
        double cumulative = 0;
        for (int i = 0; i < probabilities.Length; i++)
        {
            cumulative += probabilities[i];
            if (cumulative >= topP) return i + 1;
        }
        return probabilities.Length;
    }
}
