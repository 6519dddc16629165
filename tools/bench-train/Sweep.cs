using System.Diagnostics;
using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Bench;

/// <summary>--sweep eval|gradients|step: every distinct node signature of a training graph (op, domain, attributes,
/// input types and ranks, which inputs are initializers) run alone on the device, in worker processes, so that one run
/// names every op the provider crashes on instead of the first (Bisect). Each case is a one-node model whose inputs
/// carry the values the node saw in a CPU run of the whole graph; it runs twice: "const" (the inputs as initializers,
/// on the device from session start) and "fed" (the same values fed from host memory at Run). A worker that dies
/// marks the case it was in as crashed and is started again after it. Verdicts compare with the CPU provider.</summary>
static class Sweep
{
    static readonly string[] Modes = ["const", "fed"];
    /// <summary>How long a worker may take for one case (its start included: loading the provider, the device's context).</summary>
    static readonly TimeSpan StallLimit = TimeSpan.FromSeconds(60);

    /// <summary>In the parent: writes the cases to <paramref name="dir"/>, runs them over <paramref name="jobs"/>
    /// workers and prints one line per case; the exit code is 1 if any case crashed. The cases are the graph's node
    /// signatures or, with <paramref name="coneOf"/> (a node that crashes in its graph but not alone), that node with
    /// its producers to depth 0, 1, 2 ...: the first depth that crashes is the smallest context that does.</summary>
    public static int Run(ModelProto model, Dictionary<string, HostTensor> feeds, TrainingGraph graph, string[] args, string dir, int jobs,
        string? coneOf = null)
    {
        var values = CpuValues(model, feeds, graph);
        var initializers = model.Graph.Initializer.ToDictionary(t => t.Name);
        var cases = coneOf is null ? Signatures(model, values, initializers) : Cone(model, coneOf, values, initializers);
        var signatures = cases.Select(c => c.Label).ToList();
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(dir, "case-*.onnx")) File.Delete(f);
        for (int c = 0; c < cases.Count; c++) File.WriteAllBytes(Path.Combine(dir, $"case-{c:D4}.onnx"), cases[c].Model.ToByteArray());
        int items = signatures.Count * Modes.Length;
        jobs = Math.Max(1, Math.Min(jobs, items / 2));
        Console.WriteLine($"sweep: {model.Graph.Node.Count} nodes, {signatures.Count} {(coneOf is null ? "signatures" : $"cones of '{coneOf}'")}, {items} runs over {jobs} workers");
        var verdicts = new string?[items];
        Parallel.For(0, jobs, new ParallelOptions { MaxDegreeOfParallelism = jobs }, job =>
            RunRange(args, dir, job * items / jobs, (job + 1) * items / jobs, verdicts));
        int crashed = 0;
        for (int c = 0; c < signatures.Count; c++)
        {
            string Verdict(int m) => verdicts[c * Modes.Length + m] ?? "not run";
            if (Verdict(0).StartsWith("CRASH") || Verdict(1).StartsWith("CRASH")) crashed++;
            Console.WriteLine($"{c,4} {string.Join("  ", Modes.Select((m, i) => $"{m}: {Verdict(i),-22}"))} {signatures[c]}");
        }
        var crashing = signatures.Where((s, c) => Enumerable.Range(0, Modes.Length).Any(m => verdicts[c * Modes.Length + m]?.StartsWith("CRASH") == true)).ToList();
        Console.WriteLine(coneOf is null
            ? $"signatures that crashed: {crashed} of {signatures.Count}; ops: {string.Join(", ", crashing.Select(s => s.Split(' ')[0]).Distinct().Order())}"
            : $"cones that crashed: {crashed} of {signatures.Count}; the smallest: {crashing.FirstOrDefault() ?? "none"}");
        return crashed > 0 ? 1 : 0;
    }

    static List<(string Label, ModelProto Model)> Signatures(ModelProto model, Dictionary<string, TensorProto> values, Dictionary<string, TensorProto> initializers)
    {
        var cases = new List<(string, ModelProto)>();
        var seen = new HashSet<string>();
        foreach (var node in model.Graph.Node)
        {
            if (node.OpType == "Constant" || node.Input.Any(i => i != "" && !values.ContainsKey(i) && !initializers.ContainsKey(i))) continue;
            string signature = Signature(node, values, initializers);
            if (seen.Add(signature)) cases.Add((signature, Subgraph(model, [node], values, initializers)));
        }
        return cases;
    }

    /// <summary>The node named <paramref name="name"/> and its producers up to depth d, for d = 0 until the whole cone
    /// (or depth 16); the values entering each cut come from the CPU run.</summary>
    static List<(string Label, ModelProto Model)> Cone(ModelProto model, string name, Dictionary<string, TensorProto> values, Dictionary<string, TensorProto> initializers)
    {
        var nodes = model.Graph.Node.ToList();
        int target = nodes.FindIndex(n => n.Name == name);
        if (target < 0) throw new ArgumentException($"--cone: the graph has no node '{name}'");
        var producer = new Dictionary<string, int>();
        for (int i = 0; i < target; i++) foreach (var o in nodes[i].Output) if (o != "") producer[o] = i;
        var cases = new List<(string, ModelProto)>();
        var kept = new SortedSet<int> { target };
        for (int depth = 0; depth <= 16; depth++)
        {
            var members = kept.Select(i => nodes[i]).ToList();
            string ops = string.Join(" ", members.Select(n => n.OpType));
            cases.Add(($"depth {depth}: {members.Count} nodes: {(ops.Length > 160 ? ops[..160] + " ..." : ops)}", Subgraph(model, members, values, initializers)));
            var next = members.SelectMany(n => n.Input).Where(producer.ContainsKey).Select(i => producer[i]).Where(p => !kept.Contains(p)).ToList();
            if (next.Count == 0) break;
            kept.UnionWith(next);
        }
        return cases;
    }

    /// <summary>Runs items [first, last) in worker processes, restarting after each crash.</summary>
    static void RunRange(string[] args, string dir, int first, int last, string?[] verdicts)
    {
        int next = first;
        while (next < last)
        {
            var child = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, RedirectStandardError = true };
            if (Path.GetFileNameWithoutExtension(Environment.ProcessPath!) == "dotnet") child.ArgumentList.Add(typeof(Sweep).Assembly.Location);
            foreach (var a in new[] { "--sweep-worker", dir, next.ToString(), last.ToString() }.Concat(DeviceArgs(args))) child.ArgumentList.Add(a);
            using var process = Process.Start(child)!;
            var error = process.StandardError.ReadToEndAsync();
            int lastDone = next - 1;
            bool hung = false;
            while (true)
            {
                var read = process.StandardOutput.ReadLineAsync();
                if (!read.Wait(StallLimit)) { process.Kill(entireProcessTree: true); hung = true; break; } // a hang is a verdict too
                if (read.Result is not { } line) break;
                var parts = line.Split(' ', 2); // "<item> <verdict>"
                if (parts.Length == 2 && int.TryParse(parts[0], out int item)) { verdicts[item] = parts[1]; lastDone = item; }
            }
            process.WaitForExit();
            next = lastDone + 1;
            if (hung) { if (next < last) verdicts[next++] = $"HANG (no result in {StallLimit.TotalSeconds:F0} s)"; continue; }
            if (next < last && process.ExitCode != 0)
            {
                string why = (error.Result.Trim().Split('\n').LastOrDefault(l => l.Length > 0) ?? "").Trim();
                verdicts[next] = $"CRASH (exit {process.ExitCode}){(why.Length > 0 && !why.StartsWith("ortshim") ? ": " + why : "")}";
                next++;
            }
            else if (next < last) { verdicts[next] = "worker stopped"; next++; }
        }
    }

    static IEnumerable<string> DeviceArgs(string[] args)
    {
        foreach (var flag in new[] { "--device", "--ep-library" })
            if (Array.IndexOf(args, flag) is var at and >= 0 && at + 1 < args.Length) { yield return flag; yield return args[at + 1]; }
    }

    /// <summary>In a worker: runs items [first, last) (item = case * 2 + mode) and prints "item verdict" after each.</summary>
    public static int Worker(string dir, int first, int last, string device, string? epLibrary)
    {
        var files = Directory.GetFiles(dir, "case-*.onnx").Order().ToArray();
        string? crashOn = Environment.GetEnvironmentVariable("SWEEP_CRASH_ON_OP"); // a stand-in crash to check the parent where no device crashes
        for (int item = first; item < last; item++)
        {
            var model = ModelProto.Parser.ParseFrom(File.ReadAllBytes(files[item / Modes.Length]));
            bool fed = Modes[item % Modes.Length] == "fed";
            if (crashOn is { Length: > 0 } && model.Graph.Node.Any(n => n.OpType == crashOn)) return 134;
            double[][]? expected = null;
            try { expected = RunCase(model, fed, "cpu", null); } catch (OnnxRuntimeException) { } // e.g. bfloat16 ops the CPU lacks
            string verdict;
            try
            {
                var actual = RunCase(model, fed, device, epLibrary);
                verdict = expected is null ? "ok (no CPU result)" : $"ok {MaxDifference(expected, actual):0.0e+00}";
            }
            catch (OnnxRuntimeException e) { verdict = "error: " + e.Message.Split('\n')[0]; }
            Console.WriteLine($"{item} {verdict}");
            Console.Out.Flush();
        }
        return 0;
    }

    static double[][] RunCase(ModelProto model, bool fed, string device, string? epLibrary)
    {
        using var options = OrtRun.DefaultOptions();
        ExecutionDevice.Configure(options, device, epLibrary);
        if (epLibrary is not null) PluginRewrites.KeepRewritten(options); // as the training sessions load it
        using var session = new InferenceSession(model.ToByteArray(), options);
        var inputs = new Dictionary<string, OrtValue>();
        try
        {
            if (fed)
                foreach (var input in model.Graph.Input)
                    inputs[input.Name] = ToOrtValue(model.Graph.Initializer.First(t => t.Name == input.Name));
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, inputs, session.OutputNames);
            return results.Select(AsDoubles).ToArray();
        }
        finally { foreach (var v in inputs.Values) v.Dispose(); }
    }

    static double MaxDifference(double[][] expected, double[][] actual)
    {
        double max = 0;
        for (int o = 0; o < expected.Length; o++)
            for (int i = 0; i < Math.Min(expected[o].Length, actual[o].Length); i++)
                if (!(double.IsNaN(expected[o][i]) && double.IsNaN(actual[o][i]))) max = Math.Max(max, Math.Abs(expected[o][i] - actual[o][i]));
        return max;
    }

    static double[] AsDoubles(OrtValue v) => v.GetTensorTypeAndShape().ElementDataType switch
    {
        TensorElementType.Float => [.. v.GetTensorDataAsSpan<float>().ToArray().Select(x => (double)x)],
        TensorElementType.Float16 => [.. v.GetTensorDataAsSpan<Float16>().ToArray().Select(x => (double)(float)x)],
        TensorElementType.BFloat16 => [.. v.GetTensorDataAsSpan<BFloat16>().ToArray().Select(x => (double)(float)x)],
        TensorElementType.Double => v.GetTensorDataAsSpan<double>().ToArray(),
        TensorElementType.Int64 => [.. v.GetTensorDataAsSpan<long>().ToArray().Select(x => (double)x)],
        TensorElementType.Int32 => [.. v.GetTensorDataAsSpan<int>().ToArray().Select(x => (double)x)],
        TensorElementType.Bool => [.. v.GetTensorDataAsSpan<bool>().ToArray().Select(x => x ? 1.0 : 0.0)],
        _ => [],
    };

    static OrtValue ToOrtValue(TensorProto t)
    {
        var value = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, (TensorElementType)t.DataType, [.. t.Dims]);
        t.RawData.Span.CopyTo(value.GetTensorMutableRawData());
        return value;
    }

    /// <summary>The op, its attributes and each input's type, rank, empty dims and whether it is an initializer.</summary>
    static string Signature(NodeProto node, Dictionary<string, TensorProto> values, Dictionary<string, TensorProto> initializers)
    {
        string Input(string name) => name == "" ? "-" : (initializers.TryGetValue(name, out var t) ? "init:" : "") + Describe(t ?? values[name]);
        static string Describe(TensorProto t) => $"{(TensorProto.Types.DataType)t.DataType}[{t.Dims.Count}{(t.Dims.Contains(0) ? ",empty" : "")}]";
        var attributes = node.Attribute.Select(a => a.Type switch
        {
            AttributeProto.Types.AttributeType.Int => $"{a.Name}={a.I}",
            AttributeProto.Types.AttributeType.Float => $"{a.Name}={a.F}",
            AttributeProto.Types.AttributeType.String => $"{a.Name}={a.S.ToStringUtf8()}",
            AttributeProto.Types.AttributeType.Ints => $"{a.Name}=[{string.Join(",", a.Ints)}]",
            _ => a.Name,
        });
        return $"{(node.Domain is "" or "ai.onnx" ? "" : node.Domain + ".")}{node.OpType} ({string.Join(", ", node.Input.Select(Input))}) {string.Join(" ", attributes)}";
    }

    /// <summary>Some nodes of the graph, in its order; every value they read that none of them makes and that is not an
    /// initializer of the graph is both an initializer (its CPU value) and a graph input of the same name, so a run may
    /// feed it or leave it to the initializer. Every output no kept node reads is a graph output.</summary>
    static ModelProto Subgraph(ModelProto model, IReadOnlyList<NodeProto> nodes, Dictionary<string, TensorProto> values, Dictionary<string, TensorProto> initializers)
    {
        var single = new ModelProto { IrVersion = model.IrVersion, Graph = new GraphProto { Name = "case" } };
        single.OpsetImport.AddRange(model.OpsetImport);
        single.Graph.Node.AddRange(nodes.Select(n => n.Clone()));
        var made = nodes.SelectMany(n => n.Output).ToHashSet();
        var read = nodes.SelectMany(n => n.Input).ToHashSet();
        foreach (var name in nodes.SelectMany(n => n.Input).Where(i => i != "" && !made.Contains(i)).Distinct())
        {
            if (initializers.TryGetValue(name, out var init)) { single.Graph.Initializer.Add(init); continue; }
            var value = values[name];
            single.Graph.Initializer.Add(value);
            var type = new TypeProto.Types.Tensor { ElemType = value.DataType, Shape = new TensorShapeProto() };
            foreach (var d in value.Dims) type.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
            single.Graph.Input.Add(new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = type } });
        }
        foreach (var o in nodes.SelectMany(n => n.Output).Where(o => o != "" && !read.Contains(o))) single.Graph.Output.Add(new ValueInfoProto { Name = o });
        return single;
    }

    /// <summary>Every graph input and node output of a CPU run, as tensors with raw data. A bfloat16 graph runs as its
    /// float16 twin (the CPU provider lacks bfloat16 kernels) and its float16 values are read back as bfloat16.</summary>
    static Dictionary<string, TensorProto> CpuValues(ModelProto model, Dictionary<string, HostTensor> feeds, TrainingGraph graph)
    {
        const int bf16 = (int)TensorProto.Types.DataType.Bfloat16, fp16 = (int)TensorProto.Types.DataType.Float16;
        var declared = ElementTypes.Mentioned(model);
        bool twin = declared.Contains(bf16) && !declared.Contains(fp16);
        var probe = twin ? ElementTypes.Retype(model, bf16, fp16) : model.Clone();
        var outputs = probe.Graph.Output.Select(o => o.Name).ToHashSet();
        foreach (var o in probe.Graph.Node.SelectMany(n => n.Output))
            if (o != "" && outputs.Add(o)) probe.Graph.Output.Add(new ValueInfoProto { Name = o });
        var inputs = new Dictionary<string, OrtValue>();
        var owned = new List<OrtValue>();
        try
        {
            foreach (var (name, tensor) in feeds) owned.Add(inputs[name] = tensor.ToOrtValue());
            foreach (var (name, frozen) in twin ? ValueTable.AsFloat16(graph.Frozen.Values, owned) : graph.Frozen.Values) inputs[name] = frozen;
            using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
            using var session = new InferenceSession(probe.ToByteArray(), options);
            var names = session.OutputNames.ToList();
            using var runOptions = new RunOptions();
            using var results = session.Run(runOptions, inputs.Where(kv => session.InputNames.Contains(kv.Key)).ToDictionary(), names);
            var values = new Dictionary<string, TensorProto>();
            void Add(string name, OrtValue v)
            {
                if (!v.IsTensor) return;
                var info = v.GetTensorTypeAndShape();
                int type = (int)info.ElementDataType;
                var raw = v.GetTensorMutableRawData().ToArray();
                if (twin && type == fp16) { raw = ToBFloat16(raw); type = bf16; }
                var t = new TensorProto { Name = name, DataType = type, RawData = ByteString.CopyFrom(raw) };
                t.Dims.AddRange(info.Shape);
                values[name] = t;
            }
            foreach (var (name, v) in inputs) Add(name, v);
            for (int i = 0; i < names.Count; i++) Add(names[i], results[i]);
            return values;
        }
        finally { foreach (var v in owned) v.Dispose(); }
    }

    static byte[] ToBFloat16(byte[] halves)
    {
        var result = new byte[halves.Length];
        for (int i = 0; i < halves.Length; i += 2)
        {
            float f = (float)BitConverter.ToHalf(halves, i);
            uint bits = BitConverter.SingleToUInt32Bits(f);
            ushort b = (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16); // round to nearest even
            BitConverter.TryWriteBytes(result.AsSpan(i), b);
        }
        return result;
    }
}
