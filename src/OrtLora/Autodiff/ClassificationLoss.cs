using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>The loss of a sequence classifier, as transformers' ForSequenceClassification heads compute it. Classes
/// (num_labels &gt; 1, problem_type single_label_classification): the cross-entropy of the
/// logits [R, N] against each row's class, averaged over the rows. The class comes in the labels [R, S] that every
/// training graph takes: -100 everywhere but at one position, which holds it (a filler row of a padded batch has none,
/// and counts for nothing). With the Trainer's label_smoothing_factor ε the row's loss is (1 − ε)·nll + ε·mean over the
/// classes of −log p, as its LabelSmoother takes it. The gradient with respect to the logits, in closed form:
/// (softmax − (1 − ε)·onehot − ε/N)·w, w = 1/rows for a counted row. A regression (num_labels 1, problem_type
/// regression) takes the mean squared error to each row's target, a <see cref="TargetsInput"/> input, instead; its
/// gradient is 2·(z − t)·w. Multi-label classification (problem_type multi_label_classification) takes BCEWithLogitsLoss
/// against each row's multi-hot classes, a <see cref="MultiLabelTargetsInput"/> input [R, N]: the mean over the counted
/// rows and the classes of softplus(z) − t·z, written max(z, 0) − t·z + log(1 + e^−|z|) to stay finite; its gradient is
/// (σ(z) − t)·w/N.</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="Logits">the logits the loss reads, [R, N] (float32)</param>
/// <param name="Targets">each row's class, [R] (int64; 0 for a filler row); a regression's targets input (float32)</param>
/// <param name="RowWeight">1 / counted rows for a counted row, 0 for a filler row, [R]</param>
/// <param name="Counted">1 for a counted row, 0 for a filler row, [R]</param>
/// <param name="OneHot">the classes as [R, N] float32 (a regression: z − t, [R])</param>
/// <param name="ClassCount">N as a float32 scalar, with label smoothing or multi-label (null otherwise)</param>
public sealed record ClassificationLoss(string Loss, string Logits, string Targets, string RowWeight, string Counted, string OneHot, double Smoothing, bool Regression,
    string? ClassCount = null, bool MultiLabel = false)
{
    /// <summary>The graph input of a regression's targets (float32, [rows]).</summary>
    public const string TargetsInput = "regression_targets";
    /// <summary>The graph input of a multi-label classifier's targets: each row's classes multi-hot (float32, [rows, num_labels]).</summary>
    public const string MultiLabelTargetsInput = "multi_label_targets";

    /// <param name="logits">float32 [R, N]; [R, 1] for a regression</param>
    /// <param name="labels">the batch's labels [R, S]: each counted row holds its class at one position, -100 elsewhere
    /// (a regression's: 0 there)</param>
    /// <param name="multiLabel">BCEWithLogits against the <see cref="MultiLabelTargetsInput"/></param>
    public static ClassificationLoss Append(GraphEditor g, string logits, string labels, double smoothing, bool regression = false, bool multiLabel = false)
    {
        if (regression && smoothing > 0) throw new OrtLoraException("label smoothing is for classes; a regression (num_labels 1) has none");
        if (multiLabel && smoothing > 0) throw new OrtLoraException("label smoothing is the cross-entropy's; multi-label classification takes the BCE loss, which the Trainer does not smooth");
        string Ints(params long[] v) => GraphConstants.Int64s(g, "classify/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "classify/const", v, (int)DT.Float);
        string Long(long v) => GraphConstants.Scalar(g, "classify/index", v, (int)DT.Int64);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "classify/" + op, attributes: attrs);

        var labelled = Op("Not", [Op("Equal", [labels, Long(CausalLmLoss.IgnoreIndex)])]);
        // the one counted position's value is the row's class (ReduceSum, whose axes are an input from opset 13)
        var targets = Op("ReduceSum", [Op("Where", [labelled, labels, Long(0)]), Ints(1)], ("keepdims", 0L));
        var counted = Op("Min", [Op("ReduceSum", [Op("Cast", [labelled], ("to", (long)DT.Float)), Ints(1)], ("keepdims", 0L)), Scalar(1)]);
        var rowWeight = Op("Div", [counted, Op("Max", [Op("ReduceSum", [counted], ("keepdims", 0L)), Scalar(1)])]);
        if (regression)
        {
            var difference = Op("Sub", [Op("Reshape", [logits, Ints(-1)]), TargetsInput]);
            var squared = Op("ReduceSum", [Op("Mul", [Op("Mul", [difference, difference]), rowWeight])], ("keepdims", 0L));
            return new ClassificationLoss(squared, logits, TargetsInput, rowWeight, counted, difference, 0, Regression: true);
        }
        var width = Op("Gather", [Op("Shape", [logits]), Long(1)], ("axis", 0L));
        if (multiLabel)
        {
            var n = Op("Cast", [width], ("to", (long)DT.Float));
            var z = logits;
            // softplus(z) − t·z, stable: max(z, 0) − t·z + log(1 + exp(−|z|))
            var elementwise = Op("Add", [Op("Sub", [Op("Relu", [z]), Op("Mul", [MultiLabelTargetsInput, z])]),
                Op("Log", [Op("Add", [Scalar(1), Op("Exp", [Op("Neg", [Op("Abs", [z])])])])])]);
            var perRowBce = Op("Div", [Op("ReduceSum", [elementwise, Ints(1)], ("keepdims", 0L)), n]);
            var bce = Op("ReduceSum", [Op("Mul", [perRowBce, rowWeight])], ("keepdims", 0L));
            return new ClassificationLoss(bce, logits, MultiLabelTargetsInput, rowWeight, counted, MultiLabelTargetsInput, 0, Regression: false, n, MultiLabel: true);
        }
        var classes = Op("Range", [Long(0), width, Long(1)]);
        var oneHot = Op("Cast", [Op("Equal", [Op("Unsqueeze", [targets, Ints(1)]), classes])], ("to", (long)DT.Float));
        var logProbs = Op("LogSoftmax", [logits], ("axis", -1L));
        var perRow = Op("Neg", [Op("ReduceSum", [Op("Mul", [oneHot, logProbs]), Ints(1)], ("keepdims", 0L))]);
        string? classCount = null;
        if (smoothing > 0)
        {
            classCount = Op("Cast", [width], ("to", (long)DT.Float));
            var meanNll = Op("Div", [Op("Neg", [Op("ReduceSum", [logProbs, Ints(1)], ("keepdims", 0L))]), classCount]);
            perRow = Op("Add", [Op("Mul", [perRow, Scalar(1 - smoothing)]), Op("Mul", [meanNll, Scalar(smoothing)])]);
        }
        var loss = Op("ReduceSum", [Op("Mul", [perRow, rowWeight])], ("keepdims", 0L));
        return new ClassificationLoss(loss, logits, targets, rowWeight, counted, oneHot, smoothing, Regression: false, classCount);
    }

    /// <summary>Appends the number of counted rows whose arg-max is their class (float32 scalar): the accuracy times the
    /// rows; multi-label, the rows whose every class is predicted right (z &gt; 0 exactly where the class applies).</summary>
    public string AppendCorrect(GraphEditor g)
    {
        if (Regression) return GraphConstants.Scalar(g, "classify/none", 0, (int)DT.Float); // no class to be right about
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "classify/accuracy/" + op, attributes: attrs);
        if (MultiLabel)
        {
            var predictedSet = Op("Greater", [Logits, GraphConstants.Scalar(g, "classify/zero", 0, (int)DT.Float)]);
            var applies = Op("Greater", [Targets, GraphConstants.Scalar(g, "classify/half", 0.5, (int)DT.Float)]);
            var wrong = Op("ReduceSum", [Op("Cast", [Op("Xor", [predictedSet, applies])], ("to", (long)DT.Float)), GraphConstants.Int64s(g, "classify/ints", 1)], ("keepdims", 0L));
            var allRight = Op("Cast", [Op("Equal", [wrong, GraphConstants.Scalar(g, "classify/zero", 0, (int)DT.Float)])], ("to", (long)DT.Float));
            return Op("ReduceSum", [Op("Mul", [allRight, Counted])], ("keepdims", 0L));
        }
        var predicted = Op("ArgMax", [Logits], ("axis", 1L), ("keepdims", 0L));
        var right = Op("Cast", [Op("Equal", [predicted, Targets])], ("to", (long)DT.Float));
        return Op("ReduceSum", [Op("Mul", [right, Counted])], ("keepdims", 0L));
    }

    /// <summary>Appends each row's predicted class as float32 [R] (for per-class metrics); a regression's prediction;
    /// multi-label, each row's classes predicted (z &gt; 0) as multi-hot, [R · N].</summary>
    public string AppendPredictions(GraphEditor g) => MultiLabel
        ? g.Add("Reshape", [g.Add("Cast", [g.Add("Greater", [Logits, GraphConstants.Scalar(g, "classify/zero", 0, (int)DT.Float)], name: "classify/predict/Greater")],
            name: "classify/predict/Cast", attributes: ("to", (long)DT.Float)), GraphConstants.Int64s(g, "classify/ints", -1)], name: "classify/predict/Reshape")
        : Regression
        ? g.Add("Reshape", [Logits, GraphConstants.Int64s(g, "classify/ints", -1)], name: "classify/predict/Reshape")
        : g.Add("Cast", [g.Add("ArgMax", [Logits], name: "classify/predict/ArgMax", attributes: [("axis", 1L), ("keepdims", 0L)])],
            name: "classify/predict/Cast", attributes: ("to", (long)DT.Float));

    /// <summary>d loss / d logits, [R, N], float32.</summary>
    public string AppendLogitsGradient(GraphEditor g)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "grad/classify/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "grad/classify/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/classify/" + op, attributes: attrs);

        if (Regression) // OneHot holds z − t
            return Op("Reshape", [Op("Mul", [Op("Mul", [OneHot, RowWeight]), Scalar(2)]), Op("Shape", [Logits])]);
        if (MultiLabel) // (σ(z) − t)·w/N
            return Op("Div", [Op("Mul", [Op("Sub", [Op("Sigmoid", [Logits]), Targets]), Op("Unsqueeze", [RowWeight, Ints(1)])]), ClassCount!]);
        string target = OneHot;
        if (ClassCount is { } classCount)
            target = Op("Add", [Op("Mul", [OneHot, Scalar(1 - Smoothing)]), Op("Div", [Scalar(Smoothing), classCount])]);
        var difference = Op("Sub", [Op("Softmax", [Logits], ("axis", -1L)), target]);
        return Op("Mul", [difference, Op("Unsqueeze", [RowWeight, Ints(1)])]);
    }
}
