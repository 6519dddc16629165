using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Graphs;

/// <summary>graphs/tiny: the committed demo model, its tokenizer (trained here on the demo dataset) and the dataset.
/// Everything is a pure function of the code, so regenerating gives the same bytes.</summary>
public static class TinyAssets
{
    public const string EndOfText = "<|endoftext|>";


    /// <summary>graphs/tiny under the repository root (found by walking up to OrtLora.sln).</summary>
    public static string DefaultDirectory()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "OrtLora.sln"))) return Path.Combine(dir.FullName, "graphs", "tiny");
        throw new OrtLoraException("OrtLora.sln not found above the current directory: give -o DIR");
    }

    /// <summary>Writes every file of graphs/tiny into <paramref name="directory"/>; returns a one-line summary.</summary>
    public static string Write(string directory)
    {
        Directory.CreateDirectory(directory);
        var shape = LlamaShape.Tiny;
        var (train, eval) = DemoDataset.Build();
        DemoDataset.Write(Path.Combine(directory, "demo.parquet"), train);
        DemoDataset.Write(Path.Combine(directory, "demo_eval.parquet"), eval);
        DemoPreferences.Write(Path.Combine(directory, "demo_preferences.parquet"), DemoPreferences.Build(train));
        DemoPreferences.Write(Path.Combine(directory, "demo_preferences_eval.parquet"), DemoPreferences.Build(eval));
        // GRPO's prompt-only data: the Alpaca prompt, and the answer as the solution column its rewards compare with
        foreach (var (rows, name) in new[] { (train, "demo_prompts.parquet"), (eval, "demo_prompts_eval.parquet") })
            DemoDataset.WriteStrings(Path.Combine(directory, name), ["prompt", "solution"],
                [rows.Select(r => AlpacaText(r with { Output = "" })), rows.Select(r => r.Output)]);

        var bpe = TrainTokenizer(train, shape.VocabSize);
        ModelFiles.WriteAtomically(Path.Combine(directory, "vocab.json"), bpe.VocabJson());
        ModelFiles.WriteAtomically(Path.Combine(directory, "merges.txt"), bpe.MergesText());
        ModelFiles.WriteAtomically(Path.Combine(directory, "tokenizer_config.json"), TokenizerConfigJson(bpe, shape));

        int endOfText = bpe.SpecialId(EndOfText);
        ModelFiles.WriteModel(shape, GraphsRequest.DefaultSeed, directory, new LlamaOptions(), externalData: false, endOfText, endOfText);
        return $"{shape.ParameterCount / 1e6:F2}M parameters, vocabulary {bpe.VocabSize} ({bpe.Merges.Count} merges), " +
               $"{train.Count} training rows, {eval.Count} eval rows";
    }

    /// <summary>The tokenizer learns from the training rows as a prompt template would show them (Alpaca's), so the
    /// template's words and the answers' fixed phrases get their own tokens.</summary>
    public static ByteLevelBpe TrainTokenizer(IEnumerable<DemoRow> rows, int vocabSize) =>
        ByteLevelBpe.Train(rows.Select(AlpacaText), vocabSize, [EndOfText]);

    public static string AlpacaText(DemoRow row) => row.Input == ""
        ? $"Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{row.Instruction}\n\n### Response:\n{row.Output}"
        : $"Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{row.Instruction}\n\n### Input:\n{row.Input}\n\n### Response:\n{row.Output}";

    /// <summary>Hugging Face's tokenizer_config.json for a GPT-2 tokenizer whose only special token is &lt;|endoftext|&gt;.</summary>
    static string TokenizerConfigJson(ByteLevelBpe bpe, LlamaShape shape)
    {
        var config = new JsonObject
        {
            ["tokenizer_class"] = "GPT2Tokenizer",
            ["bos_token"] = EndOfText,
            ["eos_token"] = EndOfText,
            ["pad_token"] = EndOfText,
            ["unk_token"] = EndOfText,
            ["model_max_length"] = shape.MaxPositionEmbeddings,
            ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = new JsonObject
            {
                [bpe.SpecialId(EndOfText).ToString()] = new JsonObject
                {
                    ["content"] = EndOfText, ["lstrip"] = false, ["normalized"] = false,
                    ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
                },
            },
        };
        return config.ToJsonString(new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "\n";
    }
}
