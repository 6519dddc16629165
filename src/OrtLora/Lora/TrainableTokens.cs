using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>The trainable rows of one table in an injected model (PEFT's trainable_token_indices).</summary>
/// <param name="Module">The PEFT module path (model.embed_tokens, lm_head)</param>
/// <param name="Rows">The trainable values of those tokens' rows, float32 [tokens, hidden], under PEFT's key
/// <c>base_model.model.PATH.token_adapter.trainable_tokens_delta</c> (new values, not differences, as in PEFT)</param>
/// <param name="Indices">The int64 [tokens, 1] initializer of the token ids</param>
/// <param name="Table">The initializer whose rows they replace: every reader of it (a tied head too) reads
/// <paramref name="Output"/> instead</param>
/// <param name="Transposed">The table is stored [hidden, vocabulary] (a head's [in, out]), so the rows are its columns</param>
/// <param name="DataType">The table's element type: a Cast follows the rows when it is not float32</param>
/// <param name="Nodes">The nodes inject added</param>
public sealed record TokenRows(string Module, string Rows, string Indices, string Table, bool Transposed, int DataType,
    string Output, List<string> Nodes, List<long> TokenIds);

/// <summary>PEFT's trainable_token_indices: only the rows of chosen tokens of an embedding (or an untied LM head) train,
/// e.g. the special tokens a chat template adds, instead of the whole matrix (modules_to_save). The rows are written into
/// the table by a ScatterND, as PEFT's index_copy does, so a head tied to the embedding reads them too.</summary>
public static class TrainableTokens
{
    const string Suffix = ".token_adapter.trainable_tokens_delta";
    public static string RowsName(string path) => ModuleNames.PeftKeyPrefix + path + Suffix;
    public static bool IsRows(string name) => name.EndsWith(Suffix, StringComparison.Ordinal);

    /// <summary>The module path of a PEFT key <c>base_model.model.PATH.token_adapter.trainable_tokens_delta</c>, else null.</summary>
    public static string? PathOfPeftKey(string key) =>
        key.StartsWith(ModuleNames.PeftKeyPrefix, StringComparison.Ordinal) && IsRows(key) ? key[ModuleNames.PeftKeyPrefix.Length..^Suffix.Length] : null;

    /// <summary>Adds the rows of each module in <paramref name="tokens"/> (key "": the token embedding, PEFT's list form).</summary>
    /// <param name="adapted">nodes with a LoRA adapter, whose weights cannot also have rows replaced</param>
    /// <param name="values">PEFT tensors by key (an imported adapter), or null: the rows start as the table's</param>
    public static List<TokenRows> Apply(OnnxModel model, GraphEditor g, IReadOnlyDictionary<string, List<long>> tokens,
        IReadOnlyList<LinearLayer> layers, string prefix, IReadOnlySet<NodeProto> adapted, IReadOnlyList<SavedModule> saved,
        IReadOnlyDictionary<string, SafeTensor>? values = null, string? valuesSource = null)
    {
        if (tokens.Count == 0) return [];
        var candidates = ModulesToSave.Candidates(g, layers, prefix);
        var adaptedWeights = layers.Concat(LinearLayers.Embeddings(g)).Where(l => adapted.Contains(l.Node)).DistinctBy(l => l.Weight).ToDictionary(l => l.Weight, l => l.Module);
        var result = new List<TokenRows>();
        foreach (var (name, ids) in tokens)
        {
            if (saved.FirstOrDefault(s => name != "" && ModuleNames.NameMatches(name, s.Module)) is { } whole)
                throw new OrtLoraException($"{model.Source}: module '{whole.Module}' is in modules_to_save (trained whole); its tokens cannot also be trainable");
            var c = Pick(model, g, candidates, name);
            if (c.Kind == "quantized")
                throw new OrtLoraException($"{model.Source}: module '{c.Path}' is stored quantized (DequantizeLinear); trainable tokens replace float rows");
            if (ModulesToSave.IsWeight(c.Table))
                throw new OrtLoraException($"{model.Source}: the token embedding is in modules_to_save (trained whole); its tokens cannot also be trainable");
            if (adapted.Contains(c.Node))
                throw new OrtLoraException($"{model.Source}: module '{c.Path}' has a LoRA adapter; leave it out of target_modules or of trainable_token_indices");
            if (adaptedWeights.TryGetValue(c.Table, out var adaptedModule))
                throw new OrtLoraException($"{model.Source}: module '{c.Path}' shares its weight with '{adaptedModule}', which has a LoRA adapter; leave it out of target_modules or of trainable_token_indices");
            if (result.FirstOrDefault(r => r.Table == c.Table) is { } tied)
                throw new OrtLoraException($"{model.Source}: module '{c.Path}' reads the same weight as '{tied.Module}' (tied embeddings): the trainable tokens of '{tied.Module}' already apply to it");
            result.Add(Rows(model, g, c, ids, values, valuesSource));
        }
        g.TopologicalSort();
        return result;
    }

    static ModulesToSave.Candidate Pick(OnnxModel model, GraphEditor g, List<ModulesToSave.Candidate> candidates, string name)
    {
        if (name == "")
        {
            var embedding = TokenEmbedding.Find(g)
                ?? throw new OrtLoraException($"{model.Source}: trainable_token_indices without a module name apply to the token embedding, and none (a Gather of a [vocabulary, hidden] table by input_ids) was found");
            return candidates.FirstOrDefault(c => c.Node == embedding.Gather)
                ?? throw new OrtLoraException($"{model.Source}: the token embedding '{embedding.Gather.Name}' does not read a float initializer; name the module in trainable_token_indices");
        }
        var matched = candidates.Where(c => ModuleNames.NameMatches(name, c.Path)).ToList();
        return matched.Count switch
        {
            1 => matched[0],
            0 => throw new OrtLoraException($"{model.Source}: trainable_token_indices '{name}': no linear layer or token embedding has that name; " +
                $"they are named: {string.Join(", ", candidates.Select(c => c.Path).Distinct())}"),
            _ => throw new OrtLoraException($"{model.Source}: trainable_token_indices '{name}' matches several modules: {string.Join(", ", matched.Select(c => c.Path))}"),
        };
    }

    static TokenRows Rows(OnnxModel model, GraphEditor g, ModulesToSave.Candidate c, List<long> ids, IReadOnlyDictionary<string, SafeTensor>? values, string? valuesSource)
    {
        var table = g.Initializer(c.Table)!;
        long vocab = c.Transposed ? table.Dims[1] : table.Dims[0], hidden = c.Transposed ? table.Dims[0] : table.Dims[1];
        if (ids.Count == 0) throw new OrtLoraException($"{model.Source}: trainable_token_indices for '{c.Path}' is empty");
        foreach (var bad in ids.Where(i => i < 0 || i >= vocab).Take(1))
            throw new OrtLoraException($"{model.Source}: trainable token {bad} of '{c.Path}' is outside its vocabulary of {vocab}");
        if (ids.GroupBy(i => i).FirstOrDefault(grp => grp.Count() > 1) is { } twice)
            throw new OrtLoraException($"{model.Source}: trainable token {twice.Key} of '{c.Path}' is listed twice");
        float[] start;
        var rowsName = RowsName(c.Path);
        if (values is not null)
        {
            if (!values.TryGetValue(rowsName, out var t))
                throw new OrtLoraException($"{valuesSource}: trainable_token_indices lists '{c.Path}' but there is no tensor '{rowsName}'");
            if (!t.Shape.SequenceEqual([ids.Count, hidden]))
                throw new OrtLoraException($"{valuesSource}: tensor '{rowsName}' has shape [{string.Join(", ", t.Shape)}] but {ids.Count} tokens of '{c.Path}' need [{ids.Count}, {hidden}]");
            start = t.AsFloats();
        }
        else start = Read(model.ReadFloats(table), c.Transposed, vocab, hidden, ids);

        var rows = g.AddInitializer(Tensors.FromFloats(rowsName, [ids.Count, hidden], start));
        var indices = g.AddInitializer(Tensors.FromInt64(g.Unique(rowsName + ".token_indices"), [ids.Count, 1], ids.ToArray()));
        var added = new List<NodeProto>();
        string Add(string op, string[] inputs, params (string, object)[] attributes)
        {
            var output = g.Add(op, inputs, name: $"{c.Path}/trainable_tokens/{op}", attributes: attributes);
            added.Add(g.Producer(output)!);
            return output;
        }
        var update = table.DataType == (int)DT.Float ? rows : Add("Cast", [rows], ("to", (long)table.DataType));
        var data = c.Transposed ? Add("Transpose", [c.Table], ("perm", new long[] { 1, 0 })) : c.Table;
        var output = Add("ScatterND", [data, indices, update]);
        if (c.Transposed) output = Add("Transpose", [output], ("perm", new long[] { 1, 0 }));
        g.ReplaceUses(c.Table, output, [.. added]);
        return new TokenRows(c.Path, rows, indices, c.Table, c.Transposed, table.DataType, output, added.Select(n => n.Name).ToList(), ids);
    }

    /// <summary>The tokens' rows of a [vocabulary, hidden] table (or columns of a [hidden, vocabulary] one), [tokens, hidden].</summary>
    static float[] Read(float[] table, bool transposed, long vocab, long hidden, List<long> ids)
    {
        var rows = new float[ids.Count * hidden];
        for (int k = 0; k < ids.Count; k++)
            for (long h = 0; h < hidden; h++)
                rows[k * hidden + h] = transposed ? table[h * vocab + ids[k]] : table[ids[k] * hidden + h];
        return rows;
    }

    /// <summary>The table with the tokens' rows replaced (merge), in its own type.</summary>
    internal static byte[] Write(byte[] bytes, int dataType, bool transposed, long[] dims, List<long> ids, float[] rows)
    {
        var table = Tensors.BytesToFloats(bytes, dataType);
        long vocab = transposed ? dims[1] : dims[0], hidden = transposed ? dims[0] : dims[1];
        for (int k = 0; k < ids.Count; k++)
            for (long h = 0; h < hidden; h++)
                table[transposed ? h * vocab + ids[k] : ids[k] * hidden + h] = rows[k * hidden + h];
        return Tensors.FloatsToBytes(table, dataType);
    }
}
