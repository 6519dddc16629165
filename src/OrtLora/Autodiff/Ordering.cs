using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>ONNX has no control edges, and ONNX Runtime orders nodes only by data dependencies. To make a node wait
/// for another value, it reads that value through <see cref="ZeroAfter"/>: the sum of the value times 0, a scalar
/// (the sum rather than one element so that an empty value works too). ORT cannot fold it (the value is computed) and
/// does not see it as zero, so it neither moves the node earlier nor merges it with an identical one that does not
/// wait. The values it is used on are gradients of activations: one pass over them is small next to what waits.</summary>
public static class Ordering
{
    /// <summary>A scalar 0 of element type <paramref name="elemType"/> computed from <paramref name="value"/>.</summary>
    /// <param name="valueElemType">the element type of <paramref name="value"/></param>
    public static string ZeroAfter(GraphEditor g, string value, int valueElemType, int elemType)
    {
        var element = g.Add("ReduceSum", [value], name: "order/ReduceSum", attributes: ("keepdims", 0L));
        if (valueElemType != elemType) element = g.Add("Cast", [element], name: "order/Cast", attributes: ("to", (long)elemType));
        return g.Add("Mul", [element, GraphConstants.Scalar(g, "order/zero", 0, elemType)], name: "order/Mul");
    }
}
