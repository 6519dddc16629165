using System.CommandLine;
using System.Diagnostics;
using System.Text;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Inference;
using OrtLora.Onnx;

namespace OrtLora.Cli;

public static class GenerateCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX causal LM (base, merged, or injected with --adapter)" };
        var prompt = new Option<string>("--prompt") { Description = "Text to continue", Required = true };
        var maxNewTokens = new Option<int>("--max-new-tokens") { Description = "Most tokens to generate", DefaultValueFactory = _ => 128 };
        var temperature = new Option<double>("--temperature") { Description = "0: greedy; otherwise sample from softmax(logits / T)", DefaultValueFactory = _ => 0 };
        var topK = new Option<int>("--top-k") { Description = "Sample among the k most likely tokens (0: all)", DefaultValueFactory = _ => 0 };
        var topP = new Option<double>("--top-p") { Description = "Sample among the most likely tokens whose probability reaches p", DefaultValueFactory = _ => 1.0 };
        var seed = new Option<int?>("--seed") { Description = "Random seed for sampling" };
        var repetitionPenalty = new Option<double>("--repetition-penalty") { Description = "divide the logits of tokens already in the sequence by this (Hugging Face's repetition_penalty; 1: off)", DefaultValueFactory = _ => 1.0 };
        var promptFormat = new Option<string>("--prompt-format")
        {
            Description = "raw (the prompt as written), instruction (Alpaca's template, as train renders instruction data) or chat (one user message in the chat template, the assistant's turn opened)",
            DefaultValueFactory = _ => "raw",
        };
        promptFormat.AcceptOnlyFromAmong(PromptFormat.Names);
        var chatTemplate = new Option<string?>("--chat-template") { Description = "chatml, llama2 or a Jinja template file for --prompt-format chat (default: the tokenizer's own, else chatml)" };
        var system = new Option<string?>("--system") { Description = "a system message before the prompt (--prompt-format chat)" };
        var adapter = new Option<string?>("--adapter") { Description = "Runtime LoRA adapter: .onnx_adapter file or PEFT adapter directory (the model must be injected)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Tokenizer file or directory (default: the model's directory)" };
        var noCache = new Option<bool>("--no-kv-cache") { Description = "Recompute the whole sequence every step even if the model has a KV cache" };
        var cmd = new Command("generate", "Generate text from a prompt, streaming tokens as they come")
        {
            model, prompt, promptFormat, chatTemplate, system, maxNewTokens, temperature, topK, topP, repetitionPenalty, seed, adapter, tokenizer, noCache,
        };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var modelPath = parse.GetValue(model)!;
            if (!File.Exists(modelPath)) throw new OrtLoraException($"{modelPath}: file not found");
            var text = LoadedTokenizer.Load(parse.GetValue(tokenizer) ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!);
            var format = parse.GetValue(promptFormat)!;
            var chat = Training.Data.ChatTemplate.Resolve(parse.GetValue(chatTemplate), text.Inner.Config,
                Path.Combine(Path.GetDirectoryName(Path.GetFullPath(text.Inner.Source)) ?? "", "tokenizer_config.json"));
            var promptIds = PromptFormat.Encode(format, parse.GetValue(prompt)!, text.Inner, chat, parse.GetValue(system));
            var options = new GenerationOptions
            {
                MaxNewTokens = parse.GetValue(maxNewTokens),
                Temperature = parse.GetValue(temperature),
                TopK = parse.GetValue(topK),
                TopP = parse.GetValue(topP),
                RepetitionPenalty = parse.GetValue(repetitionPenalty),
                Seed = parse.GetValue(seed),
                UseKvCache = !parse.GetValue(noCache),
                StopTokenIds = [.. StopTokens.FromModelDirectory(Path.GetDirectoryName(Path.GetFullPath(modelPath))!), .. PromptFormat.StopIds(format, text.Inner, chat)],
            };
            Validate(options);
            using var sessionOptions = OrtRun.DefaultOptions();
            var adapterPath = parse.GetValue(adapter);
            double? modelScale = null;
            using var session = adapterPath is null ? new InferenceSession(modelPath, sessionOptions) : RuntimeAdapters.OpenOverridable(modelPath, sessionOptions, out modelScale);
            using var loraAdapter = adapterPath is null ? null : RuntimeAdapters.Load(adapterPath, session, modelScale);
            using var generator = new Generator(session);
            Stream(generator, text, promptIds, options, loraAdapter);
        }));
        return cmd;
    }

    static void Validate(GenerationOptions o)
    {
        if (o.MaxNewTokens < 1) throw new OrtLoraException("--max-new-tokens must be at least 1");
        if (o.Temperature < 0) throw new OrtLoraException("--temperature must be 0 (greedy) or positive");
        if (o.TopK < 0) throw new OrtLoraException("--top-k must be 0 (off) or positive");
        if (o.TopP is <= 0 or > 1) throw new OrtLoraException("--top-p must be in (0, 1]");
        if (o.RepetitionPenalty <= 0) throw new OrtLoraException("--repetition-penalty must be positive (1: off)");
    }

    static void Stream(Generator generator, ITextTokenizer tokenizer, IReadOnlyList<int> prompt, GenerationOptions options, OrtLoraAdapter? adapter)
    {
        // Pieces are whole characters; the console must print them as UTF-8 whatever the locale says.
        if (Console.OutputEncoding.CodePage != Encoding.UTF8.CodePage) Console.OutputEncoding = new UTF8Encoding(false);
        var stdout = Console.Out;
        var clock = Stopwatch.StartNew();
        foreach (var piece in generator.GenerateText(tokenizer, prompt, options, adapter))
        {
            stdout.Write(piece);
            stdout.Flush();
        }
        stdout.WriteLine();
        double seconds = clock.Elapsed.TotalSeconds;
        Console.Error.WriteLine($"[{generator.TokensGenerated} tokens in {seconds:F2} s, {generator.TokensGenerated / seconds:F1} tokens/s, " +
            $"{(generator.HasKvCache && options.UseKvCache ? "kv cache" : "full recompute")}]");
    }
}
