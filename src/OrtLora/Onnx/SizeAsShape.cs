using Onnx;

namespace OrtLora.Onnx;

/// <summary>Size(x) as Gather(Shape(Reshape(x, [-1])), 0), for the CUDA plugin on the GPU machine: its Size kernel calls
/// a CPU helper of the core (Size__Compute) that a CPU build of the core does not have, and a one-node Size graph
/// crashed there (docs/gpu.md). Reshape to one axis is a view and Shape and Gather ran, so this counts the elements
/// with kernels that run.</summary>
public static class SizeAsShape
{
    /// <summary>Rewrites the graph in place; returns how many Size nodes it replaced.</summary>
    public static int Apply(GraphProto graph)
    {
        var g = new GraphEditor(graph);
        var sizes = graph.Node.Where(n => n.OpType == "Size" && n.Domain is "" or "ai.onnx").ToList();
        if (sizes.Count == 0) return 0;
        var constants = new Int64Constants(g, "size_as_shape");
        var (flat, first) = (constants.Vector(-1), constants.Scalar(0));
        foreach (var size in sizes)
        {
            var name = size.Name == "" ? "size" : size.Name;
            var shape = g.Add("Shape", [g.Add("Reshape", [size.Input[0], flat], name: name + "/flat")], name: name + "/Shape");
            g.Add("Gather", [shape, first], name: name + "/count", outputs: [size.Output[0]], attributes: ("axis", 0L));
            g.RemoveNode(size);
        }
        g.TopologicalSort();
        return sizes.Count;
    }
}
