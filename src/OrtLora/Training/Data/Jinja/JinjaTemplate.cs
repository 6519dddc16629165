namespace OrtLora.Training.Data.Jinja;

/// <summary>A Hugging Face chat template (tokenizer_config.json's <c>chat_template</c>), rendered as transformers'
/// <c>apply_chat_template</c> renders it: jinja2's sandbox with trim_blocks and lstrip_blocks, the loopcontrols
/// and <c>{% generation %}</c> extensions, <c>raise_exception</c> and <c>strftime_now</c> globals, and
/// transformers' <c>tojson</c>. A tree-walking interpreter: JinjaLexer → JinjaParser (JinjaNodes) → JinjaRenderer.</summary>
public sealed class JinjaTemplate
{
    readonly IReadOnlyList<Node> _body;
    readonly string _origin;

    JinjaTemplate(IReadOnlyList<Node> body, string origin)
    {
        _body = body;
        _origin = origin;
    }

    /// <summary>Parses once; syntax errors throw OrtLoraException("{origin}: chat template line {L}: {what}").</summary>
    public static JinjaTemplate Parse(string source, string origin)
    {
        try
        {
            return new JinjaTemplate(JinjaParser.Parse(source), origin);
        }
        catch (JinjaException e)
        {
            throw new OrtLoraException($"{origin}: chat template line {e.Line}: {e.Message}", e);
        }
    }

    /// <summary>Renders with these variables. Values are: string, bool, int, long, double, null,
    /// IReadOnlyList&lt;object?&gt; (e.g. List&lt;object?&gt;), IReadOnlyDictionary&lt;string, object?&gt;
    /// (e.g. Dictionary&lt;string, object?&gt;). Runtime errors (unknown filter, bad call, raise_exception) throw
    /// OrtLoraException naming origin; raise_exception(msg) gives "{origin}: the chat template raised: {msg}".</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables) => Render(variables, null);

    /// <summary>As <see cref="Render(IReadOnlyDictionary{string, object?})"/>, with the clock <c>strftime_now</c>
    /// reads (the local time when null), so a render that shows today's date can be reproduced.</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? clock) => RenderTracked(variables, clock).Text;

    /// <summary>Whether the template marks assistant text with <c>{% generation %}</c> blocks (transformers'
    /// return_assistant_tokens_mask reads them).</summary>
    public bool HasGenerationBlocks => Contains(_body, n => n is ScopeNode { Generation: true });

    static bool Contains(IReadOnlyList<Node> nodes, Func<Node, bool> test) => nodes.Any(n => test(n) || Children(n).Any(body => Contains(body, test)));

    static IEnumerable<IReadOnlyList<Node>> Children(Node node) => node switch
    {
        IfNode n => [.. n.Branches.Select(b => b.Body), n.Else],
        ForNode n => [n.Body, n.Else],
        SetBlockNode n => [n.Body],
        MacroNode n => [n.Body],
        ScopeNode n => [n.Body],
        FilterBlockNode n => [n.Body],
        _ => [],
    };

    /// <summary>The text, and the character span of each <c>{% generation %}</c> block's output in it, in order.</summary>
    public (string Text, IReadOnlyList<(int Start, int End)> Generated) RenderTracked(IReadOnlyDictionary<string, object?> variables, Func<DateTime>? clock)
    {
        try
        {
            return JinjaRenderer.RenderTracked(_body, variables, clock ?? (() => DateTime.Now));
        }
        catch (JinjaRaisedException e)
        {
            throw new OrtLoraException($"{_origin}: the chat template raised: {e.Message}", e);
        }
        catch (JinjaException e)
        {
            // Line 0: nothing ran yet (a variable of a type templates cannot hold).
            throw new OrtLoraException(e.Line > 0 ? $"{_origin}: chat template line {e.Line}: {e.Message}" : $"{_origin}: chat template: {e.Message}", e);
        }
    }
}
