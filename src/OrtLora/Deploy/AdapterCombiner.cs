using System.Text.Json.Nodes;

namespace OrtLora.Deploy;

/// <summary>Weighted combination of PEFT LoRA adapters, as PEFT's add_weighted_adapter does it.
/// "cat" (exact): ranks are concatenated, A = [w₁·s₁·A₁; w₂·s₂·A₂; ...], B = [B₁ B₂ ...], and the result has
/// lora_alpha = r (scale 1), so ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ; a negative weight subtracts an adapter.
/// "svd" (with a target rank): the same ΔW truncated to its leading singular directions.</summary>
public static class AdapterCombiner
{
    /// <summary>The combined modules and their common rank (the largest per-module sum of ranks; modules that some
    /// adapters lack are padded with zero rows/columns, as PEFT leaves them).</summary>
    public static (int Rank, Dictionary<string, LoraPair> Modules) Cat(IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs)
    {
        var names = inputs.SelectMany(x => x.Adapter.Modules.Keys).Distinct().ToList();
        int rank = names.Max(n => inputs.Sum(x => x.Adapter.Modules.TryGetValue(n, out var p) ? p.Rank : 0));
        var result = new Dictionary<string, LoraPair>();
        foreach (var name in names) result[name] = CatModule(name, inputs, rank);
        return (rank, result);
    }

    /// <summary>Cat, then each module re-compressed to <paramref name="rank"/> by truncated SVD of its exact ΔW.</summary>
    public static Dictionary<string, LoraPair> Svd(IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs, int rank)
    {
        if (rank < 1) throw new OrtLoraException($"--rank must be at least 1 (got {rank})");
        var (_, cat) = Cat(inputs);
        var result = new Dictionary<string, LoraPair>();
        foreach (var (name, p) in cat)
        {
            var (b, a) = LowRank.Factor(p.B, p.A, p.Out, p.Rank, p.In, rank);
            result[name] = new LoraPair(a, b, rank, p.In, p.Out, 1.0, p.Embedding);
        }
        return result;
    }

    static LoraPair CatModule(string name, IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs, int rank)
    {
        var present = inputs.Where(x => x.Adapter.Modules.ContainsKey(name)).Select(x => (Pair: x.Adapter.Modules[name], x.Weight, x.Adapter.Source)).ToList();
        var (inDim, outDim) = (present[0].Pair.In, present[0].Pair.Out);
        foreach (var (pair, _, source) in present)
            if (pair.In != inDim || pair.Out != outDim || pair.Embedding != present[0].Pair.Embedding)
                throw new OrtLoraException($"{source}: module '{name}' is [{pair.Out}x{pair.In}] but {present[0].Source} has [{outDim}x{inDim}]; adapters of different base models cannot be combined");
        var a = new float[rank * inDim];
        var b = new float[outDim * rank];
        int row = 0;
        foreach (var (pair, weight, _) in present)
        {
            // PEFT puts the whole weight (and the adapter's own scale) on A and copies B unchanged.
            double factor = weight * pair.Scale;
            for (int r = 0; r < pair.Rank; r++)
                for (int i = 0; i < inDim; i++) a[(row + r) * inDim + i] = (float)(pair.A[r * inDim + i] * factor);
            for (int o = 0; o < outDim; o++)
                for (int r = 0; r < pair.Rank; r++) b[o * rank + row + r] = pair.B[o * pair.Rank + r];
            row += pair.Rank;
        }
        return new LoraPair(a, b, rank, inDim, outDim, 1.0, present[0].Pair.Embedding);
    }

    /// <summary>The first config with target_modules covering all inputs: a list union, or for regular expressions
    /// "(a)|(b)" as PEFT writes it.</summary>
    static JsonObject WithUnionOfTargets(List<JsonObject> configs)
    {
        var result = configs[0].DeepClone().AsObject();
        var targets = configs.Select(c => c["target_modules"]).ToList();
        if (targets.All(t => t is JsonArray))
        {
            var union = targets.SelectMany(t => t!.AsArray().Select(x => x!.GetValue<string>())).Distinct().ToList();
            result["target_modules"] = new JsonArray(union.Select(u => (JsonNode)u!).ToArray());
        }
        else if (targets.All(t => t is JsonValue))
        {
            var patterns = targets.Select(t => t!.GetValue<string>()).Distinct().ToList();
            result["target_modules"] = patterns.Count == 1 ? patterns[0] : string.Join("|", patterns.Select(p => $"({p})"));
        }
        else throw new OrtLoraException("adapters mix a target_modules list with a regular expression; PEFT cannot combine those either");
        return result;
    }

    /// <summary>Loads the adapters, combines them and writes a PEFT adapter directory (config from the first one).</summary>
    public static int Combine(IReadOnlyList<(string Dir, double Weight)> inputs, string outDir, int? rank = null)
    {
        if (inputs.Count == 0) throw new OrtLoraException("no adapters to combine");
        var loaded = inputs.Select(x => (PeftAdapterDirectory.Load(x.Dir), x.Weight)).ToList();
        var template = WithUnionOfTargets(loaded.Select(x => x.Item1.Config).ToList());
        if (rank is { } k)
        {
            PeftAdapterDirectory.Save(outDir, template, k, Svd(loaded, k));
            return k;
        }
        var (catRank, modules) = Cat(loaded);
        PeftAdapterDirectory.Save(outDir, template, catRank, modules);
        return catRank;
    }
}
