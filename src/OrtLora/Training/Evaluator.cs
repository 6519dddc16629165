using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using OrtLora.Training.Reward;

namespace OrtLora.Training;

/// <summary>What `ortlora eval` measured: the causal-LM loss averaged over every scored token of the data, as the
/// Trainer's evaluate() reports it, and its exp; with preference data the DPO loss over the pairs and TRL's
/// <see cref="Rewards"/> (rewards/chosen, rewards/accuracies, ...).</summary>
public sealed record EvalResult(double Loss, double MeanTokenAccuracy, long Tokens, int Batches, string DataSummary)
{
    public double Perplexity => Math.Exp(Loss);
    /// <summary>Preference data: the pairs scored and TRL's metrics by name; null otherwise.</summary>
    public IReadOnlyDictionary<string, double>? Rewards { get; init; }
    public long Pairs { get; init; }
    /// <summary>Classification data: the classes; <see cref="Tokens"/> is then the rows, and <see cref="Metrics"/> the
    /// GLUE metrics (<see cref="ClassificationMetrics"/>).</summary>
    public ClassLabels? Classes { get; init; }
    public IReadOnlyDictionary<string, double>? Metrics { get; init; }
    /// <summary>A token classifier's evaluation: <see cref="Tokens"/> is the labelled tokens, <see cref="Metrics"/> seqeval's.</summary>
    public bool PerToken { get; init; }
    /// <summary>The data had no labels (a test split): the rows were only predicted, with no loss or metrics.</summary>
    public bool PredictionsOnly { get; init; }
}

/// <summary>Evaluates any causal LM on Parquet data with the training engine's eval graph (the same loss, batches and
/// token weighting as `train --eval-data`): a base model, an injected or trained one, or a merged one.</summary>
public static class Evaluator
{
    /// <param name="adapterDir">a PEFT adapter directory to evaluate on the (plain) model, injected in memory</param>
    /// <param name="referenceModel">preference data: the DPO reference model (default with an adapter: the plain model)</param>
    /// <param name="preference">preference data: the DPO loss's options</param>
    /// <param name="distillation">score the divergence to this teacher (`distill`'s loss, its β) instead of the
    /// cross-entropy; on-policy options do not apply (an evaluation scores the data's completions)</param>
    public static EvalResult Run(string modelPath, string dataPath, DataOptions options, string? tokenizerPath = null,
        string device = "cpu", string? epLibrary = null, string? adapterDir = null, string? referenceModel = null, PreferenceOptions? preference = null,
        DistillationOptions? distillation = null, string? predictionsPath = null)
    {
        var tokenizerSource = tokenizerPath ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        var tokenizer = TokenizerLoader.Load(tokenizerSource);
        using var model = Scorable(modelPath, adapterDir, tokenizerSource);
        VocabularyCheck.Require(tokenizer, model);
        var tokenizerDir = Directory.Exists(tokenizerSource) ? tokenizerSource : Path.GetDirectoryName(Path.GetFullPath(tokenizerSource))!;
        if (SequenceClassifier.IsTokenClassifier(model) || LoraModel.Read(model)?.Config.TaskType == "TOKEN_CLS")
            return ScoreClassifier(model, dataPath, options, tokenizer, tokenizerDir, SequenceClassifier.DeclaredLabels(model)
                ?? throw new OrtLoraException($"{model.Source}: a token classifier's logits are [batch, sequence, labels] with the labels declared"), perToken: true, device, epLibrary, predictionsPath);
        if (options.LabelAllTokens)
            throw new OrtLoraException($"{modelPath}: --label-all-tokens scores every token of a word for a token classifier; this model is not one");
        bool rewardModel = SequenceClassifier.IsClassifier(model);
        // a classifier of classes, or a regression (num_labels 1 too, as a reward model): told by the model's
        // problem_type, or by labelled data that is not pairs (chosen, rejected)
        if (rewardModel && SequenceClassifier.NumLabels(model) is int numLabels
            && (numLabels > 1 || SequenceClassifier.Labels(model) is { IsRegression: true } || options.Format == DatasetFormat.Classification
                || options.Format == DatasetFormat.Auto && ParquetDataset.ReadColumns(dataPath) is var columns
                    && (columns.Contains("label") || columns.Contains("labels")) && !(columns.Contains("chosen") && columns.Contains("rejected"))))
            return ScoreClassifier(model, dataPath, options, tokenizer, tokenizerDir, numLabels, perToken: false, device, epLibrary, predictionsPath);
        if (predictionsPath is not null)
            throw new OrtLoraException($"{modelPath}: --predictions writes a classifier's predictions (from `ortlora classify`); this model is {(rewardModel ? "a reward model" : "a causal LM")}");
        // Every row of the file is evaluation data: it is opened as the eval file, with no split of a training file.
        using var data = TrainingData.Open(dataPath, tokenizer, options with { EvalSplit = 0, Shuffle = false, RewardModeling = rewardModel }, dataPath,
            TokenizerConfig.Read(tokenizerDir));
        if (data.IsClassification)
            throw new OrtLoraException($"{dataPath}: classification data (text and label) is scored by a classifier or a regression (`ortlora classify` makes one); {Path.GetFileName(model.Source)} is " +
                (rewardModel ? "a reward model (num_labels 1)" : "a causal LM"));
        if (rewardModel) return ScoreRewardModel(model, data, dataPath, device, epLibrary);
        if (data.IsPreference) return ScorePreferences(model, data, tokenizer, dataPath, referenceModel ?? (adapterDir is not null ? modelPath : null),
            preference ?? new PreferenceOptions(), device, epLibrary);
        if (distillation is not null && data.IsPreference)
            throw new OrtLoraException($"{dataPath}: the divergence to a teacher is scored on completions, not on preference pairs");
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Device: device, EpLibrary: epLibrary,
            DistillationBeta: distillation?.Beta, StaticShapes: options.PadToMaxLength));
        using var teacher = distillation is null ? null : new Distillation(distillation with { Lmbda = 0, SeqKd = false }, model, session, data, seed: 0);
        var score = Trainer.Score(session, data, prepare: teacher is null ? null : teacher.WithTeacher);
        if (score.Tokens == 0) throw new OrtLoraException($"{dataPath}: no token to score ({data.Summary})");
        return new EvalResult(score.Loss, score.MeanTokenAccuracy, score.Tokens, score.Batches, data.Summary.ToString());
    }

    /// <summary>The model as the engine scores it, with the adapter injected. The engine evaluates models with LoRA
    /// parameters: a plain model gets rank-1 adapters whose B is zero, which add exactly 0 to every layer.</summary>
    /// <remarks>An adapter of a reward model (task_type SEQ_CLS) on a causal LM: the model becomes the classifier
    /// `ortlora reward` trained (<see cref="SequenceClassifier"/>), whose score head the adapter holds.</remarks>
    static OnnxModel Scorable(string modelPath, string? adapterDir, string? tokenizerPath)
    {
        var model = OnnxModel.Load(modelPath);
        try
        {
            if (adapterDir is not null)
            {
                if (LoraModel.Read(model) is not null)
                    throw new OrtLoraException($"{modelPath}: the model already has LoRA adapters; --adapter is for a plain (or merged) model");
                var adapter = PeftAdapter.Load(adapterDir);
                RewardModeling.ConvertForAdapter(model, adapter, modelPath, tokenizerPath);
                LoraInjector.Inject(model, adapter);
            }
            if (LoraModel.Read(model) is null) LoraInjector.Inject(model, new LoraConfig { R = 1, TargetModules = ["all-linear"] });
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>A classifier (or a regression) on classification data: the loss and the metrics `classify` reports
    /// (GLUE's for a sequence classifier, seqeval's for a token classifier). The classes' names are the model's (its
    /// id2label, written by `classify`), else the data's own, sorted.</summary>
    /// <param name="perToken">a token classifier, on words and their labels</param>
    /// <param name="predictionsPath">also write each row's prediction there (<see cref="ClassifierPredictions"/>)</param>
    static EvalResult ScoreClassifier(OnnxModel model, string dataPath, DataOptions options, TextTokenizer tokenizer, string tokenizerDir, int numLabels,
        bool perToken, string device, string? epLibrary, string? predictionsPath)
    {
        var format = perToken ? DatasetFormat.TokenClassification : DatasetFormat.Classification;
        var classes = SequenceClassifier.Labels(model) ?? (numLabels == 1 && !perToken ? ClassLabels.Regression : null);
        int Predict(ClassLabels known) => perToken ? ClassifierPredictions.WriteTokens(model, dataPath, tokenizer, known, options, predictionsPath!)
            : ClassifierPredictions.Write(model, dataPath, tokenizer, known, options, predictionsPath!);
        if (!Labelled(dataPath, options, format))
        {
            // a test split (no label column, or every label null or -1): predicted, not scored
            if (predictionsPath is null)
                throw new OrtLoraException($"{dataPath}: no labels to score the {(perToken ? "token " : "")}classifier against; --predictions FILE writes its predictions for these rows");
            classes ??= ClassLabels.Of(numLabels);
            int rows = Predict(classes);
            return new EvalResult(double.NaN, double.NaN, rows, 0, $"{rows} rows predicted")
                { Classes = classes, Metrics = new Dictionary<string, double>(), PredictionsOnly = true, PerToken = perToken };
        }
        if (classes is null)
        {
            using var file = ParquetDataset.Open(dataPath, format, options.TextColumn, labelColumn: options.LabelColumn, textColumnNames: options.TextColumnNames, textColumnDelimiter: options.TextColumnDelimiter);
            classes = ClassLabels.From(file, numLabels);
        }
        if (classes.Count != numLabels) throw new OrtLoraException($"{model.Source}: a classifier of {numLabels} labels, and its id2label names {classes.Count}");
        using var data = TrainingData.Open(dataPath, tokenizer, options with { EvalSplit = 0, Shuffle = false, Format = format, ClassLabels = classes },
            dataPath, TokenizerConfig.Read(tokenizerDir));
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Device: device, EpLibrary: epLibrary, Classification: !perToken,
            TokenClassification: perToken, MultiLabel: classes.IsMultiLabel));
        var metrics = ClassificationMetrics.For(classes, perToken);
        var score = Trainer.Score(session, data, classified: metrics);
        if (score.Tokens == 0) throw new OrtLoraException($"{dataPath}: no {(perToken ? "labelled word" : "row")} to classify ({data.Summary})");
        var record = new System.Text.Json.Nodes.JsonObject();
        metrics.Report(record);
        if (predictionsPath is not null) Predict(classes);
        return new EvalResult(score.Loss, score.MeanTokenAccuracy, score.Tokens, score.Batches, data.Summary.ToString())
        {
            Classes = classes, Metrics = record.ToDictionary(kv => kv.Key, kv => (double)kv.Value!), PerToken = perToken,
        };
    }

    /// <summary>Whether classification data has a label to score against: a label column with a value other than null
    /// or a negative integer (datasets' mark of an unlabelled row) somewhere; a token classifier's, a row with labels.</summary>
    static bool Labelled(string dataPath, DataOptions options, DatasetFormat format)
    {
        using var file = ParquetDataset.Open(dataPath, format, options.TextColumn, labelsOptional: true, options.LabelColumn, options.TextColumnNames, options.TextColumnDelimiter);
        return file.LabelColumn is not null && file.ReadAll().Any(r => r.Record is ClassificationRecord { LabelSet: not null } or TokenClassificationRecord { Labels.Count: > 0 }
            || r.Record is ClassificationRecord { Label: var label } && label != ""
            && !(long.TryParse(label, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out var value) && value < 0));
    }

    /// <summary>A sequence classifier on preference pairs: TRL's reward-model loss and metrics (eval_accuracy, ...).</summary>
    static EvalResult ScoreRewardModel(OnnxModel model, TrainingData data, string dataPath, string device, string? epLibrary)
    {
        if (!data.IsPreference)
            throw new OrtLoraException($"{model.Source} is a sequence classifier (logits [batch, labels]): it is scored on preference pairs (chosen, rejected), not on {ParquetDataset.FormatName(data.Train.Format)} data");
        var options = new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss);
        data.RequireLoss(options);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Device: device, EpLibrary: epLibrary, Preference: options));
        var metrics = new Reward.RewardMetrics();
        var score = Trainer.Score(session, data, metrics);
        return PairResult(score, metrics, data, dataPath);
    }

    /// <summary>Preference data: the DPO loss of the model against a reference model (TRL's evaluate on a DPO model),
    /// each batch's reference log-probabilities from the reference's own session.</summary>
    static EvalResult ScorePreferences(OnnxModel model, TrainingData data, TextTokenizer tokenizer, string dataPath, string? referencePath,
        PreferenceOptions preference, string device, string? epLibrary)
    {
        data.RequireLoss(preference);
        if (!preference.UsesReference) referencePath = null; // ORPO, SimPO
        else if (referencePath is null)
            throw new OrtLoraException($"{dataPath}: preference data is scored by the DPO loss against a reference model: give --adapter DIR " +
                "(the reference is then the model without it) or --reference-model PATH");
        using var reference = referencePath is null ? null : Scorable(referencePath, adapterDir: null, tokenizerPath: null);
        if (reference is not null) VocabularyCheck.Require(tokenizer, reference);
        var sessionOptions = new TrainingSessionOptions(new AdamWOptions(), Device: device, EpLibrary: epLibrary, Preference: preference);
        using var referenceSession = reference is null ? null : new TrainingSession(reference, sessionOptions);
        using var session = new TrainingSession(model, sessionOptions);
        var metrics = new PreferenceMetrics(preference.Beta);
        var score = Trainer.Score(session, data, metrics, referenceSession is null ? null : referenceSession.ReferenceLogps);
        return PairResult(score, metrics, data, dataPath);
    }

    /// <summary>A preference evaluation's result: the loss and the metrics TRL logs of the pairs.</summary>
    static EvalResult PairResult(Trainer.EvalScore score, IPreferenceMetrics metrics, TrainingData data, string dataPath)
    {
        if (score.Tokens == 0) throw new OrtLoraException($"{dataPath}: no pair to score ({data.Summary})");
        long pairs = metrics.Pairs;
        var record = new System.Text.Json.Nodes.JsonObject();
        metrics.Report(record);
        return new EvalResult(score.Loss, score.MeanTokenAccuracy, score.Tokens, score.Batches, data.Summary.ToString())
        {
            Rewards = record.ToDictionary(kv => kv.Key, kv => (double)kv.Value!), Pairs = pairs,
        };
    }
}
