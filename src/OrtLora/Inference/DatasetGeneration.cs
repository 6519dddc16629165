using Microsoft.ML.OnnxRuntime;
using System.Text.Json.Nodes;
using OrtLora.Training;
using OrtLora.Training.Data;
using OrtLora.Training.Grpo;

namespace OrtLora.Inference;

/// <summary>What `generate --data` was asked: every prompt of a prompt-only file (a 'prompt' column, text or messages),
/// <see cref="NumReturnSequences"/> completions each, written to a JSON Lines file and, with reward functions, scored.</summary>
public sealed record DatasetGenerationJob
{
    public required string DataPath { get; init; }
    public required string OutputPath { get; init; }
    /// <summary>Hugging Face's num_return_sequences: completions per prompt.</summary>
    public int NumReturnSequences { get; init; } = 1;
    /// <summary>GRPO's reward function specs (<see cref="RewardFunctions.Parse"/>); empty: no scoring.</summary>
    public IReadOnlyList<string> RewardFuncs { get; init; } = [];
    /// <summary>chat_template_kwargs (JSON), for a reward model's chat template.</summary>
    public string? ChatTemplateKwargs { get; init; }
    public int MaxPromptLength { get; init; } = 512;
    public DatasetFormat Format { get; init; } = DatasetFormat.Auto;
    /// <summary>Rows decoded side by side at most (whole prompts' groups).</summary>
    public int MaxRows { get; init; } = 64;
    /// <summary>The sampling seed; each completion's sampler is seeded from (seed, row, its number).</summary>
    public int Seed { get; init; }
}

/// <summary>The run's summary: completions written, their mean length in tokens, the share cut at max_new_tokens, and
/// each reward function's mean over the completions it scored.</summary>
public sealed record DatasetGenerationResult(int Prompts, int Completions, double MeanLength, double TruncatedShare,
    IReadOnlyList<(string Name, double Mean)> Rewards);

/// <summary>Batch generation over a dataset (`ortlora generate --data`): the prompts rendered as GRPO renders them
/// (BOS + text, or the chat template with the assistant's turn opened), decoded side by side
/// (<see cref="Generator.GenerateGroups"/>), written as they finish to a temporary file that replaces the output only
/// when all is done.</summary>
public static class DatasetGeneration
{
    public static DatasetGenerationResult Run(DatasetGenerationJob job, Generator generator, OrtLoraAdapter? adapter, TextTokenizer tokenizer,
        ChatTemplate chat, GenerationOptions options, Action<string>? progress = null)
    {
        if (job.NumReturnSequences < 1) throw new OrtLoraException("--num-return-sequences must be at least 1");
        if (job.MaxRows < 1) throw new OrtLoraException("--batch-size must be at least 1");
        var rewards = new List<IRewardFunction>();
        try
        {
            foreach (var spec in job.RewardFuncs) rewards.Add(RewardFunctions.Parse(spec, options.MaxNewTokens, job.ChatTemplateKwargs));
            var prompts = GrpoPrompts.Load(job.DataPath, tokenizer, chat, job.MaxPromptLength, job.Seed, job.Format);
            RewardFunctions.RequireColumns(rewards, job.DataPath, prompts.Columns);
            var stops = options.StopTokenIds.Concat(PromptFormat.StopIds(prompts.Conversational ? "chat" : "raw", tokenizer, chat)).ToHashSet();
            if (tokenizer.EosId is int eos) stops.Add(eos);
            var names = RewardFunctions.MetricNames(rewards);
            return Write(job, prompts, rewards, names, stops, generator, adapter, tokenizer, options, progress);
        }
        finally
        {
            foreach (var r in rewards) r.Dispose();
        }
    }

    static DatasetGenerationResult Write(DatasetGenerationJob job, GrpoPrompts prompts, List<IRewardFunction> rewards, List<string> names,
        HashSet<int> stops, Generator generator, OrtLoraAdapter? adapter, TextTokenizer tokenizer, GenerationOptions options, Action<string>? progress)
    {
        var temp = job.OutputPath + ".tmp";
        var sums = new double[rewards.Count];
        var scored = new int[rewards.Count];
        long tokens = 0;
        int written = 0, truncated = 0;
        try
        {
            using (var writer = new StreamWriter(temp))
            {
                // a chunk of prompts at a time: the batches fill, and progress and the file advance as chunks finish
                int perChunk = Math.Max(1, job.MaxRows / job.NumReturnSequences) * 4;
                for (int start = 0; start < prompts.All.Count; start += perChunk)
                {
                    var chunk = prompts.All.Skip(start).Take(perChunk).ToList();
                    var groups = chunk.Select(p => ((IReadOnlyList<int>)p.Ids, (IReadOnlyList<GenerationOptions>)[.. Enumerable.Range(0, job.NumReturnSequences)
                        .Select(k => options with { StopTokenIds = stops, Seed = CompletionSeed(job.Seed, p.Row, k) })])).ToList();
                    var sampled = generator.GenerateGroups(groups, adapter, job.MaxRows);
                    var rows = chunk.SelectMany((p, i) => sampled[i].Select(c => (Prompt: p, c.Ids, c.Truncated))).ToList();
                    var texts = rows.Select(r => tokenizer.Decode(r.Ids, skipSpecialTokens: true)).ToList();
                    var inputs = rows.Select((r, i) => new RewardInput(r.Prompt.Text, texts[i], r.Ids.Count, r.Truncated, r.Prompt.Columns, r.Prompt.Messages)).ToList();
                    var scores = rewards.Select(f => f.Score(inputs)).ToList();
                    if (scores.Select((s, f) => (s, f)).FirstOrDefault(x => x.s.Length != rows.Count) is { s: not null } wrong)
                        throw new OrtLoraException($"reward function '{rewards[wrong.f].Name}' gave {wrong.s.Length} scores for {rows.Count} completions");
                    for (int i = 0; i < rows.Count; i++)
                    {
                        var record = new JsonObject { ["row"] = rows[i].Prompt.Row, ["prompt"] = rows[i].Prompt.Text, ["completion"] = texts[i],
                            ["completion_tokens"] = rows[i].Ids.Count, ["truncated"] = rows[i].Truncated };
                        for (int f = 0; f < rewards.Count; f++)
                        {
                            record[names[f]] = scores[f][i];
                            if (scores[f][i] is { } v) { sums[f] += v; scored[f]++; }
                        }
                        writer.WriteLine(record.ToJsonString());
                        tokens += rows[i].Ids.Count;
                        if (rows[i].Truncated) truncated++;
                        written++;
                    }
                    progress?.Invoke($"{Math.Min(start + perChunk, prompts.All.Count)}/{prompts.All.Count} prompts");
                }
            }
            File.Move(temp, job.OutputPath, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
        return new DatasetGenerationResult(prompts.All.Count, written, written == 0 ? 0 : (double)tokens / written, written == 0 ? 0 : (double)truncated / written,
            [.. names.Select((n, f) => (n, scored[f] == 0 ? double.NaN : sums[f] / scored[f]))]);
    }

    /// <summary>Completion k of row <paramref name="row"/>'s seed: independent of the batch it was decoded in, so a run
    /// gives the same completions whatever its batch size.</summary>
    static int CompletionSeed(int seed, long row, int k) => SplitMix64.Seed((ulong)seed, (ulong)row, (ulong)k);
}
