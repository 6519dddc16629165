// bench-train: step time, tokens/s, graph size and peak memory of ortlora's training engine on the CPU.
//   dotnet run -c Release --project tools/bench-train -- [--shape smollm2-135m] [--batch 8] [--seq 256] [--r 16]
//       [--steps 3] [--mode train|eval] [--model PATH [--init-from PEFT_DIR]] [--threads N] [--no-arena]
//       [--graph-stats] [--build-only] [--opt-basic]
// Peak memory is the process's peak working set, so compare modes with one process each (--mode eval vs train).
using System.Diagnostics;
using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

var options = Args.Parse(args);
var clock = Stopwatch.StartNew();
using var model = options.Model is { } path ? OnnxModel.Load(path) : LlamaGraph.Build(
    LlamaShape.Find(options.Shape) ?? throw new ArgumentException($"unknown shape {options.Shape}"), seed: 42);
int forwardNodes = model.Graph.Node.Count;
long vocab = model.Graph.Output[0].Type.TensorType.Shape.Dim.Last().DimValue is > 0 and var v ? v : 1000;
if (options.InitFrom is { } dir) LoraInjector.Inject(model, PeftAdapter.Load(dir));
else LoraInjector.Inject(model, new LoraConfig { R = options.R, LoraAlpha = 2 * options.R, TargetModules = ["all-linear"] });
Console.WriteLine($"model: {options.Model ?? options.Shape}, {forwardNodes} forward nodes, {model.Graph.Node.Count} with LoRA ({clock.Elapsed.TotalSeconds:F1} s)");

clock.Restart();
using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01), options.Threads,
    CpuMemArena: !args.Contains("--no-arena"), Optimization: args.Contains("--opt-basic")
        ? Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_BASIC : Microsoft.ML.OnnxRuntime.GraphOptimizationLevel.ORT_ENABLE_ALL));
long trainable = session.Graph.ParameterShapes.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
Console.WriteLine($"training graph: {session.Graph.Eval.Graph.Node.Count} nodes forward+loss, {session.Graph.Gradients.Graph.Node.Count} with backward, " +
    $"{trainable:N0} trainable parameters (built in {clock.Elapsed.TotalSeconds:F1} s)");

if (args.Contains("--graph-stats"))
{
    var step = session.Graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)).Graph;
    Console.WriteLine($"step graph (with clipping and AdamW): {step.Node.Count} nodes, {step.Initializer.Count} initializers");
    foreach (var (op, count) in GraphEditor.OpHistogram(step).OrderByDescending(kv => kv.Value).Take(12)) Console.Write($"{op} {count}, ");
    Console.WriteLine();
    Console.WriteLine($"[B, S, V] values in forward+loss+backward: {FullVocabValues(session.Graph, vocab)}");
}

if (args.Contains("--build-only")) return;
var rng = new Random(1);
int n = options.Batch * options.Seq;
var ids = Enumerable.Range(0, n).Select(_ => (long)rng.Next(0, (int)vocab)).ToArray();
var batch = new Batch(ids, Enumerable.Repeat(1L, n).ToArray(), ids, options.Batch, options.Seq);
float Run() => options.Mode == "eval" ? session.EvalLoss(batch) : session.Step(batch, 1e-4f, maxGradNorm: 1f);

clock.Restart();
var firstLoss = Run();
Console.WriteLine($"first {options.Mode} step (session load included): {clock.Elapsed.TotalSeconds:F2} s, loss {firstLoss:F4}");
var times = new List<double>();
for (int i = 0; i < options.Steps; i++)
{
    clock.Restart();
    var loss = Run();
    times.Add(clock.Elapsed.TotalSeconds);
    Console.WriteLine($"step {i + 1}: {times[^1]:F3} s, loss {loss:F4}");
}
double median = times.Order().ElementAt(times.Count / 2);
Console.WriteLine($"{options.Mode}: median {median * 1000:F1} ms/step, {n / median:F0} tokens/s (B={options.Batch}, S={options.Seq}, " +
    $"{Environment.ProcessorCount} cores), peak working set {Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0:F0} MiB");

// Values shaped [B, S, vocab] in the gradient graph, counted in a probe run at B=2, S=5: the logits-sized tensors.
static int FullVocabValues(TrainingGraph graph, long vocab)
{
    var feeds = graph.Gradients.Graph.Input.ToDictionary(i => i.Name, i => graph.InitialValues.TryGetValue(i.Name, out var v)
        ? HostTensor.Of(v, graph.ParameterShapes[i.Name]) : HostTensor.Of(Enumerable.Repeat(1L, 10).ToArray(), 2, 5));
    var types = ValueTable.Probe(graph.Gradients, feeds, feeds);
    return graph.Gradients.Graph.Node.SelectMany(n => n.Output).Count(o => types.Find(o)?.ShapeA.SequenceEqual([2L, 5, vocab]) == true);
}

sealed record Args(string Shape, string? Model, string? InitFrom, int Batch, int Seq, int R, int Steps, string Mode, int Threads)
{
    public static Args Parse(string[] a)
    {
        string Get(string name, string fallback) { int i = Array.IndexOf(a, name); return i >= 0 && i + 1 < a.Length ? a[i + 1] : fallback; }
        string? Maybe(string name) { int i = Array.IndexOf(a, name); return i >= 0 && i + 1 < a.Length ? a[i + 1] : null; }
        return new(Get("--shape", "smollm2-135m"), Maybe("--model"), Maybe("--init-from"), int.Parse(Get("--batch", "8")),
            int.Parse(Get("--seq", "256")), int.Parse(Get("--r", "16")), int.Parse(Get("--steps", "3")), Get("--mode", "train"),
            int.Parse(Get("--threads", "0")));
    }
}
