using System.CommandLine;
using OrtLora.Training;

namespace OrtLora.Cli;

/// <summary>The Trainer's report_to and logging_dir, shared by every training command.</summary>
public sealed class ReportingCliOptions
{
    public Option<string[]> ReportTo { get; } = new("--report-to")
    {
        Description = "where the logs also go (the Trainer's report_to): none, or tensorboard (event files in --logging-dir); all: every integration ortlora has",
        DefaultValueFactory = _ => ["none"],
        AllowMultipleArgumentsPerToken = true,
    };
    public Option<string?> LoggingDir { get; } = new("--logging-dir") { Description = "TensorBoard's log directory (default: OUTPUT/runs/DATE_TIME_HOST, as the Trainer's)" };

    public ReportingCliOptions() => ReportTo.AcceptOnlyFromAmong("none", "tensorboard", "all");

    public IEnumerable<Option> All => [ReportTo, LoggingDir];

    public void Apply(ParseResult parse, TrainingArguments args)
    {
        args.ReportTo = [.. parse.GetValue(ReportTo)!];
        args.LoggingDir = parse.GetValue(LoggingDir);
        if (args.ReportTo.Contains("none") && args.ReportTo.Count > 1)
            throw new OrtLoraException($"--report-to none goes alone (got {string.Join(" ", args.ReportTo)})");
    }
}
