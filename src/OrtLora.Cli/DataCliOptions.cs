using System.CommandLine;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>How Parquet rows become token sequences, shared by `train` and `eval` (TRL's / the Trainer's names).</summary>
public sealed class DataCliOptions
{
    public Option<string> Format { get; } = new("--dataset-format") { Description = "auto, text, instruction, chat or prompt-completion (TRL's: prompt and completion columns, text or messages)", DefaultValueFactory = _ => "auto" };
    public Option<string> TextColumn { get; } = new("--dataset-text-field", "--text-column") { Description = "column of plain-text data (TRL's dataset_text_field)", DefaultValueFactory = _ => "text" };
    public Option<string?> ChatTemplate { get; } = new("--chat-template") { Description = "chatml, llama2 or a Jinja template file (default: the tokenizer's own template, run as transformers runs it, else chatml)" };
    public Option<string?> Tokenizer { get; } = new("--tokenizer") { Description = "tokenizer file or directory (default: beside the model)" };
    public Option<int> MaxSeqLength { get; } = new("--max-seq-length", "--max-length") { Description = "truncate examples to this many tokens (TRL's max_seq_length, now max_length)", DefaultValueFactory = _ => 512 };
    public Option<bool> TrainOnPrompt { get; } = new("--train-on-prompt") { Description = "also compute the loss on prompt tokens" };

    public DataCliOptions() => Format.AcceptOnlyFromAmong("auto", "text", "instruction", "chat", "prompt-completion");

    public IEnumerable<Option> All => [Format, TextColumn, ChatTemplate, Tokenizer, MaxSeqLength, TrainOnPrompt];

    public DataOptions Read(ParseResult parse) => new()
    {
        Format = ParquetDataset.ParseFormat(parse.GetValue(Format)!), TextColumn = parse.GetValue(TextColumn)!,
        MaxSeqLength = parse.GetValue(MaxSeqLength), TrainOnPrompt = parse.GetValue(TrainOnPrompt), ChatTemplate = parse.GetValue(ChatTemplate),
    };
}
