using System.Text.Json.Nodes;

namespace OrtLora.Training.Reward;

/// <summary>TRL's RewardTrainer metrics: for each batch (each compute_loss call: a micro-batch, or an eval batch) the
/// smallest, mean and largest score of its rows, the share of pairs whose chosen row scores higher (accuracy) and the
/// mean chosen − rejected (margin); a report averages them over the batches since the last one, as TRL's log does.
/// Rows come in pairs, chosen then rejected.</summary>
public sealed class RewardMetrics : IPreferenceMetrics
{
    readonly List<(double Min, double Mean, double Max, double Accuracy, double Margin)> _batches = [];

    public long Pairs { get; private set; }

    /// <param name="scores">each row's score</param>
    /// <param name="reference">unused (a reward model has no reference)</param>
    public void Add(IReadOnlyList<float> scores, IReadOnlyList<float> reference, IReadOnlyList<float>? roles = null)
    {
        if (scores.Count == 0) return;
        if (scores.Count % 2 != 0) throw new ArgumentException($"rows come in pairs: {scores.Count} rows");
        int pairs = scores.Count / 2;
        double accurate = 0, margin = 0;
        for (int i = 0; i < scores.Count; i += 2)
        {
            accurate += scores[i] > scores[i + 1] ? 1 : 0;
            margin += scores[i] - scores[i + 1];
        }
        _batches.Add((scores.Min(), scores.Average(s => (double)s), scores.Max(), accurate / pairs, margin / pairs));
        Pairs += pairs;
    }

    public void Report(JsonObject record, string prefix = "")
    {
        double Mean(Func<(double Min, double Mean, double Max, double Accuracy, double Margin), double> pick) =>
            _batches.Count == 0 ? double.NaN : _batches.Average(pick);
        record[prefix + "min_reward"] = Mean(b => b.Min);
        record[prefix + "mean_reward"] = Mean(b => b.Mean);
        record[prefix + "max_reward"] = Mean(b => b.Max);
        record[prefix + "accuracy"] = Mean(b => b.Accuracy);
        record[prefix + "margin"] = Mean(b => b.Margin);
        _batches.Clear();
        Pairs = 0;
    }
}
