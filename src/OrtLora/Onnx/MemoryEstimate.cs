using Microsoft.ML.OnnxRuntime;
using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>How much memory one Run of a graph with static shapes needs: its inputs and initializers, which stay for
/// the whole Run, and the peak of the values its nodes make, each alive from its node to its last reader, as ONNX
/// Runtime's planner lays them out in the nodes' order (an op that only changes the shape, such as Reshape, shares its
/// input's buffer). A floor for the device's peak: an arena rounds and fragments on top of it.</summary>
/// <param name="InputBytes">graph inputs and initializers</param>
/// <param name="PeakBytes">values made by nodes, alive at once at the peak</param>
/// <param name="PeakNode">the node that runs at the peak (its outputs allocated, its inputs not yet freed)</param>
/// <param name="LiveAtPeak">the values alive at the peak, largest first</param>
public sealed record MemoryEstimate(long InputBytes, long PeakBytes, NodeProto PeakNode, IReadOnlyList<MemoryEstimate.Value> LiveAtPeak)
{
    /// <param name="Producer">the node that made it (for a shared buffer, the first)</param>
    public sealed record Value(string Name, NodeProto Producer, long Bytes);

    /// <summary>Ops whose output ONNX Runtime hands back in their input's buffer.</summary>
    static readonly HashSet<string> Aliasing = ["Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity"];

    /// <param name="shapes">each value's dims (<see cref="StaticShapes"/>); a value without one counts as empty</param>
    /// <param name="types">each value's element type</param>
    public static MemoryEstimate Of(ModelProto model, IReadOnlyDictionary<string, long[]> shapes, IReadOnlyDictionary<string, int> types)
    {
        var g = model.Graph;
        long Bytes(string v) => shapes.TryGetValue(v, out var dims) && types.TryGetValue(v, out var type) && type != (int)DT.String
            ? Tensors.ElementCount(dims) * Tensors.ElementSize(type) : 0;
        var given = new HashSet<string>(g.Input.Select(i => i.Name).Concat(g.Initializer.Select(t => t.Name)));
        long inputBytes = given.Sum(Bytes);

        // Each made value's buffer: its own, or the buffer of the input it aliases.
        var buffer = new Dictionary<string, string>();
        var producer = new Dictionary<string, (NodeProto Node, int Index)>();
        for (int i = 0; i < g.Node.Count; i++)
        {
            var n = g.Node[i];
            foreach (var o in n.Output.Where(o => o != ""))
            {
                producer[o] = (n, i);
                buffer[o] = Aliasing.Contains(n.OpType) && buffer.TryGetValue(n.Input[0], out var shared) ? shared : o;
            }
        }
        // A buffer lives from its first node to the last node that reads it or any value sharing it; graph outputs to the end.
        var last = new Dictionary<string, int>();
        void Touch(string value, int at) { if (buffer.TryGetValue(value, out var b)) last[b] = Math.Max(last.GetValueOrDefault(b, at), at); }
        for (int i = 0; i < g.Node.Count; i++)
        {
            foreach (var v in g.Node[i].Input.Where(v => v != "")) Touch(v, i);
            foreach (var o in g.Node[i].Output.Where(o => o != "")) Touch(o, i);
        }
        foreach (var o in g.Output) Touch(o.Name, g.Node.Count);

        var freedAfter = new Dictionary<int, List<string>>();
        foreach (var (b, at) in last) (freedAfter.TryGetValue(at, out var l) ? l : freedAfter[at] = []).Add(b);
        var live = new HashSet<string>();
        long now = 0, peak = 0;
        int peakAt = 0;
        List<string> atPeak = [];
        for (int i = 0; i < g.Node.Count; i++)
        {
            foreach (var o in g.Node[i].Output.Where(o => o != "" && buffer[o] == o && !given.Contains(o)))
                if (live.Add(o)) now += Bytes(o);
            if (now > peak) { peak = now; peakAt = i; atPeak = [.. live]; }
            foreach (var b in freedAfter.GetValueOrDefault(i, []))
                if (live.Remove(b)) now -= Bytes(b);
        }
        var values = atPeak.Select(v => new Value(v, producer[v].Node, Bytes(v))).OrderByDescending(v => v.Bytes).ToList();
        return new MemoryEstimate(inputBytes, peak, g.Node.Count > 0 ? g.Node[peakAt] : new NodeProto(), values);
    }
}

/// <summary>Every value's dims in a graph whose inputs have static shapes, as ONNX Runtime infers them when it loads the
/// graph, read back from the optimized model it writes. On the CPU provider: a bfloat16 graph loads as its float16
/// twin, whose shapes are the same. For graphs whose weights are inputs (a training graph's frozen ones): the model is
/// serialized whole.</summary>
public static class StaticShapes
{
    public static Dictionary<string, long[]> Infer(ModelProto model)
    {
        const int bf16 = (int)DT.Bfloat16, fp16 = (int)DT.Float16;
        var declared = ElementTypes.Mentioned(model);
        var loadable = declared.Contains(bf16) && !declared.Contains(fp16) ? ElementTypes.Retype(model, bf16, fp16) : model.Clone();
        // ORT writes the shapes it inferred for graph outputs only (value_info keeps what the model declared): every
        // value is made an output. And it writes the graph it loaded as it was unless a transformer changed it: a float16
        // Sin, which the CPU provider has no kernel for, makes its cast insertion change it. Nothing runs.
        var outputs = new HashSet<string>(loadable.Graph.Output.Select(o => o.Name));
        foreach (var o in loadable.Graph.Node.SelectMany(n => n.Output))
            if (o != "" && outputs.Add(o)) loadable.Graph.Output.Add(new ValueInfoProto { Name = o });
        loadable.Graph.Initializer.Add(Tensors.FromFloats("ortlora.shapes/half", [1], [1f], fp16));
        loadable.Graph.Output.Add(new ValueInfoProto { Name = new GraphEditor(loadable.Graph).Add("Sin", ["ortlora.shapes/half"], name: "ortlora.shapes/sin") });
        var dir = Directory.CreateTempSubdirectory("ortlora-shapes-").FullName;
        try
        {
            using var options = new SessionOptions
            {
                // basic: constant folding turns the shape arithmetic into constants, which shape inference needs
                GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_BASIC,
                OptimizedModelFilePath = Path.Combine(dir, "resolved.onnx"),
                LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR,
            };
            using (new InferenceSession(Google.Protobuf.MessageExtensions.ToByteArray(loadable), options)) { }
            var resolved = ModelProto.Parser.ParseFrom(File.ReadAllBytes(options.OptimizedModelFilePath)).Graph;
            var shapes = new Dictionary<string, long[]>();
            foreach (var v in resolved.Input.Concat(resolved.ValueInfo).Concat(resolved.Output))
                if (v.Type?.TensorType?.Shape is { } s && s.Dim.All(d => d.HasDimValue)) shapes[v.Name] = [.. s.Dim.Select(d => d.DimValue)];
            foreach (var t in resolved.Initializer.Concat(model.Graph.Initializer)) shapes[t.Name] = [.. t.Dims];
            return shapes;
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
