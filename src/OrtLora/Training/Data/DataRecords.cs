namespace OrtLora.Training.Data;

/// <summary>How rows of a data file become examples. <see cref="Auto"/> picks from the columns: <c>messages</c> → chat,
/// <c>prompt</c> + <c>completion</c> → prompt-completion (TRL's), <c>instruction</c> + <c>output</c> → instruction, the text
/// column → text.</summary>
public enum DatasetFormat { Auto, Text, Instruction, Chat, PromptCompletion }

public sealed record ChatMessage(string Role, string Content);

/// <summary>One usable row of a data file, before rendering.</summary>
public abstract record DataRecord;
public sealed record TextRecord(string Text) : DataRecord;
/// <summary>An Alpaca-style row; <see cref="Input"/> is "" when the row has none.</summary>
public sealed record InstructionRecord(string Instruction, string Input, string Output) : DataRecord;
/// <summary>A conversation; assistant turns before <see cref="TrainedFrom"/> are read, not trained (a conversational
/// prompt-completion row: the prompt's messages, then the completion's).</summary>
public sealed record ChatRecord(IReadOnlyList<ChatMessage> Messages, int TrainedFrom = 0) : DataRecord
{
    public bool Trains(int message) => message >= TrainedFrom && Messages[message].Role == "assistant";
}
/// <summary>TRL's standard prompt-completion row: the completion is trained, the prompt only read (unless
/// --train-on-prompt), and the text is prompt + completion, as TRL's SFTTrainer joins them.</summary>
public sealed record PromptCompletionRecord(string Prompt, string Completion) : DataRecord;

/// <summary>What reading found: rows read, and rows skipped because a needed value was null or empty
/// (whitespace only counts as empty; a chat without an assistant turn counts as empty).</summary>
public sealed record DataSummary(long RowsRead, long SkippedNull, long SkippedEmpty)
{
    public long Usable => RowsRead - SkippedNull - SkippedEmpty;
    public static DataSummary operator +(DataSummary a, DataSummary b) =>
        new(a.RowsRead + b.RowsRead, a.SkippedNull + b.SkippedNull, a.SkippedEmpty + b.SkippedEmpty);
    public override string ToString() => $"{RowsRead} rows read, {SkippedNull} skipped null, {SkippedEmpty} skipped empty, {Usable} usable";
}
