using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training.Reward;

/// <summary>What `ortlora reward` does to the model before the loop: TRL's RewardTrainer loads any checkpoint with
/// AutoModelForSequenceClassification (num_labels = 1), so a causal LM export becomes a sequence classifier
/// (<see cref="SequenceClassifier"/>); and PEFT's SEQ_CLS task trains the classification head whole, next to the
/// adapters (its modules_to_save gets <c>score</c> or <c>classifier</c>). `ortlora classify` prepares its sequence and
/// token classifiers (TOKEN_CLS) the same way.</summary>
public static class RewardModeling
{
    /// <summary>An adapter of a reward model (task_type SEQ_CLS, trained by `ortlora reward` on a causal LM export) to go
    /// on that export: the export becomes the classifier the adapter was trained on, whose score head the adapter
    /// holds (pad id from the tokenizer beside the model, or <paramref name="tokenizerPath"/>).</summary>
    public static void ConvertForAdapter(OnnxModel model, PeftAdapter adapter, string modelPath, string? tokenizerPath = null)
    {
        bool perToken = adapter.Config.TaskType == "TOKEN_CLS";
        if (adapter.Config.TaskType is not ("SEQ_CLS" or "TOKEN_CLS") || (perToken ? SequenceClassifier.IsTokenClassifier(model) : SequenceClassifier.IsClassifier(model))) return;
        var tokenizer = TokenizerLoader.Load(tokenizerPath ?? Path.GetDirectoryName(Path.GetFullPath(modelPath))!);
        // the head's rows are the classes: 1 for a reward model, num_labels for `ortlora classify`'s classifier
        var head = adapter.Tensors.Where(kv => kv.Key.EndsWith(".weight") && adapter.IsSavedModuleKey(kv.Key)
                && ModuleNames.LastSegment(kv.Key[..^".weight".Length]) is SequenceClassifier.ScoreModule or "classifier")
            .Select(kv => (Module: ModuleNames.LastSegment(kv.Key[..^".weight".Length]), kv.Value)).FirstOrDefault();
        int numLabels = head.Value is { Shape.Length: 2 } ? (int)head.Value.Shape[0] : 1;
        SequenceClassifier.FromCausalLm(model, tokenizer.PadId, SequenceClassifier.InitializerRange(modelPath), seed: 0, numLabels, perToken,
            head.Module ?? SequenceClassifier.ScoreModule);
        // the classes `classify` trained with, in its order, which the adapter's weights file carries
        foreach (var (key, value) in adapter.Metadata) model.Proto.MetadataProps.Add(new global::Onnx.StringStringEntryProto { Key = key, Value = value });
    }

    /// <param name="classes">`ortlora classify`: the classes (num_labels); null: a reward model's one score</param>
    /// <param name="perToken">a token classifier (TOKEN_CLS): the head scores every token</param>
    /// <returns>the LoRA configuration to inject with (task_type SEQ_CLS or TOKEN_CLS, the head in modules_to_save)</returns>
    public static LoraConfig Prepare(OnnxModel model, TrainJob job, TextTokenizer tokenizer, ITrainingReporter reporter, ClassLabels? classes = null, bool perToken = false)
    {
        bool injected = LoraModel.Read(model) is not null;
        int numLabels = classes?.Count ?? 1;
        string what = classes is null ? "a reward model" : perToken ? "a token classifier" : "a sequence classifier";
        if (perToken ? !SequenceClassifier.IsTokenClassifier(model) : !SequenceClassifier.IsClassifier(model))
        {
            if (injected)
                throw new OrtLoraException($"{model.Source}: a causal LM with LoRA adapters already; {what} is made from the plain export " +
                                           "(its LM head becomes a score head before the adapters are injected): give the plain model and the LoRA options");
            if (SequenceClassifier.IsClassifier(model))
                throw new OrtLoraException($"{model.Source}: a sequence classifier (logits [batch, labels]); a token classifier is made from a causal LM export");
            var headModule = perToken ? SequenceClassifier.TokenHeadModule(job.ModelPath) : SequenceClassifier.ScoreModule;
            SequenceClassifier.FromCausalLm(model, tokenizer.PadId, SequenceClassifier.InitializerRange(job.ModelPath), job.Args.Seed, numLabels, perToken, headModule);
            reporter.Info(perToken
                ? $"{Path.GetFileName(model.Source)} is a causal LM: its LM head is replaced by a {headModule} head [{numLabels}, hidden] with a bias, applied at every token, " +
                  "as AutoModelForTokenClassification loads it"
                : $"{Path.GetFileName(model.Source)} is a causal LM: its LM head is replaced by a score head [{numLabels}, hidden] read at each row's last " +
                  $"non-pad token (pad id {tokenizer.PadId}), as AutoModelForSequenceClassification loads it");
        }
        else if (classes is not null && SequenceClassifier.NumLabels(model) is { } declared && declared != numLabels)
            throw new OrtLoraException($"{model.Source}: a classifier of {declared} labels; the data has {classes}");
        if (classes is not null) SequenceClassifier.SetLabels(model, classes, perToken);
        var config = LoraConfig.FromJson(job.Lora.ToJson());
        config.TaskType = perToken ? "TOKEN_CLS" : "SEQ_CLS";
        var heads = LinearLayers.Find(new GraphEditor(model.Graph)).Select(l => ModuleNames.LastSegment(l.Module))
            .Where(name => name is SequenceClassifier.ScoreModule or "classifier").Distinct();
        foreach (var head in heads)
            if (!config.ModulesToSave.Contains(head)) config.ModulesToSave.Add(head);
        return config;
    }
}
