using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>TRL's prompt-completion datasets (columns prompt and completion): text in both, or lists of messages in both
/// (conversational). The completion is learned, the prompt only read, as SFTTrainer's completion_only_loss does.</summary>
public class DataPromptCompletionTests
{
    const int Ignore = ExampleEncoder.IgnoreIndex;
    static readonly Lazy<TextTokenizer> LlamaTokenizer = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model")));

    sealed class TextRow { public string? prompt { get; set; } public string? completion { get; set; } }
    sealed class Turn { public string? role { get; set; } public string? content { get; set; } }
    sealed class ConversationRow { public List<Turn?>? prompt { get; set; } public List<Turn?>? completion { get; set; } }
    sealed class MixedRow { public string? prompt { get; set; } public List<Turn?>? completion { get; set; } }

    static Turn T(string role, string content) => new() { role = role, content = content };

    [Test]
    public void TextPromptsAreReadAndCompletionsLearned()
    {
        var path = Shared.WriteParquet([
            new TextRow { prompt = "The sky is", completion = " blue." },
            new TextRow { prompt = null, completion = "x" },
            new TextRow { prompt = "Q", completion = "  " },
            new TextRow { prompt = "", completion = "Once upon a time." },
        ], "prompt_completion.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.ConversationalPrompts), Is.EqualTo((DatasetFormat.PromptCompletion, false)));
        var rows = data.ReadRowGroup(0);
        Assert.That(rows, Is.EqualTo(new DataRecord?[] { new PromptCompletionRecord("The sky is", " blue."), null, null, new PromptCompletionRecord("", "Once upon a time.") }));
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(4, 1, 1)), "a null prompt is null, an empty completion empty; an empty prompt is a plain completion");

        var tokenizer = LlamaTokenizer.Value;
        var row = (PromptCompletionRecord)rows[0]!;
        var example = new ExampleEncoder(tokenizer, 512).Encode(new ExampleRenderer(ChatTemplate.ChatMl, tokenizer.AddsBos).Render(0, row))!;
        var prompt = tokenizer.Encode(row.Prompt, addBos: true);
        Assert.That(example.InputIds, Is.EqualTo(tokenizer.Encode(row.Prompt + row.Completion, addBos: true).Append(tokenizer.EosId!.Value)), "BOS, prompt + completion, EOS");
        Assert.That(example.Labels, Is.EqualTo(Enumerable.Repeat(Ignore, prompt.Length).Concat(example.InputIds.Skip(prompt.Length))));
        Assert.That(tokenizer.Decode(example.InputIds.Where((_, i) => example.Labels[i] != Ignore), skipSpecialTokens: true).Trim(), Is.EqualTo("blue."));
        var everything = new ExampleEncoder(tokenizer, 512).Encode(new ExampleRenderer(ChatTemplate.ChatMl, tokenizer.AddsBos, trainOnPrompt: true).Render(0, row))!;
        Assert.That(everything.Labels.Skip(1), Is.EqualTo(everything.InputIds.Skip(1)), "--train-on-prompt: all but BOS");
    }

    /// <summary>Conversational rows render prompt + completion through the chat template; only the completion's assistant
    /// turns are learned, an assistant turn inside the prompt (earlier history) is read only.</summary>
    [Test]
    public void ConversationalCompletionsAreTheOnlyTrainedTurns()
    {
        var path = Shared.WriteParquet([
            new ConversationRow { prompt = [T("system", "Be brief."), T("user", "Hi"), T("assistant", "Hello!"), T("user", "2+2?")], completion = [T("assistant", "4")] },
            new ConversationRow { prompt = [T("user", "Hi")], completion = null },
            new ConversationRow { prompt = [T("user", "Hi")], completion = [T("user", "again")] },
        ], "conversational.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.ConversationalPrompts, data.IsConversational), Is.EqualTo((DatasetFormat.PromptCompletion, true, true)));
        var rows = data.ReadRowGroup(0);
        Assert.That(rows.Select(r => r is null), Is.EqualTo(new[] { false, true, true }), "no completion: null; no assistant turn in it: empty");
        var chat = (ChatRecord)rows[0]!;
        Assert.That((chat.Messages.Count, chat.TrainedFrom), Is.EqualTo((5, 4)));

        var tokenizer = LlamaTokenizer.Value;
        var example = new ExampleRenderer(ChatTemplate.ChatMl, false).Render(0, chat);
        Assert.That(string.Concat(example.Segments.Select(s => s.Text)), Is.EqualTo(
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n" +
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"));
        Assert.That(string.Concat(example.Segments.Where(s => s.Trainable).Select(s => s.Text)), Is.EqualTo("4<|im_end|>"), "the prompt's assistant turn is read only");
        var llama2 = new ExampleRenderer(ChatTemplate.Llama2, true).Render(0, chat);
        Assert.That(string.Concat(llama2.Segments.Where(s => s.Trainable).Select(s => s.Text)), Is.EqualTo(" 4 "));
        Assert.That(llama2.Segments.Count(s => s.Trainable && s.Special == SpecialToken.Eos), Is.EqualTo(1), "only the completion's EOS is learned");
        Assert.That(new ExampleEncoder(tokenizer, 512).Encode(example), Is.Not.Null);
    }

    [Test]
    public void MixedColumnsAndUnknownFormatsAreOneErrorEach()
    {
        var mixed = Shared.WriteParquet([new MixedRow { prompt = "Hi", completion = [T("assistant", "Hello")] }], "mixed.parquet");
        Assert.That(() => ParquetDataset.Open(mixed), Throws.TypeOf<OrtLoraException>()
            .With.Message.EqualTo($"{mixed}: column 'completion' holds list, not text"));
        Assert.That(ParquetDataset.ParseFormat("prompt_completion"), Is.EqualTo(DatasetFormat.PromptCompletion));
        Assert.That(() => ParquetDataset.ParseFormat("sharegpt"), Throws.TypeOf<OrtLoraException>()
            .With.Message.EqualTo("unknown dataset format 'sharegpt'; expected auto, text, instruction, chat, prompt-completion, preference, unpaired-preference, prompt-only, classification, token-classification"));
    }

    /// <summary>`ortlora train` on prompt-completion files made from the tiny model's demo data, text and conversational
    /// (the latter with a template file given to --chat-template): the format and kind are detected and logged, and the
    /// run trains and evaluates.</summary>
    [Test]
    public void TrainRunsOnBothKindsFromTheCommandLine()
    {
        List<(string Instruction, string Output)> demo;
        using (var data = ParquetDataset.Open(LoraTestKit.Tiny("demo.parquet")))
            demo = [.. data.ReadAll().Select(r => (InstructionRecord)r.Record).Take(64).Select(r => (r.Instruction, r.Output))];
        var text = Shared.WriteParquet(demo.Select(d => new TextRow { prompt = d.Instruction + "\n", completion = d.Output }), "text_pc.parquet");
        var chats = Shared.WriteParquet(demo.Select(d => new ConversationRow { prompt = [T("user", d.Instruction)], completion = [T("assistant", d.Output)] }), "chat_pc.parquet");
        var template = Path.Combine(Shared.TempDir(), "plain.jinja");
        File.WriteAllText(template, "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}");
        foreach (var (file, kind, extra) in new[] { (text, "prompt-completion data", new string[0]), (chats, "prompt-completion (conversational) data (plain.jinja's own template)", ["--chat-template", template]) })
        {
            var run = LoraTestKit.OrtloraOk(["train", LoraTestKit.Tiny("model.onnx"), "--data", file, "--eval-split", "0.25", "--target-modules", "q_proj,v_proj",
                "--r", "4", "--max-steps", "2", "--plain-log", "-o", Shared.TempDir(), .. extra]);
            Assert.That(run.Out, Does.Contain(kind));
            Assert.That(run.Out, Does.Match(@"eval_loss \d"));
        }
    }
}
