using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>Weights stored narrower than they compute in: quantized and read through DequantizeLinear (QLoRA-style
/// bases), or stored in fp16/bf16 and read through a Cast. The forward widens each layer's weight for its MatMul; the
/// backward reads the wide weight again (dX = dY·Wᵀ). Reading the forward's value would keep every layer's wide weight
/// from its forward to its backward, all of them at once at the end of the forward: more memory than a float model.
/// So the rule of such a node reads its own widening of the stored weight, made once the node's output gradient exists
/// (<see cref="Ordering.ZeroAfter"/> on the chain's first float input), and the forward's is freed after its MatMul (or
/// never made: ONNX Runtime fuses DequantizeLinear + MatMul into MatMulNBits).</summary>
internal sealed class WidenedWeights(GraphEditor graph, ValueTable types, IReadOnlySet<string> active)
{
    static readonly HashSet<string> ChainOps = ["DequantizeLinear", "Cast", "Transpose", "Identity", "Reshape", "Unsqueeze", "Squeeze"];
    readonly Dictionary<string, List<NodeProto>?> _chains = new();

    /// <summary><paramref name="node"/>, or a copy of it whose widened-weight inputs are widened again for the backward.</summary>
    public NodeProto ForBackward(NodeProto node, string?[] outputGrads, IReadOnlyList<string> forwardOutputs)
    {
        NodeProto? copy = null;
        for (int i = 0; i < node.Input.Count; i++)
        {
            if (node.Input[i] == "" || Chain(node.Input[i]) is not { } chain) continue;
            int g = Array.FindIndex(outputGrads, x => x is not null);
            var zeroFor = (int elemType) => Ordering.ZeroAfter(graph, outputGrads[g]!, types.ElemType(forwardOutputs[g]), elemType);
            copy ??= node.Clone();
            copy.Input[i] = Rewiden(chain, zeroFor);
        }
        return copy ?? node;
    }

    /// <summary>The nodes that widen <paramref name="value"/> from stored constants, in order, when it is such a value.</summary>
    List<NodeProto>? Chain(string value)
    {
        if (_chains.TryGetValue(value, out var known)) return known;
        List<NodeProto>? chain = null;
        if (graph.Producer(value) is { } p && ChainOps.Contains(p.OpType) && p.Domain is "" or "ai.onnx" && !active.Contains(value)
            && types.Find(value) is { } info && !types.VariesWithBatch(value) && Tensors.IsFloat(info.ElemType))
        {
            var before = new List<NodeProto>();
            bool ok = true;
            foreach (var input in p.Input.Where(i => i != ""))
            {
                if (types.VariesWithBatch(input) || active.Contains(input)) { ok = false; break; }
                if (graph.Producer(input) is null) continue; // an initializer or a frozen input
                if (Chain(input) is { } inner) before.AddRange(inner.Where(n => !before.Contains(n)));
                else if (graph.Producer(input) is not { OpType: "Constant" }) { ok = false; break; }
            }
            if (ok)
            {
                before.Add(p);
                bool widens = before.Any(n => n.OpType == "DequantizeLinear"
                    || n.OpType == "Cast" && types.Find(n.Input[0])?.ElemType is (int)DT.Float16 or (int)DT.Bfloat16);
                chain = widens ? before : null;
            }
        }
        return _chains[value] = chain;
    }

    /// <summary>Copies the chain, its first node reading its first float input plus a zero that waits for the gradient.</summary>
    string Rewiden(List<NodeProto> chain, Func<int, string> zeroFor)
    {
        var renames = new Dictionary<string, string>();
        bool ordered = false;
        foreach (var n in chain)
        {
            if (!ordered)
            {
                int at = Enumerable.Range(0, n.Input.Count).FirstOrDefault(i => n.Input[i] != "" && !renames.ContainsKey(n.Input[i])
                    && types.Find(n.Input[i]) is { } t && Tensors.IsFloat(t.ElemType), -1);
                if (at >= 0)
                {
                    var source = n.Input[at];
                    renames[source] = graph.Add("Add", [source, zeroFor(types.ElemType(source))], name: "grad/rewiden/Add");
                    types.Set(renames[source], types[source]);
                    ordered = true;
                }
            }
            graph.AddRenamedCopy(n, renames, "/rewiden");
            foreach (var o in n.Output) if (o != "" && types.Find(o) is { } info) types.Set(renames[o], info);
        }
        return renames[chain[^1].Output[0]];
    }
}
