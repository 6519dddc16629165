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
        var prompt = new Option<string?>("--prompt") { Description = "Text to continue (or --data)" };
        var data = new Option<string?>("--data") { Description = "prompt-only data (.parquet or .jsonl, a 'prompt' column of text or messages): generate for every row, to --output" };
        var output = new Option<string?>("--output", "-o") { Description = "with --data: the JSON Lines file of completions (prompt, completion, tokens, truncated, rewards)" };
        var returnSequences = new Option<int>("--num-return-sequences") { Description = "with --data: completions per prompt", DefaultValueFactory = _ => 1 };
        var rewardFuncs = new Option<string[]>("--reward-funcs") { Description = "with --data: score each completion with GRPO's reward functions and print their means", AllowMultipleArgumentsPerToken = true };
        var batchSize = new Option<int>("--batch-size") { Description = "with --data: rows decoded side by side at most", DefaultValueFactory = _ => 64 };
        var maxPrompt = new Option<int>("--max-prompt-length") { Description = "with --data: keep each prompt's last N tokens", DefaultValueFactory = _ => 512 };
        var datasetFormat = new Option<string>("--dataset-format") { Description = "with --data: auto, or prompt-only (any file's 'prompt' column, the other columns for the rewards)", DefaultValueFactory = _ => "auto" };
        datasetFormat.AcceptOnlyFromAmong("auto", "prompt-only");
        var promptFormat = new Option<string>("--prompt-format")
        {
            Description = "raw (the prompt as written), instruction (Alpaca's template, as train renders instruction data) or chat (one user message in the chat template, the assistant's turn opened)",
            DefaultValueFactory = _ => "raw",
        };
        promptFormat.AcceptOnlyFromAmong(PromptFormat.Names);
        var cmd = new Command("generate", "Generate text from a prompt, streaming tokens as they come; or for every prompt of a file (--data)")
            { prompt, promptFormat, data, output, returnSequences, rewardFuncs, batchSize, maxPrompt, datasetFormat };
        shared.AddTo(cmd);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            if (parse.GetValue(data) is { } dataPath)
            {
                if (parse.GetValue(prompt) is not null) throw new OrtLoraException("give --prompt or --data, not both");
                var outputPath = parse.GetValue(output) ?? throw new OrtLoraException("--data needs --output, the JSON Lines file to write");
                GenerateForData(parse, shared, new DatasetGenerationJob
                {
                    DataPath = dataPath, OutputPath = outputPath, NumReturnSequences = parse.GetValue(returnSequences), RewardFuncs = parse.GetValue(rewardFuncs) ?? [],
                    MaxRows = parse.GetValue(batchSize), MaxPromptLength = parse.GetValue(maxPrompt), Seed = parse.GetValue(shared.Seed) ?? 0,
                    Format = Training.Data.ParquetDataset.ParseFormat(parse.GetValue(datasetFormat)!), ChatTemplateKwargs = parse.GetValue(shared.ChatTemplateKwargs),
                });
                return;
            }
            if (parse.GetValue(prompt) is null) throw new OrtLoraException("give --prompt TEXT, or --data FILE with --output");
            var (modelPath, text, chat) = shared.Load(parse);
            var format = parse.GetValue(promptFormat)!;
            var promptIds = PromptFormat.Encode(format, parse.GetValue(prompt)!, text.Inner, chat, parse.GetValue(shared.System));
            var options = shared.Read(parse, modelPath, PromptFormat.StopIds(format, text.Inner, chat));
            using var loaded = shared.Open(parse, modelPath);
            Stream(loaded.Generator, text, promptIds, options, loaded.Adapter);
        }));
        return cmd;
    }

    static void GenerateForData(ParseResult parse, GenerationCliOptions shared, DatasetGenerationJob job)
    {
        var (modelPath, text, chat) = shared.Load(parse);
        var options = shared.Read(parse, modelPath, []);
        if (job.NumReturnSequences > 1 && options.Temperature == 0)
            Console.Error.WriteLine("note: --temperature 0 is greedy, so the --num-return-sequences completions of a prompt are all the same");
        using var loaded = shared.Open(parse, modelPath);
        var clock = Stopwatch.StartNew();
        var result = DatasetGeneration.Run(job, loaded.Generator, loaded.Adapter, text.Inner, chat, options, line => Console.Error.WriteLine(line));
        Console.WriteLine($"{result.Completions} completions of {result.Prompts} prompts in {clock.Elapsed.TotalSeconds:F1} s: mean length " +
            $"{result.MeanLength:F1} tokens, {result.TruncatedShare:P0} cut at --max-new-tokens; written to {job.OutputPath}");
        foreach (var (name, mean) in result.Rewards) Console.WriteLine($"{name}: mean {mean:F4}");
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
