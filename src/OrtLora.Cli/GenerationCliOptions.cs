using System.CommandLine;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Inference;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>What `generate` and `chat` share: the model, its tokenizer and chat template, the decoding options (Hugging
/// Face's names) and a runtime adapter.</summary>
public sealed class GenerationCliOptions
{
    public Argument<string> Model { get; } = new("model") { Description = "ONNX causal LM (base, merged, or injected with --adapter)" };
    public Option<int> MaxNewTokens { get; } = new("--max-new-tokens") { Description = "Most tokens to generate", DefaultValueFactory = _ => 128 };
    public Option<double> Temperature { get; } = new("--temperature") { Description = "0: greedy; otherwise sample from softmax(logits / T)", DefaultValueFactory = _ => 0 };
    public Option<int> TopK { get; } = new("--top-k") { Description = "Sample among the k most likely tokens (0: all)", DefaultValueFactory = _ => 0 };
    public Option<double> TopP { get; } = new("--top-p") { Description = "Sample among the most likely tokens whose probability reaches p", DefaultValueFactory = _ => 1.0 };
    public Option<double> MinP { get; } = new("--min-p") { Description = "Sample only among tokens at least this times as likely as the most likely one (0: off; 0.05-0.1 typical)" };
    public Option<int?> Seed { get; } = new("--seed") { Description = "Random seed for sampling" };
    public Option<double> RepetitionPenalty { get; } = new("--repetition-penalty") { Description = "divide the logits of tokens already in the sequence by this (Hugging Face's repetition_penalty; 1: off)", DefaultValueFactory = _ => 1.0 };
    public Option<string?> ChatTemplate { get; } = new("--chat-template") { Description = "chatml, llama2 or a Jinja template file (default: the tokenizer's own, else chatml)" };
    public Option<string?> ChatTemplateKwargs { get; } = new("--chat-template-kwargs") { Description = "JSON object of variables for a Jinja chat template (e.g. '{\"enable_thinking\": false}' for Qwen3)" };
    public Option<string?> System { get; } = new("--system") { Description = "a system message before the conversation (chat format)" };
    public Option<string?> Adapter { get; } = new("--adapter") { Description = "Runtime LoRA adapter: .onnx_adapter file or PEFT adapter directory (the model must be injected)" };
    public Option<string?> Tokenizer { get; } = new("--tokenizer") { Description = "Tokenizer file or directory (default: the model's directory)" };
    public Option<bool> NoCache { get; } = new("--no-kv-cache") { Description = "Recompute the whole sequence every step even if the model has a KV cache" };
    public Option<string> Device { get; } = new("--device") { Description = "cpu or cuda (cuda: a GPU build of ONNX Runtime, or --ep-library)", DefaultValueFactory = _ => "cpu" };
    public Option<string?> EpLibrary { get; } = new("--ep-library") { Description = "plugin execution provider library (e.g. libonnxruntime_providers_cuda.so)" };

    public void AddTo(Command command)
    {
        command.Arguments.Add(Model);
        foreach (var o in new Option[] { ChatTemplate, ChatTemplateKwargs, System, MaxNewTokens, Temperature, TopK, TopP, MinP, RepetitionPenalty, Seed, Adapter, Tokenizer, NoCache, Device, EpLibrary })
            command.Options.Add(o);
    }

    /// <summary>The model's path (checked), tokenizer and chat template.</summary>
    public (string ModelPath, LoadedTokenizer Text, ChatTemplate Chat) Load(ParseResult parse)
    {
        var modelPath = parse.GetValue(Model)!;
        if (!File.Exists(modelPath)) throw new OrtLoraException($"{modelPath}: file not found");
        var text = LoadedTokenizer.Load(parse.GetValue(Tokenizer) ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!);
        var chat = Training.Data.ChatTemplate.Resolve(parse.GetValue(ChatTemplate), text.Inner.Config,
            Path.Combine(Path.GetDirectoryName(Path.GetFullPath(text.Inner.Source)) ?? "", "tokenizer_config.json"), parse.GetValue(ChatTemplateKwargs));
        return (modelPath, text, chat);
    }

    /// <summary>The decoding options, checked; the answer stops at the model's stop tokens and <paramref name="extraStops"/>.</summary>
    public GenerationOptions Read(ParseResult parse, string modelPath, IEnumerable<int> extraStops)
    {
        var options = new GenerationOptions
        {
            MaxNewTokens = parse.GetValue(MaxNewTokens),
            Temperature = parse.GetValue(Temperature),
            TopK = parse.GetValue(TopK),
            TopP = parse.GetValue(TopP),
            MinP = parse.GetValue(MinP),
            RepetitionPenalty = parse.GetValue(RepetitionPenalty),
            Seed = parse.GetValue(Seed),
            UseKvCache = !parse.GetValue(NoCache),
            StopTokenIds = [.. StopTokens.FromModelDirectory(Path.GetDirectoryName(Path.GetFullPath(modelPath))!), .. extraStops],
        };
        if (options.MaxNewTokens < 1) throw new OrtLoraException("--max-new-tokens must be at least 1");
        if (options.Temperature < 0) throw new OrtLoraException("--temperature must be 0 (greedy) or positive");
        if (options.TopK < 0) throw new OrtLoraException("--top-k must be 0 (off) or positive");
        if (options.TopP is <= 0 or > 1) throw new OrtLoraException("--top-p must be in (0, 1]");
        if (options.MinP is < 0 or > 1) throw new OrtLoraException("--min-p must be in [0, 1]");
        if (options.RepetitionPenalty <= 0) throw new OrtLoraException("--repetition-penalty must be positive (1: off)");
        return options;
    }

    /// <summary>The model's session, a generator on it and the runtime adapter, if any; disposed together.</summary>
    public sealed class Loaded(SessionOptions options, InferenceSession session, OrtLoraAdapter? adapter) : IDisposable
    {
        public Generator Generator { get; } = new(session);
        public OrtLoraAdapter? Adapter => adapter;

        public void Dispose()
        {
            Generator.Dispose();
            adapter?.Dispose();
            session.Dispose();
            options.Dispose();
        }
    }

    /// <summary>The model's session on the device asked for; with a plugin provider the graph loads without the ops it
    /// crashes on (<see cref="PluginRewrites"/>).</summary>
    public Loaded Open(ParseResult parse, string modelPath)
    {
        var sessionOptions = OrtRun.DefaultOptions();
        var adapterPath = parse.GetValue(Adapter);
        double? modelScale = null;
        InferenceSession? session = null;
        try
        {
            var epLibrary = parse.GetValue(EpLibrary);
            ExecutionDevice.Configure(sessionOptions, parse.GetValue(Device)!, epLibrary);
            bool rewrite = PluginRewrites.Wanted(epLibrary);
            session = adapterPath is not null ? RuntimeAdapters.OpenOverridable(modelPath, sessionOptions, out modelScale, rewrite)
                : rewrite ? PluginRewrites.Load(modelPath, sessionOptions)
                : new InferenceSession(modelPath, sessionOptions);
            return new Loaded(sessionOptions, session, adapterPath is null ? null : RuntimeAdapters.Load(adapterPath, session, modelScale));
        }
        catch
        {
            session?.Dispose();
            sessionOptions.Dispose();
            throw;
        }
    }
}
