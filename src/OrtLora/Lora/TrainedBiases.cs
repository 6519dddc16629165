using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>One bias trained with the adapters (PEFT's bias="all" or "lora_only").</summary>
/// <param name="Module">The PEFT path of the module it belongs to (a linear layer, a LayerNorm)</param>
/// <param name="Weight">The trainable float32 bias under PEFT's key, <c>base_model.model.PATH.bias</c></param>
/// <param name="Original">The initializer it replaced (merge writes it back under this name)</param>
/// <param name="DataType">The original's type: a Cast follows the bias when it is not float32</param>
/// <param name="StandsFor">The value the original's readers read now</param>
public sealed record TrainedBias(string Module, string Weight, string Original, int DataType, string StandsFor, List<string> Nodes);

/// <summary>PEFT's <c>bias</c> option: "lora_only" trains the biases of the adapted layers, "all" every bias of the
/// model (each parameter named *.bias, as PEFT selects them, and every linear layer's), in place: the base model's
/// biases change, and the adapter file carries them (<c>base_model.model.PATH.bias</c>).</summary>
public static class TrainedBiases
{
    public static readonly string[] Options = ["none", "all", "lora_only"];
    public static string PeftKey(string path) => ModuleNames.PeftKeyPrefix + path + ".bias";
    public static bool IsBias(string name) =>
        name.StartsWith(ModuleNames.PeftKeyPrefix, StringComparison.Ordinal) && name.EndsWith(".bias", StringComparison.Ordinal) && !ModuleNames.IsLoraBias(name);

    /// <summary>A linear layer's bias: Gemm's C, or a constant vector (initializer or Constant) added right after the
    /// MatMul; null when it has none.</summary>
    public static string? Of(GraphEditor g, NodeProto node) =>
        AddedInput(g, node) is { } bias && (g.Initializer(bias) ?? g.Constant(bias)) is { Dims.Count: 1 } ? bias : null;

    /// <summary>What a linear layer adds after its product: Gemm's C, or the other input of the one Add that reads a
    /// MatMul's output; null when neither.</summary>
    static string? AddedInput(GraphEditor g, NodeProto node) => BiasSlot(g, node) is { } slot ? slot.Reader.Input[slot.Index] : null;

    /// <summary>Where a linear layer reads what it adds after its product: Gemm's input 2, or the other input of the one
    /// Add that reads a MatMul's output; null when neither.</summary>
    static (NodeProto Reader, int Index)? BiasSlot(GraphEditor g, NodeProto node) =>
        node.OpType == "Gemm" && node.Input.Count > 2 && node.Input[2] != "" ? (node, 2)
        : node.OpType == "MatMul" && g.Consumers(node.Output[0]) is [{ OpType: "Add" } add] ? (add, add.Input[0] == node.Output[0] ? 1 : 0)
        : null;

    /// <summary>The value a linear layer adds as its bias (Gemm's C, or the other input of the Add right after a MatMul)
    /// when it is a 1-D float initializer, read directly or through Identity nodes (the TorchScript exporter shares equal
    /// biases that way); null otherwise.</summary>
    public static string? ValueOf(GraphEditor g, NodeProto node)
    {
        var value = AddedInput(g, node);
        var source = value;
        while (source is not null && g.Producer(source) is { OpType: "Identity" } hop) source = hop.Input[0];
        return source is not null && g.Initializer(source) is { Dims.Count: 1 } t && Tensors.IsFloat(t.DataType) ? value : null;
    }

    /// <summary>The float bias initializer of each linear layer that has one, by layer node: read before inject puts the
    /// LoRA Add between the MatMul and that Add.</summary>
    public static Dictionary<NodeProto, string> OfLayers(GraphEditor g, IEnumerable<LinearLayer> layers)
    {
        // By reference: protobuf messages hash by content, and inject renames the layer's output afterwards.
        var biases = new Dictionary<NodeProto, string>(ReferenceEqualityComparer.Instance);
        foreach (var layer in layers)
            if (Of(g, layer.Node) is { } bias && g.Initializer(bias) is { } t && Tensors.IsFloat(t.DataType)) biases[layer.Node] = bias;
        return biases;
    }

    /// <param name="layerBiases">from <see cref="OfLayers"/>, before injection</param>
    /// <param name="adapted">the layers with a LoRA adapter (lora_only)</param>
    /// <param name="values">PEFT tensors by key (an imported adapter), or null: the biases start as they are</param>
    public static List<TrainedBias> Apply(OnnxModel model, GraphEditor g, string mode, Dictionary<NodeProto, string> layerBiases,
        IReadOnlyList<LinearLayer> layers, IReadOnlySet<NodeProto> adapted, string prefix,
        IReadOnlyDictionary<string, SafeTensor>? values = null, string? valuesSource = null, IReadOnlyList<TrainedBias>? alreadyTrained = null)
    {
        if (!Options.Contains(mode)) throw new OrtLoraException($"bias '{mode}' is not one of {string.Join(", ", Options)}");
        if (mode == "none") return [];
        if (GenAiNames.Applies(g.Graph))
            throw new OrtLoraException($"{model.Source}: bias '{mode}' on an ORT GenAI builder export: its biases (packed q|k|v, names of its own) have no PEFT key to travel under; train without --bias");
        // initializer → module path
        var chosen = new Dictionary<string, string>();
        var taken = alreadyTrained?.Select(b => b.Module).ToHashSet() ?? [];
        foreach (var layer in layers.Where(l => layerBiases.ContainsKey(l.Node) && (mode == "all" || adapted.Contains(l.Node))
                     && !taken.Contains(ModuleNames.Strip(l.Module, prefix)) && g.Initializer(layerBiases[l.Node]) is not null))
            chosen.TryAdd(layerBiases[layer.Node], ModuleNames.Strip(layer.Module, prefix));
        if (mode == "all")
            foreach (var t in g.Graph.Initializer.Where(t => t.Name.EndsWith(".bias", StringComparison.Ordinal) && t.Dims.Count == 1 && Tensors.IsFloat(t.DataType)
                         && !t.Name.StartsWith(ModuleNames.PeftKeyPrefix, StringComparison.Ordinal) && g.Consumers(t.Name).Count > 0).ToList())
                chosen.TryAdd(t.Name, ModuleNames.Strip(t.Name[..^".bias".Length], prefix));
        if (chosen.Count == 0) throw new OrtLoraException($"{model.Source}: bias '{mode}': the {(mode == "all" ? "model has" : "adapted layers have")} no bias to train");
        var result = new List<TrainedBias>();
        foreach (var (original, module) in chosen)
        {
            var t = g.Initializer(original)!;
            var (weight, standsFor, nodes) = TrainableCopy(model, g, t, module, values, valuesSource, $"bias is '{mode}'");
            g.ReplaceUses(original, standsFor);
            g.RemoveInitializer(original);
            result.Add(new TrainedBias(module, weight, original, t.DataType, standsFor, nodes));
        }
        g.TopologicalSort();
        return result;
    }

    /// <summary>A modules_to_save linear layer's bias (PEFT's ModulesToSaveWrapper copies the layer whole, bias too):
    /// its own trainable float32 copy under PEFT's key, read by that layer alone, also where the exporter shares one
    /// initializer between equal biases (TorchScript's Identity nodes); null when the layer has no bias.</summary>
    /// <param name="values">PEFT tensors by key (an imported adapter), or null: the bias starts as it is</param>
    public static TrainedBias? ForSavedModule(OnnxModel model, GraphEditor g, NodeProto layer, string module,
        IReadOnlyDictionary<string, SafeTensor>? values, string? valuesSource)
    {
        if (BiasSlot(g, layer) is not { } found) return null;
        var (reader, slot) = found;
        var value = reader.Input[slot];
        var source = value;
        var hops = new List<NodeProto>();
        while (g.Producer(source) is { OpType: "Identity" } hop) { hops.Add(hop); source = hop.Input[0]; }
        if (g.Initializer(source) is not { Dims.Count: 1 } t || !Tensors.IsFloat(t.DataType)) return null;
        var (weight, standsFor, nodes) = TrainableCopy(model, g, t, module, values, valuesSource, $"modules_to_save lists '{module}', which has a bias,");
        reader.Input[slot] = standsFor;
        // What merge writes the trained bias back as: the value the layer read, freed of whatever no one reads now
        // (the Identity hops, the initializer); a fresh name where another layer still reads the shared one.
        string original = value;
        if (g.Consumers(value).Count > 0) original = g.Unique(value + "." + module.Replace('.', '_'));
        else if (hops.Count > 0) foreach (var hop in hops.Where(h => g.Consumers(h.Output[0]).Count == 0)) g.RemoveNode(hop);
        if (g.Consumers(source).Count == 0 && !g.IsGraphOutput(source)) g.RemoveInitializer(source);
        if (nodes.Count > 0) g.TopologicalSort(); // the Cast to the original's type, appended, runs before its reader
        return new TrainedBias(module, weight, original, t.DataType, standsFor, nodes);
    }

    /// <summary>The bias's trainable float32 copy under PEFT's key, starting from the model's values or an adapter's,
    /// and what its readers read: the copy, or a Cast of it to the original's type.</summary>
    /// <param name="why">what asks for the bias, for the error when the adapter's tensor is missing or misshapen</param>
    static (string Weight, string StandsFor, List<string> Nodes) TrainableCopy(OnnxModel model, GraphEditor g, TensorProto t, string module,
        IReadOnlyDictionary<string, SafeTensor>? values, string? valuesSource, string why)
    {
        var key = PeftKey(module);
        float[] start;
        if (values is null) start = model.ReadFloats(t);
        else if (values.TryGetValue(key, out var given) && given.Shape.SequenceEqual(t.Dims)) start = given.AsFloats();
        else throw new OrtLoraException($"{valuesSource}: {why} but " + (values.TryGetValue(key, out var wrong)
            ? $"tensor '{key}' has shape [{string.Join(", ", wrong.Shape)}], the model's bias [{string.Join(", ", t.Dims)}]" : $"there is no tensor '{key}'"));
        var weight = g.AddInitializer(Tensors.FromFloats(key, t.Dims.ToArray(), start));
        var nodes = new List<string>();
        if (t.DataType == (int)DT.Float) return (weight, weight, nodes);
        var cast = g.Add("Cast", [weight], name: module + "/bias/Cast", attributes: ("to", (long)t.DataType));
        nodes.Add(g.Producer(cast)!.Name);
        return (weight, cast, nodes);
    }
}
