using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Reverse-mode differentiation of an ONNX graph, in place: appends the nodes computing d loss / d parameter
/// for each parameter and returns their names. One walk: activity analysis (only nodes on a path from a parameter to
/// the loss get a backward; a rule is only asked for input grads someone needs), reverse topological order, fan-out
/// contributions summed. The per-op math lives in <see cref="GradientRules"/>.</summary>
public static class GradientBuilder
{
    /// <summary>Ops whose outputs carry no gradient (comparisons, shapes, index computations, piecewise constants).</summary>
    static readonly HashSet<string> NonDifferentiable =
    [
        "Shape", "Size", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor",
        "Range", "ConstantOfShape", "NonZero", "ArgMax", "ArgMin", "Floor", "Ceil", "Round", "Sign", "IsNaN", "IsInf",
        "Constant", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
        "OneHot", "BitShift", "Mod",
    ];

    /// <param name="graph">graph holding the loss; gradient nodes are appended to it</param>
    /// <param name="loss">name of a float value (any shape: its elements are summed) to differentiate</param>
    /// <param name="parameters">values (initializers or graph inputs) to differentiate with respect to</param>
    /// <param name="types">rank and dtype of every forward value (see <see cref="ValueTable.Probe"/>)</param>
    /// <returns>parameter name → name of its gradient value (zeros for a parameter the loss does not depend on)</returns>
    public static Dictionary<string, string> Build(GraphEditor graph, string loss, IReadOnlyList<string> parameters,
        ValueTable types, int opset, bool checkpointing = false, bool recomputeAttention = false)
    {
        var ones = graph.Add("ConstantOfShape", [graph.Add("Shape", [loss], name: "grad/seed/Shape")], name: "grad/seed/ones",
            attributes: ("value", Tensors.FromFloats("one", [1], [1f], types.ElemType(loss))));
        return Build(graph, new Dictionary<string, string> { [loss] = ones }, parameters, types, opset, checkpointing, recomputeAttention: recomputeAttention);
    }

    /// <summary>The vector–Jacobian product from given gradients: for each seeded value v with given gradient s (same
    /// shape and type as v), Σ_v s·dv/dp. A loss whose gradient with respect to some inner value is known in closed form
    /// (cross-entropy with respect to its logits) is seeded there, and the nodes after that value get no backward.</summary>
    /// <param name="seeds">value → name of its given gradient; the gradient's nodes may already be in the graph</param>
    /// <param name="checkpointing">recompute segments of the forward in the backward (<see cref="Checkpoints"/>)
    /// instead of keeping their activations</param>
    /// <param name="detached">values treated as constants (torch's detach): no gradient flows through them</param>
    /// <param name="recomputeAttention">without <paramref name="checkpointing"/>: recompute attention's probabilities in
    /// the backward instead of keeping them (<see cref="Checkpoints.Attention"/>)</param>
    public static Dictionary<string, string> Build(GraphEditor graph, IReadOnlyDictionary<string, string> seeds,
        IReadOnlyList<string> parameters, ValueTable types, int opset, bool checkpointing = false, IReadOnlySet<string>? detached = null,
        bool recomputeAttention = false)
    {
        var nodes = graph.Graph.Node.ToList();
        var active = ForwardActive(nodes, parameters, types, detached ?? new HashSet<string>());
        // Quantizing an activation that depends on a parameter rounds it to integers, where the walker would see no
        // gradient flow at all: refuse rather than train the layers below it on a silently partial gradient.
        if (nodes.FirstOrDefault(n => n.OpType is "QuantizeLinear" or "DynamicQuantizeLinear" && n.Input.Count > 0 && active.Contains(n.Input[0])) is { } quantize)
            throw new OrtLoraException($"autodiff: {quantize.OpType} '{quantize.Name}' quantizes an activation that depends on a trainable parameter " +
                "(static or dynamic QDQ): train on a model whose weights only are quantized (ortlora quantize, or ONNX Runtime's weight-only quantizers)");
        var needed = BackwardNeeded(nodes, seeds.Keys, active);
        // Checkpointed segments recompute attention too; alone, attention's probabilities are the segments.
        var checkpoints = checkpointing ? Checkpoints.Plan(nodes, needed, types)
            : recomputeAttention ? Checkpoints.Attention(nodes, needed, types) : null;
        var widened = new WidenedWeights(graph, types, active);
        // With checkpointing: the gradients of parameter-sized values computed from activations since the last segment
        // was recomputed (LoRA's dA, dB), which the next recomputation waits for (Checkpoints.NodeForBackward)
        var parameterGrads = new List<(string Grad, int ElemType)>();
        var contributions = seeds.ToDictionary(s => s.Key, s => new List<string> { s.Value });
        var scalars = new Dictionary<(double, int), string>();
        var shapes = new Dictionary<string, string>();
        var constants = GraphConstants.Index(graph.Graph);
        var seedContext = new GradContext(graph, new NodeProto { Name = "seed", OpType = "seed" }, types, opset, [], [],
            scalars, shapes, constants);

        for (int k = nodes.Count - 1; k >= 0; k--)
        {
            var forward = nodes[k];
            var outputGrads = forward.Output.Select(o => contributions.ContainsKey(o) ? Sum(graph, contributions[o]) : null).ToArray();
            if (outputGrads.All(g => g is null)) continue;
            var wanted = forward.Input.Select(i => i != "" && needed.Contains(i)).ToArray();
            if (!wanted.Any(w => w)) continue;
            // The rule reads the forward's values, or their recomputation inside a checkpointed segment; the gradients
            // are keyed by the forward's names either way.
            var node = checkpoints?.NodeForBackward(k, graph, types, outputGrads, parameterGrads) ?? forward;
            node = widened.ForBackward(node, outputGrads, forward.Output);
            if (!GradientRules.Table.TryGetValue(node.OpType, out var rule) || node.Domain is not ("" or "ai.onnx"))
                throw new OrtLoraException($"autodiff: no gradient rule for op {node.Domain}{(node.Domain == "" ? "" : ".")}{node.OpType} " +
                    $"(node '{node.Name}'), which lies between a trainable parameter and the loss");
            var context = new GradContext(graph, node, types, opset, outputGrads, wanted, scalars, shapes, constants);
            bool readsActivations = checkpoints is not null && forward.Input.Concat(forward.Output).Any(types.VariesWithBatch);
            var inputGrads = rule(context);
            for (int i = 0; i < node.Input.Count; i++)
            {
                if (!wanted[i]) continue;
                if (i >= inputGrads.Length || inputGrads[i] is not { } g)
                    throw new OrtLoraException($"autodiff: the {node.OpType} rule gives no gradient for input {i} ('{node.Input[i]}') " +
                        $"of node '{node.Name}', which lies between a trainable parameter and the loss");
                (contributions.TryGetValue(forward.Input[i], out var list) ? list : contributions[forward.Input[i]] = []).Add(g);
                if (readsActivations && !types.VariesWithBatch(forward.Input[i])) parameterGrads.Add((g, types.ElemType(forward.Input[i])));
            }
        }

        var result = new Dictionary<string, string>();
        foreach (var p in parameters)
        {
            if (contributions.TryGetValue(p, out var list)) result[p] = Sum(graph, list);
            else result[p] = seedContext.ZerosLike(p);
        }
        return result;
    }

    /// <summary>Values that depend on a parameter through differentiable float computations.</summary>
    static HashSet<string> ForwardActive(List<NodeProto> nodes, IReadOnlyList<string> parameters, ValueTable types, IReadOnlySet<string> detached)
    {
        var active = new HashSet<string>(parameters);
        foreach (var n in nodes)
        {
            if (NonDifferentiable.Contains(n.OpType) || !n.Input.Any(active.Contains)) continue;
            foreach (var o in n.Output) if (o != "" && types.IsFloat(o) && !detached.Contains(o)) active.Add(o);
        }
        return active;
    }

    /// <summary>Active values the seeded values depend on: exactly those whose gradient must be computed.</summary>
    static HashSet<string> BackwardNeeded(List<NodeProto> nodes, IEnumerable<string> seeded, HashSet<string> active)
    {
        var needed = new HashSet<string>();
        foreach (var v in seeded)
            needed.Add(active.Contains(v) ? v : throw new OrtLoraException($"autodiff: '{v}' does not depend on any parameter"));
        for (int k = nodes.Count - 1; k >= 0; k--)
        {
            var n = nodes[k];
            if (!n.Output.Any(needed.Contains)) continue;
            foreach (var i in n.Input) if (active.Contains(i)) needed.Add(i);
        }
        return needed;
    }

    /// <summary>The sum of a value's gradient contributions (fan-out), as one Sum node.</summary>
    static string Sum(GraphEditor graph, List<string> parts)
    {
        if (parts.Count == 1) return parts[0];
        var sum = graph.Add("Sum", parts.ToArray(), name: "grad/fanout/Sum");
        parts.Clear();
        parts.Add(sum);
        return sum;
    }
}
