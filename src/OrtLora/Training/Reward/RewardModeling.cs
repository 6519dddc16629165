using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training.Reward;

/// <summary>What `ortlora reward` does to the model before the loop: TRL's RewardTrainer loads any checkpoint with
/// AutoModelForSequenceClassification (num_labels = 1), so a causal LM export becomes a sequence classifier
/// (<see cref="SequenceClassifier"/>); and PEFT's SEQ_CLS task trains the classification head whole, next to the
/// adapters (its modules_to_save gets <c>score</c> or <c>classifier</c>).</summary>
public static class RewardModeling
{
    /// <summary>An adapter of a reward model (task_type SEQ_CLS, trained by `ortlora reward` on a causal LM export) to go
    /// on that export: the export becomes the classifier the adapter was trained on, whose score head the adapter
    /// holds (pad id from the tokenizer beside the model, or <paramref name="tokenizerPath"/>).</summary>
    public static void ConvertForAdapter(OnnxModel model, PeftAdapter adapter, string modelPath, string? tokenizerPath = null)
    {
        if (adapter.Config.TaskType != "SEQ_CLS" || SequenceClassifier.IsClassifier(model)) return;
        var tokenizer = TokenizerLoader.Load(tokenizerPath ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!);
        SequenceClassifier.FromCausalLm(model, tokenizer.PadId, SequenceClassifier.InitializerRange(modelPath), seed: 0);
    }

    /// <returns>the LoRA configuration to inject with (task_type SEQ_CLS, the head in modules_to_save)</returns>
    public static LoraConfig Prepare(OnnxModel model, TrainJob job, TextTokenizer tokenizer, ITrainingReporter reporter)
    {
        bool injected = LoraModel.Read(model) is not null;
        if (!SequenceClassifier.IsClassifier(model))
        {
            if (injected)
                throw new OrtLoraException($"{model.Source}: a causal LM with LoRA adapters already; a reward model is made from the plain export " +
                                           "(its LM head becomes a score head before the adapters are injected): give the plain model and the LoRA options");
            SequenceClassifier.FromCausalLm(model, tokenizer.PadId, SequenceClassifier.InitializerRange(job.ModelPath), job.Args.Seed);
            reporter.Info($"{Path.GetFileName(model.Source)} is a causal LM: its LM head is replaced by a score head [1, hidden] read at each row's last " +
                          $"non-pad token (pad id {tokenizer.PadId}), as AutoModelForSequenceClassification loads it");
        }
        var config = LoraConfig.FromJson(job.Lora.ToJson());
        config.TaskType = "SEQ_CLS";
        var heads = LinearLayers.Find(new GraphEditor(model.Graph)).Select(l => ModuleNames.LastSegment(l.Module))
            .Where(name => name is SequenceClassifier.ScoreModule or "classifier").Distinct();
        foreach (var head in heads)
            if (!config.ModulesToSave.Contains(head)) config.ModulesToSave.Add(head);
        return config;
    }
}
