namespace OrtLora.Training.Data;

/// <summary>Preference rows as TRL's DPOTrainer tokenizes them (tokenize_row, then concatenated_forward): the prompt and
/// each completion are tokenized on their own with no special tokens added, a standard row's completions end with EOS, the
/// prompt keeps its last max_prompt_length tokens and each completion its first max_completion_length, and prompt +
/// completion is cut to max_length, keeping its end (truncation_mode keep_end, TRL's default) or its start. A
/// conversational row goes through the chat template: the prompt with the generation prompt opened, each completion as
/// the text the template adds for it after the prompt (the two renders' common start, as TRL takes it). The prompt's
/// tokens are read, not learned (labels -100). One difference: where the tokenizer puts BOS first (Llama 2), the prompt
/// starts with BOS, as TRL up to 0.11 added it and as ortlora's own SFT data and `generate` have it (current TRL leaves it
/// out of decoder-only models' preference rows); a Jinja chat template writes BOS itself, as it does for TRL.</summary>
public sealed class PreferenceEncoder(TextTokenizer tokenizer, ChatTemplate chatTemplate, int maxLength, int maxPromptLength, int? maxCompletionLength,
    bool keepEnd)
{
    // BOS and EOS segments of a render, as characters no text has, so that renders compare and cut as strings.
    const char BosMark = '\uE000', EosMark = '\uE001';

    /// <summary>The pair's chosen and rejected sequences, or null when truncation left one of them no completion token.</summary>
    public (TokenizedExample Chosen, TokenizedExample Rejected)? Encode(long rowIndex, DataRecord record)
    {
        var (prompt, completions) = Truncated(record switch
        {
            PreferenceRecord row => (WithBos(Ids(row.Prompt)), [WithEos(Ids(row.Chosen)), WithEos(Ids(row.Rejected))]),
            ChatPreferenceRecord row => Conversational(row.Prompt, row.Tools, row.Chosen, row.Rejected),
            _ => throw new OrtLoraException($"row {rowIndex} is not a preference row ({record.GetType().Name})"),
        });
        var (c, r) = (Sequence(rowIndex, prompt, completions[0]), Sequence(rowIndex, prompt, completions[1]));
        return c.TrainedTokens > 0 && r.TrainedTokens > 0 ? (c, r) : null;
    }

    /// <summary>The pair as TRL's RewardTrainer tokenizes it for a sequence classifier: the whole of prompt + chosen and of
    /// prompt + rejected, each tokenized in one piece with the tokenizer's special tokens (BOS where it adds one) and
    /// ending with EOS (a standard row's text gets one unless it already ends with it); a conversational row is the
    /// whole conversation through the chat template, without a generation prompt. The chosen sequence carries the row's
    /// margin. Every token is labelled (the loss
    /// reads one score per sequence). Null when either sequence is longer than max_length: TRL drops those pairs
    /// rather than cut them.</summary>
    public (TokenizedExample Chosen, TokenizedExample Rejected)? EncodeWhole(long rowIndex, DataRecord record)
    {
        List<int> Whole(string text)
        {
            var ids = WithBos(Ids(text));
            if (tokenizer.EosId is int eos && (ids.Count == 0 || ids[^1] != eos)) ids.Add(eos);
            return ids;
        }
        var (chosen, rejected, margin) = record switch
        {
            PreferenceRecord row => (Whole(row.Prompt + row.Chosen), Whole(row.Prompt + row.Rejected), row.Margin),
            ChatPreferenceRecord row => (Ids(Render([.. row.Prompt, .. row.Chosen], row.Tools, addGenerationPrompt: false)),
                Ids(Render([.. row.Prompt, .. row.Rejected], row.Tools, addGenerationPrompt: false)), row.Margin),
            _ => throw new OrtLoraException($"row {rowIndex} is not a preference row ({record.GetType().Name})"),
        };
        if (chosen.Count > maxLength || rejected.Count > maxLength || chosen.Count == 0 || rejected.Count == 0) return null;
        return (new TokenizedExample(rowIndex, [.. chosen], [.. chosen]) { RowValue = (float)(margin ?? 0) },
            new TokenizedExample(rowIndex, [.. rejected], [.. rejected]));
    }

    /// <summary>An unpaired (KTO) row: its sequence, and its prompt's and completion's ids (KTO's KL rows pair a prompt
    /// with another row's completion, <see cref="Sequence"/>); null when truncation left no completion token.</summary>
    public (TokenizedExample Example, List<int> Prompt, List<int> Completion)? EncodeUnpaired(long rowIndex, DataRecord record)
    {
        var (prompt, completions) = Truncated(record switch
        {
            UnpairedPreferenceRecord row => (WithBos(Ids(row.Prompt)), [WithEos(Ids(row.Completion))]),
            ChatUnpairedPreferenceRecord row => Conversational(row.Prompt, row.Tools, row.Completion),
            _ => throw new OrtLoraException($"row {rowIndex} is not an unpaired preference row ({record.GetType().Name})"),
        });
        var example = Sequence(rowIndex, prompt, completions[0]);
        return example.TrainedTokens > 0 ? (example, prompt, completions[0]) : null;
    }

    static List<int> Truncated(List<int> ids, bool keepEnd, int? most) =>
        most is { } m && ids.Count > m ? keepEnd ? ids[^m..] : ids[..m] : ids;

    /// <summary>A row's prompt and completions, each cut to its own limit (the prompt keeps its end, a completion its start).</summary>
    (List<int> Prompt, List<List<int>> Completions) Truncated((List<int> Prompt, List<List<int>> Completions) row) =>
        (Truncated(row.Prompt, keepEnd: true, maxPromptLength), [.. row.Completions.Select(c => Truncated(c, keepEnd: false, maxCompletionLength))]);

    /// <summary>Prompt + completion as one sequence (the prompt labelled -100), cut to max_length by the truncation mode.</summary>
    public TokenizedExample Sequence(long rowIndex, List<int> prompt, List<int> completion)
    {
        var ids = prompt.Concat(completion).ToList();
        var labels = Enumerable.Repeat(ExampleEncoder.IgnoreIndex, prompt.Count).Concat(completion).ToList();
        if (ids.Count > maxLength)
        {
            int from = keepEnd ? ids.Count - maxLength : 0;
            ids = ids.GetRange(from, maxLength);
            labels = labels.GetRange(from, maxLength);
        }
        return new TokenizedExample(rowIndex, [.. ids], [.. labels]);
    }

    List<int> WithBos(List<int> ids)
    {
        if (tokenizer.AddsBos) ids.Insert(0, tokenizer.BosId!.Value);
        return ids;
    }

    List<int> WithEos(List<int> ids)
    {
        if (tokenizer.EosId is int eos) ids.Add(eos);
        return ids;
    }

    /// <summary>TRL's maybe_apply_chat_template on a preference row: a prompt ending with a user message opens the
    /// assistant's turn; the completions are what each full render adds after the prompt.</summary>
    (List<int> Prompt, List<List<int>> Completions) Conversational(IReadOnlyList<ChatMessage> messages, string? tools, params IReadOnlyList<ChatMessage>[] completions)
    {
        if (messages.Count == 0 || messages[^1].Role != "user")
            throw new OrtLoraException($"a conversational preference prompt must end with a user message (it ends with {(messages.Count == 0 ? "nothing" : $"a '{messages[^1].Role}' message")})");
        var prompt = Render([.. messages], tools, addGenerationPrompt: true);
        var full = completions.Select(c => Render([.. messages, .. c], tools, addGenerationPrompt: false)).ToList();
        // Templates that add to the prompt only with the generation prompt (DeepSeek-R1's <think>) differ from the full
        // render there: the prompt is the common start, as TRL takes it.
        int common = 0;
        while (common < prompt.Length && common < full[0].Length && prompt[common] == full[0][common]) common++;
        return (Ids(prompt[..common]), [.. full.Select(f => Ids(f[common..]))]);
    }

    string Render(List<ChatMessage> messages, string? tools, bool addGenerationPrompt) =>
        string.Concat(chatTemplate.Render(new ChatRecord(messages, messages.Count, tools), tokenizer.AddsBos, addGenerationPrompt).Select(s => s.Special switch
        {
            SpecialToken.Bos => BosMark.ToString(),
            SpecialToken.Eos => EosMark.ToString(),
            _ => s.Text,
        }));

    /// <summary>Token ids of text (special tokens written in it recognized, none added), the BOS/EOS marks as their ids.</summary>
    List<int> Ids(string text)
    {
        var ids = new List<int>();
        int start = 0;
        for (int i = 0; i <= text.Length; i++)
        {
            if (i < text.Length && text[i] is not (BosMark or EosMark)) continue;
            if (i > start) ids.AddRange(tokenizer.Encode(text[start..i]));
            if (i < text.Length && (text[i] == BosMark ? tokenizer.BosId : tokenizer.EosId) is int special) ids.Add(special);
            start = i + 1;
        }
        return ids;
    }
}
