using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Cli;

/// <summary>`inspect --training-graph --memory`: what one step holds at a batch shape, from the step graph with static
/// shapes (<see cref="MemoryEstimate"/>): the inputs (frozen weights, LoRA parameters and AdamW moments, the batch) and
/// the peak of the values the nodes make, split into what the forward keeps for the backward and the rest, by op.</summary>
static class MemoryReport
{
    static readonly System.Text.RegularExpressions.Regex LayerIndex = new(@"(?<=\.)\d+(?=[./])");

    public static void Write(TrainingGraph graph, ModelProto step, int batch, int sequence)
    {
        var shaped = graph.WithBatchShape(step, batch, sequence);
        // element types from a run of the shape-agnostic graph at a few tokens (the shaped one would run the whole batch)
        var estimate = MemoryEstimate.Of(shaped, StaticShapes.Infer(shaped), ValueTable.ElemTypes(step, graph.Frozen.Values));
        static string MiB(long bytes) => $"{bytes / 1048576.0:N1} MiB";
        // the forward and the loss are the eval graph's nodes; everything else (gradients, recomputations, AdamW) is after them
        var forward = graph.Eval.Graph.Node.Select(n => n.Name).ToHashSet();
        bool Backward(NodeProto n) => !forward.Contains(n.Name);
        var saved = estimate.LiveAtPeak.Where(v => !Backward(v.Producer)).ToList();
        Console.WriteLine();
        Console.WriteLine($"memory of one step at {batch} × {sequence} tokens (static shapes; the floor of a device's peak: an arena rounds and fragments on top):");
        Console.WriteLine($"  inputs: {MiB(estimate.InputBytes)} (frozen weights {MiB(graph.Frozen.TotalBytes)}; the updated state is written to a second copy of the trainable state)");
        Console.WriteLine($"  made by the nodes, at the peak ('{estimate.PeakNode.Name}', {estimate.PeakNode.OpType}): {MiB(estimate.PeakBytes)}, " +
            $"of which the forward's values kept for the backward {MiB(saved.Sum(v => v.Bytes))} ({saved.Count} values)");
        // by the node that makes them, layers folded together (layers.0 … layers.29 → layers.N): one line per kind of value
        foreach (var kind in estimate.LiveAtPeak.GroupBy(v => $"{LayerIndex.Replace(v.Producer.Name, "N")} ({v.Producer.OpType})").OrderByDescending(g => g.Sum(v => v.Bytes)).Take(12))
            Console.WriteLine($"    {MiB(kind.Sum(v => v.Bytes)),12}  {kind.Count(),4} × {kind.Key}");
    }
}
