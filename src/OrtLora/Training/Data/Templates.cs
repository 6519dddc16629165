namespace OrtLora.Training.Data;

public enum SpecialToken { None, Bos, Eos }

/// <summary>A piece of a rendered example: text (or the tokenizer's BOS/EOS) and whether the model is trained to
/// produce it (its tokens get labels) or only reads it (labels -100).</summary>
public sealed record Segment(string Text, bool Trainable, SpecialToken Special = SpecialToken.None)
{
    public static Segment Bos(bool trainable = false) => new("", trainable, SpecialToken.Bos);
    public static Segment Eos(bool trainable = true) => new("", trainable, SpecialToken.Eos);
}

/// <summary>One row rendered for training; <see cref="RowIndex"/> is the row's index in its file.</summary>
public sealed record Example(long RowIndex, IReadOnlyList<Segment> Segments)
{
    /// <summary>The text the segments spell, with BOS/EOS shown as &lt;bos&gt;/&lt;eos&gt;.</summary>
    public string Text => string.Concat(Segments.Select(s => s.Special switch
    {
        SpecialToken.Bos => "<bos>",
        SpecialToken.Eos => "<eos>",
        _ => s.Text,
    }));
}

/// <summary>Stanford Alpaca's prompt, with and without an input.</summary>
public static class AlpacaTemplate
{
    public const string WithInput =
        "Below is an instruction that describes a task, paired with an input that provides further context. " +
        "Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n";

    public const string NoInput =
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n" +
        "### Instruction:\n{instruction}\n\n### Response:\n";

    /// <summary>The prompt for a row; the response (the row's output) follows it directly.</summary>
    public static string Prompt(InstructionRecord row) => string.IsNullOrWhiteSpace(row.Input)
        ? NoInput.Replace("{instruction}", row.Instruction)
        : WithInput.Replace("{instruction}", row.Instruction).Replace("{input}", row.Input);
}

/// <summary>Turns rows into examples: text rows are trained on whole; instruction rows are the Alpaca prompt then the
/// output; prompt-completion rows the prompt then the completion; chat rows go through a chat template with only the
/// assistant turns trained. EOS follows the response
/// (text and instruction) and BOS comes first when the tokenizer uses one.</summary>
public sealed class ExampleRenderer(ChatTemplate chatTemplate, bool addBos, bool trainOnPrompt = false, bool addEos = true)
{
    public ChatTemplate ChatTemplate => chatTemplate;

    public Example Render(long rowIndex, DataRecord record)
    {
        var segments = new List<Segment>();
        if (addBos && record is not ChatRecord) segments.Add(Segment.Bos());
        switch (record)
        {
            case TextRecord text:
                segments.Add(new Segment(text.Text, true));
                break;
            case InstructionRecord row:
                segments.Add(new Segment(AlpacaTemplate.Prompt(row), trainOnPrompt));
                segments.Add(new Segment(row.Output, true));
                break;
            case PromptCompletionRecord row:
                segments.Add(new Segment(row.Prompt, trainOnPrompt));
                segments.Add(new Segment(row.Completion, true));
                break;
            case ChatRecord chat:
                segments.AddRange(chatTemplate.Render(chat, addBos));
                break;
        }
        if (addEos && record is not ChatRecord) segments.Add(Segment.Eos());
        if (trainOnPrompt) segments = [.. segments.Select(s => s with { Trainable = s.Special != SpecialToken.Bos })];
        return new Example(rowIndex, segments);
    }
}
