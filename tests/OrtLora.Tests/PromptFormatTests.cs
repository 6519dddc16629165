using OrtLora.Inference;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`generate --prompt-format`: the prompt's ids are exactly what training fed the model before the answer it
/// learned, so a fine-tuned model is asked in the form it saw.</summary>
public class PromptFormatTests
{
    static readonly Lazy<TextTokenizer> Tiny = new(() => TokenizerLoader.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny")));
    static readonly Lazy<TextTokenizer> Llama = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model")));

    /// <summary>The ids training gives the example before its first trained token.</summary>
    static int[] TrainedPrefix(TextTokenizer tokenizer, ChatTemplate chat, DataRecord record)
    {
        var example = new ExampleEncoder(tokenizer, 4096).Encode(new ExampleRenderer(chat, tokenizer.AddsBos).Render(0, record))!;
        int first = Array.FindIndex(example.Labels, l => l != ExampleEncoder.IgnoreIndex);
        return example.InputIds[..first];
    }

    [TestCase("tiny")]
    [TestCase("llama")]
    public void InstructionPromptIsWhatTrainingReadBeforeTheOutput(string which)
    {
        var tokenizer = which == "tiny" ? Tiny.Value : Llama.Value;
        foreach (var question in new[] { "What is the capital of South Korea?", "Name three colors.", "Übersetze: guten Morgen" })
        {
            var ids = PromptFormat.Encode("instruction", question, tokenizer, ChatTemplate.ChatMl);
            Assert.That(ids, Is.EqualTo(TrainedPrefix(tokenizer, ChatTemplate.ChatMl, new InstructionRecord(question, "", "The answer."))), question);
            Assert.That(tokenizer.Decode(ids, skipSpecialTokens: true), Does.Contain("### Instruction:").And.Contain(question).And.EndWith("### Response:\n"));
        }
    }

    [TestCase("tiny", "chatml")]
    [TestCase("llama", "llama2")]
    [TestCase("llama", "chatml")]
    public void ChatPromptIsWhatTrainingReadBeforeTheAssistantsTurn(string which, string template)
    {
        var tokenizer = which == "tiny" ? Tiny.Value : Llama.Value;
        var chat = ChatTemplate.FromName(template);
        var ids = PromptFormat.Encode("chat", "Hello there, who are you?", tokenizer, chat);
        var conversation = new ChatRecord([new ChatMessage("user", "Hello there, who are you?"), new ChatMessage("assistant", "A model.")]);
        Assert.That(ids, Is.EqualTo(TrainedPrefix(tokenizer, chat, conversation)));
        if (template == "chatml") Assert.That(tokenizer.Decode(ids), Does.EndWith("<|im_start|>assistant\n"));
    }

    /// <summary>With a model's own template (Llama 3.1's, from the Jinja fixture) and a system message: the prompt is what
    /// training read before the assistant's turn, and generation stops at the template's end of turn too.</summary>
    [Test]
    public void ChatPromptWithASystemMessageThroughAModelsOwnTemplate()
    {
        var fixture = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "Data", "chat_templates.json")))!;
        var config = TokenizerConfig.Empty with { BosToken = "<s>", EosToken = "</s>" };
        var chat = ChatTemplate.FromJinja(fixture["templates"]!["llama-3.1-instruct"]!["template"]!.GetValue<string>(), "llama-3.1", config);
        var tokenizer = Llama.Value;
        var ids = PromptFormat.Encode("chat", "Who are you?", tokenizer, chat, system: "Answer in one word.");
        var conversation = new ChatRecord([new("system", "Answer in one word."), new("user", "Who are you?"), new("assistant", "Nobody.")]);
        Assert.That(ids, Is.EqualTo(TrainedPrefix(tokenizer, chat, conversation)));
        Assert.That(tokenizer.Decode(ids, skipSpecialTokens: true), Does.Contain("Answer in one word.<|eot_id|>").And.EndWith("<|start_header_id|>assistant<|end_header_id|>\n\n"));
        Assert.That(ids[0], Is.EqualTo(tokenizer.BosId), "the template's bos_token is the tokenizer's BOS");
        Assert.That(() => PromptFormat.Encode("raw", "x", tokenizer, chat, system: "s"), Throws.TypeOf<OrtLoraException>().With.Message.EqualTo("--system needs --prompt-format chat (got raw)"));
    }

    [Test]
    public void RawIsTheTokenizersOwnEncoding()
    {
        Assert.That(PromptFormat.Encode("raw", "Hello", Llama.Value, ChatTemplate.ChatMl), Is.EqualTo(Llama.Value.Encode("Hello", addBos: true)));
        var bad = Ortlora("generate", Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"), "--prompt", "x", "--prompt-format", "alpaca");
        Assert.That(bad.ExitCode, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("alpaca"));
    }
}
