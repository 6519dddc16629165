using System.CommandLine;
using System.Diagnostics;
using System.Text;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Inference;

namespace OrtLora.Cli;

public static class GenerateCommand
{
    public static Command Create()
    {
        var shared = new GenerationCliOptions();
        var prompt = new Option<string>("--prompt") { Description = "Text to continue", Required = true };
        var promptFormat = new Option<string>("--prompt-format")
        {
            Description = "raw (the prompt as written), instruction (Alpaca's template, as train renders instruction data) or chat (one user message in the chat template, the assistant's turn opened)",
            DefaultValueFactory = _ => "raw",
        };
        promptFormat.AcceptOnlyFromAmong(PromptFormat.Names);
        var cmd = new Command("generate", "Generate text from a prompt, streaming tokens as they come") { prompt, promptFormat };
        shared.AddTo(cmd);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var (modelPath, text, chat) = shared.Load(parse);
            var format = parse.GetValue(promptFormat)!;
            var promptIds = PromptFormat.Encode(format, parse.GetValue(prompt)!, text.Inner, chat, parse.GetValue(shared.System));
            var options = shared.Read(parse, modelPath, PromptFormat.StopIds(format, text.Inner, chat));
            using var loaded = shared.Open(parse, modelPath);
            Stream(loaded.Generator, text, promptIds, options, loaded.Adapter);
        }));
        return cmd;
    }

    /// <summary>Writes the answer as it comes, then its speed to stderr; returns the answer.</summary>
    public static string Stream(Generator generator, ITextTokenizer tokenizer, IReadOnlyList<int> prompt, GenerationOptions options, OrtLoraAdapter? adapter)
    {
        // Pieces are whole characters; the console must print them as UTF-8 whatever the locale says.
        if (Console.OutputEncoding.CodePage != Encoding.UTF8.CodePage) Console.OutputEncoding = new UTF8Encoding(false);
        var stdout = Console.Out;
        var answer = new StringBuilder();
        var clock = Stopwatch.StartNew();
        foreach (var piece in generator.GenerateText(tokenizer, prompt, options, adapter))
        {
            stdout.Write(piece);
            stdout.Flush();
            answer.Append(piece);
        }
        stdout.WriteLine();
        double seconds = clock.Elapsed.TotalSeconds;
        Console.Error.WriteLine($"[{generator.TokensGenerated} tokens in {seconds:F2} s, {generator.TokensGenerated / seconds:F1} tokens/s, " +
            $"{(generator.HasKvCache && options.UseKvCache ? "kv cache" : "full recompute")}]");
        return answer.ToString();
    }
}
