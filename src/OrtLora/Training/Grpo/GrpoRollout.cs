using System.Text.Json.Nodes;
using OrtLora.Inference;
using OrtLora.Training.Data;
using EngineBatch = OrtLora.Training.Engine.Batch;

namespace OrtLora.Training.Grpo;

/// <summary>One sampled completion: its prompt, its ids (a stop id last unless truncated) and text.</summary>
public sealed record Completion(GrpoPrompt Prompt, List<int> Ids, string Text, bool Truncated);

/// <summary>A step's scores: each function's reward (NaN: not scored), the weighted sums, the advantages and the group
/// statistics TRL logs.</summary>
public sealed record RolloutScores(double[][] PerFunction, double[] Rewards, double[] Advantages, double[] Std, bool[] StdIsZero);

/// <summary>One micro-batch for the engine with TRL's loss of it (and its KL and clipping counts).</summary>
public sealed record GrpoMicroBatch(EngineBatch Batch, MicroBatchLoss Loss, int CountedTokens);

/// <summary>A GRPO step's data path: sample the groups, score them, and lay them out as the engine's batches of weighted
/// tokens.</summary>
public static class GrpoRollout
{
    /// <summary>num_generations completions of each prompt, prompt by prompt (groups are consecutive), each group sampled
    /// side by side (<see cref="PolicySampler.SampleGroup"/>). Each completion's sampler is seeded from (seed, step, its
    /// place), so a run and a resumed run draw the same completions.</summary>
    public static List<Completion> Sample(PolicySampler sampler, IReadOnlyList<GrpoPrompt> prompts, TextTokenizer tokenizer, GrpoOptions grpo,
        IReadOnlyCollection<int> stops, int seed, int step)
    {
        var completions = new List<Completion>();
        foreach (var prompt in prompts)
        {
            var options = Enumerable.Range(completions.Count, grpo.NumGenerations).Select(place =>
            {
                ulong stream = SplitMix64.Stream((ulong)seed, (ulong)step, (ulong)place);
                return new GenerationOptions
                {
                    MaxNewTokens = grpo.MaxCompletionLength, Temperature = grpo.Temperature, TopK = grpo.TopK, TopP = grpo.TopP,
                    RepetitionPenalty = grpo.RepetitionPenalty, StopTokenIds = stops, Seed = (int)(SplitMix64.Next(ref stream) & int.MaxValue),
                };
            }).ToList();
            // the group side by side: one run per generated token for all its completions
            foreach (var (ids, truncated) in sampler.SampleGroup(prompt.Ids, options))
                completions.Add(new Completion(prompt, ids, tokenizer.Decode(ids, skipSpecialTokens: true), truncated));
        }
        return completions;
    }

    public static RolloutScores Score(IReadOnlyList<Completion> completions, IReadOnlyList<IRewardFunction> rewards, GrpoOptions grpo)
    {
        var inputs = completions.Select(c => new RewardInput(c.Prompt.Text, c.Text, c.Ids.Count, c.Truncated, c.Prompt.Columns)).ToList();
        var perFunction = completions.Select(_ => new double[rewards.Count]).ToArray();
        for (int f = 0; f < rewards.Count; f++)
        {
            var scores = rewards[f].Score(inputs);
            if (scores.Length != completions.Count)
                throw new OrtLoraException($"reward function '{rewards[f].Name}' gave {scores.Length} scores for {completions.Count} completions");
            for (int i = 0; i < scores.Length; i++) perFunction[i][f] = scores[i] ?? double.NaN;
        }
        var weights = grpo.RewardWeights ?? [.. rewards.Select(_ => 1.0)];
        var (sums, advantages, std, zero) = GroupAdvantages.Compute(perFunction, weights, grpo.NumGenerations, grpo.ScaleRewards);
        return new RolloutScores(perFunction, sums, advantages, std, zero);
    }

    /// <summary>Each completion's log-probabilities under the sampler's policy as it is, or under the reference.</summary>
    public static List<float[]> Logps(IReadOnlyList<Completion> completions, PolicySampler sampler, double temperature, bool reference = false) =>
        [.. completions.Select(c => sampler.CompletionLogps(c.Prompt.Ids, c.Ids, temperature, reference))];

    /// <summary>Consecutive runs of <paramref name="batchSize"/> completions as right-padded batches: prompt + completion,
    /// the completion's tokens labelled and weighted by −d loss / d log p (<see cref="GroupAdvantages.TokenWeights"/>).</summary>
    /// <param name="policyLogps">each completion's log-probabilities under the policy as it is (β > 0, or a later
    /// iteration); null when the loss needs none</param>
    /// <param name="referenceLogps">the same under the reference (β > 0)</param>
    /// <param name="oldLogps">from the second iteration on a generation batch: under the policy that sampled it; null at
    /// the first (the ratio is 1)</param>
    public static List<GrpoMicroBatch> MicroBatches(IReadOnlyList<Completion> completions, RolloutScores scores, TextTokenizer tokenizer,
        GrpoOptions grpo, int batchSize, IReadOnlyList<float[]>? policyLogps, IReadOnlyList<float[]>? referenceLogps, IReadOnlyList<float[]>? oldLogps)
    {
        double epsilonHigh = grpo.EpsilonHigh ?? grpo.Epsilon;
        var scored = completions.Select((c, i) => new ScoredCompletion(grpo.MaskTruncatedCompletions && c.Truncated ? 0 : c.Ids.Count,
            scores.Advantages[i], policyLogps?[i], referenceLogps?[i], oldLogps?[i])).ToList();
        long windowTokens = scored.Sum(s => (long)s.CountedTokens);
        int accumulation = (completions.Count + batchSize - 1) / batchSize;
        var batches = new List<GrpoMicroBatch>();
        for (int start = 0; start < completions.Count; start += batchSize)
        {
            int rows = Math.Min(batchSize, completions.Count - start);
            var part = scored.GetRange(start, rows);
            var normalizers = GroupAdvantages.Normalizers(part, windowTokens, accumulation, grpo.LossType, grpo.MaxCompletionLength);
            var loss = GroupAdvantages.Loss(part, normalizers, grpo.Beta, grpo.Epsilon, epsilonHigh);
            int length = Enumerable.Range(start, rows).Max(i => completions[i].Prompt.Ids.Length + completions[i].Ids.Count);
            var ids = new long[rows * length];
            var mask = new long[rows * length];
            var labels = new long[rows * length];
            var weights = new float[rows * length];
            Array.Fill(ids, tokenizer.PadId);
            Array.Fill(labels, -100);
            for (int r = 0; r < rows; r++)
            {
                var c = completions[start + r];
                var tokenWeights = GroupAdvantages.TokenWeights(part[r], normalizers[r], grpo.Beta, grpo.Epsilon, epsilonHigh);
                int at = r * length;
                for (int t = 0; t < c.Prompt.Ids.Length; t++, at++) { ids[at] = c.Prompt.Ids[t]; mask[at] = 1; }
                for (int t = 0; t < c.Ids.Count; t++, at++)
                {
                    ids[at] = c.Ids[t];
                    mask[at] = 1;
                    if (t < part[r].CountedTokens) { labels[at] = c.Ids[t]; weights[at] = tokenWeights[t]; }
                }
            }
            batches.Add(new GrpoMicroBatch(new EngineBatch(ids, mask, labels, rows, length) { TokenWeights = weights }, loss,
                part.Sum(p => p.CountedTokens)));
        }
        return batches;
    }

    /// <summary>TRL's log_completions, as JSON Lines: each completion with its prompt, rewards and advantage.</summary>
    public static void AppendLog(string path, int step, IReadOnlyList<Completion> completions, RolloutScores scores, IReadOnlyList<string> rewardNames)
    {
        using var writer = File.AppendText(path);
        for (int i = 0; i < completions.Count; i++)
        {
            var record = new JsonObject { ["step"] = step, ["prompt"] = completions[i].Prompt.Text, ["completion"] = completions[i].Text };
            for (int f = 0; f < rewardNames.Count; f++) record[rewardNames[f]] = double.IsNaN(scores.PerFunction[i][f]) ? null : scores.PerFunction[i][f];
            record["reward"] = scores.Rewards[i];
            record["advantage"] = scores.Advantages[i];
            writer.WriteLine(record.ToJsonString());
        }
    }
}
