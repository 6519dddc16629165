namespace OrtLora.Training.Data;

/// <summary>How rows of a data file become examples. <see cref="Auto"/> picks from the columns: <c>messages</c> → chat,
/// <c>chosen</c> + <c>rejected</c> → preference (TRL's, trained with the DPO loss), <c>prompt</c> + <c>completion</c> +
/// <c>label</c> → unpaired preference (TRL's, trained with the KTO loss), <c>prompt</c> + <c>completion</c> →
/// prompt-completion (TRL's), <c>prompt</c> alone → prompt-only (TRL's, what GRPO samples completions for),
/// <c>instruction</c> + <c>output</c> → instruction, the text column → text.
/// <c>Classification</c> (text + label, for `ortlora classify`) and <c>TokenClassification</c> (words + a label a word,
/// for `ortlora classify --task-type TOKEN_CLS`) are never picked by Auto.</summary>
public enum DatasetFormat { Auto, Text, Instruction, Chat, PromptCompletion, Preference, UnpairedPreference, Prompt, Classification, TokenClassification }

/// <summary>One message of a conversation, as Hugging Face's chat format writes it: an assistant's tool calls, a tool
/// result's name and tool_call_id, where the data has them.</summary>
public sealed record ChatMessage(string Role, string Content, IReadOnlyList<ToolCall>? ToolCalls = null, string? Name = null, string? ToolCallId = null);

/// <summary>A function call of an assistant message; <see cref="Arguments"/> is the arguments' JSON text, as datasets
/// store it (a chat template reads a JSON object as a mapping, as transformers' message format has it).</summary>
public sealed record ToolCall(string Name, string Arguments, string? Id = null, string Type = "function");

/// <summary>One usable row of a data file, before rendering.</summary>
public abstract record DataRecord;
public sealed record TextRecord(string Text) : DataRecord;
/// <summary>An Alpaca-style row; <see cref="Input"/> is "" when the row has none.</summary>
public sealed record InstructionRecord(string Instruction, string Input, string Output) : DataRecord;
/// <summary>A conversation; assistant turns before <see cref="TrainedFrom"/> are read, not trained (a conversational
/// prompt-completion row: the prompt's messages, then the completion's).
/// <see cref="Tools"/>: the JSON array of function schemas the row offers (TRL's tools column), or null.</summary>
public sealed record ChatRecord(IReadOnlyList<ChatMessage> Messages, int TrainedFrom = 0, string? Tools = null) : DataRecord
{
    public bool Trains(int message) => message >= TrainedFrom && Messages[message].Role == "assistant";
}
/// <summary>TRL's standard prompt-completion row: the completion is trained, the prompt only read (unless
/// --train-on-prompt), and the text is prompt + completion, as TRL's SFTTrainer joins them.</summary>
public sealed record PromptCompletionRecord(string Prompt, string Completion) : DataRecord;

/// <summary>TRL's preference row, standard kind: a prompt (possibly empty) and two completions of it, the preferred one
/// first.</summary>
public sealed record PreferenceRecord(string Prompt, string Chosen, string Rejected) : DataRecord
{
    /// <summary>TRL's optional <c>margin</c> column: how far a reward model should score chosen above rejected.</summary>
    public double? Margin { get; init; }
}

/// <summary>TRL's preference row, conversational kind: the prompt's messages and each completion's (usually one
/// assistant message); <see cref="Tools"/> as for <see cref="ChatRecord"/>.</summary>
public sealed record ChatPreferenceRecord(IReadOnlyList<ChatMessage> Prompt, IReadOnlyList<ChatMessage> Chosen, IReadOnlyList<ChatMessage> Rejected,
    string? Tools = null) : DataRecord
{
    /// <summary>TRL's optional <c>margin</c> column (<see cref="PreferenceRecord.Margin"/>).</summary>
    public double? Margin { get; init; }
}

/// <summary>TRL's unpaired preference row (KTO), standard kind: a prompt, a completion, and whether the completion is
/// desirable.</summary>
public sealed record UnpairedPreferenceRecord(string Prompt, string Completion, bool Label) : DataRecord;

/// <summary>TRL's unpaired preference row, conversational kind.</summary>
public sealed record ChatUnpairedPreferenceRecord(IReadOnlyList<ChatMessage> Prompt, IReadOnlyList<ChatMessage> Completion, bool Label,
    string? Tools = null) : DataRecord;

/// <summary>A sequence classification row: the text and its label as stored (an integer, true/false, or a name), which
/// <see cref="ClassLabels"/> turns into a class index.</summary>
public sealed record ClassificationRecord(string Text, string Label) : DataRecord
{
    /// <summary>A text pair's second text (GLUE's sentence2), encoded after the first as the tokenizer encodes pairs.</summary>
    public string? TextPair { get; init; }
    /// <summary>A multi-label row's labels (a list of classes, run_classification.py's multi-label data); null for one
    /// label a row. <see cref="Label"/> is then empty.</summary>
    public IReadOnlyList<string>? LabelSet { get; init; }
}

/// <summary>A token classification row (run_ner.py's: CoNLL's tokens and ner_tags): the words, and each word's label as
/// stored (an integer or a name); no labels for a row to predict.</summary>
public sealed record TokenClassificationRecord(IReadOnlyList<string> Words, IReadOnlyList<string> Labels) : DataRecord;

/// <summary>TRL's prompt-only row (GRPO's), standard kind: the prompt, and the row's other scalar columns as text
/// (a reference answer, say), by column name, for reward functions; a null value stays null.</summary>
public sealed record PromptRecord(string Prompt, IReadOnlyDictionary<string, string?> Columns) : DataRecord;

/// <summary>TRL's prompt-only row, conversational kind: the prompt's messages; <see cref="Tools"/> as for
/// <see cref="ChatRecord"/>; <see cref="Columns"/> as for <see cref="PromptRecord"/> (tools not among them).</summary>
public sealed record ChatPromptRecord(IReadOnlyList<ChatMessage> Prompt, string? Tools, IReadOnlyDictionary<string, string?> Columns) : DataRecord;

/// <summary>What reading found: rows read, and rows skipped because a needed value was null or empty
/// (whitespace only counts as empty; a chat without an assistant turn counts as empty).</summary>
public sealed record DataSummary(long RowsRead, long SkippedNull, long SkippedEmpty)
{
    public long Usable => RowsRead - SkippedNull - SkippedEmpty;
    public static DataSummary operator +(DataSummary a, DataSummary b) =>
        new(a.RowsRead + b.RowsRead, a.SkippedNull + b.SkippedNull, a.SkippedEmpty + b.SkippedEmpty);
    public override string ToString() => $"{RowsRead} rows read, {SkippedNull} skipped null, {SkippedEmpty} skipped empty, {Usable} usable";
}
