using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Bench;

/// <summary>The training graphs as ORT runs them: the step graph loaded with static shapes ([batch, seq] fixed, as
/// TrainingSession's StaticShapes does) at levels basic and all, and with dynamic shapes at all; gradient accumulation's
/// micro-batch graph at all. Each is optimized, saved (SessionOptions.OptimizedModelFilePath) and counted. On a launch-
/// bound device every one of these nodes costs a dispatch per run; the graph we emit (--graph-stats) is not what runs.
/// CPU execution provider: CUDA's own fusions differ a little, the folding of shapes and constants does not.</summary>
static class OrtGraphStats
{
    public static void Print(TrainingGraph graph, int batch, int seq)
    {
        var step = graph.BuildStep(new AdamWOptions(WeightDecay: 0.01));
        var fixedShape = graph.WithBatchShape(step, batch, seq).ToByteArray();
        Count($"step, basic, static shapes B={batch} S={seq}", fixedShape, GraphOptimizationLevel.ORT_ENABLE_BASIC);
        Count($"step, all, static shapes B={batch} S={seq}", fixedShape, GraphOptimizationLevel.ORT_ENABLE_ALL);
        Count("step, all, dynamic shapes", step.ToByteArray(), GraphOptimizationLevel.ORT_ENABLE_ALL);
        Count($"gradient accumulation's micro-batch graph, all, static shapes B={batch} S={seq}",
            graph.WithBatchShape(graph.BuildAccumulate(), batch, seq).ToByteArray(), GraphOptimizationLevel.ORT_ENABLE_ALL);
    }

    static void Count(string what, byte[] model, GraphOptimizationLevel level)
    {
        var path = Path.Combine(Path.GetTempPath(), $"ortlora-step-{Environment.ProcessId}.onnx");
        try
        {
            using (var options = OrtRun.DefaultOptions(level))
            {
                options.IntraOpNumThreads = 1;
                options.OptimizedModelFilePath = path;
                using var session = new InferenceSession(model, options);
            }
            var optimized = ModelProto.Parser.ParseFrom(File.ReadAllBytes(path)).Graph;
            Console.WriteLine($"ORT graph ({what}): {optimized.Node.Count} nodes");
            var ops = optimized.Node.GroupBy(n => n.Domain is "" or "ai.onnx" ? n.OpType : $"{n.Domain}.{n.OpType}")
                .OrderByDescending(g => g.Count()).Select(g => $"{g.Key} {g.Count()}");
            Console.WriteLine("  " + string.Join(", ", ops));
            if (level == GraphOptimizationLevel.ORT_ENABLE_ALL) ListNodes(optimized);
            var origins = optimized.Node.GroupBy(n => Origin(n.Name)).OrderByDescending(g => g.Count()).Select(g => $"{g.Key} {g.Count()}");
            Console.WriteLine("  by origin: " + string.Join(", ", origins));
        }
        finally { File.Delete(path); }
    }

    /// <summary>ORTLORA_ORT_GRAPH_NODES=FILTER: each node whose name, inputs or outputs contain FILTER (a layer's nodes,
    /// e.g. "layers.3"), one line each with its inputs and outputs.</summary>
    public static void ListNodes(GraphProto graph)
    {
        if (Environment.GetEnvironmentVariable("ORTLORA_ORT_GRAPH_NODES") is not { Length: > 0 } filter) return;
        foreach (var n in graph.Node.Where(n => n.Name.Contains(filter) || n.Input.Concat(n.Output).Any(v => v.Contains(filter))))
            Console.WriteLine($"    {n.OpType} {n.Name}: {string.Join(", ", n.Input)} -> {string.Join(", ", n.Output)}");
    }

    /// <summary>Which part of the step a node comes from, by the name prefix autodiff and the optimizer give their
    /// nodes (a node ORT made by fusing keeps a name derived from one of the fused).</summary>
    static string Origin(string name) =>
        name.StartsWith("adamw/") ? "optimizer" : name.StartsWith("accumulate/") ? "accumulation" : name.StartsWith("grad/") ? "backward" : name.StartsWith("loss/") ? "loss" : "forward";
}
