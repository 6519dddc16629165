using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtLora.Onnx;
using OrtLora.Training.Data;

namespace OrtLora.Training.Grpo;

/// <summary>A reward model as TRL's GRPOTrainer and RLOOTrainer use one: a reward_funcs entry that is a
/// sequence-classification model. TRL feeds it the prompt and the completion, text concatenated (a conversational
/// prompt: its messages and the completion as the assistant's reply, through the reward tokenizer's chat template),
/// tokenized by the reward model's own tokenizer without adding special tokens, and the reward is logits[:, 0].
/// <para>The ONNX file is what an exporter writes for AutoModelForSequenceClassification (Optimum's
/// text-classification task): input_ids, and optionally attention_mask, position_ids and token_type_ids, in; logits
/// [batch, labels] out. Its tokenizer lies beside it. Each completion runs alone, batch 1: the export pools its last
/// token itself, with the pad id it was exported with, so nothing is padded.</para></summary>
public sealed class RewardModel : IRewardFunction
{
    readonly InferenceSession _session;
    readonly TextTokenizer _tokenizer;
    readonly ChatTemplate _chat;
    readonly string _path;

    public string Name { get; }
    public IReadOnlyList<string> RequiredColumns => [];

    RewardModel(string path, string name, InferenceSession session, TextTokenizer tokenizer, ChatTemplate chat)
    {
        _path = path; Name = name; _session = session; _tokenizer = tokenizer; _chat = chat;
    }

    /// <summary>The model at <paramref name="path"/>: an .onnx file, or a folder holding model.onnx, with the tokenizer
    /// (tokenizer.json and tokenizer_config.json, or the other forms <see cref="TokenizerLoader"/> reads) in the same
    /// folder. Its metric name is the folder's name, as TRL names a reward model by its model id.</summary>
    /// <param name="chatTemplateKwargs">chat_template_kwargs (JSON) for its template, as TRL passes them</param>
    public static RewardModel Load(string path, string? chatTemplateKwargs = null)
    {
        var file = Directory.Exists(path) ? Path.Combine(path, "model.onnx") : path;
        if (!File.Exists(file)) throw new OrtLoraException($"{file}: reward model not found (model:PATH takes an .onnx file, or a folder holding model.onnx and its tokenizer)");
        var folder = Path.GetDirectoryName(Path.GetFullPath(file))!;
        var name = Path.GetFileName(file) == "model.onnx" ? Path.GetFileName(folder) : Path.GetFileNameWithoutExtension(file);
        var tokenizer = TokenizerLoader.Load(folder);
        var chat = ChatTemplate.Resolve(null, TokenizerConfig.Read(folder), Path.Combine(folder, "tokenizer_config.json"), chatTemplateKwargs);
        InferenceSession? session = null;
        try
        {
            using var options = OrtRun.DefaultOptions();
            try { session = new InferenceSession(file, options); }
            catch (OnnxRuntimeException e) { throw new OrtLoraException($"{file}: ONNX Runtime cannot load the reward model: {e.Message}"); }
            if (!session.InputMetadata.ContainsKey("input_ids"))
                throw new OrtLoraException($"{file}: a reward model takes input_ids (its inputs: {string.Join(", ", session.InputMetadata.Keys)})");
            if (session.InputMetadata.Keys.FirstOrDefault(k => k is not ("input_ids" or "attention_mask" or "position_ids" or "token_type_ids")) is { } other)
                throw new OrtLoraException($"{file}: a reward model takes input_ids, attention_mask, position_ids and token_type_ids, not '{other}' " +
                    "(a causal LM with a cache is not a sequence classifier)");
            var logits = session.OutputMetadata.TryGetValue("logits", out var meta) ? meta : session.OutputMetadata.Values.First();
            if (logits.Dimensions.Length != 2)
                throw new OrtLoraException($"{file}: a reward model's logits are [batch, labels]; this model's have {logits.Dimensions.Length} dimensions " +
                    "(a causal LM's [batch, sequence, vocabulary]?)");
            var model = new RewardModel(file, name, session, tokenizer, chat);
            session = null;
            return model;
        }
        finally
        {
            session?.Dispose();
        }
    }

    /// <summary>The ids the reward model reads for one completion, as TRL tokenizes them.</summary>
    public int[] Ids(RewardInput input)
    {
        if (input.PromptMessages is { } messages)
        {
            var conversation = new ChatRecord([.. messages, new ChatMessage("assistant", input.Completion)]);
            // the template's text as it is, no BOS added: TRL encodes it with add_special_tokens=False
            return new ExampleEncoder(_tokenizer, int.MaxValue).Ids(new Example(0, _chat.Render(conversation, addBos: false)));
        }
        return _tokenizer.Encode(input.Prompt + input.Completion, addBos: false);
    }

    public double?[] Score(IReadOnlyList<RewardInput> batch) => [.. batch.Select(input => (double?)Score(Ids(input)))];

    double Score(int[] ids)
    {
        if (ids.Length == 0) throw new OrtLoraException($"{_path}: nothing to score (an empty prompt and completion)");
        var names = new List<string>();
        var values = new List<OrtValue>();
        try
        {
            foreach (var (name, meta) in _session.InputMetadata)
            {
                long[] data = name switch
                {
                    "input_ids" => [.. ids.Select(i => (long)i)],
                    "attention_mask" => [.. ids.Select(_ => 1L)],
                    "position_ids" => [.. Enumerable.Range(0, ids.Length).Select(i => (long)i)],
                    _ => new long[ids.Length], // token_type_ids: one segment
                };
                names.Add(name);
                values.Add(meta.ElementDataType == TensorElementType.Int32
                    ? OrtValue.CreateTensorValueFromMemory(data.Select(v => (int)v).ToArray(), [1, ids.Length])
                    : OrtValue.CreateTensorValueFromMemory(data, [1, ids.Length]));
            }
            var output = _session.OutputMetadata.ContainsKey("logits") ? "logits" : _session.OutputNames[0];
            using var runOptions = new RunOptions();
            using var results = _session.Run(runOptions, names, values, [output]);
            var logits = results[0];
            return logits.GetTensorTypeAndShape().ElementDataType switch
            {
                TensorElementType.Float => logits.GetTensorDataAsSpan<float>()[0],
                TensorElementType.Float16 => (float)logits.GetTensorDataAsSpan<Float16>()[0],
                TensorElementType.BFloat16 => (float)logits.GetTensorDataAsSpan<BFloat16>()[0],
                var type => throw new OrtLoraException($"{_path}: logits of type {type} are not supported"),
            };
        }
        finally
        {
            foreach (var v in values) v.Dispose();
        }
    }

    public void Dispose() => _session.Dispose();
}
