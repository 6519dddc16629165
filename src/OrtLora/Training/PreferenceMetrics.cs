using System.Text.Json.Nodes;

namespace OrtLora.Training;

/// <summary>TRL DPOTrainer's metrics over the pairs seen since the last report, from each row's log-probability under
/// the trained model (π) and the reference (r): the implicit rewards β·(π − r) of the chosen and rejected completions,
/// how often the chosen one's is higher (rewards/accuracies), their difference (rewards/margins), and the mean
/// log-probabilities. Rows come in pairs, chosen then rejected.</summary>
public sealed class PreferenceMetrics(double beta)
{
    double _chosenRewards, _rejectedRewards, _accurate, _chosenLogps, _rejectedLogps;

    public long Pairs { get; private set; }

    public void Add(IReadOnlyList<float> policy, IReadOnlyList<float> reference)
    {
        if (policy.Count != reference.Count || policy.Count % 2 != 0)
            throw new ArgumentException($"rows come in pairs: {policy.Count} policy and {reference.Count} reference log-probabilities");
        for (int i = 0; i < policy.Count; i += 2)
        {
            double chosen = beta * (policy[i] - reference[i]), rejected = beta * (policy[i + 1] - reference[i + 1]);
            _chosenRewards += chosen;
            _rejectedRewards += rejected;
            _accurate += chosen > rejected ? 1 : 0;
            _chosenLogps += policy[i];
            _rejectedLogps += policy[i + 1];
            Pairs++;
        }
    }

    /// <summary>Writes the means under TRL's names (eval: with the eval_ prefix), then starts over.</summary>
    public void Report(JsonObject record, string prefix = "")
    {
        double n = Math.Max(1, Pairs);
        record[prefix + "rewards/chosen"] = _chosenRewards / n;
        record[prefix + "rewards/rejected"] = _rejectedRewards / n;
        record[prefix + "rewards/accuracies"] = _accurate / n;
        record[prefix + "rewards/margins"] = (_chosenRewards - _rejectedRewards) / n;
        record[prefix + "logps/chosen"] = _chosenLogps / n;
        record[prefix + "logps/rejected"] = _rejectedLogps / n;
        _chosenRewards = _rejectedRewards = _accurate = _chosenLogps = _rejectedLogps = 0;
        Pairs = 0;
    }
}
