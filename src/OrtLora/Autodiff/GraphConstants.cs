using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Constants for the nodes autodiff appends. They are added straight to the initializer list under a fresh
/// name: GraphEditor.AddInitializer re-checks the whole graph each time, which is quadratic over the thousands of
/// constants a large backward graph needs.</summary>
public static class GraphConstants
{
    public static string Add(GraphEditor g, string wanted, Func<string, TensorProto> make)
    {
        var name = g.Unique(wanted);
        g.Graph.Initializer.Add(make(name));
        return name;
    }

    public static string Scalar(GraphEditor g, string wanted, double value, int elemType) =>
        Add(g, wanted, n => Tensors.Scalar(n, value, elemType));

    public static string Int64s(GraphEditor g, string wanted, params long[] values) =>
        Add(g, wanted, n => Tensors.FromInt64(n, [values.Length], values));

    /// <summary>The graph's constant values (initializers not overridable by an input, Constant nodes' tensors), looked
    /// up once: rules ask for axes, perms and ratios while the graph grows.</summary>
    public static Dictionary<string, TensorProto> Index(GraphProto graph)
    {
        var inputs = new HashSet<string>(graph.Input.Select(i => i.Name));
        var result = new Dictionary<string, TensorProto>();
        foreach (var t in graph.Initializer) if (!inputs.Contains(t.Name)) result.TryAdd(t.Name, t);
        foreach (var n in graph.Node)
            if (n.OpType == "Constant" && Attrs.Tensor(n, "value") is { } t) result.TryAdd(n.Output[0], t);
        return result;
    }
}
