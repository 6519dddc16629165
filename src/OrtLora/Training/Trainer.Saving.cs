using System.Text.Json.Nodes;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Training;

/// <summary>What the loop writes out and reads back: the adapter (and the merged model) at the end, checkpoints, and the
/// resume from one.</summary>
public static partial class Trainer
{
    /// <summary>The trained parameters into <paramref name="model"/>, the adapter in PEFT's format into
    /// <paramref name="outputDir"/>, then, given the tokenizer's path, the merged model with the tokenizer files in
    /// OUTPUT/merged (returns its path).</summary>
    internal static string? SaveAdapter(OnnxModel model, TrainingSession session, string outputDir, string? mergeWithTokenizer)
    {
        SetParameters(model, session.GetParameters());
        AdapterExporter.Export(model).Save(outputDir);
        if (mergeWithTokenizer is null) return null;
        var mergedDir = Path.Combine(outputDir, "merged");
        LoraMerger.Merge(model);
        var merged = Path.Combine(mergedDir, "model.onnx");
        model.Save(merged);
        Deploy.GenAiConfig.CopyTokenizerFiles(mergeWithTokenizer, mergedDir);
        if (Reward.SequenceClassifier.Labels(model) is { } classes)
            WriteClassifierConfig(Path.Combine(mergedDir, "config.json"), classes, Reward.SequenceClassifier.IsTokenClassifier(model));
        return merged;
    }

    /// <summary>A classifier's config.json as transformers writes one: the causal LM's (when it came with the tokenizer),
    /// with id2label, label2id, problem_type and the ForSequenceClassification architecture (a token classifier's: no
    /// problem_type, ForTokenClassification).</summary>
    static void WriteClassifierConfig(string path, Data.ClassLabels classes, bool perToken)
    {
        var config = File.Exists(path) ? JsonNode.Parse(File.ReadAllText(path)) as JsonObject : null;
        config ??= new JsonObject();
        var id2label = JsonNode.Parse(classes.Id2LabelJson())!.AsObject();
        config["id2label"] = id2label;
        config["label2id"] = new JsonObject(id2label.Select(kv => KeyValuePair.Create((string)kv.Value!, (JsonNode?)int.Parse(kv.Key))));
        if (perToken) config.Remove("problem_type");
        else config["problem_type"] = classes.ProblemType;
        var architecture = perToken ? "ForTokenClassification" : "ForSequenceClassification";
        if (config["architectures"] is JsonArray architectures)
            // LlamaForCausalLM → LlamaForTokenClassification; GPT-2's GPT2LMHeadModel → GPT2ForTokenClassification
            config["architectures"] = new JsonArray([.. architectures.Select(a => (JsonNode?)((string?)a ?? "").Replace("ForCausalLM", architecture).Replace("LMHeadModel", architecture))]);
        var temporary = path + ".tmp";
        File.WriteAllText(temporary, config.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        File.Move(temporary, path, overwrite: true);
    }

    /// <summary>The adapter (PEFT format) for people, and the raw parameters with the moments for an exact resume.</summary>
    internal static void SaveCheckpoint(OnnxModel model, TrainingSession session, TrainerState state, BestModel best, string outputDir, bool saveOnlyModel)
    {
        var parameters = session.GetParameters();
        SetParameters(model, parameters);
        var adapter = AdapterExporter.Export(model);
        if (saveOnlyModel) { Checkpoint.Save(outputDir, state, adapter.Config, adapter.Tensors, optimizer: null); return; }
        var optimizer = session.GetOptimizerState();
        foreach (var (name, values) in parameters)
            optimizer["param." + name] = SafeTensor.FromFloats(session.Graph.ParameterShapes[name], values);
        foreach (var (name, values) in best.Parameters ?? new Dictionary<string, float[]>())
            optimizer[BestModel.CheckpointPrefix + name] = SafeTensor.FromFloats(session.Graph.ParameterShapes[name], values);
        Checkpoint.Save(outputDir, state, adapter.Config, adapter.Tensors, optimizer);
    }

    internal static TrainerState Restore(TrainingSession session, BestModel best, string checkpointDir)
    {
        var (state, _, optimizer) = Checkpoint.Load(checkpointDir);
        var bestParameters = session.ParameterNames.All(p => optimizer.ContainsKey(BestModel.CheckpointPrefix + p))
            ? session.ParameterNames.ToDictionary(p => p, p => optimizer[BestModel.CheckpointPrefix + p].AsFloats()) : null;
        best.Restore(state.Best, bestParameters);
        var parameters = new Dictionary<string, float[]>();
        foreach (var p in session.ParameterNames)
            parameters[p] = optimizer.TryGetValue("param." + p, out var t) ? t.AsFloats()
                : throw new OrtLoraException($"{checkpointDir}: checkpoint has no parameter '{p}' (a checkpoint of another adapter?)");
        session.SetParameters(parameters);
        session.SetOptimizerState(optimizer);
        return state;
    }

    internal static void SetParameters(OnnxModel model, IReadOnlyDictionary<string, float[]> values)
    {
        foreach (var t in model.Graph.Initializer)
            if (values.TryGetValue(t.Name, out var v)) Tensors.SetRaw(t, Tensors.FloatsToBytes(v, t.DataType));
    }
}
