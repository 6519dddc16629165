using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>Hugging Face's causal-LM loss as graph nodes: token t's logits predict label t+1 (shift), labels equal to
/// -100 are ignored, cross-entropy averaged over the counted tokens. The labels are shifted rather than the logits
/// sliced, the same pairs without copying the [B, S, V] logits; LogSoftmax keeps it numerically stable.</summary>
public static class CausalLmLoss
{
    public const long IgnoreIndex = -100;

    /// <returns>name of the scalar loss value</returns>
    /// <param name="opset">before 16 the target log-probability is picked by a one-hot product: GatherElements'
    /// gradient needs ScatterElements with reduction='add' (opset 16)</param>
    public static string Append(GraphEditor g, string logits, string labels, int logitsElemType, int opset = 16)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "loss/ints", v);
        string Scalar(double v, int type) => GraphConstants.Scalar(g, "loss/const", v, type);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "loss/" + op, attributes: attrs);

        // labels[:, 1:] followed by one ignored column: shifted[b, t] is the target for logits[b, t]
        var batchDim = Op("Slice", [Op("Shape", [labels]), Ints(0), Ints(1), Ints(0)]);
        var ignoredColumn = Op("ConstantOfShape", [Op("Concat", [batchDim, Ints(1)], ("axis", 0L))],
            ("value", Tensors.FromInt64("ignore", [1], [IgnoreIndex])));
        var shifted = Op("Concat", [Op("Slice", [labels, Ints(1), Ints(long.MaxValue), Ints(1)]), ignoredColumn], ("axis", 1L));
        var counted = Op("Not", [Op("Equal", [shifted, Scalar(IgnoreIndex, (int)DT.Int64)])]);
        var target = Op("Where", [counted, shifted, Scalar(0, (int)DT.Int64)]);

        var logProbs = Op("LogSoftmax", [logits], ("axis", -1L));
        var picked = opset >= 16 ? Op("GatherElements", [logProbs, Op("Unsqueeze", [target, Ints(-1)])], ("axis", -1L))
            : Op("ReduceSum", [Op("Mul", [logProbs, Op("OneHot", [target, Op("Slice", [Op("Shape", [logits]), Ints(-1), Ints(long.MaxValue), Ints(0)]),
                g.AddInitializer(Tensors.FromFloats(g.Unique("loss/one_hot_values"), [2], [0f, 1f], logitsElemType))], ("axis", -1L))]), Ints(-1)], ("keepdims", 1L));
        var weights = Op("Cast", [counted], ("to", (long)logitsElemType));
        var nll = Op("Mul", [Op("Neg", [Op("Squeeze", [picked, Ints(-1)])]), weights]);
        var total = Op("ReduceSum", [nll], ("keepdims", 0L));
        // max(count, 1): a batch with no counted token gives loss 0 and zero gradients instead of NaN
        var count = Op("Max", [Op("ReduceSum", [weights], ("keepdims", 0L)), Scalar(1, logitsElemType)]);
        return Op("Div", [total, count]);
    }
}
