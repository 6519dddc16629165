using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Gradient checkpointing (Chen et al., "Training deep nets with sublinear memory cost"; Hugging Face's
/// <c>gradient_checkpointing</c>): the backward of a segment of the forward recomputes that segment from its input
/// instead of reading the activations the forward computed, so ONNX Runtime frees them as soon as the forward is past
/// them. Peak activation memory goes from all layers' to the segment inputs plus one segment's, for about one more
/// forward of compute.
/// <para>Segments are cut where a single activation carries everything forward (in a transformer, the residual stream
/// between blocks): an activation is a value the backward needs whose size grows with the batch (its shapes differ
/// in the two probe runs); a cut is a node whose output is then the only activation still to be read. Cuts are
/// grouped into about √(activation bytes / cut bytes) segments of equal activation bytes, the classic optimum.</para>
/// <para>The recomputation reads its segment input through <c>x + 0·g</c> (<see cref="Ordering"/>), g the gradient at
/// the segment's end: ORT can neither run it before the backward reaches the segment (it would hold everything again)
/// nor merge it with the forward as a common subexpression.</para></summary>
public sealed class Checkpoints
{
    /// <summary>One recomputed range of forward nodes (First, Last], from Start (produced by node First) to End
    /// (produced by node Last). An attention segment (<see cref="Attention"/>) does not run node Last again: its gradient
    /// rule reads its inputs' recomputation only (a MatMul's); and its recomputation waits for the gradient at its end
    /// only, not for the parameter gradients before it: a few nodes, not dozens.</summary>
    sealed record Segment(int First, int Last, string Start, string End, bool IsAttention = false);

    /// <summary>Name of the node starting each segment's recomputation (made unique with _1, _2, ...).</summary>
    public const string SegmentStart = "checkpoint/segment_start";

    /// <summary>How many segments <see cref="Plan"/> cut the forward of <paramref name="graph"/> into.</summary>
    public static int CountSegments(GraphProto graph) =>
        graph.Node.Count(n => n.Name == SegmentStart || n.Name.StartsWith(SegmentStart + "_"));

    readonly List<NodeProto> _nodes;
    readonly List<Segment> _segments;
    readonly Dictionary<int, Segment> _segmentOf = new();
    readonly Dictionary<Segment, Dictionary<string, string>> _renames = new();

    Checkpoints(List<NodeProto> nodes, List<Segment> segments)
    {
        _nodes = nodes; _segments = segments;
        foreach (var s in segments) for (int k = s.First + 1; k <= s.Last; k++) _segmentOf[k] = s;
    }

    /// <param name="nodes">the forward nodes in topological order</param>
    /// <param name="needed">values whose gradient the backward computes</param>
    internal static Checkpoints Plan(List<NodeProto> nodes, HashSet<string> needed, ValueTable types)
    {
        bool IsActivation(string v) => needed.Contains(v) && types.VariesWithBatch(v);
        var producer = new Dictionary<string, int>();
        var lastUse = new Dictionary<string, int>();
        for (int k = 0; k < nodes.Count; k++)
        {
            foreach (var i in nodes[k].Input) if (i != "") lastUse[i] = k;
            foreach (var o in nodes[k].Output) if (o != "") producer[o] = k;
        }
        // live[k]: activations produced at or before node k and read after it
        var live = new int[nodes.Count + 1];
        foreach (var (v, k) in producer)
            if (IsActivation(v) && lastUse.TryGetValue(v, out var last) && last > k) { live[k]++; live[last]--; }
        for (int k = 1; k < nodes.Count; k++) live[k] += live[k - 1];

        var cuts = new List<(int Node, string Value)>();
        var bytesBefore = new List<double>(); // activation bytes produced up to each cut
        double bytes = 0;
        for (int k = 0; k < nodes.Count; k++)
        {
            foreach (var o in nodes[k].Output) if (o != "" && IsActivation(o)) bytes += Bytes(types[o]);
            if (live[k] != 1) continue;
            var carried = nodes[k].Output.FirstOrDefault(o => o != "" && IsActivation(o) && lastUse.GetValueOrDefault(o, -1) > k);
            if (carried is null || !Recomputable(nodes[k])) continue;
            cuts.Add((k, carried));
            bytesBefore.Add(bytes);
        }
        if (cuts.Count < 2) return new Checkpoints(nodes, []);

        // Between the first and the last cut (before the first there is no stored input to recompute from; after the
        // last, the backward starts at once), ~√(bytes / cut bytes) segments of about equal activation bytes.
        double span = bytesBefore[^1] - bytesBefore[0];
        double cutBytes = cuts.Average(c => Bytes(types[c.Value]));
        int wanted = Math.Clamp((int)Math.Round(Math.Sqrt(span / cutBytes)), 1, cuts.Count - 1);
        var chosen = new List<int> { 0 };
        for (int c = 1; c < cuts.Count; c++)
            if (bytesBefore[c] - bytesBefore[chosen[^1]] >= span / wanted * 0.999 || c == cuts.Count - 1) chosen.Add(c);
        var segments = new List<Segment>();
        for (int s = 0; s + 1 < chosen.Count; s++)
        {
            var (first, start) = cuts[chosen[s]];
            var (last, end) = cuts[chosen[s + 1]];
            if (Enumerable.Range(first + 1, last - first).All(k => Recomputable(nodes[k])))
                segments.Add(new Segment(first, last, start, end));
        }
        return new Checkpoints(nodes, segments);
    }

    /// <summary>Attention's probabilities recomputed in the backward instead of kept, as PyTorch's sdpa kernels do: each
    /// Softmax whose input is a chain of elementwise ops (scale, mask, casts) from a MatMul of two activations (Q·Kᵀ)
    /// and whose output goes, through casts, into a MatMul as its left input (P·V) is one segment from Q to P·V's
    /// output. The backward of P·V recomputes the scores, the Softmax and the casts from Q and Kᵀ, which the backward of
    /// Q·Kᵀ keeps anyway; P·V itself is not run again. The probabilities, [batch, heads, sequence, sequence] in float32
    /// and again in half with mixed precision, were most of what a step keeps for the backward (inspect --memory:
    /// 3.2 of SmolLM2's 7.5 GiB, 8.4 of TinyLlama's 19.1 at B=8, S=512); recomputing them adds two small MatMuls' worth
    /// of work a layer. The same numbers: the recomputation runs the forward's own nodes again.</summary>
    internal static Checkpoints Attention(List<NodeProto> nodes, HashSet<string> needed, ValueTable types)
    {
        var producer = new Dictionary<string, int>();
        var readers = new Dictionary<string, List<int>>();
        for (int k = 0; k < nodes.Count; k++)
        {
            foreach (var o in nodes[k].Output) if (o != "") producer[o] = k;
            foreach (var i in nodes[k].Input) if (i != "") (readers.TryGetValue(i, out var l) ? l : readers[i] = []).Add(k);
        }
        bool Activation(string v) => v != "" && needed.Contains(v) && types.VariesWithBatch(v);
        var segments = new List<Segment>();
        for (int k = 0; k < nodes.Count; k++)
        {
            if (nodes[k].OpType != "Softmax" || !Activation(nodes[k].Input[0])) continue;
            // Back along the scores: each step takes the input shaped like the node's output (the scores, not the
            // broadcast mask or scale), to the MatMul of two activations.
            int? qk = null;
            var v = nodes[k].Input[0];
            for (int step = 0; step < 8 && producer.TryGetValue(v, out var p); step++)
            {
                var n = nodes[p];
                if (n.OpType == "MatMul") { if (Activation(n.Input[0]) && Activation(n.Input[1])) qk = p; break; }
                if (n.OpType is not ("Cast" or "Add" or "Sub" or "Mul" or "Div" or "Where")) break;
                var shaped = n.Input.Where(i => Activation(i) && types[i].ShapeB.SequenceEqual(types[n.Output[0]].ShapeB)).ToList();
                if (shaped.Count != 1) break;
                v = shaped[0];
            }
            // Forward from the probabilities, through casts, to the MatMul that reads them on the left.
            var w = nodes[k].Output[0];
            int? pv = null;
            for (int step = 0; step < 4 && readers.TryGetValue(w, out var r) && r.Count == 1; step++)
            {
                var n = nodes[r[0]];
                if (n.OpType == "Cast") { w = n.Output[0]; continue; }
                if (n.OpType == "MatMul" && n.Input[0] == w) pv = r[0];
                break;
            }
            if (qk is not int first || pv is not int last) continue;
            var start = nodes[first].Input[0];
            if (!producer.TryGetValue(start, out var startAt) || (segments.Count > 0 && startAt < segments[^1].Last)) continue;
            // What the segment recomputes: the nodes after Q's that depend on Q, up to P·V; few and all deterministic.
            var dependent = new HashSet<string> { start };
            int count = 0;
            bool ok = true;
            for (int j = startAt + 1; j < last && ok; j++)
            {
                if (!nodes[j].Input.Any(dependent.Contains)) continue;
                count++;
                ok = Recomputable(nodes[j]) && count <= 16;
                foreach (var o in nodes[j].Output) if (o != "") dependent.Add(o);
            }
            if (ok) segments.Add(new Segment(startAt, last, start, nodes[last].Output[0], IsAttention: true));
        }
        return new Checkpoints(nodes, segments);
    }

    /// <summary>Nodes that give the same result when run again. Training-mode Dropout is redone from its mask.</summary>
    static bool Recomputable(NodeProto n) =>
        !n.OpType.StartsWith("Random") && n.OpType != "Multinomial" && !n.Attribute.Any(a => a.G is not null || a.Graphs.Count > 0);

    static double Bytes(ValueTable.Info info) =>
        Tensors.ElementCount(info.ShapeB) * Math.Max(1, Tensors.ElementSize(info.ElemType));

    /// <summary>The node the gradient rule of forward node <paramref name="k"/> should see: inside a segment, a copy
    /// reading and naming the recomputed values (recomputing the segment the first time it is asked, which the
    /// reverse walk does at the segment's last node, once the gradient of its end value is complete).</summary>
    /// <param name="outputGrads">the gradients of node k's outputs</param>
    /// <param name="parameterGrads">gradients computed from activations since the last recomputation (LoRA's dA, dB of
    /// the segments above): the recomputation waits for them too, and the list is emptied. ONNX Runtime orders nodes
    /// only by dependencies; without this it may leave them, and the activations they read, for the end of the step.</param>
    internal NodeProto NodeForBackward(int k, GraphEditor graph, ValueTable types, string?[] outputGrads, List<(string Grad, int ElemType)> parameterGrads)
    {
        var node = _nodes[k];
        if (!_segmentOf.TryGetValue(k, out var segment)) return node;
        if (!_renames.TryGetValue(segment, out var renames))
        {
            if (k != segment.Last) throw new InvalidOperationException($"checkpoint segment entered at node {k}, not at its end {segment.Last}");
            var endGradient = outputGrads[node.Output.IndexOf(segment.End)]
                ?? throw new InvalidOperationException($"no gradient for checkpoint '{segment.End}'");
            (string, int)[] waitFor = segment.IsAttention ? [(endGradient, types.ElemType(segment.End))]
                : [(endGradient, types.ElemType(segment.End)), .. parameterGrads];
            renames = _renames[segment] = Recompute(segment, waitFor, graph, types);
            if (!segment.IsAttention) parameterGrads.Clear();
        }
        if (!node.Input.Concat(node.Output).Any(renames.ContainsKey)) return node;
        var copy = node.Clone();
        for (int i = 0; i < copy.Input.Count; i++) if (renames.TryGetValue(copy.Input[i], out var r)) copy.Input[i] = r;
        for (int i = 0; i < copy.Output.Count; i++) if (renames.TryGetValue(copy.Output[i], out var r)) copy.Output[i] = r;
        return copy;
    }

    /// <summary>Appends the nodes of <paramref name="segment"/> that depend on its start value, renamed, reading the
    /// start through <c>start + 0·Σ…</c> of the values it waits for (the gradient at its end first); returns forward name
    /// → recomputed name.</summary>
    Dictionary<string, string> Recompute(Segment segment, (string Value, int ElemType)[] waitFor, GraphEditor graph, ValueTable types)
    {
        var renames = new Dictionary<string, string>();
        var start = types[segment.Start];
        var zero = Ordering.ZeroAfter(graph, waitFor, start.ElemType);
        var after = graph.Add("Add", [segment.Start, zero], name: SegmentStart);
        renames[segment.Start] = after;
        types.Set(after, start);

        for (int k = segment.First + 1; k <= segment.Last; k++)
        {
            var n = _nodes[k];
            if (!n.Input.Any(renames.ContainsKey) || k == segment.Last && segment.IsAttention) continue;
            if (n.OpType == "Dropout" && n.Input.Count > 2 && n.Input[2] != "") { RecomputeDropout(n, renames, graph, types); continue; }
            graph.AddRenamedCopy(n, renames, "/recompute");
            foreach (var o in n.Output)
                if (o != "" && types.Find(o) is { } info) types.Set(renames[o], info);
        }
        return renames;
    }

    /// <summary>A Dropout that may be in training mode draws a new mask each run: the recomputation applies the forward's
    /// mask instead (given the node if it had none): x·mask / (1 − ratio), as the forward (mask all true in inference).</summary>
    static void RecomputeDropout(NodeProto n, Dictionary<string, string> renames, GraphEditor graph, ValueTable types)
    {
        if (n.Output.Count < 2 || n.Output[1] == "")
        {
            var name = graph.Unique(n.Name + "_mask");
            if (n.Output.Count < 2) n.Output.Add(name); else n.Output[1] = name;
        }
        string x = renames[n.Input[0]], mask = n.Output[1];
        int type = types.ElemType(n.Input[0]);
        var kept = graph.Add("Mul", [x, graph.Add("Cast", [mask], name: "checkpoint/dropout/Cast", attributes: ("to", (long)type))],
            name: "checkpoint/dropout/Mul");
        var one = GraphConstants.Scalar(graph, "checkpoint/one", 1, type);
        var ratio = graph.Add("Cast", [n.Input[1]], name: "checkpoint/dropout/ratio", attributes: ("to", (long)type));
        var training = graph.Add("Cast", [n.Input[2]], name: "checkpoint/dropout/training", attributes: ("to", (long)type));
        // inference mode (training false) keeps x: divide by 1 − ratio·training
        var divisor = graph.Add("Sub", [one, graph.Add("Mul", [ratio, training], name: "checkpoint/dropout/Mul")], name: "checkpoint/dropout/Sub");
        var output = graph.Add("Div", [kept, divisor], name: "checkpoint/dropout/Div", outputs: [graph.Unique(n.Output[0] + "/recompute")]);
        renames[n.Output[0]] = output;
        types.Set(output, types[n.Output[0]]);
    }

}
