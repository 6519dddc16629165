using System.CommandLine;
using OrtLora.Inference;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>ortlora chat MODEL: a conversation on standard input, one user message a line, each answer streamed. Every
/// turn asks with the whole conversation so far through the chat template (the answers included, as the model
/// wrote them), the assistant's turn opened, as transformers' add_generation_prompt does. An empty line or /exit ends it.</summary>
public static class ChatCommand
{
    public static Command Create()
    {
        var shared = new GenerationCliOptions();
        var cmd = new Command("chat", "Talk with a model: user messages from standard input, answers streamed through the chat template");
        shared.AddTo(cmd);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var (modelPath, text, chat) = shared.Load(parse);
            var options = shared.Read(parse, modelPath, PromptFormat.StopIds("chat", text.Inner, chat));
            using var loaded = shared.Open(parse, modelPath);
            var messages = new List<ChatMessage>();
            if (parse.GetValue(shared.System) is { } system) messages.Add(new ChatMessage("system", system));
            Console.Error.WriteLine($"{Path.GetFileName(modelPath)}, {chat.Name} template; an empty line or /exit ends the chat");
            while (Console.In.ReadLine() is { } line && line.Trim() is { Length: > 0 } said && said != "/exit")
            {
                messages.Add(new ChatMessage("user", said));
                var ids = PromptFormat.EncodeConversation(messages, text.Inner, chat);
                var answer = GenerateCommand.Stream(loaded.Generator, text, ids, options, loaded.Adapter);
                messages.Add(new ChatMessage("assistant", answer.Trim()));
            }
        }));
        return cmd;
    }
}
