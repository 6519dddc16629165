using System.Text.Json.Nodes;

namespace OrtLora.Training.Grpo;

/// <summary>TRL's GRPO training metrics over the steps since the last report: each a mean over those steps of the
/// step's value, as TRL averages its per-step lists at logging.</summary>
public sealed class GrpoMetrics(IReadOnlyList<string> rewardNames)
{
    readonly Dictionary<string, List<double>> _values = new();
    public long Tokens { get; private set; }

    void Put(string name, double value) => (_values.TryGetValue(name, out var list) ? list : _values[name] = []).Add(value);

    /// <summary>A training step: its loss (TRL's), and per micro-batch the mean KL, the clipped shares and the mean
    /// entropy, as TRL appends them per micro-batch; and the tokens it ran.</summary>
    public void AddLoss(IReadOnlyList<GrpoMicroBatch> micro, double loss, long tokens)
    {
        Tokens += tokens;
        Put("loss", loss);
        foreach (var m in micro)
        {
            // RLOO's KL is in its reward, logged once per generation batch (Add)
            if (!double.IsNaN(m.Loss.KlMean)) Put("kl", m.Loss.KlMean);
            Put("clip_ratio/low_mean", m.Loss.LowClip);
            Put("clip_ratio/high_mean", m.Loss.HighClip);
            Put("clip_ratio/region_mean", m.Loss.RegionClip);
            Put("cispo_clip_ratio", m.Loss.CispoClip);
            Put("entropy", m.Loss.EntropyMean);
        }
    }

    /// <summary>A generation batch's rewards and completion lengths (and RLOO's KL).</summary>
    public void Add(IReadOnlyList<Completion> completions, RolloutScores scores)
    {
        if (!double.IsNaN(scores.KlMean)) Put("kl", scores.KlMean);
        for (int f = 0; f < rewardNames.Count; f++)
        {
            var scored = scores.PerFunction.Select(r => r[f]).Where(v => !double.IsNaN(v)).ToList();
            Put($"rewards/{rewardNames[f]}/mean", scored.Count == 0 ? double.NaN : scored.Average());
            Put($"rewards/{rewardNames[f]}/std", Statistics.StdDev(scored));
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
    }

    /// <summary>Writes the means under TRL's names (evaluation: with the eval_ prefix), then starts over: kl only with
    /// β > 0; the clip ratios only when steps can be off-policy (<paramref name="clipping"/>: "clip_ratio" for the clipped
    /// losses, "cispo_clip_ratio" for cispo, null for none); entropy where it was computed.</summary>
    public void Report(JsonObject record, bool withKl, string prefix = "", string? clipping = null)
    {
        foreach (var (name, values) in _values)
        {
            if (name == "kl" && !withKl || name.StartsWith("clip_ratio/", StringComparison.Ordinal) && clipping != "clip_ratio"
                || name == "cispo_clip_ratio" && clipping != name) continue;
            var finite = values.Where(double.IsFinite).ToList();
            if (name == "entropy" && finite.Count == 0) continue;
            record[prefix + name] = finite.Count == 0 ? null : finite.Average();
        }
        _values.Clear();
        Tokens = 0;
    }
}
