using System.Text.Json.Nodes;

namespace OrtLora.Training.Grpo;

/// <summary>TRL's GRPO training metrics over the steps since the last report: each a mean over those steps of the
/// step's value, as TRL averages its per-step lists at logging.</summary>
public sealed class GrpoMetrics(IReadOnlyList<string> rewardNames)
{
    readonly Dictionary<string, List<double>> _values = new();
    public long Tokens { get; private set; }

    void Put(string name, double value) => (_values.TryGetValue(name, out var list) ? list : _values[name] = []).Add(value);

    public void Add(IReadOnlyList<Completion> completions, RolloutScores scores, double loss, double klSum, long countedTokens, long tokens)
    {
        Tokens += tokens;
        Put("loss", loss);
        for (int f = 0; f < rewardNames.Count; f++)
        {
            var scored = scores.PerFunction.Select(r => r[f]).Where(v => !double.IsNaN(v)).ToList();
            Put($"rewards/{rewardNames[f]}/mean", scored.Count == 0 ? double.NaN : scored.Average());
            Put($"rewards/{rewardNames[f]}/std", StdDev(scored));
        }
        Put("reward", scores.Rewards.Average());
        Put("reward_std", scores.Std.Average());
        Put("frac_reward_zero_std", scores.StdIsZero.Average(z => z ? 1.0 : 0.0));
        var lengths = completions.Select(c => (double)c.Ids.Count).ToList();
        Put("completions/mean_length", lengths.Average());
        Put("completions/min_length", lengths.Min());
        Put("completions/max_length", lengths.Max());
        Put("completions/clipped_ratio", completions.Average(c => c.Truncated ? 1.0 : 0.0));
        var terminated = completions.Where(c => !c.Truncated).Select(c => (double)c.Ids.Count).ToList();
        Put("completions/mean_terminated_length", terminated.Count == 0 ? 0 : terminated.Average());
        Put("kl", countedTokens == 0 ? 0 : klSum / countedTokens);
    }

    static double StdDev(IReadOnlyList<double> values)
    {
        if (values.Count < 2) return double.NaN;
        double mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / (values.Count - 1));
    }

    /// <summary>Writes the means (kl only with β > 0, as TRL logs it), then starts over.</summary>
    public void Report(JsonObject record, bool withKl)
    {
        foreach (var (name, values) in _values)
        {
            if (name == "kl" && !withKl) continue;
            var finite = values.Where(double.IsFinite).ToList();
            record[name] = finite.Count == 0 ? null : finite.Average();
        }
        _values.Clear();
        Tokens = 0;
    }
}
