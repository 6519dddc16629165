using System.Diagnostics;
using Google.Protobuf;
using System.Runtime.InteropServices;
using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;

// Each phase runs in its own process so that its peak RSS is its own: generate → (quantize) → inject → merge → check.
// --quantize-weights 4|8: a QLoRA-style base (WeightQuantizer), merged into float weights.
var options = Args.Parse(args);
if (options.Phase is { } phase) return RunPhase(phase, options);

Directory.CreateDirectory(options.Dir);
Console.WriteLine($"model: {options.Layers} MatMul layers of [{options.Hidden}, {options.Hidden}] float32 = " +
    $"{(double)options.Layers * options.Hidden * options.Hidden / 1e6:F0}M parameters, largest tensor {options.Hidden * (long)options.Hidden * 4 / 1e6:F0} MB");
foreach (var p in options.Bits > 0 ? new[] { "generate", "quantize", "inject", "merge", "check" } : ["generate", "inject", "merge", "check"])
    RunChild(p, options);
return 0;

static void RunChild(string phase, Args o)
{
    var self = Environment.ProcessPath!;
    var psi = new ProcessStartInfo(self) { RedirectStandardOutput = false };
    if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(typeof(Args).Assembly.Location);
    foreach (var a in o.ToArgs(phase)) psi.ArgumentList.Add(a);
    using var child = Process.Start(psi)!;
    child.WaitForExit();
    if (child.ExitCode != 0) throw new Exception($"phase {phase} failed with exit code {child.ExitCode}");
}

static int RunPhase(string phase, Args o)
{
    string basePath = Path.Combine(o.Dir, "base.onnx"), injected = Path.Combine(o.Dir, "injected.onnx"), merged = Path.Combine(o.Dir, "merged.onnx");
    var clock = Stopwatch.StartNew();
    switch (phase)
    {
        case "generate": Generate(basePath, o); break;
        case "quantize": // a QLoRA-style base: merge then writes float weights (dequantized plus the delta), deferred
            using (var m = OnnxModel.Load(basePath))
            {
                WeightQuantizer.Apply(m, o.Bits);
                m.Save(basePath + ".q.onnx");
            }
            File.Move(basePath + ".q.onnx", basePath, overwrite: true);
            File.Delete(basePath + ".data"); // 4-bit weights fit in the model file itself
            break;
        case "inject":
            using (var m = OnnxModel.Load(basePath))
            {
                var lora = LoraInjector.Inject(m, new LoraConfig { TargetModules = ["proj"], R = o.R });
                // B random (a trained adapter), so that merge does real work.
                var rng = new Random(1);
                foreach (var a in lora.Adapters)
                {
                    var t = m.Graph.Initializer.Single(i => i.Name == a.LoraB);
                    var values = new float[Tensors.ElementCount(t.Dims)];
                    for (int i = 0; i < values.Length; i++) values[i] = (float)(rng.NextDouble() - 0.5) * 0.01f;
                    Tensors.SetRaw(t, Tensors.FloatsToBytes(values, t.DataType));
                }
                m.Save(injected);
            }
            break;
        case "merge":
            using (var m = OnnxModel.Load(injected))
            {
                LoraMerger.Merge(m);
                Console.WriteLine($"merge    before saving (graph rewritten, adapters read): peak RSS {Process.GetCurrentProcess().PeakWorkingSet64 / 1e6:F0} MB");
                m.Save(merged);
            }
            break;
        case "check": Check(basePath, injected, merged, o); break;
    }
    var peak = Process.GetCurrentProcess().PeakWorkingSet64;
    Console.WriteLine($"{phase,-8} {clock.Elapsed.TotalSeconds,7:F1} s   peak RSS {peak / 1e6,7:F0} MB");
    return 0;
}

// A chain of MatMul layers written straight to the side file, one tensor at a time (the model never sits in memory).
static void Generate(string path, Args o)
{
    var graph = new GraphProto { Name = "bench" };
    graph.Input.Add(Vector("x", o.Hidden));
    var dataName = Path.GetFileName(path) + ".data";
    using (var data = new FileStream(Path.Combine(o.Dir, dataName), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
    {
        var rng = new Random(0);
        var values = new float[o.Hidden * o.Hidden];
        float bound = 1 / MathF.Sqrt(o.Hidden) * 1.7f;
        string x = "x";
        for (int i = 0; i < o.Layers; i++)
        {
            for (int j = 0; j < values.Length; j++) values[j] = (rng.NextSingle() * 2 - 1) * bound;
            var name = $"model.layers.{i}.proj.weight";
            var t = new TensorProto { Name = name, DataType = (int)TensorProto.Types.DataType.Float };
            t.Dims.AddRange([o.Hidden, o.Hidden]);
            long offset = data.Position;
            data.Write(MemoryMarshal.AsBytes(values.AsSpan()));
            Tensors.SetExternal(t, dataName, offset, data.Position - offset);
            graph.Initializer.Add(t);
            var node = new NodeProto { OpType = "MatMul", Name = $"/model/layers.{i}/proj/MatMul" };
            node.Input.AddRange([x, name]);
            x = i == o.Layers - 1 ? "y" : $"h{i}";
            node.Output.Add(x);
            graph.Node.Add(node);
        }
    }
    graph.Output.Add(Vector("y", o.Hidden));
    var proto = new ModelProto { IrVersion = 9, Graph = graph, ProducerName = "bench-merge" };
    proto.OpsetImport.Add(new OperatorSetIdProto { Version = 18 });
    using var file = File.Create(path);
    proto.WriteTo(file);
}

static ValueInfoProto Vector(string name, int width)
{
    var shape = new TensorShapeProto();
    shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = 1 });
    shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = width });
    return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = shape } } };
}

// The merged model must compute what the injected one does (checked on the first layer's weight: W' = W + s·B·A).
static void Check(string basePath, string injectedPath, string mergedPath, Args o)
{
    using var b = OnnxModel.Load(basePath);
    using var inj = OnnxModel.Load(injectedPath);
    using var m = OnnxModel.Load(mergedPath);
    var adapter = LoraModel.Read(inj)!.Adapters[0];
    var baseGraph = new GraphEditor(b.Graph);
    var w = b.Graph.Node.FirstOrDefault(n => n.OpType == "DequantizeLinear" && n.Input[0] == adapter.BaseWeight) is { } dq
        ? Dequantize.Run(b, baseGraph, dq) : b.ReadFloats(baseGraph.Initializer(adapter.BaseWeight)!);
    var merged = m.ReadFloats(m.Graph.Initializer.Single(t => t.Name == adapter.BaseWeight || t.Name == adapter.BaseWeight + ".dequantized"));
    var A = inj.ReadFloats(inj.Graph.Initializer.Single(t => t.Name == adapter.LoraA));
    var B = inj.ReadFloats(inj.Graph.Initializer.Single(t => t.Name == adapter.LoraB));
    int h = o.Hidden, r = adapter.R;
    double maxErr = 0;
    for (int i = 0; i < h; i += 97)
        for (int j = 0; j < h; j += 89)
        {
            double delta = 0;
            for (int k = 0; k < r; k++) delta += (double)A[k * h + i] * B[j * r + k];
            maxErr = Math.Max(maxErr, Math.Abs(w[i * h + j] + adapter.Scale * delta - merged[i * h + j]));
        }
    Console.WriteLine($"check: merged weight max error {maxErr:E2} (sampled), side file {new FileInfo(mergedPath + ".data").Length / 1e9:F2} GB, " +
        $"merged ops {string.Join(",", GraphEditor.OpHistogram(m.Graph))}");
}

sealed record Args(int Hidden, int Layers, int R, string Dir, string? Phase, int Bits = 0)
{
    public static Args Parse(string[] args)
    {
        var a = new Args(4096, 30, 16, Path.Combine(Path.GetTempPath(), "ortlora-bench"), null);
        for (int i = 0; i + 1 < args.Length; i += 2)
            a = args[i] switch
            {
                "--hidden" => a with { Hidden = int.Parse(args[i + 1]) },
                "--layers" => a with { Layers = int.Parse(args[i + 1]) },
                "--r" => a with { R = int.Parse(args[i + 1]) },
                "--dir" => a with { Dir = args[i + 1] },
                "--phase" => a with { Phase = args[i + 1] },
                "--quantize-weights" => a with { Bits = int.Parse(args[i + 1]) },
                _ => throw new ArgumentException($"unknown option {args[i]}"),
            };
        return a;
    }

    public string[] ToArgs(string phase) =>
        ["--hidden", $"{Hidden}", "--layers", $"{Layers}", "--r", $"{R}", "--dir", Dir, "--phase", phase, "--quantize-weights", $"{Bits}"];
}
