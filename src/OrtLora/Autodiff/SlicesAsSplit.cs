using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>Slices that cut one value into consecutive pieces along one axis become one Split before the backward is
/// built: rotate_half's two halves of q and of k in every attention layer (<c>x[..., :d/2]</c>, <c>x[..., d/2:]</c>).
/// The forward computes the same values; the backward changes. A Slice's gradient is a Pad of the piece's gradient back
/// to the full size, with the arithmetic that replays Slice's clamping of its bounds, and the pads are then summed; in
/// bfloat16, which CUDA cannot Pad, each pad is also a round trip through float32. A Split's gradient is one Concat of
/// the pieces' gradients: on the SmolLM2 shape (bf16) 120 Pads and their 240 Casts fewer a step, and 120 Sums of three
/// gradients become Sums of two.
/// <para>A piece's bounds are known when one of its start and end is a constant and its size is static (the same in
/// both probes): dynamo exports have both constant, TorchScript ones compute the middle bound from the shape.</para></summary>
public static class SlicesAsSplit
{
    /// <summary>Rewrites the graph in place (probed <paramref name="types"/> give the static sizes, and learn the new
    /// constants); returns how many Splits replaced Slices.</summary>
    public static int Apply(GraphEditor g, ValueTable types, int opset)
    {
        if (opset < 13) return 0; // Split's sizes as an input
        long[]? Ints(NodeProto n, int i) => n.Input.Count > i ? g.ConstantInts(n.Input[i]) : null;

        var groups = new Dictionary<(string Value, long Axis), List<(NodeProto Slice, long Start, long End)>>();
        foreach (var n in g.Graph.Node)
        {
            if (n.OpType != "Slice" || n.Domain is not ("" or "ai.onnx") || n.Input.Count < 4 || n.Output.Count != 1) continue;
            if (types.Find(n.Input[0]) is not { } x || types.Find(n.Output[0]) is not { } piece) continue;
            if (Ints(n, 3) is not [var axis] || n.Input.Count > 4 && n.Input[4] != "" && Ints(n, 4) is not [1]) continue;
            if (axis < 0) axis += x.Rank;
            if (axis < 0 || axis >= x.Rank) continue;
            long dim = x.ShapeA[axis], size = piece.ShapeA[axis];
            if (dim != x.ShapeB[axis] || size != piece.ShapeB[axis] || size <= 0) continue;
            long? knownStart = Ints(n, 1) is [var s] ? Clamp(s, dim) : null, knownEnd = Ints(n, 2) is [var e] ? Clamp(e, dim) : null;
            if (knownStart is null && knownEnd is null) continue;
            long start = knownStart ?? knownEnd!.Value - size, end = knownEnd ?? start + size;
            if (end - start != size) continue;
            var key = (n.Input[0], axis);
            (groups.TryGetValue(key, out var list) ? list : groups[key] = []).Add((n, start, end));
        }

        int rewritten = 0;
        foreach (var ((value, axis), slices) in groups)
        {
            if (slices.Count < 2) continue;
            var ordered = slices.OrderBy(s => s.Start).ToList();
            long dim = types[value].ShapeA[axis];
            bool partition = ordered[0].Start == 0 && ordered[^1].End == dim
                && ordered.Zip(ordered.Skip(1)).All(p => p.First.End == p.Second.Start);
            if (!partition) continue;
            // At the first piece's place: every reader of every piece comes after it.
            int at = ordered.Min(s => g.Graph.Node.IndexOf(s.Slice));
            var name = ordered[0].Slice.Name == "" ? "slices" : ordered[0].Slice.Name;
            var sizes = GraphConstants.Int64s(g, name + "/split_sizes", [.. ordered.Select(s => s.End - s.Start)]);
            types.Set(sizes, new ValueTable.Info((int)DT.Int64, [ordered.Count], [ordered.Count]));
            var split = new NodeProto { OpType = "Split", Name = g.Unique(name + "/as_split"), Input = { value, sizes } };
            split.Output.AddRange(ordered.Select(s => s.Slice.Output[0]));
            split.Attribute.Add(Attrs.Make("axis", axis));
            foreach (var (slice, _, _) in ordered) g.RemoveNode(slice);
            g.InsertNode(at, split);
            rewritten++;
        }
        return rewritten; // a TorchScript export's bound arithmetic, now unread, goes with the graph's final cleanup
    }

    /// <summary>ONNX Slice's reading of a bound (step 1): negative counts from the end, then clamped to [0, dim].</summary>
    static long Clamp(long bound, long dim) => Math.Clamp(bound < 0 ? bound + dim : bound, 0, dim);
}
