// bench-train: step time, tokens/s, graph size and peak memory of ortlora's training engine on the CPU.
//   dotnet run -c Release --project tools/bench-train -- [--shape smollm2-135m] [--batch 8] [--seq 256] [--r 16]
//       [--steps 3] [--mode train|eval|train+eval] [--model PATH [--init-from PEFT_DIR]] [--threads N] [--no-arena]
//       [--graph-stats] [--ort-graph-stats] [--build-only] [--opt-basic | --graph-optimization-level all|extended|basic|none]
//       [--fp16 | --bf16] [--device cpu|cuda] [--ep-library PATH] [--profile PREFIX] [--json] [--static-shapes]
//       [--gradient-checkpointing] [--recompute-attention] [--loss-chunks N] [--cuda-graphs] [--use-dora] [--quantize-weights 4|8 [--block-size 32]]
//       [--modules-to-save lm_head,embed_tokens] [--trainable-tokens N (the first N ids of the token embedding)]
//       [--target-modules q_proj,v_proj,embed_tokens (default all-linear)] [--dpo BETA (the batch's rows as chosen/rejected pairs)]
//       [--bisect eval|gradients|step [--keep-slices]] (the first node of that graph the device crashes on: Bisect.cs)
//       [--compare eval|gradients|step [--tolerance 1e-2]] (static shapes: which nodes the device computes differently
//       from the CPU: Compare.cs)
//       [--sweep eval|gradients|step [--keep-slices] [--cone NODE]] (every node signature of that graph run alone, or
//       with --cone that node with its producers to depth 0, 1, 2 ...: Sweep.cs; SWEEP_JOBS, SWEEP_DIR)
// --quantize-weights: the base's linear weights stored quantized (WeightQuantizer: uint4 blocks or int8 channels, read
// through DequantizeLinear), QLoRA-style. --save-base PATH writes the
// (quantized) base and stops: bench it with --model PATH in a fresh process.
// --cuda-graphs: CUDA graphs (ORT enable_cuda_graph; every buffer at a fixed address, static shapes); on a CPU only the
// fixed-address binding applies.
// --ort-graph-stats: the nodes a step runs: the step graph after ORT's optimizations (basic and all, static shapes; all,
// dynamic shapes) and gradient accumulation's micro-batch graph, with op histograms.
// Peak memory is the process's peak working set, so compare modes with one process each (--mode eval vs train).
// train+eval times training steps, then loads the eval session too (as `ortlora train --eval-steps` does) and
// evaluates once: the peak then shows what the two sessions hold together.
// --profile writes ORT's per-node trace (summarize it with tools/gpu-race/profile_summary.py); --json ends with one
// JSON line for tools/gpu-race/race.sh. On a GPU the working set is host memory only: race.sh samples nvidia-smi.
using System.Diagnostics;
using OrtLora.Autodiff;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

var options = Args.Parse(args);
if (Array.IndexOf(args, "--sweep-worker") is var workerAt and >= 0) // a child of --sweep: runs cases, builds nothing
    Environment.Exit(OrtLora.Bench.Sweep.Worker(args[workerAt + 1], int.Parse(args[workerAt + 2]), int.Parse(args[workerAt + 3]), options.Device, options.EpLibrary));
var clock = Stopwatch.StartNew();
using var model = options.Model is { } path ? OnnxModel.Load(path) : LlamaGraph.Build(
    LlamaShape.Find(options.Shape) ?? throw new ArgumentException($"unknown shape {options.Shape}"), seed: 42);
if (Array.IndexOf(args, "--quantize-weights") is var quantizeAt and >= 0)
{
    int bits = int.Parse(args[quantizeAt + 1]); // 4 bits raise the opset to 21 (WeightQuantizer)
    int blockSize = Array.IndexOf(args, "--block-size") is var b and >= 0 ? int.Parse(args[b + 1]) : 32;
    Console.WriteLine($"quantized {WeightQuantizer.Apply(model, bits, blockSize)} linear weights to {bits} bits");
}
if (Array.IndexOf(args, "--save-base") is var saveAt and >= 0)
{
    // The base (quantized or not) as a file, to bench in a fresh process with --model: the peak working set then
    // shows training, not building and quantizing the model.
    model.Save(args[saveAt + 1]);
    Console.WriteLine($"saved {args[saveAt + 1]}");
    return;
}
int forwardNodes = model.Graph.Node.Count;
long vocab = model.Graph.Output[0].Type.TensorType.Shape.Dim.Last().DimValue is > 0 and var v ? v : 1000;
if (options.InitFrom is { } dir) LoraInjector.Inject(model, PeftAdapter.Load(dir));
else LoraInjector.Inject(model, new LoraConfig { R = options.R, LoraAlpha = 2 * options.R, TargetModules = Array.IndexOf(args, "--target-modules") is var targetsAt and >= 0 ? [.. args[targetsAt + 1].Split(',')] : ["all-linear"], UseDora = args.Contains("--use-dora"),
    ModulesToSave = Array.IndexOf(args, "--modules-to-save") is var saveModules and >= 0 ? [.. args[saveModules + 1].Split(',')] : [],
    TrainableTokenIndices = Array.IndexOf(args, "--trainable-tokens") is var tokensAt and >= 0
        ? new() { [""] = [.. Enumerable.Range(0, int.Parse(args[tokensAt + 1])).Select(i => (long)i)] } : new() });
Console.WriteLine($"model: {options.Model ?? options.Shape}, {forwardNodes} forward nodes, {model.Graph.Node.Count} with LoRA ({clock.Elapsed.TotalSeconds:F1} s)");

clock.Restart();
var compute = args.Contains("--bf16") ? ComputeType.BFloat16 : args.Contains("--fp16") ? ComputeType.Float16 : ComputeType.Float32;
var ortLevel = OrtLora.Training.TrainingArguments.OrtLevel(args.Contains("--opt-basic") ? "basic"
    : Array.IndexOf(args, "--graph-optimization-level") is var level and >= 0 ? args[level + 1] : "all");
var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(WeightDecay: 0.01), options.Threads,
    CpuMemArena: !args.Contains("--no-arena"), Optimization: ortLevel,
    Device: options.Device, EpLibrary: options.EpLibrary, ProfilePrefix: options.Profile, StaticShapes: args.Contains("--static-shapes"),
    Compute: compute, GradientCheckpointing: args.Contains("--gradient-checkpointing"), RecomputeAttention: args.Contains("--recompute-attention"), CudaGraphs: args.Contains("--cuda-graphs"),
    LossChunks: options.LossChunks, Preference: Array.IndexOf(args, "--dpo") is var dpoAt and >= 0 ? new PreferenceOptions(double.Parse(args[dpoAt + 1])) : null));
if (session.Graph.HalfPrecision is { } half) Console.WriteLine($"half compute: {half}");
long trainable = session.Graph.ParameterShapes.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
Console.WriteLine($"training graph: {session.Graph.Eval.Graph.Node.Count} nodes forward+loss, {session.Graph.Gradients.Graph.Node.Count} with backward, " +
    $"{trainable:N0} trainable parameters (built in {clock.Elapsed.TotalSeconds:F1} s)");

if (args.Contains("--graph-stats"))
{
    var step = session.Graph.BuildStep(new AdamWOptions(WeightDecay: 0.01)).Graph;
    Console.WriteLine($"step graph (with clipping and AdamW): {step.Node.Count} nodes, {step.Initializer.Count} initializers");
    foreach (var (op, count) in GraphEditor.OpHistogram(step).OrderByDescending(kv => kv.Value).Take(12)) Console.Write($"{op} {count}, ");
    Console.WriteLine();
    OrtLora.Bench.OrtGraphStats.ListNodes(step);
    Console.WriteLine($"[B, S, V] values in forward+loss+backward: {FullVocabValues(session.Graph, vocab)}");
}

if (args.Contains("--ort-graph-stats")) OrtLora.Bench.OrtGraphStats.Print(session.Graph, options.Batch, options.Seq);

if (Array.IndexOf(args, "--bisect") is var bisectAt and >= 0)
{
    // With a plugin provider the graph is rewritten as TrainingSession loads it; --keep-slices bisects the graph as emitted.
    var (proto, feeds) = OrtLora.Bench.Bisect.Prepare(session.Graph, args[bisectAt + 1], args.Contains("--static-shapes"),
        session.RewritesForPlugin && !args.Contains("--keep-slices"), options.Batch, options.Seq);
    int code = Array.IndexOf(args, "--bisect-prefix") is var prefixAt and >= 0
        ? OrtLora.Bench.Bisect.RunPrefix(proto, feeds, session.Graph, int.Parse(args[prefixAt + 1]), ortLevel, options.Device, options.EpLibrary)
        : OrtLora.Bench.Bisect.Search(proto, feeds, session.Graph, args);
    session.Dispose();
    Environment.Exit(code);
}

if (Array.IndexOf(args, "--sweep") is var sweepAt and >= 0)
{
    var (proto, feeds) = OrtLora.Bench.Bisect.Prepare(session.Graph, args[sweepAt + 1], args.Contains("--static-shapes"),
        session.RewritesForPlugin && !args.Contains("--keep-slices"), options.Batch, options.Seq);
    string sweepDir = Environment.GetEnvironmentVariable("SWEEP_DIR") ?? Path.Combine(Path.GetTempPath(), $"sweep-{Environment.ProcessId}");
    int code = OrtLora.Bench.Sweep.Run(proto, feeds, session.Graph, args, sweepDir,
        int.TryParse(Environment.GetEnvironmentVariable("SWEEP_JOBS"), out var jobs) ? jobs : Environment.ProcessorCount,
        coneOf: Array.IndexOf(args, "--cone") is var coneAt and >= 0 ? args[coneAt + 1] : null);
    session.Dispose();
    Environment.Exit(code);
}

if (Array.IndexOf(args, "--compare") is var compareAt and >= 0)
{
    int code = OrtLora.Bench.Compare.Run(session.Graph, args[compareAt + 1], session.RewritesForPlugin && !args.Contains("--keep-slices"),
        options.Batch, options.Seq, vocab, ortLevel, options.Device, options.EpLibrary,
        Array.IndexOf(args, "--tolerance") is var tolAt and >= 0 ? double.Parse(args[tolAt + 1], System.Globalization.CultureInfo.InvariantCulture) : 1e-2);
    session.Dispose();
    Environment.Exit(code);
}

if (args.Contains("--build-only")) { session.Dispose(); return; }
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
if (options.Mode == "train+eval")
{
    clock.Restart();
    var evalLoss = session.EvalLoss(batch);
    Console.WriteLine($"eval after training (session load included): {clock.Elapsed.TotalSeconds:F2} s, loss {evalLoss:F4}");
}
double median = times.Order().ElementAt(times.Count / 2);
double peakMiB = Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0;
Console.WriteLine($"{options.Mode}: median {median * 1000:F1} ms/step, {n / median:F0} tokens/s (B={options.Batch}, S={options.Seq}, " +
    $"{Environment.ProcessorCount} cores, {options.Device}), peak working set {peakMiB:F0} MiB");
int stepNodes = session.Graph.Gradients.Graph.Node.Count;
session.Dispose();
foreach (var trace in session.ProfileFiles) Console.WriteLine($"profile: {trace}");
if (args.Contains("--json"))
    Console.WriteLine(System.Text.Json.JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["engine"] = EngineName(args), ["shape"] = options.Shape, ["model"] = options.Model is null ? "LlamaGraph" : "export", ["dtype"] = compute switch { ComputeType.BFloat16 => "bf16", ComputeType.Float16 => "fp16", _ => "fp32" }, ["device"] = options.Device, ["mode"] = options.Mode,
        ["batch"] = options.Batch, ["seq"] = options.Seq, ["r"] = options.R, ["step_ms"] = Math.Round(median * 1000, 2),
        ["tokens_per_s"] = Math.Round(n / median), ["peak_working_set_mib"] = Math.Round(peakMiB), ["graph_nodes"] = stepNodes,
        ["trainable"] = trainable,
    }));

// The engine as the race table names it: "ortlora" and what this run changed from the defaults, options and
// ORTLORA_* switches, each as a "+name" suffix (race.sh's variant names map to these).
static string EngineName(string[] args)
{
    string? Value(string option) => Array.IndexOf(args, option) is var at and >= 0 ? args[at + 1] : null;
    string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value : null;
    var suffixes = new[]
    {
        args.Contains("--use-dora") ? "dora" : null,
        args.Contains("--modules-to-save") ? "modules_to_save" : null,
        Value("--quantize-weights") is { } bits ? $"int{bits}" : null,
        Value("--graph-optimization-level") is { } level && level != "all" ? level : null,
        args.Contains("--gradient-checkpointing") ? "checkpointing" : null,
        args.Contains("--recompute-attention") ? "recompute-attention" : null,
        Value("--loss-chunks") is { } chunks ? $"chunks{chunks}" : null,
        args.Contains("--cuda-graphs") ? "cuda-graphs" : null,
        Env("ORTLORA_COPY_STATE_BACK") == "0" ? "parity" : null,
        Env("ORTLORA_MEMORY_PATTERN") switch { "0" => "nopattern", "1" => "pattern", _ => null },
        Env("ORTLORA_CUDA_OPTIONS") is { } cudaOptions ? "cuda_options:" + cudaOptions : null,
        Env("ORTLORA_RMSNORM_OP") == "0" ? "exported_norms" : null,
        args.Contains("--dpo") ? "dpo" : null,
    };
    return "ortlora" + string.Concat(suffixes.OfType<string>().Select(suffix => "+" + suffix));
}

// Values shaped [B, S, vocab] in the gradient graph, counted in a probe run at B=2, S=5: the logits-sized tensors.
static int FullVocabValues(TrainingGraph graph, long vocab)
{
    var feeds = graph.Gradients.Graph.Input.Where(i => !graph.Frozen.Values.ContainsKey(i.Name)).ToDictionary(i => i.Name,
        i => graph.InitialValues.TryGetValue(i.Name, out var v) ? HostTensor.Of(v, graph.ParameterShapes[i.Name])
            : i.Name == TrainingGraph.LossScale ? HostTensor.Of(new[] { 1f }) : HostTensor.Of(Enumerable.Repeat(1L, 10).ToArray(), 2, 5));
    var types = ValueTable.Probe(graph.Gradients, feeds, feeds, graph.Frozen.Values);
    return graph.Gradients.Graph.Node.SelectMany(n => n.Output).Count(o => types.Find(o)?.ShapeA.SequenceEqual([2L, 5, vocab]) == true);
}

sealed record Args(string Shape, string? Model, string? InitFrom, int Batch, int Seq, int R, int Steps, string Mode, int Threads,
    string Device, string? EpLibrary, string? Profile, int? LossChunks)
{
    public static Args Parse(string[] a)
    {
        string Get(string name, string fallback) { int i = Array.IndexOf(a, name); return i >= 0 && i + 1 < a.Length ? a[i + 1] : fallback; }
        string? Maybe(string name) { int i = Array.IndexOf(a, name); return i >= 0 && i + 1 < a.Length ? a[i + 1] : null; }
        return new(Get("--shape", "smollm2-135m"), Maybe("--model"), Maybe("--init-from"), int.Parse(Get("--batch", "8")),
            int.Parse(Get("--seq", "256")), int.Parse(Get("--r", "16")), int.Parse(Get("--steps", "3")), Get("--mode", "train"),
            int.Parse(Get("--threads", "0")), Get("--device", "cpu"), Maybe("--ep-library"), Maybe("--profile"),
            Maybe("--loss-chunks") is { } chunks ? int.Parse(chunks) : null);
    }
}
