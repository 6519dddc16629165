using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora chat`: each turn asks with the whole conversation so far through the chat template.</summary>
public class ChatCommandTests
{
    /// <summary>Two turns on the tiny model (ChatML, sampled with a fixed seed) answer exactly as `generate` does when
    /// given the same conversations: the first as one chat message, the second as the ChatML text of the first exchange
    /// and the new message, written out here; asked alone, the second message gets another answer. A blank line ends
    /// the chat.</summary>
    [Test]
    public void EachTurnReadsTheWholeConversation()
    {
        string[] Common(params string[] extra) => [Tiny("model.onnx"), "--max-new-tokens", "8", "--temperature", "1", "--seed", "3", .. extra];
        var chat = OrtloraWithInput("Hello\nWhat is the capital of South Korea?\n\nignored after the blank line\n", ["chat", .. Common()]);
        Assert.That(chat.ExitCode, Is.EqualTo(0), chat.Error);

        var first = OrtloraOk(["generate", .. Common("--prompt-format", "chat", "--prompt", "Hello")]).Out;
        var conversation = $"<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n{first.Trim()}<|im_end|>\n" +
                           "<|im_start|>user\nWhat is the capital of South Korea?<|im_end|>\n<|im_start|>assistant\n";
        var second = OrtloraOk(["generate", .. Common("--prompt", conversation)]).Out;
        Assert.That(chat.Out, Is.EqualTo(first + second));
        var alone = OrtloraOk(["generate", .. Common("--prompt-format", "chat", "--prompt", "What is the capital of South Korea?")]).Out;
        Assert.That(alone, Is.Not.EqualTo(second), "the history changes the answer");
        Assert.That(chat.Error, Does.Contain("chatml template"));
        Assert.That(chat.Error.Split('\n').Count(l => l.StartsWith("[")), Is.EqualTo(2), "two answers, then the blank line ends it");
    }
}
