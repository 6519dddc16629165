using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace OrtLora.Training.Data;

/// <summary>Loads a tokenizer from a model's directory or one of its tokenizer files, through Microsoft.ML.Tokenizers:
/// Hugging Face <c>tokenizer.json</c> (byte-level BPE, or SentencePiece-style BPE), SentencePiece <c>tokenizer.model</c>, GPT-2 style
/// <c>vocab.json</c>/<c>encoder.json</c> + <c>merges.txt</c>/<c>vocab.bpe</c>. Special tokens come from
/// <c>tokenizer_config.json</c> beside the files when present, then from the tokenizer itself.</summary>
public static class TokenizerLoader
{
    static readonly string[] VocabNames = ["vocab.json", "encoder.json"];
    static readonly string[] MergesNames = ["merges.txt", "vocab.bpe"];

    /// <summary>A tokenizer from <paramref name="path"/>: a directory (tokenizer.json, then tokenizer.model, then
    /// vocab.json + merges.txt) or a file.</summary>
    public static TextTokenizer Load(string path)
    {
        if (Directory.Exists(path)) return LoadDirectory(path);
        if (!File.Exists(path)) throw new OrtLoraException($"tokenizer not found: {path}");
        var name = Path.GetFileName(path).ToLowerInvariant();
        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        try
        {
            if (name == "tokenizer_config.json") return LoadDirectory(dir);
            if (name.EndsWith(".model")) return SentencePiece(path, TokenizerConfig.Read(dir));
            if (EndsWithAny(name, VocabNames, out var prefix)) return Gpt2Files(path, FindBeside(dir, prefix, MergesNames, path), TokenizerConfig.Read(dir));
            if (EndsWithAny(name, MergesNames, out prefix)) return Gpt2Files(FindBeside(dir, prefix, VocabNames, path), path, TokenizerConfig.Read(dir));
            if (name.EndsWith(".json")) return HuggingFaceJson(path, TokenizerConfig.Read(dir));
        }
        catch (Exception e) when (e is not OrtLoraException)
        {
            throw new OrtLoraException($"cannot read tokenizer {path}: {e.Message}", e);
        }
        throw new OrtLoraException($"unknown tokenizer file {path}: expected tokenizer.json, a SentencePiece .model, " +
                                   "vocab.json/encoder.json or merges.txt/vocab.bpe");
    }

    static TextTokenizer LoadDirectory(string dir)
    {
        var config = TokenizerConfig.Read(dir);
        var json = Path.Combine(dir, "tokenizer.json");
        var spModel = Path.Combine(dir, "tokenizer.model");
        var vocab = VocabNames.Select(n => Path.Combine(dir, n)).FirstOrDefault(File.Exists);
        var merges = MergesNames.Select(n => Path.Combine(dir, n)).FirstOrDefault(File.Exists);
        try
        {
            // A SentencePiece-style tokenizer.json (Llama, Mistral) is read from its tokenizer.model when one is there.
            if (File.Exists(json) && !(File.Exists(spModel) && IsSentencePieceJson(json))) return HuggingFaceJson(json, config);
            if (File.Exists(spModel)) return SentencePiece(spModel, config);
            if (vocab is not null && merges is not null) return Gpt2Files(vocab, merges, config);
            if (File.Exists(json)) return HuggingFaceJson(json, config);
        }
        catch (Exception e) when (e is not OrtLoraException)
        {
            throw new OrtLoraException($"cannot read the tokenizer in {dir}: {e.Message}", e);
        }
        throw new OrtLoraException($"no tokenizer in {dir}: looked for tokenizer.json, tokenizer.model, " +
                                   "vocab.json (or encoder.json) with merges.txt (or vocab.bpe)");
    }

    /// <summary>"gpt2-encoder.json" ends with "encoder.json" after the prefix "gpt2-".</summary>
    static bool EndsWithAny(string name, string[] suffixes, out string prefix)
    {
        var suffix = suffixes.FirstOrDefault(name.EndsWith);
        prefix = suffix is null ? "" : name[..^suffix.Length];
        return suffix is not null;
    }

    /// <summary>The partner file of a vocabulary or merges file: same prefix first ("gpt2-vocab.bpe" for
    /// "gpt2-encoder.json"), then the plain names.</summary>
    static string FindBeside(string dir, string prefix, string[] names, string forFile) =>
        names.Select(n => prefix + n).Concat(names).Select(n => Path.Combine(dir, n)).FirstOrDefault(File.Exists)
        ?? throw new OrtLoraException($"{forFile} needs {string.Join(" or ", names)} beside it in {dir}");

    static TextTokenizer SentencePiece(string path, TokenizerConfig config) =>
        SentencePiece(File.ReadAllBytes(path), path, config, new Dictionary<string, int>());

    static TextTokenizer SentencePiece(byte[] model, string path, TokenizerConfig config, Dictionary<string, int> addedTokens)
    {
        var tokenizer = SentencePieceTokenizer.Create(new MemoryStream(model), false, false);
        // The package splits runs of one character ("aaaa", spaces) differently from sentencepiece (it breaks ties
        // between equal-score merges from the right), so BPE models encode with SentencePieceBpe, which matches
        // sentencepiece exactly; the package still decodes and holds the vocabulary.
        var exactBpe = SentencePieceBpe.TryCreate(model);
        // Control tokens (<s>, </s>) and added tokens are matched whole in text, as Hugging Face does,
        // so a chat template may write them.
        var specials = new Dictionary<string, int>(addedTokens);
        void AddSpecial(string? token, int id) { if (token is not null && id >= 0) specials[token] = id; }
        AddSpecial(tokenizer.BeginningOfSentenceToken, tokenizer.BeginningOfSentenceId);
        AddSpecial(tokenizer.EndOfSentenceToken, tokenizer.EndOfSentenceId);
        foreach (var (token, id) in config.AddedTokens) specials[token] = id;
        int? bos = config.IdOf(config.BosToken, tokenizer.Vocabulary, specials) ?? NonNegative(tokenizer.BeginningOfSentenceId);
        int? eos = config.IdOf(config.EosToken, tokenizer.Vocabulary, specials) ?? NonNegative(tokenizer.EndOfSentenceId);
        int? pad = config.IdOf(config.PadToken, tokenizer.Vocabulary, specials);
        var vocabSize = Math.Max(tokenizer.Vocabulary.Values.Max(), specials.Values.DefaultIfEmpty(0).Max()) + 1;
        return new TextTokenizer(tokenizer, path, "sentencepiece", specials, vocabSize, bos, eos, pad,
            config.AddBosToken ?? true, config.AddEosToken ?? false, config, exactBpe is null ? null : exactBpe.Encode);
    }

    /// <summary>A Llama/Mistral tokenizer.json, run as the SentencePiece model it restates.</summary>
    static TextTokenizer SentencePieceFromJson(JsonObject root, string path, TokenizerConfig config, Dictionary<string, int> added)
    {
        string? Named(string token) => added.ContainsKey(token) ? token : null;
        var bos = config.BosToken ?? PostProcessorBos(root["post_processor"]) ?? Named("<s>");
        var eos = config.EosToken ?? Named("</s>");
        var model = SentencePieceJson.ToModelProto(root, path, bos, eos);
        return SentencePiece(model, path, config with { BosToken = bos, EosToken = eos }, added);
    }

    static TextTokenizer Gpt2Files(string vocabPath, string mergesPath, TokenizerConfig config)
    {
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath))
                    ?? throw new OrtLoraException($"{vocabPath}: not a JSON object of token → id");
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version")).ToList();
        return ByteLevelBpe(vocab, merges, RobertaPreTokenizer.Instance, addedTokens: new(), config, vocabPath, "gpt2-bpe", postProcessorBos: null);
    }

    static TextTokenizer HuggingFaceJson(string path, TokenizerConfig config)
    {
        var root = JsonNode.Parse(File.ReadAllText(path))?.AsObject()
                   ?? throw new OrtLoraException($"{path}: not a JSON object");
        var model = root["model"] as JsonObject ?? throw new OrtLoraException($"{path}: no \"model\" section; not a Hugging Face tokenizer.json");
        var type = model["type"]?.GetValue<string>() ?? (model["merges"] is not null ? "BPE" : "unknown");
        if (type != "BPE")
            throw new OrtLoraException($"{path}: tokenizer.json model type {type} is not supported; " +
                                       "supported: byte-level BPE (GPT-2, Llama 3, Qwen) and SentencePiece-style BPE (Llama 2, Mistral)");
        var added = (root["added_tokens"] as JsonArray ?? []).OfType<JsonObject>()
            .ToDictionary(t => t["content"]!.GetValue<string>(), t => t["id"]!.GetValue<int>());
        if (IsSentencePieceJson(root)) return SentencePieceFromJson(root, path, config, added);
        var vocab = model["vocab"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var merges = model["merges"]!.AsArray().Select(MergeLine).ToList();
        return ByteLevelBpe(vocab, merges, PreTokenizerOf(root["pre_tokenizer"], path), added, config, path, "hf-bpe", PostProcessorBos(root["post_processor"]));
    }

    /// <summary>Merges are "a b" strings in older files and ["a", "b"] pairs in newer ones.</summary>
    static string MergeLine(JsonNode? merge) =>
        merge is JsonArray pair ? $"{pair[0]!.GetValue<string>()} {pair[1]!.GetValue<string>()}" : merge!.GetValue<string>();

    static TextTokenizer ByteLevelBpe(Dictionary<string, int> vocab, List<string> merges, PreTokenizer preTokenizer,
        Dictionary<string, int> addedTokens, TokenizerConfig config, string source, string kind, string? postProcessorBos)
    {
        var specials = new Dictionary<string, int>(addedTokens);
        foreach (var (token, id) in config.AddedTokens) specials[token] = id;
        // GPT-2's only special token lives in its vocabulary, not in an added-tokens list.
        if (vocab.TryGetValue("<|endoftext|>", out var endOfText)) specials.TryAdd("<|endoftext|>", endOfText);
        var options = new BpeOptions(vocab) { Merges = merges, ByteLevel = true, PreTokenizer = preTokenizer };
        var tokenizer = BpeTokenizer.Create(options);
        var known = new Dictionary<string, int>(vocab);
        foreach (var (token, id) in specials) known[token] = id;
        string? Guess(params string[] names) => names.FirstOrDefault(known.ContainsKey);
        var bosToken = config.BosToken ?? postProcessorBos ?? Guess("<|begin_of_text|>", "<s>", "<|endoftext|>");
        var eosToken = config.EosToken ?? Guess("<|end_of_text|>", "</s>", "<|endoftext|>");
        int? bos = bosToken is not null && known.TryGetValue(bosToken, out var b) ? b : null;
        int? eos = eosToken is not null && known.TryGetValue(eosToken, out var e) ? e : null;
        int? pad = config.PadToken is not null && known.TryGetValue(config.PadToken, out var p) ? p : null;
        var vocabSize = known.Values.Max() + 1;
        // Byte-level BPE models (GPT-2) do not put BOS first unless their config or post-processor says so.
        var addsBos = config.AddBosToken ?? postProcessorBos is not null;
        return new TextTokenizer(tokenizer, source, kind, specials, vocabSize, bos, eos, pad, addsBos, config.AddEosToken ?? false, config);
    }

    /// <summary>Byte-level pre-tokenization: GPT-2's split (the package's RoBERTa pre-tokenizer is the same regex) or the
    /// Split regex the file gives (Llama 3, Qwen).</summary>
    static PreTokenizer PreTokenizerOf(JsonNode? node, string path)
    {
        var steps = node?["type"]?.GetValue<string>() == "Sequence" ? node["pretokenizers"]!.AsArray().ToList() : [node];
        var split = steps.FirstOrDefault(s => s?["type"]?.GetValue<string>() == "Split");
        var pattern = split?["pattern"]?["Regex"]?.GetValue<string>();
        if (pattern is not null)
        {
            try { return new RegexPreTokenizer(new Regex(pattern, RegexOptions.Compiled), null); }
            catch (ArgumentException e) { throw new OrtLoraException($"{path}: pre-tokenizer regex not usable in .NET: {e.Message}"); }
        }
        if (steps.Any(s => s?["type"]?.GetValue<string>() == "ByteLevel")) return RobertaPreTokenizer.Instance;
        throw new OrtLoraException($"{path}: pre-tokenizer {node?.ToJsonString() ?? "none"} is not supported (byte-level BPE expected)");
    }

    /// <summary>The token a TemplateProcessing post-processor puts first ("<s>", "<|begin_of_text|>"), if any.</summary>
    static string? PostProcessorBos(JsonNode? node)
    {
        var steps = node?["type"]?.GetValue<string>() == "Sequence" ? node["processors"]!.AsArray().ToList() : [node];
        var template = steps.FirstOrDefault(s => s?["type"]?.GetValue<string>() == "TemplateProcessing");
        return template?["single"]?.AsArray().FirstOrDefault()?["SpecialToken"]?["id"]?.GetValue<string>();
    }

    static bool IsSentencePieceJson(string path) => IsSentencePieceJson(JsonNode.Parse(File.ReadAllText(path)));

    /// <summary>Llama/Mistral tokenizer.json: BPE over "▁"-escaped text with byte fallback, not byte-level.</summary>
    static bool IsSentencePieceJson(JsonNode? root) =>
        root?["model"]?["byte_fallback"]?.GetValue<bool>() == true
        || root?["pre_tokenizer"]?["type"]?.GetValue<string>() == "Metaspace"
        || root?["decoder"]?.ToJsonString().Contains("\"Metaspace\"") == true
        || root?["normalizer"]?.ToJsonString().Contains("\"Prepend\"") == true;

    static int? NonNegative(int id) => id >= 0 ? id : null;
}
