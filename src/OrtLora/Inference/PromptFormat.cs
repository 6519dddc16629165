using OrtLora.Training.Data;

namespace OrtLora.Inference;

/// <summary>How `generate` turns --prompt into token ids: as written ("raw"), or the way training rendered its examples,
/// so that a model fine-tuned on instruction or chat data is asked in the form it learned: "instruction" (Stanford
/// Alpaca's prompt with an empty input) or "chat" (one user message in the chat template, then the assistant's turn
/// opened, as transformers' add_generation_prompt does).</summary>
public static class PromptFormat
{
    public static readonly string[] Names = ["raw", "instruction", "chat"];

    /// <param name="system">a system message before the prompt (chat format only)</param>
    public static int[] Encode(string format, string prompt, TextTokenizer tokenizer, ChatTemplate chat, string? system = null)
    {
        if (system is not null && format != "chat") throw new OrtLoraException($"--system needs --prompt-format chat (got {format})");
        var segments = new List<Segment>();
        switch (format)
        {
            case "raw":
                return tokenizer.Encode(prompt, addBos: tokenizer.AddsBos);
            case "instruction":
                if (tokenizer.AddsBos) segments.Add(Segment.Bos());
                segments.Add(new Segment(AlpacaTemplate.Prompt(new InstructionRecord(prompt, "", "")), false));
                break;
            case "chat":
                return EncodeConversation(system is null ? [new("user", prompt)] : [new("system", system), new("user", prompt)], tokenizer, chat);
            default:
                throw new OrtLoraException($"--prompt-format {format}: expected {string.Join(", ", Names)}");
        }
        return new ExampleEncoder(tokenizer, int.MaxValue).Ids(new Example(0, segments));
    }

    /// <summary>A conversation so far, the assistant's turn opened after it: what `ortlora chat` asks with at each turn.</summary>
    public static int[] EncodeConversation(IReadOnlyList<ChatMessage> messages, TextTokenizer tokenizer, ChatTemplate chat) =>
        new ExampleEncoder(tokenizer, int.MaxValue).Ids(new Example(0, chat.Render(new ChatRecord(messages), tokenizer.AddsBos, addGenerationPrompt: true)));

    /// <summary>Tokens that end the answer besides the stop tokens of the model: the template's end of turn in chat format
    /// (ChatML's &lt;|im_end|&gt;, Llama 3's &lt;|eot_id|&gt;, ...).</summary>
    public static IEnumerable<int> StopIds(string format, TextTokenizer tokenizer, ChatTemplate chat) =>
        format == "chat" && chat.EndOfTurn is { } end && tokenizer.TokenId(end) is { } id ? [id] : [];
}
