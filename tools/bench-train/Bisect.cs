using System.Diagnostics;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Bench;

/// <summary>--bisect eval|gradients|step: which node of a training graph makes the device's provider crash (issue 6: the
/// CUDA plugin segfaults in Run)? The graph, rewritten as the session would load it (PluginRewrites.Apply), is
/// cut after its first k nodes, every value no kept node reads becoming an output so that ORT prunes none of them, and
/// run in a child process (a segfault ends only the child). k is bisected: the first node whose prefix crashes is the
/// trigger, printed with its op, attributes and its inputs' types and shapes from a CPU probe. Each child rebuilds the
/// same graph (same seed and options), so this is for small models (graphs/tiny).</summary>
static class Bisect
{
    /// <summary>The graph to cut and feeds for it: all-ones tokens of [batch, seq], the parameters' initial values.</summary>
    public static (ModelProto Graph, Dictionary<string, HostTensor> Feeds) Prepare(TrainingGraph graph, string which, bool staticShapes,
        bool pluginRewrites, int batch, int seq)
    {
        var proto = which switch
        {
            "eval" => graph.Eval,
            "gradients" => graph.Gradients,
            "step" => graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)),
            _ => throw new ArgumentException($"--bisect {which}: expected eval, gradients or step"),
        };
        proto = staticShapes ? graph.WithBatchShape(proto, batch, seq) : proto.Clone();
        if (pluginRewrites) proto = PluginRewrites.Apply(proto);
        var feeds = proto.Graph.Input.Where(i => !graph.Frozen.Values.ContainsKey(i.Name)).ToDictionary(i => i.Name, i => Feed(graph, i, batch, seq));
        return (proto, feeds);
    }

    /// <summary>Parameters their initial values, token inputs all ones, the optimizer's scalars 1 (step, learning rate,
    /// norms and scales) and its moments zeros, shaped as the graph declares them.</summary>
    static HostTensor Feed(TrainingGraph graph, ValueInfoProto input, int batch, int seq)
    {
        if (graph.InitialValues.TryGetValue(input.Name, out var v)) return HostTensor.Of(v, graph.ParameterShapes[input.Name]);
        var type = input.Type.TensorType;
        if (type.ElemType == (int)TensorProto.Types.DataType.Int64) return HostTensor.Of(Enumerable.Repeat(1L, batch * seq).ToArray(), batch, seq);
        var dims = type.Shape.Dim.Select(d => d.DimValue).ToArray();
        return dims.Length == 0 ? HostTensor.Of(new[] { 1f }) : HostTensor.Of(new float[Tensors.ElementCount(dims)], dims);
    }

    /// <summary>The first <paramref name="count"/> nodes, with every value no kept node reads as an output.</summary>
    static ModelProto Prefix(ModelProto model, int count)
    {
        var cut = model.Clone();
        var nodes = cut.Graph.Node.Take(count).ToList();
        cut.Graph.Node.Clear();
        cut.Graph.Node.AddRange(nodes);
        var read = nodes.SelectMany(n => n.Input).ToHashSet();
        cut.Graph.Output.Clear();
        foreach (var o in nodes.SelectMany(n => n.Output).Where(o => o != "" && !read.Contains(o)))
            cut.Graph.Output.Add(new ValueInfoProto { Name = o });
        return cut;
    }

    /// <summary>In the child: runs the prefix on the device; the exit code tells the parent it ran.</summary>
    public static int RunPrefix(ModelProto model, Dictionary<string, HostTensor> feeds, TrainingGraph graph, int count,
        GraphOptimizationLevel level, string device, string? epLibrary)
    {
        // A stand-in crash for checking the search where no device crashes: the prefix fails once it holds this op.
        if (Environment.GetEnvironmentVariable("BISECT_FAIL_ON_OP") is { Length: > 0 } op && model.Graph.Node.Take(count).Any(n => n.OpType == op))
            return 3;
        using var options = OrtRun.DefaultOptions(level);
        ExecutionDevice.Configure(options, device, epLibrary);
        if (epLibrary is not null) PluginRewrites.KeepRewritten(options); // as the training sessions load it
        using var session = new InferenceSession(Prefix(model, count).ToByteArray(), options);
        OrtRun.Run(session, feeds, fixedInputs: graph.Frozen.Values);
        return 0;
    }

    /// <summary>In the parent: bisects the prefix length over child processes and reports the first crashing node.</summary>
    public static int Search(ModelProto model, Dictionary<string, HostTensor> feeds, TrainingGraph graph, string[] args)
    {
        int total = model.Graph.Node.Count;
        bool Runs(int count)
        {
            var child = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") child.ArgumentList.Add(typeof(Bisect).Assembly.Location);
            foreach (var a in args) child.ArgumentList.Add(a);
            child.ArgumentList.Add("--bisect-prefix");
            child.ArgumentList.Add(count.ToString());
            using var process = Process.Start(child)!;
            var output = process.StandardOutput.ReadToEndAsync();
            var error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            string last = (error.Trim().Split('\n').LastOrDefault(l => l.Length > 0) ?? "").Trim();
            Console.WriteLine($"  first {count} of {total} nodes: {(process.ExitCode == 0 ? "runs" : $"exit {process.ExitCode} {last}")}");
            return process.ExitCode == 0;
        }
        Console.WriteLine($"bisecting {total} nodes");
        if (Runs(total)) { Console.WriteLine("the whole graph runs: nothing to find"); return 0; }
        int good = 0, bad = total; // a prefix of `good` nodes runs, one of `bad` does not
        while (bad - good > 1)
        {
            int mid = (good + bad) / 2;
            if (Runs(mid)) good = mid; else bad = mid;
        }
        var node = model.Graph.Node[bad - 1];
        var types = ValueTable.Probe(Prefix(model, bad), feeds, feeds, graph.Frozen.Values);
        string Describe(string v) => v == "" ? "(none)" : types.Find(v) is { } t
            ? $"{v}: {(TensorProto.Types.DataType)t.ElemType} [{string.Join(", ", t.ShapeA)}]{(graph.Frozen.Values.ContainsKey(v) ? " frozen weight" : "")}" : $"{v}: ?";
        Console.WriteLine($"first crashing node: #{bad - 1} {node.Domain}{(node.Domain == "" ? "" : ".")}{node.OpType} '{node.Name}'");
        foreach (var a in node.Attribute) Console.WriteLine($"  attribute {a.Name}: {a}");
        foreach (var i in node.Input) Console.WriteLine($"  input  {Describe(i)}");
        foreach (var o in node.Output) Console.WriteLine($"  output {Describe(o)}");
        return 1;
    }
}
