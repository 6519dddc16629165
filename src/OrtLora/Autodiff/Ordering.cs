using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>ONNX has no control edges, and ONNX Runtime orders nodes only by data dependencies. To make a node wait
/// for another value, it reads that value through <see cref="ZeroAfter"/>: the sum of the value times 0, a scalar
/// (the sum rather than one element so that an empty value works too; in half precision the first element, if any). ORT cannot fold it (the value is computed) and
/// does not see it as zero, so it neither moves the node earlier nor merges it with an identical one that does not
/// wait. The values it is used on are gradients of activations: one pass over them is small next to what waits.</summary>
public static class Ordering
{
    /// <summary>A scalar 0 of element type <paramref name="elemType"/> computed from <paramref name="value"/>.</summary>
    /// <param name="valueElemType">the element type of <paramref name="value"/></param>
    public static string ZeroAfter(GraphEditor g, string value, int valueElemType, int elemType) =>
        ZeroAfter(g, [(value, valueElemType)], elemType);

    /// <summary>As above, waiting for every value of <paramref name="values"/>: per element type one Sum of their sums,
    /// times 0 in that type (so a large finite sum never meets a narrower type's range), cast to
    /// <paramref name="elemType"/>.</summary>
    public static string ZeroAfter(GraphEditor g, IReadOnlyList<(string Value, int ElemType)> values, int elemType)
    {
        var zeros = new List<string>();
        foreach (var group in values.GroupBy(v => v.ElemType))
        {
            var sums = group.Select(v => SumOf(g, v.Value, v.ElemType)).ToArray();
            var total = sums.Length == 1 ? sums[0] : g.Add("Sum", sums, name: "order/Sum");
            var zero = g.Add("Mul", [total, GraphConstants.Scalar(g, "order/zero", 0, group.Key)], name: "order/Mul");
            zeros.Add(group.Key == elemType ? zero : g.Add("Cast", [zero], name: "order/Cast", attributes: ("to", (long)elemType)));
        }
        return zeros.Count == 1 ? zeros[0] : g.Add("Sum", zeros.ToArray(), name: "order/Sum");
    }

    /// <summary>A scalar that depends on <paramref name="value"/>. A float16 or bfloat16 sum over a large tensor
    /// overflows to infinity (and 0·∞ is NaN), so there its first element stands for it (the sum of at most one).</summary>
    static string SumOf(GraphEditor g, string value, int elemType)
    {
        if (elemType is (int)TensorProto.Types.DataType.Float16 or (int)TensorProto.Types.DataType.Bfloat16)
        {
            var flat = g.Add("Reshape", [value, GraphConstants.Int64s(g, "order/ints", -1)], name: "order/Reshape");
            value = g.Add("Slice", [flat, GraphConstants.Int64s(g, "order/ints", 0), GraphConstants.Int64s(g, "order/ints", 1)], name: "order/Slice");
        }
        return g.Add("ReduceSum", [value], name: "order/ReduceSum", attributes: ("keepdims", 0L));
    }
}
