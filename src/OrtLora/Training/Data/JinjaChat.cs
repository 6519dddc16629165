using System.Text.Json;
using System.Text.Json.Nodes;
using OrtLora.Training.Data.Jinja;

namespace OrtLora.Training.Data;

/// <summary>A model's Jinja chat template as training reads it: the text transformers' apply_chat_template gives, and
/// which characters of it are the trained assistant turns. A turn is found as the text that rendering the conversation
/// up to it adds to rendering the conversation before it with add_generation_prompt, as far as the whole conversation
/// writes the same (the turn's content and end marker; the whitespace after the marker stays untrained, as ChatML's
/// "\n" after &lt;|im_end|&gt;). Templates that render an
/// earlier part differently once more messages follow (Mistral's system prompt moves to the last user turn) fall back
/// to finding the turn's content in the whole text, followed by the template's end-of-turn marker.</summary>
sealed class JinjaChat(JinjaTemplate template, string source, string? bosToken, string? eosToken, Func<DateTime>? clock,
    IReadOnlyDictionary<string, object?>? kwargs = null)
{
    /// <summary>chat_template_kwargs given as a JSON object, as the template's values (null for none). The names
    /// apply_chat_template sets itself are refused, as Python refuses a keyword given twice.</summary>
    public static IReadOnlyDictionary<string, object?>? Kwargs(string? json)
    {
        if (string.IsNullOrWhiteSpace(json)) return null;
        JsonNode? node;
        try { node = JsonNode.Parse(json); }
        catch (JsonException e) { throw new OrtLoraException($"--chat-template-kwargs is not valid JSON ({e.Message}): {json}"); }
        if (node is not JsonObject obj) throw new OrtLoraException($"--chat-template-kwargs takes a JSON object, such as {{\"enable_thinking\": false}}; got {json}");
        if (obj.Select(p => p.Key).FirstOrDefault(k => k is "messages" or "add_generation_prompt" or "tools" or "documents") is { } reserved)
            throw new OrtLoraException($"--chat-template-kwargs cannot set '{reserved}': the conversation sets it");
        return obj.ToDictionary(p => p.Key, p => FromJson(p.Value));
    }

    const string Probe = "ortlora-probe-answer";

    /// <summary>apply_chat_template's text for <paramref name="messages"/>, offering <paramref name="tools"/> (a JSON
    /// array of function schemas, or null).</summary>
    public string Text(IEnumerable<ChatMessage> messages, bool addGenerationPrompt, string? tools = null) =>
        template.Render(Variables(messages, addGenerationPrompt, tools), clock);

    Dictionary<string, object?> Variables(IEnumerable<ChatMessage> messages, bool addGenerationPrompt, string? tools)
    {
        var variables = new Dictionary<string, object?>
        {
            ["messages"] = messages.Select(Message).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            // apply_chat_template without tools or documents passes both as None (defined, unlike an absent name).
            ["tools"] = tools is null ? null : Json(tools, "tools"),
            ["documents"] = null,
        };
        // transformers passes the special tokens the tokenizer has; one it lacks is undefined in the template.
        if (bosToken is not null) variables["bos_token"] = bosToken;
        if (eosToken is not null) variables["eos_token"] = eosToken;
        // and then the caller's keyword arguments, which win over the special tokens as in transformers
        foreach (var (name, value) in kwargs ?? new Dictionary<string, object?>()) variables[name] = value;
        return variables;
    }

    /// <summary>A message in Hugging Face's format: role and content, and tool_calls, name, tool_call_id where present.</summary>
    object? Message(ChatMessage m)
    {
        var message = new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content };
        if (m.ToolCalls is { } calls)
            message["tool_calls"] = calls.Select(c =>
            {
                var call = new Dictionary<string, object?> { ["type"] = c.Type };
                if (c.Id is not null) call["id"] = c.Id;
                // transformers' format has the arguments as a mapping; text that is not a JSON object stays text.
                var arguments = c.Arguments.TrimStart().StartsWith('{') ? Json(c.Arguments, $"tool call '{c.Name}' arguments") : c.Arguments;
                call["function"] = new Dictionary<string, object?> { ["name"] = c.Name, ["arguments"] = arguments };
                return (object?)call;
            }).ToList();
        if (m.Name is not null) message["name"] = m.Name;
        if (m.ToolCallId is not null) message["tool_call_id"] = m.ToolCallId;
        return message;
    }

    /// <summary>JSON text as the template's values: objects as mappings (keys in order), arrays as lists, integers as
    /// integers, other numbers as floats, as Python's json.loads gives them.</summary>
    object? Json(string text, string what)
    {
        try { return FromJson(JsonNode.Parse(text)); }
        catch (JsonException e) { throw new OrtLoraException($"{source}: {what} is not valid JSON: {e.Message}"); }
    }

    static object? FromJson(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => o.ToDictionary(p => p.Key, p => FromJson(p.Value)),
        JsonArray a => a.Select(FromJson).ToList(),
        JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>(),
        JsonValue v when v.GetValueKind() is JsonValueKind.True or JsonValueKind.False => v.GetValue<bool>(),
        JsonValue v when v.TryGetValue<long>(out var n) => n, // "1.0" and "1e3" are not integers, as in json.loads
        JsonValue v => v.GetValue<double>(),
        _ => throw new OrtLoraException($"unexpected JSON {node.ToJsonString()}"), // JsonNode has no other kind
    };

    /// <summary>What the template writes after an assistant's content to end the turn (e.g. &lt;|eot_id|&gt;,
    /// &lt;end_of_turn&gt;, &lt;/s&gt;), from a probe conversation; null when the probe does not show it.</summary>
    public string? EndOfTurn => EndOfTurnMarker.Length > 0 ? EndOfTurnMarker : null;

    /// <summary>The end-of-turn marker, or "" (probed once).</summary>
    string EndOfTurnMarker => _endOfTurn ??= ProbeEndOfTurn();
    string? _endOfTurn;

    string ProbeEndOfTurn()
    {
        try
        {
            var after = Text([new ChatMessage("user", "Hi"), new ChatMessage("assistant", Probe)], false);
            int at = after.IndexOf(Probe, StringComparison.Ordinal);
            // The first word after the content: Phi-3 writes "<|end|>\n<|endoftext|>" after a conversation's last turn.
            var marker = at < 0 ? "" : new string(after[(at + Probe.Length)..].TrimStart().TakeWhile(c => !char.IsWhiteSpace(c)).ToArray());
            return marker;
        }
        catch (OrtLoraException) { return ""; }
    }

    public IEnumerable<Segment> Render(ChatRecord chat, bool addBos, bool addGenerationPrompt)
    {
        if (_marksAssistantText && ByGenerationBlocks(chat, addGenerationPrompt) is var (text, spans)) return Segments(text, spans);
        var full = Text(chat.Messages, addGenerationPrompt, chat.Tools);
        var trained = new List<(int Start, int End)>();
        for (int i = 0, cursor = 0; i < chat.Messages.Count; i++)
        {
            if (!chat.Trains(i)) continue;
            var span = ByPrefix(chat, i, full, cursor) ?? ByContent(chat.Messages[i], full, cursor, EndOfTurnMarker)
                ?? throw new OrtLoraException($"{source}: the chat template's text does not show assistant turn {i + 1} (message {i + 1} of " +
                                              $"{chat.Messages.Count}) where ortlora can find it; choose --chat-template ({string.Join(", ", ChatTemplate.BuiltInNames)})");
            trained.Add(span);
            cursor = span.End;
        }
        return Segments(full, trained);
    }

    readonly bool _marksAssistantText = template.HasGenerationBlocks;

    /// <summary>A template with <c>{% generation %}</c> blocks says itself which text is the assistant's, as transformers'
    /// return_assistant_tokens_mask reads it: the k-th block is the k-th assistant message (null when the counts differ,
    /// and the turns are found as for any template).</summary>
    (string Text, List<(int Start, int End)> Trained)? ByGenerationBlocks(ChatRecord chat, bool addGenerationPrompt)
    {
        var (text, blocks) = template.RenderTracked(Variables(chat.Messages, addGenerationPrompt, chat.Tools), clock);
        var assistants = Enumerable.Range(0, chat.Messages.Count).Where(i => chat.Messages[i].Role == "assistant").ToList();
        if (blocks.Count != assistants.Count) return null;
        return (text, [.. assistants.Zip(blocks).Where(x => chat.Trains(x.First) && x.Second.End > x.Second.Start).Select(x => x.Second)]);
    }

    (int Start, int End)? ByPrefix(ChatRecord chat, int turn, string full, int cursor)
    {
        string before, after;
        try
        {
            before = Text(chat.Messages.Take(turn), true, chat.Tools);
            after = Text(chat.Messages.Take(turn + 1), false, chat.Tools);
        }
        catch (OrtLoraException) { return null; } // e.g. a template that raises unless the conversation starts with a user
        if (before.Length < cursor || !after.StartsWith(before, StringComparison.Ordinal) || !full.StartsWith(before, StringComparison.Ordinal)) return null;
        // The turn is what the conversation keeps of it: a template may close a conversation that ends here (Phi-3 writes
        // EOS after the last turn), which a longer one does not have at this place.
        int end = before.Length;
        while (end < after.Length && end < full.Length && after[end] == full[end]) end++;
        // The two may go on alike for a few characters past the turn ("\n<|" of "\n<|endoftext|>" and "\n<|user|>"):
        // the turn ends at its end-of-turn marker where the template writes one.
        if (EndOfTurnMarker is { Length: > 0 } marker && end > before.Length
            && after.LastIndexOf(marker, end - 1, end - before.Length, StringComparison.Ordinal) is var at and >= 0)
            end = at + marker.Length;
        while (end > before.Length && char.IsWhiteSpace(after[end - 1])) end--;
        return end > before.Length ? (before.Length, end) : null;
    }

    static (int Start, int End)? ByContent(ChatMessage message, string full, int cursor, string endOfTurn)
    {
        foreach (var content in new[] { message.Content, message.Content.Trim() })
        {
            int at = full.IndexOf(content, cursor, StringComparison.Ordinal);
            if (at < 0 || content.Length == 0) continue;
            int end = at + content.Length;
            int marker = endOfTurn.Length == 0 ? -1 : full.IndexOf(endOfTurn, end, StringComparison.Ordinal);
            if (marker >= 0 && string.IsNullOrWhiteSpace(full[end..marker])) end = marker + endOfTurn.Length;
            return (at, end);
        }
        return null;
    }

    /// <summary>The text cut at the trained spans' edges, with BOS and EOS written in it as their tokens (so the
    /// tokenizer's ids are used whether or not it parses them inside text).</summary>
    IEnumerable<Segment> Segments(string full, List<(int Start, int End)> trained)
    {
        int at = 0;
        foreach (var (start, end) in trained.Append((full.Length, full.Length)))
        {
            foreach (var s in Split(full[at..start], false)) yield return s;
            foreach (var s in Split(full[start..end], true)) yield return s;
            at = end;
        }
    }

    IEnumerable<Segment> Split(string text, bool trainable)
    {
        int at = 0;
        while (at < text.Length)
        {
            var (next, special) = NextSpecial(text, at);
            if (next > at) yield return new Segment(text[at..next], trainable);
            if (special is null) yield break;
            yield return special == SpecialToken.Bos ? Segment.Bos(trainable) : Segment.Eos(trainable);
            at = next + (special == SpecialToken.Bos ? bosToken! : eosToken!).Length;
        }
    }

    (int At, SpecialToken? Token) NextSpecial(string text, int from)
    {
        int bos = string.IsNullOrEmpty(bosToken) ? -1 : text.IndexOf(bosToken, from, StringComparison.Ordinal);
        int eos = string.IsNullOrEmpty(eosToken) ? -1 : text.IndexOf(eosToken, from, StringComparison.Ordinal);
        if (bos < 0 && eos < 0) return (text.Length, null);
        // One string for both (GPT-2's <|endoftext|>) counts as EOS, what a template writes it for.
        return bos >= 0 && (eos < 0 || bos < eos) ? (bos, SpecialToken.Bos) : (eos, SpecialToken.Eos);
    }
}
