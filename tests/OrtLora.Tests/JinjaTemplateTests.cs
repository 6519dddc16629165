using System.Text.Json;
using OrtLora.Training.Data.Jinja;

namespace OrtLora.Tests;

/// <summary>The Jinja interpreter against Python's jinja2: Data/chat_templates.json holds real models' chat
/// templates and focused language cases, each rendered by jinja2 in transformers' environment
/// (tools/chat-templates/render.py). Every case must render byte for byte the same, or fail with jinja2's message.</summary>
public class JinjaTemplateTests
{
    sealed record FixtureCase(string Name, string TemplateKey, Dictionary<string, object?> Variables, string? Expected, string? Error, IReadOnlyList<(int Start, int End)>? Generation);

    sealed record Fixture(DateTime Now, Dictionary<string, string> Templates, Dictionary<string, FixtureCase> Cases);

    static readonly Lazy<Fixture> Data = new(Load);
    static readonly Dictionary<string, JinjaTemplate> Parsed = [];

    static Fixture Load()
    {
        var path = Path.Combine(TestContext.CurrentContext.TestDirectory, "Data", "chat_templates.json");
        using var json = JsonDocument.Parse(File.ReadAllText(path));
        var root = json.RootElement;
        var templates = root.GetProperty("templates").EnumerateObject()
            .ToDictionary(t => t.Name, t => t.Value.GetProperty("template").GetString()!);
        var cases = root.GetProperty("cases").EnumerateArray().Select(c => new FixtureCase(
            c.GetProperty("name").GetString()!,
            c.GetProperty("template").GetString()!,
            (Dictionary<string, object?>)ToValue(c.GetProperty("variables"))!,
            c.TryGetProperty("expected", out var expected) ? expected.GetString() : null,
            c.TryGetProperty("error", out var error) ? error.GetString() : null,
            c.TryGetProperty("generation", out var spans) ? spans.EnumerateArray().Select(p => (p[0].GetInt32(), p[1].GetInt32())).ToList() : null));
        return new Fixture(DateTime.Parse(root.GetProperty("now").GetString()!, System.Globalization.CultureInfo.InvariantCulture),
                           templates, cases.ToDictionary(c => c.Name));
    }

    /// <summary>JSON as the values JinjaTemplate takes; numbers keep Python's int/float split (json.loads reads
    /// "1" as int and "1.0" as float).</summary>
    static object? ToValue(JsonElement element) => element.ValueKind switch
    {
        JsonValueKind.Object => element.EnumerateObject().ToDictionary(p => p.Name, p => ToValue(p.Value)),
        JsonValueKind.Array => element.EnumerateArray().Select(ToValue).ToList(),
        JsonValueKind.String => element.GetString(),
        JsonValueKind.Number => element.GetRawText().IndexOfAny(['.', 'e', 'E']) >= 0 ? element.GetDouble() : (object)element.GetInt64(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    public static IEnumerable<TestCaseData> Cases() =>
        Data.Value.Cases.Keys.Select(name => new TestCaseData(name).SetName($"RendersAsJinja2({name})"));

    [TestCaseSource(nameof(Cases))]
    public void RendersAsJinja2(string name)
    {
        var fixture = Data.Value;
        var c = fixture.Cases[name];
        JinjaTemplate template;
        lock (Parsed)
        {
            if (!Parsed.TryGetValue(c.TemplateKey, out template!))
                Parsed[c.TemplateKey] = template = JinjaTemplate.Parse(fixture.Templates[c.TemplateKey], c.TemplateKey);
        }
        if (c.Error is not null)
        {
            var e = Assert.Throws<OrtLoraException>(() => template.Render(c.Variables, () => fixture.Now))!;
            Assert.That(e.Message, Does.Contain(c.Error).And.StartWith(c.TemplateKey + ": "));
            return;
        }
        var (text, generated) = template.RenderTracked(c.Variables, () => fixture.Now);
        Assert.That(text, Is.EqualTo(c.Expected));
        // Where each {% generation %} block's text lands: the assistant mask (jinja2's, from a render with sentinels).
        Assert.That(template.HasGenerationBlocks, Is.EqualTo(c.Generation is not null));
        if (c.Generation is not null) Assert.That(generated, Is.EqualTo(c.Generation));
    }

    [Test]
    public void FixtureCoversTheRealTemplates()
    {
        var keys = Data.Value.Cases.Values.Select(c => c.TemplateKey).ToHashSet();
        foreach (var model in new[] { "llama-2-chat", "llama-3.1-instruct", "llama-3.2-instruct", "mistral-7b-instruct-v0.3",
                                      "qwen2.5-instruct", "smollm2-instruct", "tinyllama-chat", "gemma-3-it", "phi-3-mini-instruct" })
            Assert.That(keys, Does.Contain(model));
    }

    static readonly Dictionary<string, object?> NoVariables = [];

    [Test]
    public void SyntaxErrorNamesOriginAndLine()
    {
        var e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("first line\n{% if x %}\n{{ x + }}\n{% endif %}", "model/tokenizer_config.json"))!;
        Assert.That(e.Message, Does.StartWith("model/tokenizer_config.json: chat template line 3: "));

        e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("{% for m in messages %}\n{{ m }}\n", "t.json"))!;
        Assert.That(e.Message, Does.StartWith("t.json: chat template line ").And.Contain("'endfor'"));

        e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("{% frobnicate %}", "t.json"))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 1: unknown tag 'frobnicate'"));
    }

    [Test]
    public void UnknownFilterAndTestFailWhenParsedUnlessInsideAnIf()
    {
        var e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("a\n{{ messages | frobnicate }}", "t.json"))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 2: No filter named 'frobnicate'."));
        e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("{% for m in messages %}{{ m is frobnicated }}{% endfor %}", "t.json"))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 1: No test named 'frobnicated'."));

        // As in jinja2, an if body fails only when it runs.
        var template = JinjaTemplate.Parse("{% if tools %}\n{{ tools | frobnicate }}{% endif %}ok", "t.json");
        Assert.That(template.Render(NoVariables), Is.EqualTo("ok"));
        e = Assert.Throws<OrtLoraException>(() => template.Render(new Dictionary<string, object?> { ["tools"] = true }))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 2: No filter named 'frobnicate' found."));
    }

    [Test]
    public void UnsupportedJinjaFilterFailsOnlyWhenReached()
    {
        var template = JinjaTemplate.Parse("{% if tools %}{{ tools | dictsort }}{% endif %}ok", "t.json");
        Assert.That(template.Render(NoVariables), Is.EqualTo("ok"));
        var e = Assert.Throws<OrtLoraException>(() => template.Render(new Dictionary<string, object?> { ["tools"] = new Dictionary<string, object?> { ["a"] = 1 } }))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 1: the 'dictsort' filter is not supported by ortlora's Jinja interpreter"));
    }

    [Test]
    public void RuntimeErrorsNameOriginAndLine()
    {
        var e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("ok\n\n{{ 'a' + n }}", "t.json").Render(new Dictionary<string, object?> { ["n"] = 1 }))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 3: can only concatenate str (not \"int\") to str"));

        e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("{{ raise_exception('Only user and assistant roles!') }}", "t.json").Render(NoVariables))!;
        Assert.That(e.Message, Is.EqualTo("t.json: the chat template raised: Only user and assistant roles!"));

        e = Assert.Throws<OrtLoraException>(() => JinjaTemplate.Parse("{{ message.role }}", "t.json").Render(NoVariables))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template line 1: 'message' is undefined"));
    }

    [Test]
    public void TakesHostValuesAndAClock()
    {
        var template = JinjaTemplate.Parse("{{ n + l }} {{ d * 2 }} {{ xs | join(',') }} {{ m.k }} {{ none_value is none }} {{ strftime_now('%Y-%m-%d') }}", "t.json");
        var variables = new Dictionary<string, object?>
        {
            ["n"] = 2, ["l"] = 3L, ["d"] = 1.25, ["xs"] = new[] { "a", "b" }, ["m"] = new Dictionary<string, object?> { ["k"] = true },
            ["none_value"] = null,
        };
        Assert.That(template.Render(variables, () => new DateTime(2025, 1, 31)), Is.EqualTo("5 2.5 a,b True True 2025-01-31"));

        var e = Assert.Throws<OrtLoraException>(() => template.Render(new Dictionary<string, object?> { ["n"] = new object() }))!;
        Assert.That(e.Message, Is.EqualTo("t.json: chat template: variable 'n': a template variable cannot be a Object"));
    }
}
