using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;

namespace OrtLora.Training;

/// <summary>What `ortlora eval` measured: the causal-LM loss averaged over every scored token of the data, as the
/// Trainer's evaluate() reports it, and its exp.</summary>
public sealed record EvalResult(double Loss, double MeanTokenAccuracy, long Tokens, int Batches, string DataSummary)
{
    public double Perplexity => Math.Exp(Loss);
}

/// <summary>Evaluates any causal LM on Parquet data with the training engine's eval graph (the same loss, batches and
/// token weighting as `train --eval-data`): a base model, an injected or trained one, or a merged one.</summary>
public static class Evaluator
{
    /// <param name="adapterDir">a PEFT adapter directory to evaluate on the (plain) model, injected in memory</param>
    public static EvalResult Run(string modelPath, string dataPath, DataOptions options, string? tokenizerPath = null,
        string device = "cpu", string? epLibrary = null, string? adapterDir = null)
    {
        using var model = OnnxModel.Load(modelPath);
        if (adapterDir is not null)
        {
            if (LoraModel.Read(model) is not null)
                throw new OrtLoraException($"{modelPath}: the model already has LoRA adapters; --adapter is for a plain (or merged) model");
            LoraInjector.Inject(model, PeftAdapter.Load(adapterDir));
        }
        // The engine evaluates models with LoRA parameters. A plain model gets rank-1 adapters whose B is zero: they add
        // exactly 0 to every layer, so the loss is the plain model's.
        if (LoraModel.Read(model) is null) LoraInjector.Inject(model, new LoraConfig { R = 1, TargetModules = ["all-linear"] });
        var tokenizerSource = tokenizerPath ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!;
        var tokenizer = TokenizerLoader.Load(tokenizerSource);
        VocabularyCheck.Require(tokenizer, model);
        var tokenizerDir = Directory.Exists(tokenizerSource) ? tokenizerSource : Path.GetDirectoryName(Path.GetFullPath(tokenizerSource))!;
        // Every row of the file is evaluation data: it is opened as the eval file, with no split of a training file.
        using var data = TrainingData.Open(dataPath, tokenizer, options with { EvalSplit = 0, Shuffle = false }, dataPath, TokenizerConfig.Read(tokenizerDir));
        if (data.IsPreference)
            throw new OrtLoraException($"{dataPath}: preference data (chosen/rejected) is scored by the DPO loss, against a reference model; " +
                "`ortlora train --eval-data` reports its eval_loss and eval_rewards/*");
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Device: device, EpLibrary: epLibrary));
        var score = Trainer.Score(session, data);
        if (score.Tokens == 0) throw new OrtLoraException($"{dataPath}: no token to score ({data.Summary})");
        return new EvalResult(score.Loss, score.MeanTokenAccuracy, score.Tokens, score.Batches, data.Summary.ToString());
    }
}
