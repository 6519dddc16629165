using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training;

/// <summary>`ortlora classify`'s options.</summary>
/// <param name="NumLabels">num_labels; null: from the training data's labels (<see cref="ClassLabels.From"/>)</param>
/// <param name="TaskType">PEFT's task_type: SEQ_CLS (a class a row, AutoModelForSequenceClassification) or TOKEN_CLS
/// (a class a word, AutoModelForTokenClassification, on <see cref="DatasetFormat.TokenClassification"/> data)</param>
/// <param name="LabelAllTokens">TOKEN_CLS: a word's later tokens take its label too (run_ner's label_all_tokens)</param>
/// <param name="ClassifierDropout">TOKEN_CLS: dropout on the head's input while training; null: transformers'
/// classifier_dropout from the config.json beside the model, else its hidden_dropout, else 0.1</param>
public sealed record ClassificationOptions(int? NumLabels = null, string TaskType = "SEQ_CLS", bool LabelAllTokens = false, double? ClassifierDropout = null)
{
    public bool PerToken => TaskType == "TOKEN_CLS";
}

/// <summary>What the loop settles before its first step: the classes of a classifier's data, the adapters to train,
/// whether dropout is on, and which inits a loop can run.</summary>
public static partial class Trainer
{
    /// <summary>The classes of `ortlora classify`'s training file (and its num_labels).</summary>
    static ClassLabels ReadClasses(TrainJob job, ClassificationOptions options)
    {
        if (job.Args.Preference.IsRewardModel || job.Distillation is not null)
            throw new OrtLoraException("sequence classification has its own loss: not a reward model's or a distillation's");
        if (options.NumLabels is < 1) throw new OrtLoraException($"--num-labels must be at least 1 (1: a regression), got {options.NumLabels}");
        if (options.TaskType is not ("SEQ_CLS" or "TOKEN_CLS"))
            throw new OrtLoraException($"--task-type '{options.TaskType}': a classifier's task type is SEQ_CLS (a class a row) or TOKEN_CLS (a class a word)");
        if (options.ClassifierDropout is < 0 or >= 1) throw new OrtLoraException($"--classifier-dropout must be in [0, 1), got {options.ClassifierDropout}");
        if (!options.PerToken && options.LabelAllTokens) throw new OrtLoraException("--label-all-tokens labels a word's tokens: it is for --task-type TOKEN_CLS");
        if (!options.PerToken && options.ClassifierDropout is not null)
            throw new OrtLoraException("--classifier-dropout is a token classifier's (transformers' ForSequenceClassification heads of causal LMs have none): it is for --task-type TOKEN_CLS");
        using var file = ParquetDataset.Open(job.DataPath, options.PerToken ? DatasetFormat.TokenClassification : DatasetFormat.Classification, job.Data.TextColumn,
            labelColumn: job.Data.LabelColumn, textColumnNames: options.PerToken ? null : job.Data.TextColumnNames, textColumnDelimiter: job.Data.TextColumnDelimiter);
        return ClassLabels.From(file, options.NumLabels);
    }

    /// <summary>TRL's disable_dropout: as asked, else on for preference data (DPO, KTO, ORPO, CPO and reward models) and
    /// distillation, whose TRL configs default to it; said when it silences the model's lora_dropout.</summary>
    static bool DropoutDisabled(TrainingArguments args, TrainingData data, TrainJob job, LoraModel lora, ITrainingReporter reporter)
    {
        bool disabled = args.DisableDropout ?? (data.IsPreference || job.Distillation is not null);
        if (disabled && lora.Config.LoraDropout > 0)
            reporter.Info($"lora_dropout {lora.Config.LoraDropout} is off while training (TRL's disable_dropout); --disable-dropout false keeps it");
        return disabled;
    }

    /// <summary>The loops that generate their own completions have no fixed training batches for EVA or CorDA to read.</summary>
    internal static void RefuseDataInits(LoraModel lora, string source)
    {
        if (lora.Config.Init is "eva" or "corda")
            throw new OrtLoraException($"{source}: init_lora_weights {lora.Config.Init} draws the adapters from the activations of the training batches, which `train`, `reward` and `distill` " +
                "compute; this loop samples its own completions. Inject with another init, or start from an adapter trained with it (--init-from)");
    }

    /// <summary>The model's adapters: its own when it already carries some, else injected from <paramref name="initFrom"/>'s
    /// PEFT adapter or with <paramref name="config"/>.</summary>
    internal static LoraModel InjectUnlessInjected(OnnxModel model, string? initFrom, LoraConfig config)
    {
        var lora = LoraModel.Read(model);
        if (lora is not null && initFrom is not null)
            throw new OrtLoraException($"{model.Source}: the model already has LoRA adapters; --init-from is for a plain model");
        return lora ?? (initFrom is { } dir ? LoraInjector.Inject(model, PeftAdapter.Load(dir)) : LoraInjector.Inject(model, config));
    }
}
