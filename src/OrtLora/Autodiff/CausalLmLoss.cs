using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>Hugging Face's causal-LM loss as graph nodes: token t's logits predict label t+1 (shift), labels equal to
/// -100 are ignored, cross-entropy averaged over the counted tokens. The labels are shifted rather than the logits
/// sliced, the same pairs without copying the [B, S, V] logits; LogSoftmax keeps it numerically stable.
/// <see cref="AppendLogitsGradient"/> writes d loss / d logits in closed form, the way fused cross-entropy kernels do,
/// to seed <see cref="GradientBuilder"/> with: differentiating the loss op by op makes five [B, S, V] tensors in the
/// backward, this three. GatherElements picks the target at every opset (its own gradient, which needs opset 16, is
/// never taken).</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="Logits">the logits the loss reads, [B, S, V]</param>
/// <param name="LogProbs">LogSoftmax(logits), [B, S, V]</param>
/// <param name="TargetIndex">the shifted labels with ignored ones set to 0, [B, S, 1] (indices into V)</param>
/// <param name="TargetLogProb">the target's log-probability, [B, S, 1]</param>
/// <param name="Weights">1 for a counted token, 0 for an ignored one, [B, S]</param>
/// <param name="Count">the number of counted tokens, at least 1, scalar</param>
public sealed record CausalLmLoss(string Loss, string Logits, string LogProbs, string TargetIndex, string TargetLogProb,
    string Weights, string Count)
{
    public const long IgnoreIndex = -100;

    /// <summary>The Trainer's label_smoothing_factor ε (its LabelSmoother): loss = (1 − ε)·nll + ε·mean over the counted
    /// tokens of −Σ_v log p_v / V.</summary>
    public double Smoothing { get; init; }
    /// <summary>With smoothing: V as a scalar of the loss's type.</summary>
    string? Vocabulary { get; init; }
    /// <summary>The float type the loss is computed in.</summary>
    public int ElemType { get; private init; }
    /// <summary>1 for a counted token, 0 for an ignored one, [B, S]: <see cref="Weights"/> unless the tokens are weighted
    /// (<see cref="AppendTargets"/> with token weights), where accuracy still counts each token once.</summary>
    public string Mask { get; private init; } = Weights;

    /// <summary>What the loss needs of the labels, computed once (also for a loss taken chunk by chunk).</summary>
    /// <param name="TargetIndex">the shifted labels with ignored ones set to 0, [B, S, 1]</param>
    /// <param name="Weights">1 for a counted token, 0 for an ignored one, [B, S]</param>
    /// <param name="Count">the number of counted tokens, at least 1, scalar</param>
    /// <param name="ElemType">the float type the loss is computed in</param>
    public sealed record Targets(string TargetIndex, string Weights, string Count, int ElemType)
    {
        /// <summary>1 for a counted token, 0 for an ignored one: <see cref="Weights"/> unless tokens are weighted.</summary>
        public string Mask { get; init; } = Weights;
    }

    /// <param name="logitsElemType">a float type the loss is computed in (the logits' own)</param>
    /// <param name="smoothing">label_smoothing_factor (0: plain cross-entropy)</param>
    public static CausalLmLoss Append(GraphEditor g, string logits, string labels, int logitsElemType, double smoothing = 0) =>
        Append(g, logits, AppendTargets(g, labels, logitsElemType), smoothing);

    /// <summary>labels[:, 1:] followed by one ignored column (shifted[b, t] is the target for logits[b, t]), the
    /// weights that drop ignored tokens and their count.</summary>
    /// <param name="tokenWeights">a float32 [B, S] input aligned with the labels: each token's weight in a loss
    /// Σ weight·nll that is not divided by a count (a policy gradient's per-token coefficients, GRPO's); null: the mean
    /// over counted tokens</param>
    /// <param name="shift">false: token t's logits score label t itself (a token classifier's loss, which transformers'
    /// ForTokenClassification heads take unshifted)</param>
    public static Targets AppendTargets(GraphEditor g, string labels, int logitsElemType, string? tokenWeights = null, bool shift = true)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "loss/ints", v);
        string Scalar(double v, int type) => GraphConstants.Scalar(g, "loss/const", v, type);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "loss/" + op, attributes: attrs);

        var batchDim = Op("Slice", [Op("Shape", [labels]), Ints(0), Ints(1), Ints(0)]);
        var ignoredColumn = Op("ConstantOfShape", [Op("Concat", [batchDim, Ints(1)], ("axis", 0L))],
            ("value", Tensors.FromInt64("ignore", [1], [IgnoreIndex])));
        var shifted = shift ? Op("Concat", [Op("Slice", [labels, Ints(1), Ints(long.MaxValue), Ints(1)]), ignoredColumn], ("axis", 1L)) : labels;
        var counted = Op("Not", [Op("Equal", [shifted, Scalar(IgnoreIndex, (int)DT.Int64)])]);
        var targetIndex = Op("Unsqueeze", [Op("Where", [counted, shifted, Scalar(0, (int)DT.Int64)]), Ints(-1)]);
        var weights = Op("Cast", [counted], ("to", (long)logitsElemType));
        // max(count, 1): a batch with no counted token gives loss 0 and zero gradients instead of NaN
        var count = Op("Max", [Op("ReduceSum", [weights], ("keepdims", 0L)), Scalar(1, logitsElemType)]);
        if (tokenWeights is null) return new(targetIndex, weights, count, logitsElemType);
        // shifted like the labels, so that a label's weight scales the prediction of that label
        var zeroColumn = Op("ConstantOfShape", [Op("Concat", [batchDim, Ints(1)], ("axis", 0L))],
            ("value", Tensors.FromFloats("zero", [1], [0f], (int)DT.Float)));
        var shiftedWeights = Op("Concat", [Op("Slice", [tokenWeights, Ints(1), Ints(long.MaxValue), Ints(1)]), zeroColumn], ("axis", 1L));
        if (logitsElemType != (int)DT.Float) shiftedWeights = Op("Cast", [shiftedWeights], ("to", (long)logitsElemType));
        return new(targetIndex, Op("Mul", [weights, shiftedWeights]), Scalar(1, logitsElemType), logitsElemType) { Mask = weights };
    }

    /// <summary>The loss of <paramref name="logits"/> against <paramref name="targets"/>: Σ nll · weight / count. For
    /// a chunk of the sequence, the targets are that chunk's and the count the whole batch's, and the chunks' losses
    /// add up to the batch's.</summary>
    public static CausalLmLoss Append(GraphEditor g, string logits, Targets targets, double smoothing = 0)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "loss/ints", v);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "loss/" + op, attributes: attrs);

        var logProbs = Op("LogSoftmax", [logits], ("axis", -1L));
        var picked = Op("GatherElements", [logProbs, targets.TargetIndex], ("axis", -1L));
        RowIndexAsGather.Mark(g, picked);
        var nll = Op("Mul", [Op("Neg", [Op("Squeeze", [picked, Ints(-1)])]), targets.Weights]);
        var total = Op("ReduceSum", [nll], ("keepdims", 0L));
        var loss = Op("Div", [total, targets.Count]);
        if (smoothing <= 0) return new(loss, logits, logProbs, targets.TargetIndex, picked, targets.Weights, targets.Count) { ElemType = targets.ElemType, Mask = targets.Mask };
        if (targets.Mask != targets.Weights) throw new OrtLoraException("label smoothing is for the causal-LM loss, not a loss of weighted tokens");
        string Scalar(double v) => GraphConstants.Scalar(g, "loss/const", v, targets.ElemType);
        var vocabulary = Op("Cast", [Op("Gather", [Op("Shape", [logits]), GraphConstants.Scalar(g, "loss/last", -1, (int)DT.Int64)])],
            ("to", (long)targets.ElemType));
        var sums = Op("ReduceSum", [logProbs, Ints(-1)], ("keepdims", 0L)); // Σ_v log p_v, [B, S]
        var uniform = Op("Div", [Op("Neg", [Op("ReduceSum", [Op("Mul", [sums, targets.Weights])], ("keepdims", 0L))]),
            Op("Mul", [targets.Count, vocabulary])]);
        loss = Op("Add", [Op("Mul", [loss, Scalar(1 - smoothing)]), Op("Mul", [uniform, Scalar(smoothing)])]);
        return new(loss, logits, logProbs, targets.TargetIndex, picked, targets.Weights, targets.Count)
            { Smoothing = smoothing, Vocabulary = vocabulary, ElemType = targets.ElemType };
    }

    /// <summary>Appends the number of counted tokens whose target is the arg-max of its logits (TRL's
    /// mean_token_accuracy is this over the count), a scalar of the loss's type. ArgMax takes the first of tied maxima,
    /// as torch.argmax does.</summary>
    public string AppendCorrect(GraphEditor g)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "accuracy/" + op, attributes: attrs);

        // [B, S, 1] throughout, no Squeeze: ORT's ArgMax of an empty chunk ([B, 0, V]) keeps the last dim, which only
        // broadcasting takes.
        var predicted = Op("ArgMax", [Logits], ("axis", -1L), ("keepdims", 1L));
        var hit = Op("Cast", [Op("Equal", [predicted, TargetIndex])], ("to", (long)ElemType));
        var weights = Op("Unsqueeze", [Mask, GraphConstants.Int64s(g, "accuracy/ints", -1)]);
        return Op("ReduceSum", [Op("Mul", [hit, weights])], ("keepdims", 0L));
    }

    /// <summary>Appends d loss / d logits = (softmax(logits) − onehot(target)) · weight / count, [B, S, V].
    /// The softmax is Exp of the forward's log-probabilities, so the logits need not outlive the forward; the one-hot
    /// is never built: the target column is written over by ScatterElements. Three [B, S, V] values (the softmax, it
    /// scaled, the scatter), each read only by the next, so no more than two are alive at once. The target's
    /// probability is Exp of the forward's picked log-probability: reading it makes the gradient depend on the loss's
    /// GatherElements, so ORT (which orders nodes depth-first from the outputs) runs that at the start of the backward
    /// and the log-probabilities die there, not after the whole backward with the loss.</summary>
    /// <param name="tokenScale">each token's d loss / d nll, [B, S], in place of weight / count (the DPO loss's rows
    /// weigh their tokens by the row's share of the loss)</param>
    public string AppendLogitsGradient(GraphEditor g, string? tokenScale = null)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/loss/" + op, attributes: attrs);

        var scale = Op("Unsqueeze", [tokenScale ?? Op("Div", [Weights, Count]), GraphConstants.Int64s(g, "grad/loss/ints", -1)]);
        var probs = Op("Exp", [LogProbs]);
        var targetProb = Op("Exp", [TargetLogProb]);
        if (Smoothing > 0)
        {
            // d/dz of (1 − ε)·nll + ε·uniform: softmax − (1 − ε)·onehot − ε/V, times weight / count
            var share = Op("Div", [GraphConstants.Scalar(g, "grad/loss/const", Smoothing, ElemType), Vocabulary!]);
            var smoothed = Op("Mul", [Op("Sub", [probs, share]), scale]);
            var smoothedTarget = Op("Mul", [Op("Sub", [Op("Sub", [targetProb, share]), GraphConstants.Scalar(g, "grad/loss/const", 1 - Smoothing, ElemType)]), scale]);
            return RowIndexed(g, Op("ScatterElements", [smoothed, TargetIndex, smoothedTarget], ("axis", -1L)));
        }
        var scaled = Op("Mul", [probs, scale]);
        var atTarget = Op("Sub", [Op("Mul", [targetProb, scale]), scale]);
        return RowIndexed(g, Op("ScatterElements", [scaled, TargetIndex, atTarget], ("axis", -1L)));
    }

    static string RowIndexed(GraphEditor g, string output)
    {
        RowIndexAsGather.Mark(g, output);
        return output;
    }
}
