using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>A token classifier's training graphs (transformers' ForTokenClassification heads, PEFT's TOKEN_CLS): the
/// loss is the causal-LM cross-entropy without the shift (token t's logits score token t's label, -100 where a token is
/// no word's first), the head's input goes through the classifier's dropout in training, and
/// <see cref="SequenceLogProbs"/> holds every token's predicted class, [batch · sequence], for seqeval's metrics.</summary>
public sealed partial class TrainingGraph
{
    /// <summary>Token classification (<see cref="Classification"/> too): the loss averages over the labelled tokens.</summary>
    public bool TokenClassification { get; private init; }
    /// <summary>A multi-label classifier's classes: <see cref="SequenceLogProbs"/> then holds each row's predicted classes
    /// multi-hot, [batch · classes]; null otherwise.</summary>
    public int? MultiLabelClasses { get; private init; }

    /// <summary>How many values <see cref="SequenceLogProbs"/> holds for a batch of that shape.</summary>
    public int PredictionsOf(int batchSize, int sequenceLength) =>
        TokenClassification ? batchSize * sequenceLength : batchSize * (MultiLabelClasses ?? 1);

    /// <summary>Each token's arg-max class as float32, flattened to [batch · sequence].</summary>
    static string AppendTokenPredictions(GraphEditor g, string logits) =>
        g.Add("Reshape", [g.Add("Cast", [g.Add("ArgMax", [logits], name: "token_classify/predict/ArgMax", attributes: [("axis", -1L), ("keepdims", 0L)])],
                name: "token_classify/predict/Cast", attributes: ("to", (long)DT.Float)), GraphConstants.Int64s(g, "token_classify/ints", -1)],
            name: "token_classify/predict/Reshape");

    /// <summary>GenericForTokenClassification's dropout(hidden) before its score head (classifier_dropout, 0.1 unless the
    /// config says otherwise): a Dropout in training mode on the input of each layer that reads a trained head's weight
    /// (the modules_to_save copy of <c>score</c> or <c>classifier</c>).</summary>
    static void AddClassifierDropout(GraphEditor g, IReadOnlyList<string> parameters, double ratio, string source)
    {
        var heads = parameters.Where(p => Lora.ModulesToSave.IsWeight(p)
            && (p == Lora.ModulesToSave.WeightName(Reward.SequenceClassifier.ScoreModule) || p == Lora.ModulesToSave.WeightName("classifier"))).ToHashSet();
        var readers = g.Graph.Node.Where(n => n.OpType is "MatMul" or "Gemm" && heads.Contains(Source(g, n.Input[1]))).ToList();
        if (readers.Count == 0)
            throw new OrtLoraException($"{source}: classifier_dropout goes before the trained classification head (modules_to_save 'score'); the model has none");
        var ratioName = GraphConstants.Scalar(g, "classifier_dropout/ratio", ratio, (int)DT.Float);
        var training = g.AddInitializer(Tensors.Scalar(g.Unique("classifier_dropout/training_mode"), 1, (int)DT.Bool));
        foreach (var head in readers)
            head.Input[0] = g.Add("Dropout", [head.Input[0], ratioName, training], name: "classifier_dropout",
                outputs: [g.Unique("classifier_dropout/output"), g.Unique("classifier_dropout/mask")]);
        g.TopologicalSort();
    }

    /// <summary>The value a weight input comes from, through the Transpose, Cast and Identity nodes between.</summary>
    static string Source(GraphEditor g, string value)
    {
        while (g.Producer(value) is { OpType: "Transpose" or "Cast" or "Identity" } hop) value = hop.Input[0];
        return value;
    }
}
