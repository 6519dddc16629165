using OrtLora.Training;
using Spectre.Console;

namespace OrtLora.Cli;

/// <summary>Runs the loop with a Spectre.Console progress bar on a terminal, plain lines otherwise.</summary>
public static class TrainingRunner
{
    public static TrainResult Run(TrainJob job, bool plainLog) => Run(reporter => Trainer.Run(job, reporter), job.Args.LoggingSteps, plainLog);

    /// <summary>Any training loop (`train`'s, `grpo`'s) with the progress bar or plain lines.</summary>
    public static TrainResult Run(Func<ITrainingReporter, TrainResult> loop, int loggingSteps, bool plainLog)
    {
        if (plainLog || Console.IsOutputRedirected || !AnsiConsole.Profile.Capabilities.Interactive)
            return loop(new PlainReporter(loggingSteps));
        TrainResult? result = null;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx => result = loop(new BarReporter(ctx)));
        return result!;
    }

    sealed class PlainReporter(int loggingSteps) : ITrainingReporter
    {
        public void Started(int totalSteps, int startStep, string summary) => Console.WriteLine(summary);
        public void Stepped(StepReport r)
        {
            if (r.Step % Math.Max(1, loggingSteps) == 0 || r.Step == r.TotalSteps)
                Console.WriteLine($"step {r.Step}/{r.TotalSteps}  epoch {r.Epoch}  loss {r.Loss:F4}  lr {r.LearningRate:G3}  grad_norm {r.GradNorm:F3}  {r.TokensPerSecond:F0} tok/s");
        }
        public void Evaluated(int step, double loss, IReadOnlyList<(string Name, double Value)> metrics) =>
            Console.WriteLine($"step {step}: eval_loss {loss:F4}  " + string.Join("  ", metrics.Select(m => $"{m.Name} {m.Value:F4}")));
        public void Info(string message) => Console.WriteLine(message);
    }

    sealed class BarReporter(ProgressContext ctx) : ITrainingReporter
    {
        ProgressTask? _task;
        public void Started(int totalSteps, int startStep, string summary)
        {
            AnsiConsole.MarkupLineInterpolated($"[grey]{summary}[/]");
            _task = ctx.AddTask("training", maxValue: totalSteps);
            _task.Value = startStep;
        }
        public void Stepped(StepReport r)
        {
            _task!.Value = r.Step;
            _task.Description = $"step {r.Step}/{r.TotalSteps} loss {r.Loss:F4} {r.TokensPerSecond:F0} tok/s";
        }
        public void Evaluated(int step, double loss, IReadOnlyList<(string Name, double Value)> metrics) =>
            AnsiConsole.MarkupLineInterpolated($"step {step}: eval_loss [bold]{loss:F4}[/] {string.Join(" ", metrics.Select(m => $"{m.Name} {m.Value:F4}"))}");
        public void Info(string message) => AnsiConsole.MarkupLineInterpolated($"[grey]{message}[/]");
    }
}
