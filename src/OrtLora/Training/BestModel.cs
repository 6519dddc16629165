namespace OrtLora.Training;

/// <summary>The Hugging Face Trainer's load_best_model_at_end and EarlyStoppingCallback, over metric_for_best_model
/// (eval_loss by default, lower is better; eval_accuracy, eval_f1 ... higher is better). The Trainer reloads the best checkpoint from disk, so it needs save and eval strategies that match; LoRA
/// parameters are small, so here the best ones are kept in memory (and in each checkpoint, for a resume) and any eval
/// schedule works.</summary>
public sealed class BestModel(TrainingArguments args)
{
    /// <summary>Prefix of the best parameters' tensors in a checkpoint's optimizer file.</summary>
    public const string CheckpointPrefix = "best.";

    public BestEval? Best { get; private set; }

    /// <summary>eval_loss at the best evaluation (what the run reports as its last eval loss once it loads the best
    /// model); null after a resume whose metric is another (a checkpoint keeps the metric only).</summary>
    public double? LossAtBest { get; private set; }

    /// <summary>The parameters at the best eval (only with load_best_model_at_end).</summary>
    public IReadOnlyDictionary<string, float[]>? Parameters { get; private set; }

    public bool Tracking => args.LoadBestModelAtEnd || args.EarlyStoppingPatience > 0;

    /// <summary>The metric's name in an evaluation's record, as the Trainer completes it ("accuracy": eval_accuracy).</summary>
    public string Metric { get; } = args.MetricForBestModel.StartsWith("eval_") || args.MetricForBestModel == "perplexity" ? args.MetricForBestModel
        : args.MetricForBestModel == "eval_perplexity" ? "perplexity" : "eval_" + args.MetricForBestModel;

    /// <summary>The Trainer's greater_is_better default: true unless the name ends in "loss"; perplexity is lower-better.</summary>
    public bool GreaterIsBetter { get; } = args.GreaterIsBetter ?? !(args.MetricForBestModel.EndsWith("loss") || args.MetricForBestModel.EndsWith("perplexity"));

    /// <summary>The metric's value in an evaluation's record; a name the record lacks is one error that lists what it has.</summary>
    public double ValueIn(System.Text.Json.Nodes.JsonObject record) =>
        record[Metric] is { } value ? (double)value
            : throw new OrtLoraException($"--metric-for-best-model {args.MetricForBestModel}: this run's evaluations report " +
                string.Join(", ", record.Select(kv => kv.Key).Where(k => k.StartsWith("eval_") || k == "perplexity")));

    /// <summary>Picks up where a checkpoint left off.</summary>
    public void Restore(BestEval? best, IReadOnlyDictionary<string, float[]>? parameters)
    {
        Best = best;
        Parameters = parameters;
        LossAtBest = Metric == "eval_loss" ? best?.Metric : null;
    }

    /// <summary>Records the eval at <paramref name="step"/>; true when early stopping says to stop. As in transformers, a
    /// strictly better value becomes the best, while the patience counter restarts only on an improvement larger than
    /// early_stopping_threshold.</summary>
    public bool Observe(int step, System.Text.Json.Nodes.JsonObject record, Func<IReadOnlyDictionary<string, float[]>> parameters)
    {
        if (!Tracking) return false;
        double value = ValueIn(record);
        bool isBest = double.IsFinite(value) && (Best is null || (GreaterIsBetter ? value > Best.Metric : value < Best.Metric));
        bool improved = isBest && (Best is null || Math.Abs(value - Best.Metric) > args.EarlyStoppingThreshold);
        int counter = improved ? 0 : (Best?.EvalsWithoutImprovement ?? 0) + 1;
        if (isBest)
        {
            Best = new BestEval(value, step, counter);
            LossAtBest = record["eval_loss"] is { } loss ? (double)loss : null;
            if (args.LoadBestModelAtEnd) Parameters = parameters();
        }
        else if (Best is not null) Best = Best with { EvalsWithoutImprovement = counter };
        return args.EarlyStoppingPatience > 0 && counter >= args.EarlyStoppingPatience;
    }
}
