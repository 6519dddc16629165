using System.Text.Json.Nodes;
using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Reward;

/// <summary>A causal LM export turned into the sequence classifier Hugging Face's AutoModelForSequenceClassification
/// makes of the same checkpoint, as TRL's RewardTrainer loads one (num_labels = 1): the LM head is replaced by a linear
/// <c>score</c> layer [num_labels, hidden] (1 for a reward model's score) without bias, drawn from N(0, initializer_range²) as transformers initializes a new
/// head, applied at every position, and the score of each row is read at its last non-pad token, found as
/// LlamaForSequenceClassification finds it: the arg-max of position × (input_ids ≠ pad_token_id), so where the pad
/// token is also EOS, the token before a final EOS. The output stays <c>logits</c>, now [batch, 1]. The score is
/// gathered by GatherND with (row, position) pairs, the way torch.onnx writes <c>logits[arange(B), last]</c>, so
/// training, merge and the reward-model scorer read it as they read a real export. The same head, with a bias and
/// read at every position, makes the token classifier of AutoModelForTokenClassification (`classify --task-type
/// TOKEN_CLS`): its logits stay [batch, sequence, num_labels].</summary>
public static class SequenceClassifier
{
    /// <summary>The head's initializer, named as the dynamo exporter names LlamaForSequenceClassification's score layer
    /// (the module path <c>score</c>, which PEFT's SEQ_CLS task saves whole).</summary>
    public const string ScoreWeight = "score.weight";
    public const string ScoreModule = "score";

    /// <summary>Ops that may lie between the LM head and the logits output (casts, Gemma's softcap): dropped with the head.</summary>
    static readonly HashSet<string> AfterHead = ["Cast", "Identity", "Reshape", "Div", "Mul", "Tanh"];

    /// <summary>Whether the model's logits output is a classifier's, [batch, labels] (declared rank 2), rather than a
    /// causal LM's [batch, sequence, vocabulary].</summary>
    public static bool IsClassifier(OnnxModel model) => LogitsOutput(model).Type?.TensorType?.Shape?.Dim.Count == 2;

    static ValueInfoProto LogitsOutput(OnnxModel model) =>
        model.Graph.Output.FirstOrDefault(o => o.Name == "logits") ?? model.Graph.Output.FirstOrDefault()
        ?? throw new OrtLoraException($"{model.Source}: the model has no output");

    /// <summary>Replaces the LM head of <paramref name="model"/> (in memory) by a score head.</summary>
    /// <param name="padId">pad_token_id (TRL: the tokenizer's pad token, else its EOS): the batches' right padding</param>
    /// <param name="initializerRange">the score weight's standard deviation (config.json's initializer_range; 0.02 by default)</param>
    /// <param name="numLabels">the classes: 1 for a reward model's score, more for a classifier (`ortlora classify`)</param>
    /// <param name="perToken">a token classifier (AutoModelForTokenClassification, PEFT's TOKEN_CLS): the head, with a
    /// bias, scores every position and the logits stay [batch, sequence, num_labels]</param>
    /// <param name="headModule">the head's module name: <c>score</c>, or <c>classifier</c> for the token classifiers of
    /// GPT-2's family (<see cref="TokenHeadModule"/>)</param>
    public static void FromCausalLm(OnnxModel model, long padId, double initializerRange, int seed, int numLabels = 1, bool perToken = false,
        string headModule = ScoreModule)
    {
        string headWeight = headModule + ".weight", headBias = headModule + ".bias";
        var output = LogitsOutput(model);
        Lora.MatMulNBitsForm.ToQdq(model); // ONNX Runtime's int4 head as DequantizeLinear + MatMul, which the walk reads
        var g = new GraphEditor(model.Graph);
        if (model.Graph.Input.All(i => i.Name != "input_ids"))
            throw new OrtLoraException($"{model.Source}: a sequence classifier reads each row's last non-pad token from input_ids; the model has no input_ids input");
        // From the logits back to the head: the MatMul/Gemm whose weight has the vocabulary as one dimension.
        var dropped = new List<NodeProto>();
        var node = g.Producer(output.Name);
        while (node is not null && node.OpType is not ("MatMul" or "Gemm"))
        {
            if (!AfterHead.Contains(node.OpType))
                throw new OrtLoraException($"{model.Source}: the logits come from a {node.OpType} node ('{node.Name}'), not from an LM head (MatMul or Gemm); " +
                                           "ortlora turns an exported causal LM into a sequence classifier by replacing that head");
            dropped.Add(node);
            node = g.Producer(node.Input[0]);
        }
        var head = node ?? throw new OrtLoraException($"{model.Source}: no LM head (MatMul or Gemm) produces the logits");
        var (hidden, weightType, computeType) = HiddenSize(model, g, head);
        bool halfCompute = computeType is (int)DT.Float16 or (int)DT.Bfloat16;
        dropped.Add(head);
        foreach (var n in dropped) g.RemoveNode(n);

        var rng = new Random(seed);
        var values = new float[numLabels * hidden];
        for (int i = 0; i < values.Length; i++) values[i] = (float)(initializerRange * Lora.LoraInit.Normal(rng));
        g.AddInitializer(Tensors.FromFloats(headWeight, [numLabels, hidden], values, weightType));
        // the weight as the head read it: through a Cast (float16 weights of a float32 model) or not
        var scoreWeight = weightType == computeType ? headWeight : g.Add("Cast", [headWeight], name: $"/{headModule}/Cast", attributes: ("to", (long)computeType));
        string Ints(params long[] v) => g.AddInitializer(Tensors.FromInt64(g.Unique("score/ints"), [v.Length], v));
        string Scalar(long v, int type) => g.AddInitializer(Tensors.Scalar(g.Unique("score/const"), v, type));
        string Op(string op, string[] inputs, params (string, object)[] attributes) => g.Add(op, inputs, name: $"/{headModule}/{op}", attributes: attributes);

        // score(h) at every position, [B, S, N] (a Gemm head reads h flattened to [B·S, hidden]: back to [B, S, N])
        var perPosition = Op("MatMul", [head.Input[0], Op("Transpose", [scoreWeight], ("perm", new long[] { 1, 0 }))]);
        if (perToken)
        {
            // stored in the type the head computes in, read as it is (a saved module's bias is found right after its MatMul)
            g.AddInitializer(Tensors.FromFloats(headBias, [numLabels], new float[numLabels], computeType));
            perPosition = Op("Add", [perPosition, headBias]);
        }
        // half activations: the pooling in float32 (an exact cast; ONNX Runtime's CPU scatter, the gather's gradient,
        // takes no float16), and float32 logits out
        if (halfCompute) perPosition = Op("Cast", [perPosition], ("to", (long)DT.Float));
        var tokenShape = Op("Shape", ["input_ids"]);
        perPosition = Op("Reshape", [perPosition, Op("Concat", [tokenShape, Ints(numLabels)], ("axis", 0L))]);
        if (perToken) g.Add("Identity", [perPosition], name: $"/{headModule}/Identity", outputs: [output.Name]);
        else
        {
            // last non-pad token: argmax(position · (input_ids ≠ pad)), int32 as transformers computes it
            var tokens = model.Graph.Input.First(i => i.Name == "input_ids").Type?.TensorType?.ElemType == (int)DT.Int64 ? "input_ids"
                : Op("Cast", ["input_ids"], ("to", (long)DT.Int64)); // int32 token inputs
            var notPad = Op("Cast", [Op("Not", [Op("Equal", [tokens, Scalar(padId, (int)DT.Int64)])])], ("to", (long)DT.Int32));
            string Dim(long axis) => Op("Gather", [tokenShape, Scalar(axis, (int)DT.Int64)], ("axis", 0L));
            var positions = Op("Cast", [Op("Range", [Scalar(0, (int)DT.Int64), Dim(1), Scalar(1, (int)DT.Int64)])], ("to", (long)DT.Int32));
            var last = Op("ArgMax", [Op("Mul", [positions, notPad])], ("axis", -1L), ("keepdims", 1L)); // [B, 1]
            var rows = Op("Unsqueeze", [Op("Range", [Scalar(0, (int)DT.Int64), Dim(0), Scalar(1, (int)DT.Int64)]), Ints(1)]);
            var pairs = Op("Concat", [rows, last], ("axis", 1L)); // [B, 2]: (row, position)
            g.Add("GatherND", [perPosition, pairs], name: "/score/GatherND", outputs: [output.Name]);
        }

        // A generation export's cache: the classifier runs whole sequences (inputs fed empty, present outputs dropped).
        Engine.TrainingGraph.FeedEmptyCache(model.Proto, g);
        var logits = output.Clone();
        logits.Type.TensorType.ElemType = halfCompute ? (int)DT.Float : computeType;
        var dims = logits.Type.TensorType.Shape.Dim;
        var batchDim = dims.Count > 0 ? dims[0].Clone() : new TensorShapeProto.Types.Dimension { DimParam = "batch_size" };
        var sequenceDim = dims.Count > 1 ? dims[1].Clone() : new TensorShapeProto.Types.Dimension { DimParam = "sequence_length" };
        dims.Clear();
        dims.Add(batchDim);
        if (perToken) dims.Add(sequenceDim);
        dims.Add(new TensorShapeProto.Types.Dimension { DimValue = numLabels });
        model.Graph.Output.Clear();
        model.Graph.Output.Add(logits);
        g.TopologicalSort();
        g.Cleanup();
    }

    /// <summary>The hidden size, from the head's weight (the dimension that is not the vocabulary); the type the score
    /// weight is stored in (the head weight's, float32 for a quantized one), and the type the head computed in (after
    /// the Cast or DequantizeLinear between the weight and the head).</summary>
    static (long Hidden, int StoredType, int ComputeType) HiddenSize(OnnxModel model, GraphEditor g, NodeProto head)
    {
        bool transposed = head.OpType == "Gemm" && Attrs.Int(head, "transB", 0) != 0;
        var value = head.Input[1];
        int? seen = null; // the type the head reads, where a Cast or DequantizeLinear makes it
        while (g.Initializer(value) is null && g.Producer(value) is { } p && p.OpType is "Transpose" or "Cast" or "Identity" or "DequantizeLinear")
        {
            if (p.OpType == "Transpose") transposed = !transposed;
            if (p.OpType == "Cast") seen ??= (int)Attrs.Int(p, "to", 0);
            if (p.OpType == "DequantizeLinear") seen ??= g.Initializer(p.Input[1])?.DataType ?? (int)DT.Float;
            value = p.Input[0];
        }
        var weight = g.Initializer(value);
        if (weight is null || weight.Dims.Count != 2)
            throw new OrtLoraException($"{model.Source}: the LM head '{head.Name}' does not read a 2-D weight initializer; ortlora cannot tell its hidden size");
        int stored = Tensors.IsFloat(weight.DataType) && weight.DataType != (int)DT.Double ? weight.DataType : (int)DT.Float;
        return (transposed ? weight.Dims[1] : weight.Dims[0], stored, seen ?? stored);
    }

    /// <summary>The model's metadata keys for the classes' names (transformers' config id2label) and the problem_type,
    /// which `ortlora classify` writes and `eval` reads.</summary>
    public const string Id2LabelKey = "id2label", ProblemTypeKey = "problem_type";

    /// <summary>The classifier's num_labels: its logits' declared last dimension (null when not declared).</summary>
    public static int? NumLabels(OnnxModel model) => IsClassifier(model) || IsTokenClassifier(model) ? DeclaredLabels(model) : null;

    /// <summary>The logits' declared last dimension (null when symbolic): a classifier's labels, whatever says it is one.</summary>
    public static int? DeclaredLabels(OnnxModel model) =>
        LogitsOutput(model).Type?.TensorType?.Shape?.Dim is { Count: > 0 } dims && dims[^1].DimValue > 0 ? (int)dims[^1].DimValue : null;

    /// <summary>Whether the model is a token classifier (`ortlora classify --task-type TOKEN_CLS` made it): logits
    /// [batch, sequence, labels] and the classes' names in its metadata (<see cref="Id2LabelKey"/>), which a causal LM
    /// does not carry.</summary>
    public static bool IsTokenClassifier(OnnxModel model) =>
        LogitsOutput(model).Type?.TensorType?.Shape?.Dim.Count == 3 && model.Proto.MetadataProps.Any(p => p.Key == Id2LabelKey);

    /// <summary>The classes the model carries (<see cref="Id2LabelKey"/>, <see cref="ProblemTypeKey"/>), or null.</summary>
    public static Data.ClassLabels? Labels(OnnxModel model)
    {
        var problemType = model.Proto.MetadataProps.FirstOrDefault(p => p.Key == ProblemTypeKey)?.Value;
        if (problemType == "regression") return Data.ClassLabels.Regression;
        var classes = model.Proto.MetadataProps.FirstOrDefault(p => p.Key == Id2LabelKey) is { } entry ? Data.ClassLabels.FromId2LabelJson(entry.Value, model.Source) : null;
        return problemType == "multi_label_classification" ? classes?.AsMultiLabel() : classes;
    }

    /// <param name="perToken">a token classifier: no problem_type (transformers' is for sequence classification)</param>
    public static void SetLabels(OnnxModel model, Data.ClassLabels classes, bool perToken = false)
    {
        foreach (var p in model.Proto.MetadataProps.Where(p => p.Key is Id2LabelKey or ProblemTypeKey).ToList()) model.Proto.MetadataProps.Remove(p);
        model.Proto.MetadataProps.Add(new StringStringEntryProto { Key = Id2LabelKey, Value = classes.Id2LabelJson() });
        if (!perToken) model.Proto.MetadataProps.Add(new StringStringEntryProto { Key = ProblemTypeKey, Value = classes.ProblemType });
    }

    /// <summary>initializer_range from the config.json beside the model, else transformers' default 0.02.</summary>
    public static double InitializerRange(string modelPath) => ConfigNumber(modelPath, "initializer_range") ?? 0.02;

    /// <summary>The models whose token classifier names its head <c>classifier</c> (GPT2ForTokenClassification,
    /// GPTNeoXForTokenClassification, Bloom's, Falcon's, MPT's ...); the others' (GenericForTokenClassification: Llama,
    /// Mistral, Qwen2, Gemma ...) is <c>score</c>. PEFT saves the head under that name.</summary>
    static readonly HashSet<string> ClassifierHeads = ["gpt2", "gpt_neo", "gpt_neox", "gpt_bigcode", "bloom", "falcon", "mpt"];

    /// <summary>The token classifier's head module for the model (by config.json's model_type).</summary>
    public static string TokenHeadModule(string modelPath) =>
        Config(modelPath)?["model_type"] is JsonValue v && v.TryGetValue<string>(out var type) && ClassifierHeads.Contains(type) ? "classifier" : ScoreModule;

    /// <summary>transformers' token classifiers' dropout: config.json's classifier_dropout, else its hidden_dropout, else 0.1.</summary>
    public static double ClassifierDropout(string modelPath) =>
        ConfigNumber(modelPath, "classifier_dropout") ?? ConfigNumber(modelPath, "hidden_dropout") ?? 0.1;

    static JsonObject? Config(string modelPath)
    {
        var config = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(modelPath))!, "config.json");
        if (!File.Exists(config)) return null;
        try { return JsonNode.Parse(File.ReadAllText(config)) as JsonObject; }
        catch (System.Text.Json.JsonException) { return null; }
    }

    static double? ConfigNumber(string modelPath, string key) =>
        Config(modelPath)?[key] is JsonValue v && v.TryGetValue<double>(out var number) ? number : null;
}
