namespace OrtLora.Training;

/// <summary>The Hugging Face Trainer's load_best_model_at_end and EarlyStoppingCallback, over the eval loss (lower is
/// better). The Trainer reloads the best checkpoint from disk, so it needs save and eval strategies that match; LoRA
/// parameters are small, so here the best ones are kept in memory (and in each checkpoint, for a resume) and any eval
/// schedule works.</summary>
public sealed class BestModel(TrainingArguments args)
{
    /// <summary>Prefix of the best parameters' tensors in a checkpoint's optimizer file.</summary>
    public const string CheckpointPrefix = "best.";

    public BestEval? Best { get; private set; }

    /// <summary>The parameters at the best eval (only with load_best_model_at_end).</summary>
    public IReadOnlyDictionary<string, float[]>? Parameters { get; private set; }

    public bool Tracking => args.LoadBestModelAtEnd || args.EarlyStoppingPatience > 0;

    /// <summary>Picks up where a checkpoint left off.</summary>
    public void Restore(BestEval? best, IReadOnlyDictionary<string, float[]>? parameters)
    {
        Best = best;
        Parameters = parameters;
    }

    /// <summary>Records the eval at <paramref name="step"/>; true when early stopping says to stop. As in transformers, a
    /// strictly lower loss becomes the best, while the patience counter restarts only on an improvement larger than
    /// early_stopping_threshold.</summary>
    public bool Observe(int step, double evalLoss, Func<IReadOnlyDictionary<string, float[]>> parameters)
    {
        if (!Tracking) return false;
        bool isBest = double.IsFinite(evalLoss) && (Best is null || evalLoss < Best.Metric);
        bool improved = isBest && (Best is null || Best.Metric - evalLoss > args.EarlyStoppingThreshold);
        int counter = improved ? 0 : (Best?.EvalsWithoutImprovement ?? 0) + 1;
        if (isBest)
        {
            Best = new BestEval(evalLoss, step, counter);
            if (args.LoadBestModelAtEnd) Parameters = parameters();
        }
        else if (Best is not null) Best = Best with { EvalsWithoutImprovement = counter };
        return args.EarlyStoppingPatience > 0 && counter >= args.EarlyStoppingPatience;
    }
}
