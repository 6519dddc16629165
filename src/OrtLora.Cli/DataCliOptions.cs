using System.CommandLine;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>How Parquet rows become token sequences, shared by `train` and `eval` (TRL's / the Trainer's names).</summary>
public sealed class DataCliOptions
{
    public Option<string> Format { get; } = new("--dataset-format") { Description = "auto, text, instruction, chat, prompt-completion (TRL's: prompt and completion columns, text or messages), preference (TRL's: chosen and rejected, with or without prompt; trains with the DPO loss), unpaired-preference (prompt, completion, label; KTO), prompt-only (TRL's: a prompt column, for ortlora grpo), classification (text and label; `classify` and a classifier's eval read any file so) or token-classification (words and a label a word; `classify --task-type TOKEN_CLS`)", DefaultValueFactory = _ => "auto" };
    public Option<string> TextColumn { get; } = new("--dataset-text-field", "--text-column") { Description = "column of plain-text data (TRL's dataset_text_field)", DefaultValueFactory = _ => "text" };
    public Option<string?> LabelColumn { get; } = new("--label-column-name") { Description = "classification data: the label column (run_ner's and run_classification's label_column_name; default: label or labels, a token classifier's ner_tags, tags, ...)" };
    public Option<string?> TextColumnNames { get; } = new("--text-column-names") { Description = "classification data: text columns, comma-separated, joined into one text (run_classification's text_column_names)" };
    public Option<string> TextColumnDelimiter { get; } = new("--text-column-delimiter") { Description = "what joins --text-column-names (run_classification's text_column_delimiter)", DefaultValueFactory = _ => " " };
    public Option<string?> ChatTemplate { get; } = new("--chat-template") { Description = "chatml, llama2 or a Jinja template file (default: the tokenizer's own template, run as transformers runs it, else chatml)" };
    public Option<string?> ChatTemplateKwargs { get; } = new("--chat-template-kwargs") { Description = "JSON object of variables for a Jinja chat template, as TRL's chat_template_kwargs (e.g. '{\"enable_thinking\": false}' for Qwen3)" };
    public Option<string?> Tokenizer { get; } = new("--tokenizer") { Description = "tokenizer file or directory (default: beside the model)" };
    public Option<int> MaxSeqLength { get; } = new("--max-seq-length", "--max-length") { Description = "truncate examples to this many tokens (TRL's max_seq_length, now max_length)", DefaultValueFactory = _ => 512 };
    public Option<bool> TrainOnPrompt { get; } = new("--train-on-prompt") { Description = "also compute the loss on prompt tokens" };
    public Option<int> MaxPromptLength { get; } = new("--max-prompt-length") { Description = "preference data: keep the prompt's last N tokens (TRL's DPOConfig)", DefaultValueFactory = _ => 512 };
    public Option<int?> MaxCompletionLength { get; } = new("--max-completion-length") { Description = "preference data: keep each completion's first N tokens (default: all)" };
    public Option<string> TruncationMode { get; } = new("--truncation-mode") { Description = "preference data: which end of prompt + completion a cut to --max-length keeps", DefaultValueFactory = _ => "keep_end" };

    public DataCliOptions()
    {
        Format.AcceptOnlyFromAmong("auto", "text", "instruction", "chat", "prompt-completion", "preference", "unpaired-preference", "prompt-only", "classification", "token-classification");
        TruncationMode.AcceptOnlyFromAmong("keep_end", "keep_start");
    }

    public IEnumerable<Option> All => [Format, TextColumn, LabelColumn, TextColumnNames, TextColumnDelimiter, ChatTemplate, ChatTemplateKwargs, Tokenizer, MaxSeqLength, TrainOnPrompt, MaxPromptLength, MaxCompletionLength, TruncationMode];

    public DataOptions Read(ParseResult parse) => new()
    {
        Format = ParquetDataset.ParseFormat(parse.GetValue(Format)!), TextColumn = parse.GetValue(TextColumn)!, LabelColumn = parse.GetValue(LabelColumn),
        TextColumnNames = parse.GetValue(TextColumnNames) is { } names ? [.. names.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)] : null,
        TextColumnDelimiter = parse.GetValue(TextColumnDelimiter)!,
        MaxSeqLength = parse.GetValue(MaxSeqLength), TrainOnPrompt = parse.GetValue(TrainOnPrompt), ChatTemplate = parse.GetValue(ChatTemplate),
        ChatTemplateKwargs = parse.GetValue(ChatTemplateKwargs),
        MaxPromptLength = parse.GetValue(MaxPromptLength), MaxCompletionLength = parse.GetValue(MaxCompletionLength), TruncationMode = parse.GetValue(TruncationMode)!,
    };
}
