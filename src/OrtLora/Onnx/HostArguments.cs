using Onnx;

namespace OrtLora.Onnx;

/// <summary>A node whose kernel reads an argument from host memory (a shape, axes, a count) while that argument is
/// computed from the contents of a device tensor: ONNX Runtime must copy it from the device mid-graph and wait for it.</summary>
public sealed record HostCopy(NodeProto Node, int Input, string Value)
{
    public override string ToString() => $"{Node.OpType} '{Node.Name}' input {Input} ('{Value}')";
}

/// <summary>Where a graph would need device-to-host copies under ONNX Runtime's CUDA EP. Some CUDA kernels read small
/// arguments from host memory (the shape of Reshape and Expand, Slice's starts/ends/axes/steps, reduction axes ...):
/// <see cref="CudaHostInputs"/>, from the kernels' InputMemoryType(OrtMemTypeCPUInput, i) registrations in
/// onnxruntime/core/providers/cuda. An argument computed from shapes (Shape, Size), constants or the host-fed integer
/// inputs (tokens, labels, masks) can be computed on the host, as ORT does for shape subgraphs; one that depends on
/// the contents of a float tensor (an activation, a parameter, a gradient) is computed on the device and must be
/// copied back before the kernel can start.</summary>
public static class HostArguments
{
    /// <summary>Op → the input indices the CUDA kernel reads from host memory.</summary>
    public static readonly IReadOnlyDictionary<string, int[]> CudaHostInputs = new Dictionary<string, int[]>
    {
        ["Reshape"] = [1], ["Expand"] = [1], ["ConstantOfShape"] = [0], ["Slice"] = [1, 2, 3, 4],
        ["Squeeze"] = [1], ["Unsqueeze"] = [1], ["Tile"] = [1], ["Split"] = [1], ["Pad"] = [1, 2, 3],
        ["Range"] = [0, 1, 2], ["TopK"] = [1], ["OneHot"] = [1], ["Resize"] = [1, 2, 3], ["Upsample"] = [1],
        ["Dropout"] = [1, 2], ["Trilu"] = [1], ["CumSum"] = [1], ["Clip"] = [1, 2], ["If"] = [0], ["Loop"] = [0, 1],
        ["ReduceSum"] = [1], ["ReduceMean"] = [1], ["ReduceMax"] = [1], ["ReduceMin"] = [1], ["ReduceProd"] = [1],
        ["ReduceL1"] = [1], ["ReduceL2"] = [1], ["ReduceLogSum"] = [1], ["ReduceLogSumExp"] = [1], ["ReduceSumSquare"] = [1],
    };

    /// <summary>Ops whose output depends on their input's shape only, never its contents.</summary>
    static readonly HashSet<string> ShapeOnly = ["Shape", "Size"];

    /// <summary>Host-memory arguments computed from the contents of the integer inputs each run feeds (tokens, masks,
    /// labels). ORT computes those on the host, which is fine for a plain run; a captured CUDA graph keeps what the
    /// kernels read at capture, so such an argument would stay at the first batch's value in every replay. Shapes do not
    /// count (Shape and Size read metadata, fixed under the static shapes CUDA graphs need).</summary>
    public static List<HostCopy> FromFedIntegers(ModelProto model)
    {
        var initializers = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name));
        var fed = new HashSet<string>(model.Graph.Input
            .Where(i => !initializers.Contains(i.Name) && i.Type?.TensorType is { } t && !Tensors.IsFloat(t.ElemType)).Select(i => i.Name));
        return Reaching(model, fed);
    }

    /// <summary>The host-memory arguments whose value depends on <paramref name="sources"/>, through any op but Shape and Size.</summary>
    static List<HostCopy> Reaching(ModelProto model, HashSet<string> sources)
    {
        var copies = new List<HostCopy>();
        foreach (var node in model.Graph.Node)
        {
            if (CudaHostInputs.TryGetValue(node.OpType, out var hostInputs))
                foreach (var i in hostInputs.Where(i => i < node.Input.Count && sources.Contains(node.Input[i])))
                    copies.Add(new HostCopy(node, i, node.Input[i]));
            if (!ShapeOnly.Contains(node.OpType) && node.Input.Any(sources.Contains))
                foreach (var o in node.Output) if (o != "") sources.Add(o);
        }
        return copies;
    }

    /// <param name="elemTypes">element type of each value (<see cref="Autodiff.ValueTable.ElemTypes"/>)</param>
    public static List<HostCopy> DeviceToHost(ModelProto model, IReadOnlyDictionary<string, int> elemTypes)
    {
        var initializers = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name));
        // float graph inputs (parameters, moments, lr) live on the device with the compute that reads them
        var deviceData = new HashSet<string>(model.Graph.Input
            .Where(i => !initializers.Contains(i.Name) && elemTypes.TryGetValue(i.Name, out var t) && Tensors.IsFloat(t)).Select(i => i.Name));
        return Reaching(model, deviceData);
    }
}
