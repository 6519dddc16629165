using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Training;

/// <summary>What the loop records: one JSON line per logging step in metrics.jsonl (appended and flushed, so a
/// killed run keeps its history), a loss curve in loss.png, and with --report-to tensorboard the same numbers as
/// TensorBoard scalars under the Trainer's tags (train/loss, eval/loss, ...).</summary>
public sealed class TrainingLog
{
    readonly string _metricsPath;
    readonly TensorBoard.TensorBoardWriter? _tensorBoard;
    public List<(int Step, double Loss)> TrainLoss { get; } = new();
    public List<(int Step, double Loss)> EvalLoss { get; } = new();

    public TrainingLog(string outputDir) => _metricsPath = Path.Combine(outputDir, "metrics.jsonl");

    /// <summary>The log <paramref name="args"/> ask for: metrics.jsonl in the output directory, and TensorBoard event
    /// files in --logging-dir (default OUTPUT/runs/DATE_TIME_HOST, as the Trainer names it) when reported to.</summary>
    public TrainingLog(TrainingArguments args) : this(args.OutputDir)
    {
        if (!args.ReportsToTensorBoard) return;
        var logDir = args.LoggingDir ?? Path.Combine(args.OutputDir, "runs", $"{DateTime.Now:MMMdd_HH-mm-ss}_{Environment.MachineName}");
        try { _tensorBoard = new TensorBoard.TensorBoardWriter(logDir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OrtLoraException($"{logDir}: cannot write TensorBoard's event file ({e.Message})", e);
        }
    }

    /// <summary>The event file being written, or null without TensorBoard.</summary>
    public string? TensorBoardFile => _tensorBoard?.Path;

    public void Append(JsonObject record)
    {
        int step = record["step"]!.GetValue<int>();
        if (record["loss"] is { } l) TrainLoss.Add((step, l.GetValue<double>()));
        if (record["eval_loss"] is { } e) EvalLoss.Add((step, e.GetValue<double>()));
        File.AppendAllText(_metricsPath, record.ToJsonString(new JsonSerializerOptions { WriteIndented = false }) + "\n");
        _tensorBoard?.Scalars(step, TensorBoardScalars(record));
    }

    /// <summary>transformers' rewrite_logs: eval_x becomes eval/x and every other number train/x; the step is the
    /// event's own. An evaluation's perplexity (which the Trainer does not log) goes with its eval/ values.</summary>
    public static IEnumerable<(string Tag, double Value)> TensorBoardScalars(JsonObject record)
    {
        bool evaluation = record.ContainsKey("eval_loss");
        foreach (var (key, node) in record)
        {
            if (key == "step" || node is not JsonValue value || value.GetValueKind() != JsonValueKind.Number) continue;
            double number = double.Parse(value.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture);
            yield return (key.StartsWith("eval_", StringComparison.Ordinal) ? "eval/" + key["eval_".Length..]
                : evaluation && key == "perplexity" ? "eval/perplexity" : "train/" + key, number);
        }
    }

    /// <summary>Rereads an existing metrics.jsonl (on resume), keeping records up to <paramref name="upToStep"/>.</summary>
    public void Reload(int upToStep)
    {
        if (!File.Exists(_metricsPath)) return;
        var kept = new List<string>();
        foreach (var line in File.ReadAllLines(_metricsPath))
        {
            if (string.IsNullOrWhiteSpace(line)) continue;
            var r = JsonNode.Parse(line)!.AsObject();
            if (r["step"]!.GetValue<int>() > upToStep) continue;
            kept.Add(line);
            if (r["loss"] is { } l) TrainLoss.Add((r["step"]!.GetValue<int>(), l.GetValue<double>()));
            if (r["eval_loss"] is { } e) EvalLoss.Add((r["step"]!.GetValue<int>(), e.GetValue<double>()));
        }
        File.WriteAllLines(_metricsPath, kept);
    }

    public void SavePlot(string path)
    {
        var plot = new ScottPlot.Plot();
        if (TrainLoss.Count > 0)
        {
            var s = plot.Add.Scatter(TrainLoss.Select(p => (double)p.Step).ToArray(), TrainLoss.Select(p => p.Loss).ToArray());
            s.LegendText = "train loss";
        }
        if (EvalLoss.Count > 0)
        {
            var s = plot.Add.Scatter(EvalLoss.Select(p => (double)p.Step).ToArray(), EvalLoss.Select(p => p.Loss).ToArray());
            s.LegendText = "eval loss";
        }
        plot.XLabel("step");
        plot.YLabel("loss");
        plot.ShowLegend();
        var tmp = path + ".tmp.png";
        plot.SavePng(tmp, 800, 500);
        File.Move(tmp, path, overwrite: true);
    }
}
