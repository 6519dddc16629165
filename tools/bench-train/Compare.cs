using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Bench;

/// <summary>--compare eval|gradients|step: where does the device compute a training graph differently from the CPU? On
/// the GPU machine graphs/tiny trained on the CUDA plugin with static shapes but its loss fell much slower than on the
/// CPU from the same start (docs/gpu.md), so some kernel computes wrongly there. The graph (static shapes, float32, as
/// the session loads it) runs on each provider with the same random parameters (LoRA B nonzero, so every gradient is)
/// and random tokens, twice: as loaded (ORT fuses as in training) and with every node output a graph output (which
/// keeps ORT from fusing across them). Printed: the graph outputs that differ in each, then the "origin" nodes of the
/// second: outputs off by more than the tolerance (relative to the CPU value's largest magnitude) whose inputs are all
/// within it, in graph order. An origin node is a kernel that computes wrongly; outputs off only in the first run
/// point at a fused kernel (compare again at --graph-optimization-level basic).</summary>
static class Compare
{
    public static int Run(TrainingGraph graph, string which, bool pluginRewrites, int batch, int seq, long vocab,
        GraphOptimizationLevel level, string device, string? epLibrary, double tolerance)
    {
        var (proto, feeds) = Bisect.Prepare(graph, which, staticShapes: true, pluginRewrites, batch, seq);
        var rng = new Random(3);
        foreach (var name in feeds.Keys.ToList())
        {
            if (graph.InitialValues.ContainsKey(name)) // every parameter nonzero: B = 0 would zero A's gradient
                feeds[name] = HostTensor.Of([.. graph.InitialValues[name].Select(_ => (float)(rng.NextDouble() - 0.5) * 0.2f)], graph.ParameterShapes[name]);
            else if (name is "input_ids" or "labels" && feeds[name].Data is long[] tokens) // random tokens, labels the same ids
                feeds[name] = HostTensor.Of([.. tokens.Select((_, i) => (long)new Random(i).Next(0, (int)vocab))], feeds[name].Shape);
        }
        var own = proto.Graph.Output.Select(o => o.Name).ToList();
        var all = proto.Clone();
        var outputs = own.ToHashSet();
        foreach (var o in all.Graph.Node.SelectMany(n => n.Output))
            if (o != "" && outputs.Add(o)) all.Graph.Output.Add(new ValueInfoProto { Name = o });
        Dictionary<string, HostTensor> RunOn(ModelProto model, string on, string? library)
        {
            using var options = OrtRun.DefaultOptions(level);
            ExecutionDevice.Configure(options, on, library);
            if (library is not null) PluginRewrites.KeepRewritten(options); // as the training sessions load it
            using var session = new InferenceSession(model.ToByteArray(), options);
            var readable = session.OutputMetadata.Where(m => m.Value.ElementDataType is not Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16
                and not Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.String).Select(m => m.Key);
            return OrtRun.Run(session, feeds, readable, graph.Frozen.Values);
        }

        // First the graph as the session loads it: exporting every value (below) keeps ORT from fusing nodes whose
        // intermediate values become outputs, so a wrong fused kernel shows here and not there.
        var (cpuOwn, otherOwn) = (RunOn(proto, "cpu", null), RunOn(proto, device, epLibrary));
        var ownRelative = own.Where(cpuOwn.ContainsKey).ToDictionary(o => o, o => Relative(cpuOwn, otherOwn, o));
        Console.WriteLine($"compare {which}: {proto.Graph.Node.Count} nodes; tolerance {tolerance:0.0e+00} of each value's largest magnitude");
        Console.WriteLine($"as loaded (graph outputs only): {ownRelative.Count(kv => kv.Value > tolerance)} of {ownRelative.Count} outputs off");
        foreach (var (o, r) in ownRelative.Where(kv => kv.Value > tolerance || !kv.Key.StartsWith("updated.") && !kv.Key.StartsWith("grad.")))
            Console.WriteLine($"  output {o}: {r:0.0e+00}{(r > tolerance ? "  OFF" : "")}");

        var cpu = RunOn(all, "cpu", null);
        var other = RunOn(all, device, epLibrary);
        if (Environment.GetEnvironmentVariable("COMPARE_PERTURB_OP") is { Length: > 0 } op) // a stand-in wrong kernel, to check the report on a CPU
            foreach (var o in proto.Graph.Node.First(n => n.OpType == op).Output.Where(other.ContainsKey))
                if (other[o].Data is float[] f) other[o] = HostTensor.Of([.. f.Select(x => x * 1.1f + 0.01f)], other[o].Shape);
        var relative = cpu.Keys.ToDictionary(k => k, k => Relative(cpu, other, k));
        Console.WriteLine($"every value exported: {cpu.Count} values on both providers, graph outputs off: {own.Count(o => relative.GetValueOrDefault(o) > tolerance)} of {own.Count}");
        int origins = 0;
        foreach (var node in proto.Graph.Node)
        {
            var off = node.Output.Where(o => relative.GetValueOrDefault(o) > tolerance).ToList();
            if (off.Count == 0 || node.Input.Any(i => relative.GetValueOrDefault(i) > tolerance)) continue;
            if (origins++ >= 20) continue;
            Console.WriteLine($"  origin: {node.Domain}{(node.Domain == "" ? "" : ".")}{node.OpType} '{node.Name}' " +
                string.Join(", ", off.Select(o => $"{o} {relative[o]:0.0e+00}")) + " <- " +
                string.Join(", ", node.Input.Select(i => i == "" ? "-" : cpu.TryGetValue(i, out var t) ? $"[{string.Join(",", t.Shape)}]" : "?")));
        }
        int offCount = relative.Count(kv => kv.Value > tolerance);
        Console.WriteLine($"values off: {offCount} of {relative.Count}; origin nodes: {origins}");
        return offCount > 0 || ownRelative.Values.Any(r => r > tolerance) ? 1 : 0;
    }

    /// <summary>The largest difference of the two runs' <paramref name="name"/>, over the CPU value's largest magnitude
    /// (infinite when the shapes or the NaNs differ; 0 when either run lacks it).</summary>
    static double Relative(Dictionary<string, HostTensor> cpu, Dictionary<string, HostTensor> other, string name)
    {
        if (!cpu.TryGetValue(name, out var a) || !other.TryGetValue(name, out var b)) return 0;
        if (!a.Shape.SequenceEqual(b.Shape)) return double.PositiveInfinity;
        var (x, y) = (Doubles(a), Doubles(b));
        double scale = 0, diff = 0;
        for (int i = 0; i < x.Length; i++)
        {
            if (double.IsNaN(x[i]) != double.IsNaN(y[i])) return double.PositiveInfinity;
            if (double.IsNaN(x[i])) continue;
            scale = Math.Max(scale, Math.Abs(x[i]));
            diff = Math.Max(diff, Math.Abs(x[i] - y[i]));
        }
        return diff == 0 ? 0 : diff / Math.Max(scale, 1e-12);
    }

    static double[] Doubles(HostTensor t) => t.Data switch
    {
        float[] f => [.. f.Select(x => (double)x)],
        double[] d => d,
        long[] l => [.. l.Select(x => (double)x)],
        int[] i => [.. i.Select(x => (double)x)],
        bool[] b => [.. b.Select(x => x ? 1.0 : 0.0)],
        _ => [],
    };
}
