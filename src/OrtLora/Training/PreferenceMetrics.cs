using System.Text.Json.Nodes;

namespace OrtLora.Training;

/// <summary>Metrics over the rows of preference batches: each row's value from the graph (a log-probability for DPO, a
/// score for a reward model) with its reference, logged under TRL's names.</summary>
public interface IPreferenceMetrics
{
    /// <summary>The pairs (KTO: examples) seen since the last report.</summary>
    long Pairs { get; }
    void Add(IReadOnlyList<float> rows, IReadOnlyList<float> reference, IReadOnlyList<float>? roles = null);
    /// <summary>Writes the metrics (eval: with the eval_ prefix), then starts over.</summary>
    void Report(JsonObject record, string prefix = "");
}

/// <summary>TRL's preference metrics over the rows seen since the last report, from each row's log-probability under
/// the trained model (π) and the reference (r). DPOTrainer's: the implicit rewards β·(π − r) of the chosen and rejected
/// completions, how often the chosen one's is higher (rewards/accuracies), their difference (rewards/margins), and the
/// mean log-probabilities; rows come in pairs, chosen then rejected. KTOTrainer's, for rows with roles: the same means
/// over desirable (chosen) and undesirable (rejected) examples, and kl, the KL rows' mean π − r.</summary>
public sealed class PreferenceMetrics(double beta) : IPreferenceMetrics
{
    double _chosenRewards, _rejectedRewards, _accurate, _chosenLogps, _rejectedLogps, _kl;
    long _chosen, _rejected, _klRows;
    bool _unpaired;

    /// <summary>The pairs (KTO: examples) seen since the last report.</summary>
    public long Pairs { get; private set; }

    /// <param name="roles">KTO: each row's role (1 desirable, -1 undesirable, 0 KL); null: rows in pairs</param>
    public void Add(IReadOnlyList<float> policy, IReadOnlyList<float> reference, IReadOnlyList<float>? roles = null)
    {
        if (policy.Count != reference.Count) throw new ArgumentException($"{policy.Count} policy and {reference.Count} reference log-probabilities");
        if (roles is not null)
        {
            _unpaired = true;
            for (int i = 0; i < policy.Count; i++)
            {
                double reward = beta * (policy[i] - reference[i]);
                if (roles[i] > 0) { _chosenRewards += reward; _chosenLogps += policy[i]; _chosen++; Pairs++; }
                else if (roles[i] < 0) { _rejectedRewards += reward; _rejectedLogps += policy[i]; _rejected++; Pairs++; }
                else { _kl += policy[i] - reference[i]; _klRows++; }
            }
            return;
        }
        if (policy.Count % 2 != 0) throw new ArgumentException($"rows come in pairs: {policy.Count} rows");
        for (int i = 0; i < policy.Count; i += 2)
        {
            double chosen = beta * (policy[i] - reference[i]), rejected = beta * (policy[i + 1] - reference[i + 1]);
            _chosenRewards += chosen;
            _rejectedRewards += rejected;
            _accurate += chosen > rejected ? 1 : 0;
            _chosenLogps += policy[i];
            _rejectedLogps += policy[i + 1];
            _chosen++;
            _rejected++;
            Pairs++;
        }
    }

    /// <summary>Writes the means under TRL's names (eval: with the eval_ prefix), then starts over.</summary>
    public void Report(JsonObject record, string prefix = "")
    {
        double chosen = Math.Max(1, _chosen), rejected = Math.Max(1, _rejected);
        record[prefix + "rewards/chosen"] = _chosenRewards / chosen;
        record[prefix + "rewards/rejected"] = _rejectedRewards / rejected;
        if (!_unpaired) record[prefix + "rewards/accuracies"] = _accurate / chosen;
        record[prefix + "rewards/margins"] = _chosenRewards / chosen - _rejectedRewards / rejected;
        record[prefix + "logps/chosen"] = _chosenLogps / chosen;
        record[prefix + "logps/rejected"] = _rejectedLogps / rejected;
        if (_unpaired) record[prefix + "kl"] = Math.Max(0, _kl / Math.Max(1, _klRows));
        _chosenRewards = _rejectedRewards = _accurate = _chosenLogps = _rejectedLogps = _kl = 0;
        _chosen = _rejected = _klRows = Pairs = 0;
    }
}
