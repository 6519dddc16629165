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

    [Test]
    public void RawIsTheTokenizersOwnEncoding()
    {
        Assert.That(PromptFormat.Encode("raw", "Hello", Llama.Value, ChatTemplate.ChatMl), Is.EqualTo(Llama.Value.Encode("Hello", addBos: true)));
        var bad = Ortlora("generate", Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"), "--prompt", "x", "--prompt-format", "alpaca");
        Assert.That(bad.ExitCode, Is.Not.Zero);
        Assert.That(bad.Error, Does.Contain("alpaca"));
    }
}
