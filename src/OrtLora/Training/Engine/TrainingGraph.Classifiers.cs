using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>What a classifier's graphs output for its metrics in <see cref="SequenceLogProbs"/>: a sequence classifier's
/// prediction a row ([batch]), a multi-label classifier's classes multi-hot ([batch · classes]), a token classifier's
/// class for every token ([batch · sequence], for seqeval). A token classifier's loss is the causal-LM cross-entropy
/// without the shift (token t's logits score token t's label, -100 where a token is no word's first), its head's input
/// going through the classifier's dropout in training (<see cref="AddClassifierDropout"/>).</summary>
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
}
