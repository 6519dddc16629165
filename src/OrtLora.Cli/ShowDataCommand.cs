using System.CommandLine;
using System.Text;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>ortlora show-data FILE --tokenizer DIR: the first rows of a data file as training sees them (rendered
/// through the template, tokenized, cut at --max-seq-length), with the learned tokens marked, so the loss mask of a
/// chat template or prompt-completion file can be checked before a run.</summary>
public static class ShowDataCommand
{
    public const string LearnedOpen = "⟦", LearnedClose = "⟧";

    public static Command Create()
    {
        var data = new Argument<string>("data") { Description = "training data (.parquet or .jsonl)" };
        var rows = new Option<int>("--rows") { Description = "how many usable rows to show, from the file's start", DefaultValueFactory = _ => 3 };
        var reward = new Option<bool>("--reward") { Description = "preference data as `ortlora reward` tokenizes it: each sequence whole, with EOS; pairs over --max-length dropped" };
        var labelAllTokens = new Option<bool>("--label-all-tokens") { Description = "token classification data: a word's later tokens take its label too (run_ner's label_all_tokens)" };
        var dataOptions = new DataCliOptions();
        var cmd = new Command("show-data", $"Show the first rows of a data file as training tokenizes them, learned tokens between {LearnedOpen} {LearnedClose}") { data, rows, reward, labelAllTokens };
        foreach (var o in dataOptions.All) cmd.Options.Add(o);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            int count = parse.GetValue(rows);
            if (count < 1) throw new OrtLoraException("--rows must be at least 1");
            var tokenizerPath = parse.GetValue(dataOptions.Tokenizer) ?? throw new OrtLoraException("show-data needs --tokenizer (a tokenizer file or a model's directory)");
            var tokenizer = TokenizerLoader.Load(tokenizerPath);
            var tokenizerDir = Directory.Exists(tokenizerPath) ? tokenizerPath : Path.GetDirectoryName(Path.GetFullPath(tokenizerPath))!;
            bool forReward = parse.GetValue(reward);
            var options = dataOptions.Read(parse) with { RewardModeling = forReward, LabelAllTokens = parse.GetValue(labelAllTokens) };
            // RewardConfig's max_length, the default `reward` takes
            if (forReward && parse.GetResult(dataOptions.MaxSeqLength) is not { Implicit: false }) options = options with { MaxSeqLength = 1024 };
            using var training = TrainingData.Open(parse.GetValue(data)!, tokenizer, options, tokenizerConfig: TokenizerConfig.Read(tokenizerDir));
            if (forReward && !training.IsPreference)
                throw new OrtLoraException($"{training.Train.Path}: --reward shows preference pairs (chosen, rejected); this is {ParquetDataset.FormatName(training.Train.Format)} data");
            Console.WriteLine($"{Path.GetFileName(training.Train.Path)}: {ParquetDataset.FormatName(training.Train.Format)}" +
                (training.Train.IsConversational ? $" data, {training.ChatTemplate.Name} template" : " data") +
                (training.ClassLabels is { } labels ? $" ({labels}); each row whole, as a classifier reads it"
                    : forReward ? "; each sequence whole, as a reward model scores it" : $"; learned tokens between {LearnedOpen} {LearnedClose}"));
            // Preference rows show both sequences, chosen then rejected.
            bool pairs = training.IsPreference && !training.IsUnpaired;
            long previous = -1;
            foreach (var (row, example) in training.FileExamples().Take(pairs ? 2 * count : count))
            {
                var name = !pairs ? $"row {row}" : $"row {row} {(row == previous ? "rejected" : "chosen")}";
                previous = row;
                if (example is null)
                {
                    Console.WriteLine(forReward ? $"── row {row}: longer than {training.Options.MaxSeqLength} tokens (dropped from training)"
                        : $"── row {row}: nothing learned within {training.Options.MaxSeqLength} tokens (dropped from training)");
                    continue;
                }
                if (training.IsTokenClassification)
                {
                    // each token (␣ for a space), and the class of each labelled one (a word's first token)
                    Console.WriteLine($"── {name}: {example.Length} tokens, {example.TrainedTokens} labelled");
                    Console.WriteLine(string.Join(" ", example.InputIds.Select((id, t) => tokenizer.Decode([id]).Replace(' ', '␣') +
                        (example.Labels[t] == ExampleEncoder.IgnoreIndex ? "" : "/" + training.ClassLabels!.Name(example.Labels[t])))));
                    continue;
                }
                if (training.ClassLabels is { } classes)
                {
                    // a classifier reads the whole row and learns its class, which the last token's label holds
                    Console.WriteLine($"── {name}: {example.Length} tokens, " + (classes.IsRegression
                        ? $"target {example.RowValue.ToString(System.Globalization.CultureInfo.InvariantCulture)}"
                        : classes.IsMultiLabel ? $"labels [{string.Join(", ", Enumerable.Range(0, classes.Count).Where(c => example.RowTargets![c] > 0).Select(classes.Name))}]"
                        : $"label {example.Labels[^1]} ({classes.Name(example.Labels[^1])})"));
                    Console.WriteLine(tokenizer.Decode(example.InputIds));
                    continue;
                }
                Console.WriteLine(forReward ? $"── {name}: {example.Length} tokens" : $"── {name}: {example.Length} tokens, {example.TrainedTokens} learned");
                Console.WriteLine(forReward ? tokenizer.Decode(example.InputIds) : Marked(tokenizer, example));
            }
        }));
        return cmd;
    }

    /// <summary>The example's text, decoded run by run of learned and read tokens, the learned runs between markers.</summary>
    public static string Marked(TextTokenizer tokenizer, TokenizedExample example)
    {
        var text = new StringBuilder();
        for (int start = 0, end; start < example.Length; start = end)
        {
            bool learned = example.Labels[start] != ExampleEncoder.IgnoreIndex;
            for (end = start; end < example.Length && (example.Labels[end] != ExampleEncoder.IgnoreIndex) == learned; end++) { }
            var piece = tokenizer.Decode(example.InputIds[start..end]);
            text.Append(learned ? LearnedOpen + piece + LearnedClose : piece);
        }
        return text.ToString();
    }
}
