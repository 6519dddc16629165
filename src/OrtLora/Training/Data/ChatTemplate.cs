using OrtLora.Training.Data.Jinja;

namespace OrtLora.Training.Data;

/// <summary>How a conversation becomes text. A model's own Jinja template (tokenizer_config.json's chat_template, or a
/// file given to --chat-template) is run as transformers' apply_chat_template runs it (<see cref="JinjaChat"/>). Built in,
/// for tokenizers without one: <c>chatml</c> (the default) and <c>llama2</c>. Assistant turns, with their end marker, are
/// the trained part.</summary>
public sealed class ChatTemplate
{
    /// <summary>Renders (conversation, tokenizer adds BOS, add_generation_prompt) as segments.</summary>
    readonly Func<ChatRecord, bool, bool, IEnumerable<Segment>> _render;

    ChatTemplate(string name, Func<ChatRecord, bool, bool, IEnumerable<Segment>> render, string? endOfTurn)
    {
        Name = name;
        _render = render;
        EndOfTurn = endOfTurn;
    }

    public string Name { get; }

    /// <summary>The token that ends an assistant turn besides EOS (ChatML's &lt;|im_end|&gt;, Llama 3's &lt;|eot_id|&gt;), if any.</summary>
    public string? EndOfTurn { get; }

    /// <summary>ChatML (Qwen, many fine-tunes): <c>&lt;|im_start|&gt;{role}\n{content}&lt;|im_end|&gt;\n</c> per message.</summary>
    public static ChatTemplate ChatMl { get; } = new("chatml", RenderChatMl, "<|im_end|>");

    /// <summary>Llama 2 chat, as Meta's and Hugging Face's template writes it:
    /// <c>&lt;s&gt;[INST] &lt;&lt;SYS&gt;&gt;\n{system}\n&lt;&lt;/SYS&gt;&gt;\n\n{user} [/INST] {assistant} &lt;/s&gt;</c>.</summary>
    public static ChatTemplate Llama2 { get; } = new("llama2", (chat, addBos, _) => RenderLlama2(chat), null);

    public static IReadOnlyList<string> BuiltInNames { get; } = ["chatml", "llama2"];

    /// <summary>A built-in template by name, or a Jinja template file.</summary>
    public static ChatTemplate FromName(string name, TokenizerConfig? config = null, string? kwargs = null)
    {
        if (File.Exists(name)) return FromJinja(File.ReadAllText(name), name, config, kwargs: kwargs);
        return name.ToLowerInvariant().Replace("-", "").Replace("_", "") switch
        {
            "chatml" => ChatMl,
            "llama2" or "llama2chat" => Llama2,
            _ => throw new OrtLoraException($"unknown chat template '{name}'; built in: {string.Join(", ", BuiltInNames)}, or a Jinja template file"),
        };
    }

    /// <summary>A model's Jinja chat template, run with its bos_token and eos_token; <paramref name="clock"/> is what
    /// strftime_now reads (the local time when null); <paramref name="kwargs"/>: TRL's chat_template_kwargs, a JSON
    /// object whose keys the template reads as variables (Qwen3's enable_thinking), as apply_chat_template passes them.</summary>
    public static ChatTemplate FromJinja(string jinja, string source, TokenizerConfig? config = null, Func<DateTime>? clock = null, string? kwargs = null)
    {
        var chat = new JinjaChat(JinjaTemplate.Parse(jinja, source), source, config?.BosToken, config?.EosToken, clock, JinjaChat.Kwargs(kwargs));
        return new ChatTemplate($"{Path.GetFileName(source)}'s own", chat.Render, chat.EndOfTurn);
    }

    /// <summary>The template to use: the one named, else the model's own (from its tokenizer_config.json), else ChatML.
    /// <paramref name="kwargs"/> (chat_template_kwargs, JSON) go to a Jinja template; the built-in ones read none.</summary>
    public static ChatTemplate Resolve(string? name, TokenizerConfig? config, string configSource = "tokenizer_config.json", string? kwargs = null)
    {
        JinjaChat.Kwargs(kwargs); // checked even where the template is built in
        return name is not null ? FromName(name, config, kwargs)
            : config?.ChatTemplate is { } jinja ? FromJinja(jinja, configSource, config, kwargs: kwargs)
            : ChatMl;
    }

    /// <summary>The conversation as segments; <paramref name="addBos"/>: the tokenizer puts BOS first (a Jinja template
    /// writes its own BOS, as transformers encodes its output without adding special tokens);
    /// <paramref name="addGenerationPrompt"/>: open the assistant's turn after it (transformers' add_generation_prompt).</summary>
    public IReadOnlyList<Segment> Render(ChatRecord chat, bool addBos, bool addGenerationPrompt = false)
    {
        if (IsBuiltIn && (chat.Tools is not null || chat.Messages.Any(m => m.ToolCalls is not null)))
            throw new OrtLoraException($"the built-in {Name} chat template has no place for tools and tool calls; use the model's own " +
                "(its tokenizer_config.json's chat_template, or --chat-template FILE)");
        return [.. _render(chat, addBos, addGenerationPrompt)];
    }

    bool IsBuiltIn => this == ChatMl || this == Llama2;

    static IEnumerable<Segment> RenderChatMl(ChatRecord chat, bool addBos, bool addGenerationPrompt)
    {
        if (addBos) yield return Segment.Bos();
        for (int i = 0; i < chat.Messages.Count; i++)
        {
            var (m, trained) = (chat.Messages[i], chat.Trains(i));
            yield return new Segment($"<|im_start|>{m.Role}\n", false);
            yield return new Segment(m.Content, trained);
            yield return new Segment("<|im_end|>", trained);
            yield return new Segment("\n", false);
        }
        if (addGenerationPrompt) yield return new Segment("<|im_start|>assistant\n", false);
    }

    /// <summary>Llama 2's [/INST] already hands over to the assistant, so add_generation_prompt adds nothing.</summary>
    static IEnumerable<Segment> RenderLlama2(ChatRecord chat)
    {
        var messages = chat.Messages;
        string? system = messages.Count > 0 && messages[0].Role == "system" ? messages[0].Content : null;
        for (int i = system is null ? 0 : 1; i < messages.Count; i++)
        {
            var m = messages[i];
            if (m.Role == "user")
            {
                var content = system is null ? m.Content.Trim() : $"<<SYS>>\n{system}\n<</SYS>>\n\n{m.Content.Trim()}";
                system = null;
                yield return Segment.Bos();
                yield return new Segment($"[INST] {content} [/INST]", false);
            }
            else if (m.Role == "assistant")
            {
                yield return new Segment($" {m.Content.Trim()} ", chat.Trains(i));
                yield return Segment.Eos(chat.Trains(i));
            }
            else throw new OrtLoraException($"the llama2 chat template has no place for a '{m.Role}' message (only system first, then user/assistant)");
        }
    }
}
