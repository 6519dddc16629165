using Onnx;

namespace OrtLora.Onnx;

/// <summary>Moves a graph to a later default-domain opset without changing what it computes. Between opset 13 and 21
/// the standard ops an exported language model uses mostly gained types and options whose defaults keep the old
/// behaviour; the exception that matters is opset 18, where the Reduce ops (but ReduceSum, moved at 13) take their axes
/// as an input instead of an attribute: those nodes are rewritten. Ops whose meaning changed (GroupNormalization at 21,
/// GridSample's modes at 20, DFT's axis at 20, RoiAlign's default at 16) are refused by name.</summary>
public static class OpsetRaise
{
    static readonly HashSet<string> ReduceWithAxesAt18 =
        ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"];

    static readonly (string Op, int ChangedAt)[] Changed = [("RoiAlign", 16), ("GridSample", 20), ("DFT", 20), ("GroupNormalization", 21)];

    /// <summary>Raises <paramref name="model"/> to <paramref name="target"/> when it is below; the IR version follows.</summary>
    /// <returns>the opset it had</returns>
    public static int Raise(ModelProto model, int target, string source)
    {
        var imports = model.OpsetImport.Where(o => o.Domain is "" or "ai.onnx").ToList();
        int from = imports.Select(o => (int)o.Version).DefaultIfEmpty(0).Max();
        if (from >= target) return from;
        var nodes = AllNodes(model.Graph).ToList();
        foreach (var (op, at) in Changed)
            if (from < at && target >= at && nodes.FirstOrDefault(n => n.OpType == op && n.Domain is "" or "ai.onnx") is { } changed)
                throw new OrtLoraException($"{source}: node '{changed.Name}' ({op}) means something else from opset {at}; cannot move the model from opset {from} to {target}");
        if (from < 18 && target >= 18)
        {
            var g = new GraphEditor(model.Graph);
            foreach (var node in nodes.Where(n => ReduceWithAxesAt18.Contains(n.OpType) && n.Domain is "" or "ai.onnx"))
            {
                if (Attrs.Find(node, "axes") is not { } axes) continue; // no axes: all of them, the same in both forms
                node.Attribute.Remove(axes);
                var name = g.AddInitializer(Tensors.FromInt64(g.Unique(node.Name + "_axes"), [axes.Ints.Count], axes.Ints.ToArray()));
                node.Input.Add(name);
            }
        }
        foreach (var o in imports) o.Version = target;
        long ir = target switch { >= 21 => 10, >= 19 => 9, >= 17 => 8, _ => 7 };
        if (model.IrVersion < ir) model.IrVersion = ir;
        return from;
    }

    /// <summary>The graph's nodes and those of its subgraphs (If, Loop), whose Reduce ops move to opset 18 too.</summary>
    static IEnumerable<NodeProto> AllNodes(GraphProto graph)
    {
        foreach (var n in graph.Node)
        {
            yield return n;
            foreach (var sub in n.Attribute.Where(a => a.G is not null).Select(a => a.G).Concat(n.Attribute.SelectMany(a => a.Graphs)))
                foreach (var inner in AllNodes(sub)) yield return inner;
        }
    }
}
