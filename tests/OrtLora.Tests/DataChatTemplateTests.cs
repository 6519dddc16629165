using System.Text.Json.Nodes;
using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>Real models' chat templates (tokenizer_config.json's chat_template, verbatim) as training reads them: the
/// text equals what jinja2 renders as transformers configures it (tests/OrtLora.Tests/Data/chat_templates.json, written
/// by tools/chat-templates/render.py), and the trained part is exactly each assistant turn's content with the model's
/// end-of-turn marker.</summary>
public class DataChatTemplateTests
{
    static readonly Lazy<JsonObject> Fixture = new(() =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Data", "chat_templates.json")))!.AsObject());

    /// <summary>How each model writes an assistant turn around its content ({0}), whether it strips the content first,
    /// as its template's text shows.</summary>
    static readonly Dictionary<string, (string Turn, bool Strips, string EndOfTurn)> Models = new()
    {
        ["llama-2-chat"] = (" {0} </s>", true, "</s>"),
        ["llama-3.1-instruct"] = ("{0}<|eot_id|>", true, "<|eot_id|>"),
        ["llama-3.2-instruct"] = ("{0}<|eot_id|>", true, "<|eot_id|>"),
        ["mistral-7b-instruct-v0.1"] = (" {0}</s>", false, "</s>"),
        ["mistral-7b-instruct-v0.3"] = ("{0}</s>", false, "</s>"),
        ["qwen2.5-instruct"] = ("{0}<|im_end|>", false, "<|im_end|>"),
        ["smollm2-instruct"] = ("{0}<|im_end|>", false, "<|im_end|>"),
        ["tinyllama-chat"] = ("{0}</s>", false, "</s>"),
        ["gemma-3-it"] = ("{0}<end_of_turn>", true, "<end_of_turn>"),
        ["phi-3-mini-instruct"] = ("{0}<|end|>", false, "<|end|>"),
        ["deepseek-r1"] = ("{0}<｜end▁of▁sentence｜>", false, "<｜end▁of▁sentence｜>"),
    };

    static IEnumerable<string> ModelNames => Models.Keys;

    static JsonObject Case(string name) => Fixture.Value["cases"]!.AsArray().Select(c => c!.AsObject()).Single(c => c["name"]!.GetValue<string>() == name);

    static (ChatTemplate Chat, List<ChatMessage> Messages, string Bos, string Eos) Load(string model, string conversation)
    {
        var variables = Case($"{model}/{conversation}")["variables"]!.AsObject();
        var (bos, eos) = (variables["bos_token"]!.GetValue<string>(), variables["eos_token"]!.GetValue<string>());
        var messages = variables["messages"]!.AsArray().Select(m => new ChatMessage(m!["role"]!.GetValue<string>(), m["content"]!.GetValue<string>())).ToList();
        var config = TokenizerConfig.Empty with { BosToken = bos, EosToken = eos };
        // strftime_now reads the fixture's clock, as render.py's does (Llama 3.2 writes today's date).
        var now = DateTime.Parse(Fixture.Value["now"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture);
        return (ChatTemplate.FromJinja(Fixture.Value["templates"]![model]!["template"]!.GetValue<string>(), model, config, () => now), messages, bos, eos);
    }

    static string Spell(IEnumerable<Segment> segments, string bos, string eos) =>
        string.Concat(segments.Select(s => s.Special switch { SpecialToken.Bos => bos, SpecialToken.Eos => eos, _ => s.Text }));

    /// <summary>The trained characters as runs: consecutive trained segments join.</summary>
    static List<string> TrainedRuns(IReadOnlyList<Segment> segments, string bos, string eos)
    {
        var runs = new List<string>();
        bool inRun = false;
        foreach (var s in segments)
        {
            if (!s.Trainable) { inRun = false; continue; }
            if (!inRun) runs.Add("");
            runs[^1] += Spell([s], bos, eos);
            inRun = true;
        }
        return runs;
    }

    /// <summary>Each model's conversations that its template renders (Gemma 1 refuses a system message).</summary>
    static IEnumerable<TestCaseData> Conversations() =>
        from model in ModelNames
        from conversation in new[] { "system_user_assistant/nogen", "multi_turn/nogen", "no_system/nogen", "unicode_and_quotes/nogen" }
        where Case($"{model}/{conversation}")["expected"] is not null
        select new TestCaseData(model, conversation);

    [TestCaseSource(nameof(Conversations))]
    public void TrainingTextIsJinja2sAndOnlyAssistantTurnsAreTrained(string model, string conversation)
    {
        var fixture = Case($"{model}/{conversation}");
        var (chat, messages, bos, eos) = Load(model, conversation);
        var segments = chat.Render(new ChatRecord(messages), addBos: false);
        Assert.That(Spell(segments, bos, eos), Is.EqualTo(fixture["expected"]!.GetValue<string>()), "the text jinja2 renders");
        // A turn ends at its marker: Phi-3's EOS after a conversation's last turn closes the conversation, not the turn.
        var expected = messages.Where(m => m.Role == "assistant")
            .Select(m => string.Format(Models[model].Turn, Models[model].Strips ? m.Content.Trim() : m.Content)).ToList();
        Assert.That(TrainedRuns(segments, bos, eos), Is.EqualTo(expected), "each assistant turn with its end marker, nothing else");
        Assert.That(chat.EndOfTurn, Is.EqualTo(Models[model].EndOfTurn));
    }

    /// <summary>generate's chat prompt is the template's own generation prompt (add_generation_prompt=True).</summary>
    [TestCaseSource(nameof(ModelNames))]
    public void GenerationPromptIsJinja2s(string model)
    {
        var (chat, messages, bos, eos) = Load(model, "single_user/gen");
        var prompt = chat.Render(new ChatRecord(messages), addBos: false, addGenerationPrompt: true);
        Assert.That(Spell(prompt, bos, eos), Is.EqualTo(Case($"{model}/single_user/gen")["expected"]!.GetValue<string>()));
        Assert.That(prompt.Any(s => s.Trainable), Is.False);
    }

    /// <summary>A conversational prompt-completion row through a real template: the prompt's assistant turn is read, the
    /// completion's learned.</summary>
    [Test]
    public void PromptHistoryIsReadOnly()
    {
        var (chat, _, bos, eos) = Load("llama-3.1-instruct", "multi_turn/nogen");
        var messages = new List<ChatMessage> { new("user", "Hi"), new("assistant", "Hello."), new("user", "Bye"), new("assistant", "Goodbye.") };
        Assert.That(TrainedRuns(chat.Render(new ChatRecord(messages, TrainedFrom: 2), false), bos, eos), Is.EqualTo(new[] { "Goodbye.<|eot_id|>" }));
        Assert.That(TrainedRuns(chat.Render(new ChatRecord(messages), false), bos, eos), Is.EqualTo(new[] { "Hello.<|eot_id|>", "Goodbye.<|eot_id|>" }));
    }

    /// <summary>`ortlora show-data` prints rows as training tokenizes them: with Llama 3.1's template file on the shared
    /// Alpaca chat data, only the answer and its &lt;|eot_id|&gt; are between the learned markers, and the counts are the
    /// encoder's.</summary>
    [Test]
    public void ShowDataMarksTheLearnedTokens()
    {
        var template = Path.Combine(Shared.TempDir(), "llama31.jinja");
        File.WriteAllText(template, Fixture.Value["templates"]!["llama-3.1-instruct"]!["template"]!.GetValue<string>());
        var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny");
        var data = Shared.Require("data", "alpaca_500.chat.parquet");
        var run = LoraTestKit.OrtloraOk("show-data", data, "--tokenizer", tiny, "--chat-template", template, "--rows", "2");
        using var training = TrainingData.Open(data, TokenizerLoader.Load(tiny), new DataOptions { ChatTemplate = template });
        var first = training.FileExamples().First().Example!;
        var answer = ((ChatRecord)training.Train.ReadRowGroup(0)[0]!).Messages[^1].Content;
        Assert.That(run.Out, Does.Contain($"── row 0: {first.Length} tokens, {first.TrainedTokens} learned\n"));
        Assert.That(run.Out, Does.Contain($"<|start_header_id|>assistant<|end_header_id|>\n\n⟦{answer}<|eot_id|>⟧\n── row 1:"));
        Assert.That(run.Out.Split('⟦').Length - 1, Is.EqualTo(1 + 2), "the legend, then one learned run per row");
        var missing = LoraTestKit.Ortlora("show-data", data);
        Assert.That((missing.ExitCode, missing.Error), Is.EqualTo((1, "error: show-data needs --tokenizer (a tokenizer file or a model's directory)\n")));
    }

    /// <summary>A conversation with tools, an assistant's tool call and the tool's result, as a Parquet file holds it
    /// (Hugging Face's message fields; arguments and the tools column as JSON text), read and rendered through Llama 3.1's,
    /// Qwen2.5's and Qwen3-Coder's templates: jinja2's text for the same conversation; the tool call's turn and the answer
    /// are learned, the tool's result is not.</summary>
    [TestCase("llama-3.1-instruct")]
    [TestCase("qwen2.5-instruct")]
    [TestCase("qwen3-coder")]
    public void ToolCallsFromParquetRenderAsJinja2AndAreLearned(string model)
    {
        var fixture = Case($"{model}/tools/nogen");
        var variables = fixture["variables"]!.AsObject();
        var rows = new[]
        {
            new ToolChatRow
            {
                tools = variables["tools"]!.ToJsonString(),
                messages = [.. variables["messages"]!.AsArray().Select(m => new ToolMessageRow
                {
                    role = m!["role"]!.GetValue<string>(), content = m["content"]?.GetValue<string>(),
                    name = m["name"]?.GetValue<string>(), tool_call_id = m["tool_call_id"]?.GetValue<string>(),
                    tool_calls = m["tool_calls"]?.AsArray().Select(c => new ToolCallRow
                    {
                        id = c!["id"]?.GetValue<string>(), type = c["type"]!.GetValue<string>(),
                        function = new FunctionRow { name = c["function"]!["name"]!.GetValue<string>(), arguments = c["function"]!["arguments"]!.ToJsonString() },
                    }).ToList(),
                })],
            },
        };
        using var data = ParquetDataset.Open(Shared.WriteParquet(rows, "tools.parquet"));
        var chat = (ChatRecord)data.ReadRowGroup(0).Single()!;
        Assert.That(chat.Messages.Select(m => m.ToolCalls?.Single().Name), Has.Some.EqualTo("get_weather"));

        var (template, _, bos, eos) = Load(model, "tools/nogen");
        var segments = template.Render(chat, addBos: false);
        Assert.That(Spell(segments, bos, eos), Is.EqualTo(fixture["expected"]!.GetValue<string>()), "the text jinja2 renders");
        var learned = TrainedRuns(segments, bos, eos);
        var assistants = chat.Messages.Where(m => m.Role == "assistant").ToList();
        Assert.That(learned, Has.Count.EqualTo(assistants.Count));
        Assert.That(learned[0], Does.Contain("get_weather").And.Contain("Paris"), "the tool call is learned");
        Assert.That(learned[^1], Does.StartWith(assistants[^1].Content.Trim()), "the answer is learned");
        var result = chat.Messages.Single(m => m.Role == "tool").Content;
        Assert.That(learned, Has.None.Contain(result), "the tool's result is read only");
        Assert.That(() => ChatTemplate.ChatMl.Render(chat, false), Throws.TypeOf<OrtLoraException>().With.Message.Contains("no place for tools and tool calls"));
    }

    sealed class ToolChatRow { public List<ToolMessageRow>? messages { get; set; } public string? tools { get; set; } }
    sealed class ToolMessageRow
    {
        public string? role { get; set; }
        public string? content { get; set; }
        public List<ToolCallRow>? tool_calls { get; set; }
        public string? name { get; set; }
        public string? tool_call_id { get; set; }
    }
    sealed class ToolCallRow { public string? id { get; set; } public string? type { get; set; } public FunctionRow? function { get; set; } }
    sealed class FunctionRow { public string? name { get; set; } public string? arguments { get; set; } }

    /// <summary>TRL's option names work as ortlora's: --dataset-text-field (--text-column) and --max-length
    /// (--max-seq-length): the output column as text ("No", two tokens of the tiny tokenizer, then EOS), cut at 2 tokens.</summary>
    [Test]
    public void TrlOptionNamesAreAccepted()
    {
        var data = Shared.Require("data", "alpaca_500.zstd.parquet");
        var tiny = Path.Combine(Shared.RepoRoot, "graphs", "tiny");
        var trl = LoraTestKit.OrtloraOk("show-data", data, "--tokenizer", tiny, "--dataset-format", "text", "--dataset-text-field", "output", "--max-length", "2", "--rows", "1");
        var ours = LoraTestKit.OrtloraOk("show-data", data, "--tokenizer", tiny, "--dataset-format", "text", "--text-column", "output", "--max-seq-length", "2", "--rows", "1");
        Assert.That(trl.Out, Is.EqualTo(ours.Out));
        Assert.That(trl.Out, Does.EndWith("── row 0: 2 tokens, 2 learned\n⟦No⟧\n"), "the output column, cut before EOS");
    }

    /// <summary>A template that refuses a conversation (Gemma's raise_exception on a system message) stops the run with
    /// one message naming the data file, the row, the template's file and its words.</summary>
    [Test]
    public void ATemplateThatRefusesARowNamesTheRow()
    {
        var template = Path.Combine(Shared.TempDir(), "gemma.jinja");
        File.WriteAllText(template, Fixture.Value["templates"]!["gemma-it"]!["template"]!.GetValue<string>());
        var data = Shared.WriteParquet([
            new ToolChatRow { messages = [new() { role = "user", content = "Hi" }, new() { role = "assistant", content = "Hello" }] },
            new ToolChatRow { messages = [new() { role = "system", content = "Be brief." }, new() { role = "user", content = "Hi" }, new() { role = "assistant", content = "Hey" }] },
        ], "with_system.parquet");
        var run = LoraTestKit.Ortlora("show-data", data, "--tokenizer", Path.Combine(Shared.RepoRoot, "graphs", "tiny"), "--chat-template", template);
        Assert.That((run.ExitCode, run.Error), Is.EqualTo((1, $"error: {data}: row 1: {template}: the chat template raised: System role not supported\n")));
    }

    /// <summary>A template with {% generation %} blocks (SmolLM3's) says itself what the assistant's text is, as
    /// transformers' return_assistant_tokens_mask reads it: the learned text is each block's, where jinja2 puts it
    /// (the fixture's spans, from a render with sentinels around the blocks), header included.</summary>
    [TestCase("system_user_assistant/nogen")]
    [TestCase("multi_turn/nogen")]
    [TestCase("unicode_and_quotes/nogen")]
    public void GenerationBlocksAreTheLearnedText(string conversation)
    {
        var fixture = Case($"smollm3/{conversation}");
        var expected = fixture["expected"]!.GetValue<string>();
        var blocks = fixture["generation"]!.AsArray().Select(p => expected[p![0]!.GetValue<int>()..p[1]!.GetValue<int>()]).ToList();
        Assert.That(blocks, Has.Count.GreaterThan(0).And.All.StartWith("<|im_start|>assistant\n"));
        var (chat, messages, bos, eos) = Load("smollm3", conversation);
        var segments = chat.Render(new ChatRecord(messages), addBos: false);
        Assert.That(Spell(segments, bos, eos), Is.EqualTo(expected));
        Assert.That(TrainedRuns(segments, bos, eos), Is.EqualTo(blocks));
    }

    /// <summary>chat_template_kwargs (<c>--chat-template-kwargs</c>): the template reads them as variables, as
    /// apply_chat_template passes its keyword arguments. SmolLM3's template with enable_thinking false and its two tool
    /// lists gives jinja2's text, the empty think block in each assistant turn and after the generation prompt; without
    /// them it does not. Special tokens can be overridden; the conversation's own names and non-objects are refused.</summary>
    [TestCase("no_think_and_tools/nogen")]
    [TestCase("no_think_and_tools/gen")]
    public void ChatTemplateKwargsAreTheTemplatesVariables(string conversation)
    {
        var fixture = Case($"smollm3/{conversation}");
        var variables = fixture["variables"]!.AsObject();
        var kwargs = new JsonObject(variables.Where(v => v.Key is "enable_thinking" or "xml_tools" or "python_tools")
            .Select(v => KeyValuePair.Create(v.Key, v.Value?.DeepClone()))).ToJsonString();
        var (bos, eos) = (variables["bos_token"]!.GetValue<string>(), variables["eos_token"]!.GetValue<string>());
        var messages = variables["messages"]!.AsArray().Select(m => new ChatMessage(m!["role"]!.GetValue<string>(), m["content"]!.GetValue<string>())).ToList();
        var config = TokenizerConfig.Empty with { BosToken = bos, EosToken = eos };
        var jinja = Fixture.Value["templates"]!["smollm3"]!["template"]!.GetValue<string>();
        bool generation = variables["add_generation_prompt"]!.GetValue<bool>();
        // strftime_now reads the fixture's clock, as render.py's does
        var now = DateTime.Parse(Fixture.Value["now"]!.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture);
        var chat = ChatTemplate.FromJinja(jinja, "smollm3", config, () => now, kwargs);
        var text = Spell(chat.Render(new ChatRecord(messages), addBos: false, addGenerationPrompt: generation), bos, eos);
        Assert.That(text, Is.EqualTo(fixture["expected"]!.GetValue<string>()), "the text jinja2 renders with these variables");
        Assert.That(text, Does.Contain("<|im_start|>assistant\n<think>\n\n</think>\nRed and blue."));
        var thinking = Spell(ChatTemplate.Resolve(null, config with { ChatTemplate = jinja }, "smollm3").Render(new ChatRecord(messages), addBos: false, addGenerationPrompt: generation), bos, eos);
        Assert.That(thinking, Does.Not.Contain("<think>\n\n</think>"), "enable_thinking defaults to true");

        var overridden = ChatTemplate.FromJinja("{{ bos_token }}{{ messages[0].content }}", "t", config with { BosToken = "<s>" }, kwargs: """{"bos_token": "[B]"}""");
        Assert.That(Spell(overridden.Render(new ChatRecord([new ChatMessage("user", "x")]), addBos: false), bos, eos), Is.EqualTo("[B]x"));
        Assert.That(() => ChatTemplate.Resolve(null, config, "t", """{"messages": []}"""), Throws.TypeOf<OrtLoraException>().With.Message.Contains("cannot set 'messages'"));
        Assert.That(() => ChatTemplate.Resolve(null, config, "t", "[1]"), Throws.TypeOf<OrtLoraException>().With.Message.Contains("JSON object"));
        Assert.That(() => ChatTemplate.Resolve(null, config, "t", "{enable_thinking: false}"), Throws.TypeOf<OrtLoraException>().With.Message.Contains("not valid JSON"));
    }

    /// <summary>Preference rows through real templates (TRL's maybe_apply_chat_template): each sequence is the template's
    /// text of the conversation with that completion, and the learned part is the completion's turn (content and end
    /// marker, then at most the template's trailing whitespace and closing EOS), the generation prompt staying in the read
    /// prompt.</summary>
    [TestCaseSource(nameof(ModelNames))]
    public void PreferencePairsSplitWhereTheGenerationPromptEnds(string model)
    {
        var (chat, messages, bos, eos) = Load(model, "no_system/nogen");
        var gpt2 = TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"));
        int last = messages.FindLastIndex(m => m.Role == "assistant");
        var prompt = messages[..last];
        var row = new ChatPreferenceRecord(prompt, [messages[last]], [new ChatMessage("assistant", "Something else entirely.")]);
        var (chosen, rejected) = new PreferenceEncoder(gpt2, chat, 4096, 4096, null, keepEnd: true).Encode(0, row)!.Value;
        // GPT-2 spells BOS and EOS alike; everything else decodes to the text it was encoded from
        string Text(IEnumerable<int> ids) => gpt2.Decode(ids);
        string Template(List<ChatMessage> conversation) => Spell(chat.Render(new ChatRecord(conversation, conversation.Count), addBos: false), "<|endoftext|>", "<|endoftext|>");
        foreach (var (sequence, completion) in new[] { (chosen, messages[last]), (rejected, row.Rejected[0]) })
        {
            Assert.That(Text(sequence.InputIds), Is.EqualTo(Template([.. prompt, completion])), "the template's text of the whole conversation");
            var learned = Text(sequence.InputIds.Where((_, i) => sequence.Labels[i] != ExampleEncoder.IgnoreIndex)).TrimStart();
            var (turn, strips, _) = Models[model];
            var expected = string.Format(turn, strips ? completion.Content.Trim() : completion.Content).Replace(eos, "<|endoftext|>");
            Assert.That(learned, Does.StartWith(expected.TrimStart()), "the completion's turn");
            // Phi-3's template closes the conversation with EOS after its last turn: TRL's completion takes it too
            Assert.That(learned[expected.TrimStart().Length..].Replace("<|endoftext|>", "").Trim(), Is.Empty, "then at most whitespace and a closing EOS");
        }
    }
}
