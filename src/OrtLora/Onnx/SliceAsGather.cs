using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>ONNX Runtime's CUDA provider loaded as a plugin into the GPU machine's core (a CPU build, whose provider
/// bridge lacks the CPU helpers Slice's CUDA kernel calls) crashes in Run on every Slice it executes: a one-node Slice
/// graph crashes, in Python as in C#, whatever its bounds, while Split, Gather, Sigmoid, MatMul and a CPU node between
/// two CUDA nodes run (docs/gpu.md). This rewrite computes such a
/// Slice as one Gather per sliced axis, with the indices Range(start, end, step) after ONNX's clamping of the bounds:
/// the same elements in the same order. With static shapes ORT folds the index arithmetic into constant indices.
/// Slices of shapes are rewritten too: the 2026-12-04 sweep (tools/bench-train Sweep.cs) crashed on a one-node Slice
/// of an int64 shape vector, and ORT places shape arithmetic on the device when a device node reads it.</summary>
public static class SliceAsGather
{
    /// <summary>Rewrites the graph in place; returns how many Slices it replaced.</summary>
    public static int Apply(GraphProto graph)
    {
        var g = new GraphEditor(graph);
        var constants = new Int64Constants(g, "slice_as_gather");
        string Int64(long value) => constants.Scalar(value);
        int rewritten = 0;
        foreach (var slice in graph.Node.Where(n => n.OpType == "Slice" && n.Domain is "" or "ai.onnx").ToList())
        {
            string? Optional(int i) => slice.Input.Count > i && slice.Input[i] != "" ? slice.Input[i] : null;
            long[]? axes = Optional(3) is { } a ? g.ConstantInts(a) : null;
            long[]? steps = Optional(4) is { } s ? g.ConstantInts(s) : null;
            if (Optional(3) is not null && axes is null || Optional(4) is not null && steps is null) continue; // Gather's axis is an attribute
            long[]? starts = g.ConstantInts(slice.Input[1]), ends = g.ConstantInts(slice.Input[2]);
            int count = axes?.Length ?? starts?.Length ?? ends?.Length ?? -1;
            if (count < 0 || steps is not null && steps.Any(st => st == 0)) continue;
            var name = slice.Name == "" ? "slice" : slice.Name;
            var shape = g.Add("Shape", [slice.Input[0]], name: name + "/gather/Shape");
            var value = slice.Input[0];
            for (int k = 0; k < count; k++)
            {
                long axis = axes?[k] ?? k, step = steps?[k] ?? 1;
                string Bound(int input, long[]? constant) => constant is not null ? Int64(constant[k])
                    : g.Add("Cast", [g.Add("Gather", [slice.Input[input], Int64(k)], name: name + "/gather/bound")], name: name + "/gather/Cast", attributes: ("to", (long)DT.Int64));
                var dim = g.Add("Gather", [shape, Int64(axis)], name: name + "/gather/dim");
                // ONNX Slice: a negative bound counts from the end; then starts clamp to [0, dim] and ends to [0, dim]
                // for a positive step, to [0, dim - 1] and [-1, dim - 1] for a negative one.
                var last = step > 0 ? dim : g.Add("Sub", [dim, Int64(1)], name: name + "/gather/last");
                var start = Clamp(g, name, FromEnd(g, name, Bound(1, starts), dim, Int64(0)), Int64(0), last);
                var end = Clamp(g, name, FromEnd(g, name, Bound(2, ends), dim, Int64(0)), Int64(step > 0 ? 0 : -1), last);
                var indices = g.Add("Range", [start, end, Int64(step)], name: name + "/gather/Range");
                bool lastAxis = k == count - 1;
                value = g.Add("Gather", [value, indices], name: name + "/gather", outputs: lastAxis ? [slice.Output[0]] : null, attributes: ("axis", axis));
            }
            g.RemoveNode(slice);
            rewritten++;
        }
        if (rewritten > 0) g.TopologicalSort();
        return rewritten;
    }

    static string FromEnd(GraphEditor g, string name, string bound, string dim, string zero) =>
        g.Add("Where", [g.Add("Less", [bound, zero], name: name + "/gather/Less"), g.Add("Add", [bound, dim], name: name + "/gather/Add"), bound],
            name: name + "/gather/Where");

    static string Clamp(GraphEditor g, string name, string value, string low, string high) =>
        g.Add("Min", [g.Add("Max", [value, low], name: name + "/gather/Max"), high], name: name + "/gather/Min");
}
