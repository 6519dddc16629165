using System.Text.Json.Nodes;
using OrtLora.Inference;
using OrtLora.Training.Data;
using EngineBatch = OrtLora.Training.Engine.Batch;

namespace OrtLora.Training.Grpo;

/// <summary>One sampled completion: its prompt, its ids (a stop id last unless truncated) and text.</summary>
public sealed record Completion(GrpoPrompt Prompt, List<int> Ids, string Text, bool Truncated);

/// <summary>A step's scores: each function's reward (NaN: not scored), the weighted sums, the advantages and the
/// statistics TRL logs: per completion the standard deviation it logs as reward_std (the group's for GRPO, the batch's for
/// RLOO) and whether its group's rewards are all equal; RLOO's mean KL per token (NaN: none).</summary>
public sealed record RolloutScores(double[][] PerFunction, double[] Rewards, double[] Advantages, double[] Std, bool[] StdIsZero, double KlMean = double.NaN);

/// <summary>One micro-batch for the engine with TRL's loss of it (and the means TRL logs of it).</summary>
public sealed record GrpoMicroBatch(EngineBatch Batch, MicroBatchLoss Loss, int CountedTokens);

/// <summary>A GRPO step's data path: sample the groups, score them, and lay them out as the engine's batches of weighted
/// tokens.</summary>
public static class GrpoRollout
{
    /// <summary>num_generations completions of each prompt, prompt by prompt (groups are consecutive), the groups decoded
    /// side by side in batches (<see cref="PolicySampler.SampleGroups"/>). Each completion's sampler is seeded from (seed,
    /// step, its place), so a run and a resumed run draw the same completions.</summary>
    public static List<Completion> Sample(PolicySampler sampler, IReadOnlyList<GrpoPrompt> prompts, TextTokenizer tokenizer, GrpoOptions grpo,
        IReadOnlyCollection<int> stops, int seed, int step)
    {
        var groups = prompts.Select((prompt, p) => ((IReadOnlyList<int>)prompt.Ids, (IReadOnlyList<GenerationOptions>)[.. Enumerable
            .Range(p * grpo.NumGenerations, grpo.NumGenerations).Select(place => new GenerationOptions
            {
                MaxNewTokens = grpo.MaxCompletionLength, Temperature = grpo.Temperature, TopK = grpo.TopK, TopP = grpo.TopP, MinP = grpo.MinP,
                RepetitionPenalty = grpo.RepetitionPenalty, StopTokenIds = stops, Seed = SplitMix64.Seed((ulong)seed, (ulong)step, (ulong)place),
            })])).ToList();
        // all the prompts' groups side by side: one run per generated token for a batch of groups
        var sampled = sampler.SampleGroups(groups);
        return [.. sampled.SelectMany((group, p) => group.Select(c =>
            new Completion(prompts[p], c.Ids, tokenizer.Decode(c.Ids, skipSpecialTokens: true), c.Truncated)))];
    }

    /// <summary>Scores the completions with the reward functions and turns the rewards into advantages, GRPO's or RLOO's.</summary>
    /// <param name="kl">RLOO with β > 0: each completion's KL to the reference, which its reward is penalized by, and the
    /// mean per token (<see cref="Rloo.SequenceKl"/>)</param>
    public static RolloutScores Score(IReadOnlyList<Completion> completions, IReadOnlyList<IRewardFunction> rewards, GrpoOptions grpo,
        (double[] PerCompletion, double Mean)? kl = null)
    {
        var inputs = completions.Select(c => new RewardInput(c.Prompt.Text, c.Text, c.Ids.Count, c.Truncated, c.Prompt.Columns, c.Prompt.Messages)).ToList();
        var perFunction = completions.Select(_ => new double[rewards.Count]).ToArray();
        for (int f = 0; f < rewards.Count; f++)
        {
            var scores = rewards[f].Score(inputs);
            if (scores.Length != completions.Count)
                throw new OrtLoraException($"reward function '{rewards[f].Name}' gave {scores.Length} scores for {completions.Count} completions");
            for (int i = 0; i < scores.Length; i++) perFunction[i][f] = scores[i] ?? double.NaN;
        }
        var weights = grpo.RewardWeights ?? [.. rewards.Select(_ => 1.0)];
        if (grpo.IsRloo) return Rloo.Score(perFunction, weights, grpo.NumGenerations, grpo, kl?.PerCompletion, kl?.Mean ?? double.NaN);
        var (sums, advantages, std, zero) = GroupAdvantages.Compute(perFunction, weights, grpo.NumGenerations, grpo.ScaleRewards, grpo.MultiObjectiveAggregation);
        return new RolloutScores(perFunction, sums, advantages, std, zero);
    }

    /// <summary>Each completion's log-probabilities (and the distributions' entropies) under the sampler's policy as it
    /// is, or under the reference.</summary>
    public static List<TokenScores> Logps(IEnumerable<Completion> completions, PolicySampler sampler, double temperature, bool reference = false) =>
        sampler.CompletionLogps([.. completions.Select(c => ((IReadOnlyList<int>)c.Prompt.Ids, (IReadOnlyList<int>)c.Ids))], temperature, reference);

    /// <summary>One optimizer step's part of a generation batch, completions [<paramref name="start"/>, start + count),
    /// as consecutive right-padded micro-batches of <paramref name="batchSize"/>: prompt + completion, the completion's
    /// tokens labelled and weighted by −d loss / d log p (<see cref="PolicyLoss.Compute"/>, RLOO's <see cref="Rloo.Loss"/>).</summary>
    /// <param name="policy">the step's completions' scores under the policy as it is (β > 0, off-policy, or entropies
    /// needed); indexed from <paramref name="start"/>; null when the loss needs none</param>
    /// <param name="reference">the generation batch's scores under the reference (β > 0)</param>
    /// <param name="old">the generation batch's scores under the policy that sampled it, on an off-policy step; null
    /// on-policy (the ratio is 1)</param>
    public static List<GrpoMicroBatch> MicroBatches(IReadOnlyList<Completion> completions, RolloutScores scores, int start, int count, TextTokenizer tokenizer,
        GrpoOptions grpo, int batchSize, IReadOnlyList<TokenScores>? policy, IReadOnlyList<TokenScores>? reference, IReadOnlyList<TokenScores>? old)
    {
        var scored = Enumerable.Range(start, count).Select(i => new ScoredCompletion(CountedTokens(completions[i], grpo),
            scores.Advantages[i], policy?[i - start].Logps, reference?[i].Logps, old?[i].Logps, policy?[i - start].Entropies)).ToList();
        // TRL's num_items_in_batch: the generation batch's completion tokens, counted before truncated ones are masked
        long generationTokens = completions.Sum(c => (long)c.Ids.Count);
        int accumulation = (count + batchSize - 1) / batchSize;
        var batches = new List<GrpoMicroBatch>();
        for (int first = 0; first < count; first += batchSize)
        {
            int rows = Math.Min(batchSize, count - first);
            var part = scored.GetRange(first, rows);
            var (tokenWeights, loss) = grpo.IsRloo ? Rloo.Loss(part, accumulation, grpo)
                : PolicyLoss.Compute(part, GroupAdvantages.Normalizers(part, generationTokens, accumulation, grpo.LossType, grpo.MaxCompletionLength), grpo);
            int length = Enumerable.Range(start + first, rows).Max(i => completions[i].Prompt.Ids.Length + completions[i].Ids.Count);
            var ids = new long[rows * length];
            var mask = new long[rows * length];
            var labels = new long[rows * length];
            var weights = new float[rows * length];
            Array.Fill(ids, tokenizer.PadId);
            Array.Fill(labels, -100);
            for (int r = 0; r < rows; r++)
            {
                var c = completions[start + first + r];
                int at = r * length;
                for (int t = 0; t < c.Prompt.Ids.Length; t++, at++) { ids[at] = c.Prompt.Ids[t]; mask[at] = 1; }
                for (int t = 0; t < c.Ids.Count; t++, at++)
                {
                    ids[at] = c.Ids[t];
                    mask[at] = 1;
                    if (t < part[r].CountedTokens) { labels[at] = c.Ids[t]; weights[at] = tokenWeights[r][t]; }
                }
            }
            batches.Add(new GrpoMicroBatch(new EngineBatch(ids, mask, labels, rows, length) { TokenWeights = weights }, loss,
                part.Sum(p => p.CountedTokens)));
        }
        return batches;
    }

    /// <summary>The completion's tokens the loss counts: none for a truncated one under mask_truncated_completions.</summary>
    public static int CountedTokens(Completion completion, GrpoOptions grpo) => grpo.MaskTruncatedCompletions && completion.Truncated ? 0 : completion.Ids.Count;

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
