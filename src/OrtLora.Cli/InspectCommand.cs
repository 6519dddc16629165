using System.CommandLine;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Cli;

/// <summary>ortlora inspect MODEL: the linear layers LoRA can target (with the parameter count for a rank), the
/// adapters of an injected model, and the op histogram; with --training-graph the op histogram of the training step
/// graph, and with --device cuda the nodes of that graph the CUDA EP has no kernel for (they would run on the CPU EP
/// between CUDA nodes). Plain aligned text, so it reads the same piped to a file.</summary>
public static class InspectCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model to inspect" };
        var r = new Option<int>("--r") { Description = "rank to count LoRA parameters for", DefaultValueFactory = _ => 8 };
        var trainingGraph = new Option<bool>("--training-graph")
        {
            Description = "also build the training step graph (forward, loss, backward, AdamW) and print its op histogram; " +
                "a model without adapters gets all-linear adapters of rank --r for it",
        };
        var device = new Option<string>("--device") { Description = "with --training-graph: list the step graph's nodes this device's EP has no kernel for", DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        var fp16 = new Option<bool>("--fp16") { Description = "with --training-graph: the graph `train --fp16` runs (frozen base in float16)" };
        var bf16 = new Option<bool>("--bf16") { Description = "with --training-graph: the graph `train --bf16` runs (frozen base in bfloat16)" };
        var memory = new Option<bool>("--memory") { Description = "with --training-graph: the memory one step needs at --per-device-train-batch-size × --max-seq-length (static shapes): inputs, and the peak of what the nodes make, by op" };
        var batchSize = new Option<int>("--per-device-train-batch-size") { Description = "with --memory: the batch", DefaultValueFactory = _ => 8 };
        var recompute = new Option<bool>("--recompute-attention") { Description = "with --training-graph: attention's probabilities recomputed in the backward, as `train` does by default; `--recompute-attention false`: the graph that stores them", DefaultValueFactory = _ => true };
        var maxSeqLength = new Option<int>("--max-seq-length") { Description = "with --memory: tokens a row", DefaultValueFactory = _ => 512 };
        var cmd = new Command("inspect", "List targetable linear layers, LoRA adapters and the op histogram") { model, r, trainingGraph, device, fp16, bf16, memory, batchSize, maxSeqLength, recompute };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            int rank = parse.GetValue(r);
            if (rank < 1) throw new OrtLoraException($"--r must be at least 1 (got {rank})");
            bool withTrainingGraph = parse.GetValue(trainingGraph);
            if (parse.GetValue(fp16) && parse.GetValue(bf16)) throw new OrtLoraException("--fp16 and --bf16: choose one");
            var compute = parse.GetValue(bf16) ? ComputeType.BFloat16 : parse.GetValue(fp16) ? ComputeType.Float16 : ComputeType.Float32;
            foreach (var (given, option) in new[] { (parse.GetValue(device) != "cpu", "--device"), (parse.GetValue(fp16), "--fp16"), (parse.GetValue(bf16), "--bf16"), (parse.GetValue(memory), "--memory"), (parse.GetResult(recompute) is { Implicit: false }, "--recompute-attention") })
                if (given && !withTrainingGraph) throw new OrtLoraException($"{option} is for --training-graph");
            int nbits = MatMulNBitsForm.ToQdq(m); // as inject reads them
            var editor = new GraphEditor(m.Graph);
            var layers = LinearLayers.Find(editor);
            if (nbits > 0) Console.WriteLine($"{m.Source}: {nbits} MatMulNBits layers, read as DequantizeLinear + MatMul");
            var prefix = ModuleNames.WrapperPrefix(layers.Select(l => l.Module).ToList());
            Console.WriteLine($"{m.Source}: {layers.Count} linear layers{(prefix != "" ? $" (module paths under the wrapper '{prefix}')" : "")}");
            var rows = layers.Select(l => new[]
            {
                ModuleNames.Strip(l.Module, prefix), l.Node.OpType, l.In.ToString(), l.Out.ToString(),
                (l.Layout == WeightLayout.InOut ? "[in,out]" : "[out,in]") + (l.Dequantize is null ? "" : " " + WeightType(editor, l)),
                l.Parts is { } p ? string.Join("+", p) : "-",
                (rank * (l.In + l.Out)).ToString("N0"), l.IsOutputHead ? "output head" : l.Tied ? "tied weight" : "",
            });
            WriteTable(["module", "op", "in", "out", "W", "fused parts", $"params r={rank}", ""], rows);
            var embeddings = LinearLayers.Embeddings(editor);
            if (embeddings.Count > 0)
                Console.WriteLine("embeddings (adapted when --target-modules names them): " + string.Join(", ",
                    embeddings.Select(e => $"{ModuleNames.Strip(e.Module, prefix)} [{e.In}, {e.Out}] {rank * (e.In + e.Out):N0} params at r={rank}")));
            long allLinear = layers.Where(l => !l.IsOutputHead && !l.Tied).Sum(l => rank * (l.In + l.Out));
            var defaults = ModuleNames.DefaultTargets(layers.Select(l => ModuleNames.Strip(l.Module, prefix)));
            long byDefault = defaults is null ? 0 : layers.Where(l => ModuleNames.IsTarget(defaults, ModuleNames.Strip(l.Module, prefix), l.IsOutputHead || l.Tied)).Sum(l => rank * (l.In + l.Out));
            Console.WriteLine($"LoRA parameters at r={rank}: all-linear {allLinear:N0}" +
                (defaults is null ? "; no layer has a name PEFT targets by default" : $"; default targets ({string.Join(",", defaults)}) {byDefault:N0}"));
            var lora = LoraModel.Read(m);
            if (lora is not null) WriteAdapters(lora, editor);
            Console.WriteLine();
            Console.WriteLine("op histogram: " + string.Join(", ", GraphEditor.OpHistogram(m.Graph).Select(p => $"{p.Key} {p.Value}")));
            (int, int)? shape = parse.GetValue(memory) ? (parse.GetValue(batchSize), parse.GetValue(maxSeqLength)) : null;
            if (shape is ({ } b, { } seq) && (b < 1 || seq < 2)) throw new OrtLoraException($"--memory needs a batch of at least 1 and at least 2 tokens a row (got {b} × {seq})");
            if (withTrainingGraph) WriteTrainingGraph(m, inject: lora is null, rank, parse.GetValue(device)!, compute, shape, parse.GetValue(recompute));
        }));
        return cmd;
    }

    /// <summary>How a quantized weight is stored: its integer type and blocks, e.g. "uint4/32" or "int8/channel".</summary>
    static string WeightType(GraphEditor g, LinearLayer l)
    {
        var type = ((global::Onnx.TensorProto.Types.DataType)g.Initializer(l.Weight)!.DataType).ToString().ToLowerInvariant();
        long block = Attrs.Int(l.Dequantize!, "block_size", 0);
        return $"{type}/{(block > 0 ? block.ToString() : "channel")}";
    }

    /// <param name="inject">the model has no adapters: give it all-linear ones of rank <paramref name="rank"/></param>
    /// <param name="memoryAt">the batch shape to estimate one step's memory at, or null</param>
    /// <param name="recomputeAttention">the graph that recomputes attention's probabilities in the backward</param>
    static void WriteTrainingGraph(OnnxModel m, bool inject, int rank, string device, ComputeType compute, (int Batch, int Sequence)? memoryAt,
        bool recomputeAttention)
    {
        var exported = new HashSet<string>(m.Graph.Node.Select(n => n.Name));
        if (inject) LoraInjector.Inject(m, new LoraConfig { R = rank, TargetModules = ["all-linear"] });
        using var graph = TrainingGraph.Build(m, compute: compute, recomputeAttention: recomputeAttention);
        var step = graph.BuildStep(new AdamWOptions());
        Console.WriteLine();
        Console.WriteLine($"training step graph: {step.Graph.Node.Count:N0} nodes (forward + loss {graph.Eval.Graph.Node.Count:N0}, " +
            $"with backward {graph.Gradients.Graph.Node.Count:N0}, then clipping and AdamW){(inject ? $", for all-linear adapters at r={rank}" : "")}");
        Console.WriteLine("op histogram: " + string.Join(", ", GraphEditor.OpHistogram(step.Graph).Select(p => $"{p.Key} {p.Value}")));
        if (memoryAt is var (batch, sequence)) MemoryReport.Write(graph, step, batch, sequence);
        if (device != "cuda") return;
        var table = KernelTable.Cuda;
        var types = ValueTable.ElemTypes(step, graph.Frozen.Values);
        var missing = KernelCoverage.Missing(step, table, types);
        string Origin(NodeProto n) => exported.Contains(n.Name) ? "from the export" : "added by ortlora";
        Console.WriteLine(missing.Count == 0
            ? $"{table.Name}: every node has a kernel (ONNX Runtime's kernel table; see docs/gpu.md)"
            : $"{table.Name}: {missing.Count} nodes have no kernel and would run on the CPU EP:");
        foreach (var f in missing) Console.WriteLine($"  {f} ({Origin(f.Node)})");
        var copies = HostArguments.DeviceToHost(step, types);
        Console.WriteLine(copies.Count == 0
            ? "no device-to-host copies: every host-memory argument (shapes, axes, counts) is computed from shapes, constants or token inputs"
            : $"{copies.Count} host-memory arguments are computed on the device and copied back mid-graph:");
        foreach (var c in copies) Console.WriteLine($"  {c} ({Origin(c.Node)})");
        // What --cuda-graphs refuses: a host-memory argument read from the batch's contents stays at the first batch's value.
        var fromBatch = HostArguments.FromFedIntegers(step);
        Console.WriteLine(fromBatch.Count == 0 ? "CUDA graphs (--cuda-graphs): no host-memory argument is computed from the batch's contents"
            : $"CUDA graphs (--cuda-graphs) refuse this graph: {fromBatch.Count} host-memory arguments are computed from the batch's contents:");
        foreach (var c in fromBatch) Console.WriteLine($"  {c} ({Origin(c.Node)})");
        // The ops the CUDA plugin was seen to crash on (docs/gpu.md), as emitted and as a plugin loads the graph.
        var crashes = KernelCoverage.PluginCrashes(step);
        var left = KernelCoverage.PluginCrashes(PluginRewrites.Apply(step));
        Console.WriteLine($"CUDA plugin (--ep-library): {crashes.Count} nodes of ops it was seen to crash on " +
            $"({string.Join(", ", crashes.GroupBy(n => n.OpType).Select(g => $"{g.Key} {g.Count()}"))}); {left.Count} left after its rewrites");
        foreach (var n in left) Console.WriteLine($"  {n.OpType} '{n.Name}' ({Origin(n)})");
    }

    static void WriteAdapters(LoraModel lora, GraphEditor graph)
    {
        var c = lora.Config;
        long parameters = lora.Adapters.Sum(a => (long)a.R * (a.In + (a.Part?.Size ?? a.Out)));
        Console.WriteLine();
        Console.WriteLine($"LoRA adapters: {lora.Adapters.Count}, {parameters:N0} parameters (lora_alpha={c.LoraAlpha}, variant={c.Variant}{(c.UseRslora ? ", rsLoRA" : "")})");
        WriteTable(["module", "part", "r", "scale", "base weight"], lora.Adapters.Select(a => new[]
        {
            a.Module, a.Part is { } p ? $"{p.Index + 1}/{p.Count} [{p.Offset}:{p.Offset + p.Size}]" : "-",
            a.R.ToString(), a.Scale.ToString("G4"), a.BaseWeight,
        }));
        if (lora.TrainableTokens.Count > 0)
        {
            Console.WriteLine($"trainable tokens: {lora.TrainableTokens.Sum(t => t.TokenIds.Count)} rows");
            WriteTable(["module", "tokens", "rows", "table"], lora.TrainableTokens.Select(t => new[]
            {
                t.Module, string.Join(",", t.TokenIds.Take(8)) + (t.TokenIds.Count > 8 ? $",… ({t.TokenIds.Count})" : ""),
                $"[{string.Join(", ", graph.Initializer(t.Rows)?.Dims ?? [])}]", t.Table,
            }));
        }
        if (lora.SavedModules.Count == 0) return;
        Console.WriteLine($"modules_to_save: {lora.SavedModules.Count}, trained whole");
        WriteTable(["module", "kind", "weight", "parameters", "copied from"], lora.SavedModules.Select(s => new[]
        {
            s.Module, s.Kind, $"[{string.Join(", ", graph.Initializer(s.Weight)?.Dims ?? [])}]",
            (graph.Initializer(s.Weight) is { } t ? Tensors.ElementCount(t.Dims) : 0).ToString("N0"), s.Original,
        }));
    }

    static void WriteTable(string[] header, IEnumerable<string[]> rows)
    {
        var all = rows.Prepend(header).ToList();
        var widths = header.Select((_, i) => all.Max(r => r[i].Length)).ToArray();
        foreach (var row in all)
            Console.WriteLine("  " + string.Join("  ", row.Select((cell, i) => cell.PadRight(widths[i]))).TrimEnd());
    }
}
