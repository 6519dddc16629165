using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>Folds every adapter into its base weight (W += scale·B·A in W's own layout and dtype), puts each trained
/// modules_to_save weight in place of the one it was copied from, and removes the LoRA nodes, initializers and
/// metadata, giving back the original graph's topology. The weight update is deferred
/// to save time (<see cref="OnnxModel.Defer"/>), so with external data only one merged weight is in memory at once.
/// A weight stored quantized (read through DequantizeLinear) becomes a float weight holding its dequantized values plus
/// the delta, as PEFT merges a QLoRA adapter into the dequantized base: requantizing with the same scales would round
/// most of a small delta away. Those layers lose their DequantizeLinear; requantize the merged model if needed.</summary>
public static class LoraMerger
{
    /// <param name="safe">PEFT's safe_merge: compute every merged weight first and refuse, naming the module, one that
    /// holds a NaN or an infinity (a broken adapter), before anything is changed</param>
    public static void Merge(OnnxModel model, bool safe = false)
    {
        if (safe) CheckMergedWeights(model);
        var lora = LoraModel.Read(model) ?? throw new OrtLoraException($"{model.Source}: the model has no LoRA adapters to merge (no '{LoraModel.MetadataKey}' metadata)");
        var g = new GraphEditor(model.Graph);
        var removedNodes = new HashSet<string>();
        var removedInitializers = new HashSet<string>();
        var loraNodes = lora.Adapters.SelectMany(a => a.Nodes).ToHashSet();
        var dequantizers = new List<NodeProto>();
        foreach (var group in lora.ByLayer())
        {
            var first = group[0];
            var baseNode = g.Producer(first.BaseOutput)
                ?? throw new OrtLoraException($"{model.Source}: the base layer of adapter '{first.LoraA}' (output '{first.BaseOutput}') is missing");
            var adapter = LayerAdapter.Read(model, group);
            var weight = Dequantized(model, g, baseNode, first, dequantizers) ?? WeightFor(model, g, baseNode, first, loraNodes);
            int dataType = weight.DataType;
            double factor = 1.0 / first.GemmAlpha; // Gemm computes alpha·x·W: fold delta / alpha into W
            var layout = first.Layout;
            model.Defer(weight.Name, bytes => AddDelta(bytes, dataType, adapter, layout, factor));
            if (adapter.Bias is { } loraBias) MergeBias(model, g, baseNode, first, loraBias);
            baseNode.Output[0] = first.Output;
            foreach (var e in group)
            {
                removedNodes.UnionWith(e.Nodes);
                removedInitializers.UnionWith([e.LoraA, e.LoraB, e.ScaleName]);
                if (e.LoraBias is { } b) removedInitializers.Add(b);
                if (e.InitialA is { } a0) removedInitializers.UnionWith([a0, e.InitialB!]);
                if (e.Magnitude is { } m) removedInitializers.UnionWith(model.Graph.Initializer.Select(t => t.Name).Where(n => n.StartsWith(m, StringComparison.Ordinal)));
            }
        }
        foreach (var saved in lora.SavedModules)
        {
            // The trained copy becomes the module's weight, in the original's layout and type, where the original was read.
            var copy = g.Initializer(saved.Weight) ?? throw new OrtLoraException($"{model.Source}: the modules_to_save weight '{saved.Weight}' is missing");
            var values = model.ReadFloats(copy);
            long[] dims = copy.Dims.ToArray();
            if (saved.Transposed) (values, dims) = (Tensors.Transpose(values, dims[0], dims[1]), [dims[1], dims[0]]);
            var name = g.Initializer(saved.Original) is null ? saved.Original : g.Unique(saved.Original + ".merged");
            g.AddInitializer(Tensors.FromFloats(name, dims, values, saved.DataType));
            for (var value = saved.StandsFor; value != saved.Weight; value = g.Producer(value)!.Input[0]) removedNodes.Add(g.Producer(value)!.Name);
            g.ReplaceUses(saved.StandsFor, name);
            removedInitializers.Add(saved.Weight);
        }
        foreach (var bias in lora.TrainedBiases)
        {
            // The trained bias back under the original's name and type, read where the original was.
            var trained = g.Initializer(bias.Weight) ?? throw new OrtLoraException($"{model.Source}: the trained bias '{bias.Weight}' is missing");
            g.AddInitializer(Tensors.FromFloats(bias.Original, trained.Dims.ToArray(), model.ReadFloats(trained), bias.DataType));
            g.ReplaceUses(bias.StandsFor, bias.Original);
            removedNodes.UnionWith(bias.Nodes);
            removedInitializers.Add(bias.Weight);
        }
        foreach (var tokens in lora.TrainableTokens)
        {
            // The trained rows written into the table itself, which its readers read again.
            var table = g.Initializer(tokens.Table) ?? throw new OrtLoraException($"{model.Source}: the table '{tokens.Table}' of trainable tokens is missing");
            var rows = model.ReadFloats(g.Initializer(tokens.Rows)!);
            var dims = table.Dims.ToArray();
            model.Defer(table.Name, bytes => TrainableTokens.Write(bytes, tokens.DataType, tokens.Transposed, dims, tokens.TokenIds, rows));
            g.ReplaceUses(tokens.Output, tokens.Table);
            removedNodes.UnionWith(tokens.Nodes);
            removedInitializers.UnionWith([tokens.Rows, tokens.Indices]);
        }
        var keep = model.Graph.Node.Where(n => !removedNodes.Contains(n.Name)).ToList();
        model.Graph.Node.Clear();
        model.Graph.Node.AddRange(keep);
        var inits = model.Graph.Initializer.Where(t => !removedInitializers.Contains(t.Name)).ToList();
        model.Graph.Initializer.Clear();
        model.Graph.Initializer.AddRange(inits);
        // A model prepared for runtime adapters lists the LoRA parameters as (overridable) graph inputs too.
        foreach (var input in model.Graph.Input.Where(i => removedInitializers.Contains(i.Name)).ToList()) model.Graph.Input.Remove(input);
        RemoveUnread(new GraphEditor(model.Graph), dequantizers); // a fresh index: the LoRA nodes are gone
        LoraModel.Remove(model.Proto);
    }

    /// <summary>Merges each layer's delta into a copy of its weight and checks every value is finite.</summary>
    static void CheckMergedWeights(OnnxModel model)
    {
        var lora = LoraModel.Read(model) ?? throw new OrtLoraException($"{model.Source}: the model has no LoRA adapters to merge (no '{LoraModel.MetadataKey}' metadata)");
        var g = new GraphEditor(model.Graph);
        foreach (var group in lora.ByLayer())
        {
            var first = group[0];
            var adapter = LayerAdapter.Read(model, group);
            var weight = g.Initializer(first.BaseWeight);
            bool finite = weight is not null && !model.Graph.Node.Any(n => n.OpType == "DequantizeLinear" && n.Input[0] == weight.Name)
                ? Tensors.BytesToFloats(AddDelta(model.ReadBytes(weight), weight.DataType, adapter, first.Layout, 1.0 / first.GemmAlpha), weight.DataType).All(float.IsFinite)
                : adapter.A.All(float.IsFinite) && adapter.B.All(float.IsFinite); // a quantized base: its delta at least
            if (!finite || adapter.Magnitude?.All(float.IsFinite) == false || adapter.Bias?.All(float.IsFinite) == false)
                throw new OrtLoraException($"{model.Source}: NaNs or infinities in the merged weights of '{first.Module}': the adapter seems to be broken (safe merge: nothing was merged)");
        }
    }

    /// <summary>lora_bias: the layer's own bias += scale·b (Gemm adds beta·C: divided by beta), as PEFT merges it; a layer
    /// without a bias cannot take it (PEFT raises there too).</summary>
    static void MergeBias(OnnxModel model, GraphEditor g, NodeProto baseNode, LoraAdapter first, float[] loraBias)
    {
        var value = first.BaseBias ?? throw new OrtLoraException($"{model.Source}: '{first.Module}' has a lora_bias but its layer has no bias to merge it into " +
            "(PEFT cannot merge it either); use the injected model, or runtime adapters");
        // Through the Identity nodes to the initializer; one that other layers read too (shared by the TorchScript
        // exporter because the values were equal) gets a copy for this layer, read by the last hop.
        var hop = (NodeProto?)null;
        var name = value;
        while (g.Producer(name) is { OpType: "Identity" } identity) { hop = identity; name = identity.Input[0]; }
        var bias = g.Initializer(name) ?? throw new OrtLoraException($"{model.Source}: the bias '{name}' of '{first.Module}' is missing");
        if (g.Consumers(name).Count > 1)
        {
            bias = CopyFor(g, bias, hop ?? (baseNode.OpType == "Gemm" ? baseNode : g.Consumers(first.Output).First(n => n.Input.Contains(value))));
            name = bias.Name;
        }
        if (bias.Dims.Count != 1 || bias.Dims[0] != loraBias.Length)
            throw new OrtLoraException($"{model.Source}: the bias '{name}' of '{first.Module}' has shape [{string.Join(", ", bias.Dims)}], its lora_bias [{loraBias.Length}]");
        float factor = (float)(first.Scale / (baseNode.OpType == "Gemm" ? Attrs.Float(baseNode, "beta", 1f) : 1f));
        int dataType = bias.DataType;
        model.Defer(name, bytes =>
        {
            var values = Tensors.BytesToFloats(bytes, dataType);
            for (int i = 0; i < values.Length; i++) values[i] += factor * loraBias[i];
            return Tensors.FloatsToBytes(values, dataType);
        });
    }

    /// <summary>When the layer reads its weight through a DequantizeLinear of <paramref name="first"/>'s base weight:
    /// a new float initializer with the dequantized values (in the quantized tensor's layout, the DequantizeLinear's
    /// output type), read by the layer's path in place of the DequantizeLinear (noted in <paramref name="dequantizers"/>);
    /// else null.</summary>
    static TensorProto? Dequantized(OnnxModel model, GraphEditor g, NodeProto baseNode, LoraAdapter first, List<NodeProto> dequantizers)
    {
        var reader = baseNode;
        var value = baseNode.Input[first.Embedding ? 0 : 1]; // a Gather reads its table first
        while (g.Producer(value) is { } producer)
        {
            if (producer.OpType == "DequantizeLinear" && producer.Input[0] == first.BaseWeight)
            {
                var quantized = g.Initializer(first.BaseWeight)!;
                var values = Dequantize.Later(model, g, producer);
                int type = Dequantize.OutputType(producer, g);
                // No data until saved or read: the deferred transform makes the floats, one weight at a time. (Without
                // raw_data its size counts as its shape's, so Save still knows to write a large model's side file.)
                var weight = new TensorProto { Name = g.Unique(first.BaseWeight + ".dequantized"), DataType = type };
                weight.Dims.AddRange(quantized.Dims);
                g.AddInitializer(weight);
                model.Defer(weight.Name, _ => Tensors.FloatsToBytes(values(), type));
                for (int i = 0; i < reader.Input.Count; i++) if (reader.Input[i] == value) reader.Input[i] = weight.Name;
                dequantizers.Add(producer);
                return weight;
            }
            if (producer.OpType is not ("Identity" or "Transpose" or "Cast")) return null;
            reader = producer;
            value = producer.Input[0];
        }
        return null;
    }

    /// <summary>Removes the DequantizeLinear nodes nothing reads any more, and their initializers nothing else reads.</summary>
    static void RemoveUnread(GraphEditor g, List<NodeProto> dequantizers)
    {
        foreach (var dq in dequantizers.Distinct())
        {
            if (g.Consumers(dq.Output[0]).Count > 0 || g.IsGraphOutput(dq.Output[0])) continue;
            g.RemoveNode(dq);
            foreach (var input in dq.Input.Where(i => i != "" && g.Initializer(i) is not null && g.Consumers(i).Count == 0).Distinct().ToList())
                g.RemoveInitializer(input);
        }
    }

    /// <summary>float32 weights are updated in place in their own bytes (no second copy of the largest tensor);
    /// fp16/bf16 go through float32 and are rounded once, back to their own type; double stays double.</summary>
    const int LargeTensorBytes = 16 << 20;

    internal static byte[] AddDelta(byte[] bytes, int dataType, LayerAdapter adapter, WeightLayout layout, double factor)
    {
        // Save reads, merges and writes one weight at a time; the previous one is garbage by now. Collecting it here
        // keeps peak memory near the largest tensor instead of letting the GC's budget grow to many of them.
        if (bytes.Length >= LargeTensorBytes) GC.Collect();
        if (dataType == (int)TensorProto.Types.DataType.Float)
        {
            var weight = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes.AsSpan());
            adapter.AddDeltaTo(weight, layout, factor);
            if (adapter.Magnitude is { } m) Dora.ScaleToMagnitude(weight, layout, adapter.In, adapter.Out, m);
            return bytes;
        }
        if (dataType == (int)TensorProto.Types.DataType.Double)
        {
            if (adapter.Magnitude is not null) throw new OrtLoraException($"DoRA on '{adapter.Module}': merging into a float64 weight is not supported");
            // Keep W in double: only the delta is computed in float32 (as PEFT computes it), then added in double.
            var delta = new float[bytes.Length / sizeof(double)];
            adapter.AddDeltaTo(delta, layout, factor);
            var weight = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, double>(bytes.AsSpan());
            for (int i = 0; i < delta.Length; i++) weight[i] += delta[i];
            return bytes;
        }
        var values = Tensors.BytesToFloats(bytes, dataType);
        adapter.AddDeltaTo(values, layout, factor);
        if (adapter.Magnitude is { } magnitude) Dora.ScaleToMagnitude(values, layout, adapter.In, adapter.Out, magnitude);
        return Tensors.FloatsToBytes(values, dataType);
    }

    /// <summary>The base weight initializer, checked against the metadata. A weight that other nodes read too (a tied
    /// LM head and embedding) gets its own copy for this layer, so merging changes only the adapted layer.</summary>
    /// <param name="loraNodes">the nodes merge removes (DoRA's norm reads the weight as the layer does)</param>
    static TensorProto WeightFor(OnnxModel model, GraphEditor g, NodeProto baseNode, LoraAdapter first, HashSet<string> loraNodes)
    {
        int Readers(string value) => g.Consumers(value).Count(n => !loraNodes.Contains(n.Name));
        var weight = g.Initializer(first.BaseWeight)
            ?? throw new OrtLoraException($"{model.Source}: base weight '{first.BaseWeight}' of adapter '{first.LoraA}' is missing");
        long[] expected = first.Layout == WeightLayout.InOut ? [first.In, first.Out] : [first.Out, first.In];
        if (!weight.Dims.SequenceEqual(expected))
            throw new OrtLoraException($"{model.Source}: base weight '{weight.Name}' has shape [{string.Join(", ", weight.Dims)}], adapter '{first.LoraA}' needs [{string.Join(", ", expected)}]");
        // The layer reads the weight directly or through Identity/Transpose/Cast nodes (dynamo's nn.Linear,
        // deduplication, weights stored in fp16 and cast to the compute type).
        var reader = baseNode;
        var value = baseNode.Input[first.Embedding ? 0 : 1]; // a Gather reads its table first
        bool sharedPath = false;
        while (value != weight.Name)
        {
            sharedPath |= Readers(value) > 1;
            reader = g.Producer(value) is { OpType: "Identity" or "Transpose" or "Cast" } p ? p
                : throw new OrtLoraException($"{model.Source}: layer '{baseNode.Name}' no longer reads base weight '{weight.Name}'");
            value = reader.Input[0];
        }
        if (Readers(weight.Name) == 1 && !sharedPath) return weight;
        if (sharedPath)
            throw new OrtLoraException($"{model.Source}: base weight '{weight.Name}' of '{first.Module}' reaches other layers through the same nodes; cannot merge into it alone");
        return CopyFor(g, weight, reader);
    }

    /// <summary>A copy of an initializer that other nodes read too (NAME.merged), which <paramref name="reader"/> reads
    /// instead, so merging into it changes this layer only.</summary>
    static TensorProto CopyFor(GraphEditor g, TensorProto original, NodeProto reader)
    {
        var copy = original.Clone();
        copy.Name = g.Unique(original.Name + ".merged");
        g.AddInitializer(copy);
        for (int i = 0; i < reader.Input.Count; i++) if (reader.Input[i] == original.Name) reader.Input[i] = copy.Name;
        return copy;
    }
}
