using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>One module of PEFT's modules_to_save in an injected model: a float32 copy of its weight, in PyTorch's
/// layout, that training updates whole; the module's node reads it through the ops the original weight went through.</summary>
/// <param name="Module">The PEFT module path (lm_head, model.embed_tokens)</param>
/// <param name="Weight">The trainable copy, <c>base_model.model.PATH.modules_to_save.default.weight</c> (PEFT's own
/// name for it), float32, [out, in] for a linear layer and [vocabulary, hidden] for an embedding: the tensor PEFT saves</param>
/// <param name="Original">The initializer it was copied from (still read elsewhere when the weights were tied)</param>
/// <param name="Kind">"linear" (a MatMul/Gemm weight) or "embedding" (a Gather table)</param>
/// <param name="Transposed">The original is stored [in, out]: a Transpose follows the copy</param>
/// <param name="DataType">The original's element type: a Cast follows the copy when it is not float32</param>
/// <param name="StandsFor">The value that stands where the original initializer was read: the copy, or the output
/// of that Transpose and Cast (merge puts the merged initializer there)</param>
/// <param name="Nodes">The nodes inject added between the copy and the module's node</param>
public sealed record SavedModule(string Module, string Weight, string Original, string Kind, bool Transposed, int DataType,
    string StandsFor, List<string> Nodes);

/// <summary>PEFT's modules_to_save: whole layers trained next to the adapters (the LM head and the token embeddings
/// when a chat template brings new tokens, a classification head). A saved linear layer's bias is trained too, as
/// <see cref="TrainedBiases"/> train one (under the same key, <c>base_model.model.PATH.bias</c>). As PEFT's ModulesToSaveWrapper copies the module,
/// inject gives the module its own float32 copy of the weight, so tied embeddings come apart exactly as they do in
/// PEFT; export saves it under PEFT's key (<c>base_model.model.lm_head.weight</c>, PyTorch's layout) and merge writes it
/// back in the original's type.</summary>
public static class ModulesToSave
{
    const string Suffix = ".modules_to_save.default.weight";
    public static string WeightName(string path) => ModuleNames.PeftKeyPrefix + path + Suffix;
    /// <summary>The key PEFT's save_pretrained gives the module's weight.</summary>
    public static string PeftKey(string path) => ModuleNames.PeftKeyPrefix + path + ".weight";
    public static bool IsWeight(string name) => name.EndsWith(Suffix, StringComparison.Ordinal);

    /// <summary>The module path when <paramref name="key"/> is a PEFT adapter's modules_to_save weight or bias
    /// (<c>base_model.model.lm_head.weight</c>, <c>base_model.model.score.bias</c>, a module <paramref name="modulesToSave"/>
    /// names), else null.</summary>
    public static string? PathOfPeftKey(string key, IReadOnlyList<string> modulesToSave)
    {
        var suffix = key.EndsWith(".weight", StringComparison.Ordinal) ? ".weight" : key.EndsWith(".bias", StringComparison.Ordinal) ? ".bias" : null;
        if (suffix is null || !key.StartsWith(ModuleNames.PeftKeyPrefix, StringComparison.Ordinal) || ModuleNames.ParseAdapterKey(key) is not null) return null;
        var path = key[ModuleNames.PeftKeyPrefix.Length..^suffix.Length];
        return modulesToSave.Any(name => ModuleNames.NameMatches(name, path)) ? path : null;
    }

    /// <summary>A module that can be saved: the node that reads the weight (input <paramref name="Input"/>), the ops between
    /// the initializer and that input, outermost last.</summary>
    internal sealed record Candidate(string Path, NodeProto Node, int Input, string Table, string Kind, bool Transposed, List<NodeProto> Chain);

    /// <summary>The linear layers and token (and position) embeddings a module name can pick.</summary>
    internal static List<Candidate> Candidates(GraphEditor g, IReadOnlyList<LinearLayer> layers, string prefix) =>
        Linear(g, layers, prefix).Concat(Embeddings(g, prefix)).ToList();

    /// <summary>Gives each module named in <paramref name="names"/> (matched as target_modules names are) its trainable copy.</summary>
    /// <param name="adapted">nodes that got a LoRA adapter: a module cannot be both adapted and saved</param>
    /// <param name="values">PEFT tensors by key (an imported adapter), or null: the copy starts as the original weight</param>
    /// <param name="tie">PEFT's ensure_weight_tying: every reader of a tied weight reads the copy (the head and the
    /// embedding stay one matrix)</param>
    public static List<SavedModule> Apply(OnnxModel model, GraphEditor g, IReadOnlyList<string> names, IReadOnlyList<LinearLayer> layers,
        string prefix, IReadOnlySet<NodeProto> adapted, IReadOnlyDictionary<string, SafeTensor>? values = null, string? valuesSource = null,
        bool tie = false)
    {
        if (names.Count == 0) return [];
        var candidates = Candidates(g, layers, prefix);
        var saved = new List<SavedModule>();
        foreach (var name in names)
        {
            var matched = candidates.Where(c => ModuleNames.NameMatches(name, c.Path)).ToList();
            // An imported config may name modules PEFT found nothing for (it adds classifier and score for some tasks).
            if (matched.Count == 0 && values is not null && !values.Keys.Any(k => PathOfPeftKey(k, [name]) is not null)) continue;
            if (matched.Count == 0)
                throw new OrtLoraException($"{model.Source}: modules_to_save '{name}': no linear layer or token embedding has that name; " +
                    $"they are named: {string.Join(", ", candidates.Select(c => c.Path).Distinct())}");
            foreach (var c in matched)
            {
                if (c.Kind == "quantized")
                    throw new OrtLoraException($"{model.Source}: module '{c.Path}' is stored quantized (DequantizeLinear); modules_to_save trains a float weight whole");
                if (adapted.Contains(c.Node))
                    throw new OrtLoraException($"{model.Source}: module '{c.Path}' is both in target_modules and in modules_to_save; a module is adapted or trained whole, not both");
                if (tie && saved.FirstOrDefault(s => s.Original == c.Table) is { } tiedTo)
                    throw new OrtLoraException($"{model.Source}: module '{c.Path}' is tied to '{tiedTo.Module}', whose copy it reads with ensure_weight_tying; list one of them");
                if (saved.Any(s => s.Module == c.Path))
                    throw new OrtLoraException($"{model.Source}: module '{c.Path}' is applied by several nodes; its weight cannot be saved as one module");
                saved.Add(Copy(model, g, c, values, valuesSource, tie));
            }
        }
        g.TopologicalSort();
        return saved;
    }

    static SavedModule Copy(OnnxModel model, GraphEditor g, Candidate c, IReadOnlyDictionary<string, SafeTensor>? values, string? valuesSource, bool tie)
    {
        var original = g.Initializer(c.Table)!;
        var dims = original.Dims.ToArray();
        float[] start;
        if (values is null) start = c.Transposed ? Tensors.Transpose(model.ReadFloats(original), dims[0], dims[1]) : model.ReadFloats(original);
        else
        {
            var key = PeftKey(c.Path);
            if (!values.TryGetValue(key, out var t))
                throw new OrtLoraException($"{valuesSource}: modules_to_save lists '{c.Path}' but there is no tensor '{key}'");
            long[] expected = c.Transposed ? [dims[1], dims[0]] : dims;
            if (!t.Shape.SequenceEqual(expected))
                throw new OrtLoraException($"{valuesSource}: tensor '{key}' has shape [{string.Join(", ", t.Shape)}] but the module in {model.Source} needs [{string.Join(", ", expected)}]");
            start = t.AsFloats();
        }
        long[] torchDims = c.Transposed ? [dims[1], dims[0]] : dims;
        var weight = g.AddInitializer(Tensors.FromFloats(WeightName(c.Path), torchDims, start));
        var added = new List<string>();
        var value = weight;
        string Add(string op, params (string, object)[] attributes)
        {
            value = g.Add(op, [value], name: $"{c.Path}/modules_to_save/{op}", attributes: attributes);
            added.Add(g.Producer(value)!.Name);
            return value;
        }
        if (c.Transposed) Add("Transpose", ("perm", new long[] { 1, 0 }));
        if (original.DataType != (int)DT.Float) Add("Cast", ("to", (long)original.DataType));
        var standsFor = value;
        if (tie)
        {
            // The other readers of a tied weight (the embedding's Gather, the head's Transpose) read the copy too.
            g.ReplaceUses(c.Table, standsFor);
        }
        var renames = new Dictionary<string, string> { [c.Table] = value };
        foreach (var hop in c.Chain)
        {
            var copy = g.AddRenamedCopy(hop, renames, "/modules_to_save");
            added.Add(copy.Name);
            value = copy.Output[0];
        }
        var replaced = c.Node.Input[c.Input];
        c.Node.Input[c.Input] = value;
        RemoveUnread(g, replaced);
        if (tie && g.Initializer(c.Table) is not null && g.Consumers(c.Table).Count == 0) g.RemoveInitializer(c.Table);
        return new SavedModule(c.Path, weight, c.Table, c.Kind, c.Transposed, original.DataType, standsFor, added);
    }

    /// <summary>The old path to the weight, where nothing reads it any more (not tied).</summary>
    static void RemoveUnread(GraphEditor g, string value)
    {
        while (g.Consumers(value).Count == 0 && !g.IsGraphOutput(value))
        {
            if (g.Producer(value) is { } producer) { g.RemoveNode(producer); value = producer.Input[0]; }
            else { if (g.Initializer(value) is not null) g.RemoveInitializer(value); return; }
        }
    }

    static IEnumerable<Candidate> Linear(GraphEditor g, IReadOnlyList<LinearLayer> layers, string prefix)
    {
        foreach (var layer in layers)
        {
            var path = ModuleNames.Strip(layer.Module, prefix);
            if (layer.Dequantize is not null) { yield return new Candidate(path, layer.Node, 1, layer.Weight, "quantized", false, []); continue; }
            if (Chain(g, layer.Node.Input[1], layer.Weight) is not { } chain) continue;
            yield return new Candidate(path, layer.Node, 1, layer.Weight, "linear", layer.Layout == WeightLayout.InOut, chain);
        }
    }

    /// <summary>The token (and position) embeddings (<see cref="LinearLayers.Embeddings"/>).</summary>
    static IEnumerable<Candidate> Embeddings(GraphEditor g, string prefix)
    {
        foreach (var e in LinearLayers.Embeddings(g))
            if (Chain(g, e.Node.Input[0], e.Weight) is { } chain)
                yield return new Candidate(ModuleNames.Strip(e.Module, prefix), e.Node, 0, e.Weight, "embedding", false, chain);
    }

    /// <summary>The ops from <paramref name="initializer"/> to <paramref name="value"/>, innermost first.</summary>
    static List<NodeProto>? Chain(GraphEditor g, string value, string initializer)
    {
        var chain = new List<NodeProto>();
        while (value != initializer)
        {
            if (g.Producer(value) is not { OpType: "Identity" or "Cast" or "Transpose" } hop) return null;
            chain.Insert(0, hop);
            value = hop.Input[0];
        }
        return chain;
    }
}
