using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>A node an execution provider has no kernel for, so ONNX Runtime would run it on the CPU EP.</summary>
/// <param name="Types">the node's input and output element types as the table names them ("float", "int64"; "?" unknown)</param>
/// <param name="Reason">why no kernel matches: no kernel for the op, none for its opset, or a type outside a constraint</param>
public sealed record FallbackNode(NodeProto Node, string Domain, int Opset, string Types, string Reason)
{
    public override string ToString() =>
        $"{Node.OpType}{(Domain == "ai.onnx" ? "" : $" ({Domain})")} opset {Opset} '{Node.Name}' [{Types}]: {Reason}";
}

/// <summary>Checks each node of a graph against an execution provider's <see cref="KernelTable"/>: op, domain, the
/// model's opset for that domain and the element types of its inputs and outputs. Nodes inside subgraphs (If, Loop)
/// are not visited; the control-flow node itself is.</summary>
public static class KernelCoverage
{
    /// <summary>ONNX Runtime turns Constant nodes into initializers when it loads a graph; no EP runs them.</summary>
    static bool RunsOnNoEp(NodeProto node) => node.OpType == "Constant" && KernelTable.NormalizeDomain(node.Domain) == "ai.onnx";

    /// <param name="elemTypes">element type (TensorProto.DataType) of each value, e.g. from
    /// <see cref="Autodiff.ValueTable.ElemTypes"/>; values missing from it are not type-checked</param>
    public static List<FallbackNode> Missing(ModelProto model, KernelTable table, IReadOnlyDictionary<string, int> elemTypes)
    {
        var opsets = model.OpsetImport.ToDictionary(o => KernelTable.NormalizeDomain(o.Domain), o => (int)o.Version);
        var result = new List<FallbackNode>();
        foreach (var node in model.Graph.Node.Where(n => !RunsOnNoEp(n)))
        {
            var domain = KernelTable.NormalizeDomain(node.Domain);
            int opset = opsets.GetValueOrDefault(domain, 1);
            string types = TypeList(node, elemTypes);
            var kernels = table.Find(node.OpType, domain);
            if (kernels.Count == 0)
            {
                result.Add(new(node, domain, opset, types, $"{table.Name} has no {node.OpType} kernel"));
                continue;
            }
            var kernel = kernels.FirstOrDefault(k => k.Covers(opset));
            if (kernel is null)
            {
                result.Add(new(node, domain, opset, types,
                    $"{table.Name} has {node.OpType} for opsets {string.Join(", ", kernels.Select(k => k.Opsets))} only"));
                continue;
            }
            if (TypeMismatch(node, kernel, elemTypes) is { } why) result.Add(new(node, domain, opset, types, why));
        }
        return result;
    }

    static string? TypeMismatch(NodeProto node, KernelTable.Kernel kernel, IReadOnlyDictionary<string, int> elemTypes)
    {
        string? Check(bool input, IList<string> values)
        {
            for (int i = 0; i < values.Count; i++)
            {
                if (values[i] == "" || !elemTypes.TryGetValue(values[i], out var t)) continue;
                var allowed = kernel.Allowed(input, i);
                var name = TypeName(t);
                if (allowed is not null && !allowed.Contains(name))
                    return $"{(input ? "input" : "output")} {i} ('{values[i]}') is {name}; the kernel for opsets {kernel.Opsets} takes {string.Join(", ", allowed.Order())}";
            }
            return null;
        }
        return Check(true, node.Input) ?? Check(false, node.Output);
    }

    /// <summary>Ops the CUDA plugin on the GPU machine crashed on in a one-node graph (docs/gpu.md, 2026-12-04): the
    /// kernels that call the core's CPU helpers a CPU build of the core does not have. Tile, Einsum and OneHot have no
    /// rewrite: no training graph of graphs/tiny, the fixtures or the unseen export styles has them (tested).</summary>
    public static readonly string[] PluginCrashOps = ["Slice", "GatherElements", "Size", "Tile", "Einsum", "OneHot"];

    /// <summary>The nodes of <paramref name="model"/> whose op the CUDA plugin was seen to crash on (<see cref="PluginCrashOps"/>).</summary>
    public static List<NodeProto> PluginCrashes(ModelProto model) =>
        model.Graph.Node.Where(n => PluginCrashOps.Contains(n.OpType) && n.Domain is "" or "ai.onnx").ToList();

    /// <summary>The ONNX name of an element type, as kernel tables write it: float, float16, bfloat16, int64, bool ...</summary>
    public static string TypeName(int elemType) => ((DT)elemType).ToString().ToLowerInvariant();

    static string TypeList(NodeProto node, IReadOnlyDictionary<string, int> elemTypes)
    {
        string Of(string v) => v == "" ? "-" : elemTypes.TryGetValue(v, out var t) ? TypeName(t) : "?";
        return string.Join(",", node.Input.Select(Of)) + " -> " + string.Join(",", node.Output.Select(Of));
    }
}
