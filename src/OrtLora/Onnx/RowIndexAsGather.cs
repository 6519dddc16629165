using Onnx;

namespace OrtLora.Onnx;

/// <summary>The loss's per-row indexing without GatherElements and ScatterElements, for the CUDA plugin that crashed on
/// a one-node GatherElements graph (its kernel calls a CPU helper the machine's CPU-build core lacks; docs/gpu.md). The
/// causal-LM loss picks each row's target log-probability with
/// GatherElements along the last axis and writes the gradient's target column with ScatterElements; both are marked
/// (<see cref="Marker"/>: indices [..., K] with the data's leading dims). Marked nodes become a Gather and a ScatterND
/// on the data flattened to one axis, at the flat indices row · V + index: the same elements, read or written.</summary>
public static class RowIndexAsGather
{
    /// <summary>The doc_string of a node whose indices index the last axis of each row of its data.</summary>
    public const string Marker = "ortlora:row-indexed";

    public static void Mark(GraphEditor g, string output) => g.Producer(output)!.DocString = Marker;

    /// <summary>Rewrites the marked nodes in place; returns how many.</summary>
    public static int Apply(ModelProto model)
    {
        var graph = model.Graph;
        var g = new GraphEditor(graph);
        // Back to the original shape, which may have a 0 dim (an empty chunk of the chunked loss): Reshape reads a 0 in
        // the shape as "copy the input's dim" unless allowzero (opset 14) says it is a 0.
        long opset = model.OpsetImport.Where(o => o.Domain is "" or "ai.onnx").Select(o => o.Version).DefaultIfEmpty(1).Max();
        (string, object)[] keepZeros = opset >= 14 ? [("allowzero", 1L)] : [];
        var constants = new Int64Constants(g, "row_index");
        string Int64(long value) => constants.Scalar(value);
        int rewritten = 0;
        foreach (var node in graph.Node.Where(n => n.DocString == Marker && n.OpType is "GatherElements" or "ScatterElements").ToList())
        {
            if (node.OpType == "ScatterElements" && Attrs.Str(node, "reduction", "none") != "none") continue;
            var name = node.Name == "" ? "row_index" : node.Name;
            string Op(string op, string[] inputs, params (string, object)[] attributes) => g.Add(op, inputs, name: name + "/flat/" + op, attributes: attributes);
            var (data, indices) = (node.Input[0], node.Input[1]);
            var flat = constants.Vector(-1);
            var width = Op("Gather", [Op("Shape", [data]), Int64(-1)]);                                     // V
            var columns = Op("Gather", [Op("Shape", [indices]), flat]);                                     // [K]
            var byRow = Op("Reshape", [indices, Op("Concat", [flat, columns], ("axis", 0L))]);                // [rows, K]
            var rows = Op("Gather", [Op("Shape", [byRow]), Int64(0)]);                                      // B·S (no Size: SizeAsShape)
            var offsets = Op("Unsqueeze", [Op("Mul", [Op("Range", [Int64(0), rows, Int64(1)]), width]), flat]); // [rows, 1]: row · V
            var flatIndices = Op("Reshape", [Op("Add", [offsets, byRow]), flat]);
            var flatData = Op("Reshape", [data, flat]);
            if (node.OpType == "GatherElements")
                g.Add("Reshape", [Op("Gather", [flatData, flatIndices]), Op("Shape", [indices])], name: name + "/flat", outputs: [node.Output[0]], attributes: keepZeros);
            else
                g.Add("Reshape", [Op("ScatterND", [flatData, Op("Unsqueeze", [flatIndices, flat]), Op("Reshape", [node.Input[2], flat])]), Op("Shape", [data])],
                    name: name + "/flat", outputs: [node.Output[0]], attributes: keepZeros);
            g.RemoveNode(node);
            rewritten++;
        }
        if (rewritten > 0) g.TopologicalSort();
        return rewritten;
    }
}
