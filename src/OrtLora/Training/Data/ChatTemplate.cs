namespace OrtLora.Training.Data;

/// <summary>How a conversation becomes text. Built in: <c>chatml</c> (the default) and <c>llama2</c>. A model's own
/// Jinja template (tokenizer_config.json's chat_template) is recognised as one of these by its markers;
/// ortlora does not run Jinja. Assistant turns, with their end marker, are the trained part.</summary>
public sealed class ChatTemplate
{
    readonly Func<IReadOnlyList<ChatMessage>, bool, IEnumerable<Segment>> _render;

    ChatTemplate(string name, Func<IReadOnlyList<ChatMessage>, bool, IEnumerable<Segment>> render)
    {
        Name = name;
        _render = render;
    }

    public string Name { get; }

    /// <summary>ChatML (Qwen, many fine-tunes): <c>&lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n</c> per message.</summary>
    public static ChatTemplate ChatMl { get; } = new("chatml", RenderChatMl);

    /// <summary>Llama 2 chat, as Meta's and Hugging Face's template writes it:
    /// <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\n{system}\n&lt;&lt;/SYS&gt;&gt;\n\n{user} [/INST] {assistant} &lt;/s&gt;</c>.</summary>
    public static ChatTemplate Llama2 { get; } = new("llama2", RenderLlama2);

    public static IReadOnlyList<string> BuiltInNames { get; } = ["chatml", "llama2"];

    public static ChatTemplate FromName(string name) => name.ToLowerInvariant().Replace("-", "").Replace("_", "") switch
    {
        "chatml" => ChatMl,
        "llama2" or "llama2chat" => Llama2,
        _ => throw new OrtLoraException($"unknown chat template '{name}'; built in: {string.Join(", ", BuiltInNames)}"),
    };

    /// <summary>The built-in template a model's Jinja chat template writes, recognised by its markers.</summary>
    public static ChatTemplate FromJinja(string jinja, string source)
    {
        if (jinja.Contains("<|im_start|>")) return ChatMl;
        if (jinja.Contains("[INST]")) return Llama2;
        throw new OrtLoraException($"the chat template in {source} is neither ChatML nor Llama 2 style, the ones ortlora " +
                                   $"renders; choose one with --chat-template ({string.Join(", ", BuiltInNames)})");
    }

    /// <summary>The template to use: the one named, else the model's own (from its tokenizer_config.json), else ChatML.</summary>
    public static ChatTemplate Resolve(string? name, TokenizerConfig? config, string configSource = "tokenizer_config.json") =>
        name is not null ? FromName(name)
        : config?.ChatTemplate is { } jinja ? FromJinja(jinja, configSource)
        : ChatMl;

    /// <summary>What follows the conversation when the assistant is to answer next (transformers' add_generation_prompt):
    /// ChatML opens an assistant turn; Llama 2's [/INST] already hands over.</summary>
    public IReadOnlyList<Segment> GenerationPrompt => this == ChatMl ? [new Segment("<|im_start|>assistant\n", false)] : [];

    /// <summary>The token that ends an assistant turn besides EOS (ChatML's &lt;|im_end|&gt;), if any.</summary>
    public string? EndOfTurn => this == ChatMl ? "<|im_end|>" : null;

    /// <summary>The conversation as segments; <paramref name="addBos"/>: the tokenizer puts BOS first.</summary>
    public IReadOnlyList<Segment> Render(IReadOnlyList<ChatMessage> messages, bool addBos) => [.. _render(messages, addBos)];

    static IEnumerable<Segment> RenderChatMl(IReadOnlyList<ChatMessage> messages, bool addBos)
    {
        if (addBos) yield return Segment.Bos();
        foreach (var m in messages)
        {
            var assistant = m.Role == "assistant";
            yield return new Segment($"<|im_start|>{m.Role}\n", false);
            yield return new Segment(m.Content, assistant);
            yield return new Segment("<|im_end|>", assistant);
            yield return new Segment("\n", false);
        }
    }

    static IEnumerable<Segment> RenderLlama2(IReadOnlyList<ChatMessage> messages, bool addBos)
    {
        string? system = messages.Count > 0 && messages[0].Role == "system" ? messages[0].Content : null;
        foreach (var m in messages.Skip(system is null ? 0 : 1))
        {
            if (m.Role == "user")
            {
                var content = system is null ? m.Content.Trim() : $"<<SYS>>\n{system}\n<</SYS>>\n\n{m.Content.Trim()}";
                system = null;
                yield return Segment.Bos();
                yield return new Segment($"[INST] {content} [/INST]", false);
            }
            else if (m.Role == "assistant")
            {
                yield return new Segment($" {m.Content.Trim()} ", true);
                yield return Segment.Eos();
            }
            else throw new OrtLoraException($"the llama2 chat template has no place for a '{m.Role}' message (only system first, then user/assistant)");
        }
    }
}
