using OrtLora.Training.Data;

namespace OrtLora.Training.Grpo;

/// <summary>One prompt to sample from: its ids (BOS + text, or the conversation through the chat template with the
/// assistant's turn opened, as TRL's GRPOTrainer renders prompts), its text for the reward functions, the row's other
/// columns, and a conversational prompt's messages (a reward model renders them with its own template).</summary>
public sealed record GrpoPrompt(long Row, int[] Ids, string Text, IReadOnlyDictionary<string, string?> Columns, IReadOnlyList<ChatMessage>? Messages = null);

/// <summary>The prompt-only dataset, read and tokenized once (prompt sets are small next to their completions), in a
/// seeded order per epoch, as TRL's RepeatSampler draws them: each prompt once per epoch, then its group of
/// num_generations completions.</summary>
public sealed class GrpoPrompts
{
    public IReadOnlyList<GrpoPrompt> All { get; }
    public string Path { get; }
    public bool Conversational { get; }
    public IReadOnlyList<string> Columns { get; }
    public DataSummary Summary { get; }
    readonly int _seed;

    GrpoPrompts(string path, List<GrpoPrompt> prompts, bool conversational, IReadOnlyList<string> columns, DataSummary summary, int seed)
    {
        Path = path; All = prompts; Conversational = conversational; Columns = columns; Summary = summary; _seed = seed;
    }

    public static GrpoPrompts Load(string path, TextTokenizer tokenizer, ChatTemplate? chat, int maxPromptLength, int seed, DatasetFormat format = DatasetFormat.Auto)
    {
        using var data = ParquetDataset.Open(path, format);
        if (data.Format != DatasetFormat.Prompt)
            throw new OrtLoraException($"{path}: GRPO and generate --data sample completions of prompt-only data (a 'prompt' column, text or messages, and any columns the " +
                $"reward functions read); this file is {ParquetDataset.FormatName(data.Format)} data" +
                (data.Columns.Contains("prompt") ? " (--dataset-format prompt-only reads its prompts and passes the other columns to the rewards)" : ""));
        var prompts = new List<GrpoPrompt>();
        foreach (var (index, record) in data.ReadAll())
        {
            var (ids, text, columns) = record switch
            {
                PromptRecord row => (tokenizer.Encode(row.Prompt, addBos: tokenizer.AddsBos), row.Prompt, row.Columns),
                ChatPromptRecord row => ConversationIds(row, tokenizer, chat ?? ChatTemplate.ChatMl),
                _ => throw new OrtLoraException($"{path}: row {index} is not a prompt ({record.GetType().Name})"),
            };
            // the prompt keeps its end, where the question and the opened turn are
            if (ids.Length > maxPromptLength) ids = ids[^maxPromptLength..];
            prompts.Add(new GrpoPrompt(index, ids, text, columns, (record as ChatPromptRecord)?.Prompt));
        }
        if (prompts.Count == 0) throw new OrtLoraException($"{path}: no prompts ({data.Summary.SkippedNull} null, {data.Summary.SkippedEmpty} empty rows)");
        return new GrpoPrompts(path, prompts, data.ConversationalPrompts, [.. data.Columns], data.Summary, seed);
    }

    static (int[], string, IReadOnlyDictionary<string, string?>) ConversationIds(ChatPromptRecord row, TextTokenizer tokenizer, ChatTemplate chat)
    {
        if (row.Prompt.Count == 0 || row.Prompt[^1].Role != "user")
            throw new OrtLoraException($"a conversational GRPO prompt must end with a user message (it ends with {(row.Prompt.Count == 0 ? "nothing" : $"a '{row.Prompt[^1].Role}' message")})");
        var segments = chat.Render(new ChatRecord(row.Prompt, row.Prompt.Count, row.Tools), tokenizer.AddsBos, addGenerationPrompt: true);
        var ids = new ExampleEncoder(tokenizer, int.MaxValue).Ids(new Example(0, segments));
        return (ids, tokenizer.Decode(ids), row.Columns);
    }

    /// <summary>The prompt at position <paramref name="index"/> of epoch <paramref name="epoch"/>'s order (a seeded
    /// Fisher–Yates shuffle, the same on every .NET).</summary>
    public GrpoPrompt At(int epoch, int index) => All[Order(epoch)[index]];

    (int Epoch, int[] Order)? _last; // the order asked for last: a step reads one epoch's, rarely two

    int[] Order(int epoch)
    {
        if (_last is { } last && last.Epoch == epoch) return last.Order;
        int[] order = [.. Enumerable.Range(0, All.Count)];
        ulong state = SplitMix64.Stream((ulong)_seed, (ulong)epoch, 0x6770);
        for (int i = order.Length - 1; i > 0; i--)
        {
            int j = (int)(SplitMix64.Next(ref state) % (ulong)(i + 1));
            (order[i], order[j]) = (order[j], order[i]);
        }
        _last = (epoch, order);
        return order;
    }
}
