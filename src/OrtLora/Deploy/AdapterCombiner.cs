using System.Text.Json.Nodes;

namespace OrtLora.Deploy;

/// <summary>How <see cref="AdapterCombiner.Combine(IReadOnlyList{ValueTuple{string, double}}, string, CombineOptions)"/>
/// combines, with add_weighted_adapter's names: combination_type, svd_rank (null: the largest input rank), density,
/// majority_sign_method, svd_clamp; and the seed of DARE's random pruning.</summary>
public sealed record CombineOptions
{
    public string CombinationType { get; init; } = "cat";
    public int? SvdRank { get; init; }
    public double? Density { get; init; }
    public string MajoritySignMethod { get; init; } = "total";
    public double? SvdClamp { get; init; }
    public int Seed { get; init; }
}

/// <summary>Weighted combination of PEFT LoRA adapters, as PEFT's add_weighted_adapter does it. The result has
/// lora_alpha = r (scale 1); each adapter's scale sᵢ (lora_alpha / r) goes into the weights. A negative weight
/// subtracts an adapter. A single adapter is combined as "linear", as PEFT does (and, given a rank, truncated).
/// <list type="bullet">
/// <item>cat (exact): ranks are concatenated, A = [w₁·s₁·A₁; w₂·s₂·A₂; ...], B = [B₁ B₂ ...], so ΔW = Σ wᵢ·sᵢ·Bᵢ·Aᵢ.</item>
/// <item>linear, ties, dare_linear, dare_ties, magnitude_prune (equal ranks): A and B are merged separately
/// (<see cref="TaskMerging"/>), A with weights sign(wᵢsᵢ)·√|wᵢsᵢ| and B with √|wᵢsᵢ|. Their product has cross terms
/// Bᵢ·Aⱼ, as PEFT's does.</item>
/// <item>svd, ties_svd, dare_linear_svd, dare_ties_svd, magnitude_prune_svd: each module's ΔWᵢ = sᵢ·Bᵢ·Aᵢ is merged
/// with weights wᵢ·sᵢ, then truncated by SVD to svd_rank (B = U·S, A = Vh, optionally clamped at the svd_clamp
/// quantile of their values). PEFT weighs each ΔWᵢ, which already carries sᵢ, by wᵢ·sᵢ: svd gives Σ wᵢ·sᵢ²·Bᵢ·Aᵢ
/// truncated, not cat's sum, unless lora_alpha = r. ortlora does the same, so that the adapters match PEFT's.</item>
/// </list></summary>
public static class AdapterCombiner
{
    public static readonly string[] CombinationTypes =
        ["svd", "linear", "cat", "ties", "ties_svd", "dare_ties", "dare_linear", "dare_ties_svd", "dare_linear_svd", "magnitude_prune", "magnitude_prune_svd"];

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

    /// <summary>linear, ties, dare_linear, dare_ties or magnitude_prune: A and B merged separately, the adapters' common
    /// rank kept.</summary>
    public static (int Rank, Dictionary<string, LoraPair> Modules) Factors(IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs,
        string method, CombineOptions options)
    {
        var ranks = inputs.SelectMany(x => x.Adapter.Modules.Values.Select(p => p.Rank)).Distinct().ToList();
        if (ranks.Count > 1)
            throw new OrtLoraException($"combination type {options.CombinationType} merges A and B separately, so the adapters need one rank; they have {string.Join(", ", ranks)} (use cat or an svd type)");
        var rng = new Random(options.Seed);
        var result = new Dictionary<string, LoraPair>();
        foreach (var name in inputs.SelectMany(x => x.Adapter.Modules.Keys).Distinct())
        {
            var present = Present(name, inputs);
            var scaled = present.Select(x => x.Weight * x.Pair.Scale).ToList();
            // the sign goes on A only, so that it is applied once
            var weightsA = scaled.Select(w => (w >= 0 ? 1 : -1) * Math.Sqrt(Math.Abs(w))).ToList();
            var weightsB = scaled.Select(w => Math.Sqrt(Math.Abs(w))).ToList();
            var first = present[0].Pair;
            var a = TaskMerging.Merge(method, [.. present.Select(x => x.Pair.A)], weightsA, options.Density ?? 1, options.MajoritySignMethod, rng);
            var b = TaskMerging.Merge(method, [.. present.Select(x => x.Pair.B)], weightsB, options.Density ?? 1, options.MajoritySignMethod, rng);
            result[name] = new LoraPair(a, b, first.Rank, first.In, first.Out, 1.0, first.Embedding);
        }
        return (ranks[0], result);
    }

    /// <summary>svd and the pruned svd types: each module's merged ΔW truncated to <paramref name="rank"/> by SVD.
    /// Plain svd stays factored (Σ wᵢ·sᵢ²·Bᵢ·Aᵢ as one concatenation, then <see cref="LowRank.Factor"/>: exact); the
    /// pruned types work on the dense ΔWᵢ (<see cref="LowRank.TruncatedSvd"/>).</summary>
    public static Dictionary<string, LoraPair> Svd(IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs, int rank, CombineOptions? options = null)
    {
        options ??= new CombineOptions { CombinationType = "svd" };
        if (rank < 1) throw new OrtLoraException($"--rank must be at least 1 (got {rank})");
        var rng = new Random(options.Seed);
        var result = new Dictionary<string, LoraPair>();
        foreach (var name in inputs.SelectMany(x => x.Adapter.Modules.Keys).Distinct())
        {
            var present = Present(name, inputs);
            var first = present[0].Pair;
            float[] b, a;
            if (options.CombinationType == "svd")
            {
                // PEFT's weight wᵢ·sᵢ on a ΔWᵢ that carries sᵢ: cat's factors with wᵢ·sᵢ in place of wᵢ
                var cat = CatModule(name, [.. present.Select(x => (x.Adapter, x.Weight * x.Pair.Scale))], present.Sum(x => x.Pair.Rank));
                (b, a) = LowRank.Factor(cat.B, cat.A, cat.Out, cat.Rank, cat.In, rank);
            }
            else
            {
                var deltas = present.Select(x => Dense(x.Pair)).ToList();
                var merged = TaskMerging.Merge(options.CombinationType[..^"_svd".Length], deltas, [.. present.Select(x => x.Weight * x.Pair.Scale)],
                    options.Density ?? 1, options.MajoritySignMethod, rng);
                (b, a) = LowRank.TruncatedSvd(merged, first.Out, first.In, rank, options.Seed);
            }
            if (options.SvdClamp is { } clamp) Clamp(b, a, clamp);
            result[name] = new LoraPair(a, b, rank, first.In, first.Out, 1.0, first.Embedding);
        }
        return result;
    }

    /// <summary>One adapter: PEFT combines it as linear whatever the type (its ΔW is w·s·B·A). Given a rank, ortlora then
    /// truncates that ΔW by SVD (PEFT ignores svd_rank there), which compresses an adapter.</summary>
    static (int Rank, Dictionary<string, LoraPair> Modules) Single(IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> one, CombineOptions options)
    {
        // an adapter with a rank_pattern has modules of several ranks: cat pads them to one, exactly
        if (options.SvdRank is not { } k)
            return one[0].Adapter.Modules.Values.Select(p => p.Rank).Distinct().Count() == 1 ? Factors(one, "linear", options with { Density = null }) : Cat(one);
        var (_, exact) = Cat(one);
        return (k, exact.ToDictionary(m => m.Key, m =>
        {
            var p = m.Value;
            var (b, a) = LowRank.Factor(p.B, p.A, p.Out, p.Rank, p.In, k);
            return new LoraPair(a, b, k, p.In, p.Out, 1.0, p.Embedding);
        }));
    }

    /// <summary>The adapters that have module <paramref name="name"/>, checked to have its shape.</summary>
    static List<(PeftAdapterDirectory Adapter, LoraPair Pair, double Weight)> Present(string name, IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs)
    {
        var present = inputs.Where(x => x.Adapter.Modules.ContainsKey(name)).Select(x => (x.Adapter, Pair: x.Adapter.Modules[name], x.Weight)).ToList();
        foreach (var (adapter, pair, _) in present)
            if (pair.In != present[0].Pair.In || pair.Out != present[0].Pair.Out || pair.Embedding != present[0].Pair.Embedding)
                throw new OrtLoraException($"{adapter.Source}: module '{name}' is [{pair.Out}x{pair.In}] but {present[0].Adapter.Source} has " +
                    $"[{present[0].Pair.Out}x{present[0].Pair.In}]; adapters of different base models cannot be combined");
        return present;
    }

    /// <summary>ΔW = s·B·A [out, in], as PEFT's get_delta_weight (oriented as B·A also for embeddings).</summary>
    static float[] Dense(LoraPair p)
    {
        var delta = new float[p.Out * p.In];
        Parallel.For(0, p.Out, o =>
        {
            for (int r = 0; r < p.Rank; r++)
            {
                double coefficient = p.B[o * p.Rank + r] * p.Scale;
                if (coefficient == 0) continue;
                for (int i = 0; i < p.In; i++) delta[o * p.In + i] += (float)(coefficient * p.A[r * p.In + i]);
            }
        });
        return delta;
    }

    /// <summary>PEFT's svd_clamp: both factors' values clamped to ±(the clamp quantile of all of them, torch.quantile's
    /// linear interpolation).</summary>
    static void Clamp(float[] b, float[] a, double quantile)
    {
        float high = (float)Statistics.Quantile(b.Concat(a).Select(v => (double)v).Order().ToList(), quantile);
        for (int i = 0; i < b.Length; i++) b[i] = Math.Clamp(b[i], -high, high);
        for (int i = 0; i < a.Length; i++) a[i] = Math.Clamp(a[i], -high, high);
    }

    static LoraPair CatModule(string name, IReadOnlyList<(PeftAdapterDirectory Adapter, double Weight)> inputs, int rank)
    {
        var present = Present(name, inputs);
        var (inDim, outDim) = (present[0].Pair.In, present[0].Pair.Out);
        var a = new float[rank * inDim];
        var b = new float[outDim * rank];
        int row = 0;
        foreach (var (_, pair, weight) in present)
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

    /// <summary>Loads the adapters, combines them and writes a PEFT adapter directory (config from the first one):
    /// cat, or PEFT's svd with <paramref name="rank"/>.</summary>
    public static int Combine(IReadOnlyList<(string Dir, double Weight)> inputs, string outDir, int? rank = null) =>
        Combine(inputs, outDir, new CombineOptions { CombinationType = rank is null ? "cat" : "svd", SvdRank = rank });

    /// <summary>Loads the adapters, combines them as <paramref name="options"/> say and writes a PEFT adapter directory
    /// (config from the first one, target_modules the union); returns the new rank.</summary>
    public static int Combine(IReadOnlyList<(string Dir, double Weight)> inputs, string outDir, CombineOptions options)
    {
        if (inputs.Count == 0) throw new OrtLoraException("no adapters to combine");
        var type = options.CombinationType;
        if (!CombinationTypes.Contains(type)) throw new OrtLoraException($"unknown --combination-type '{type}'; expected {string.Join(", ", CombinationTypes)}");
        bool svd = type.EndsWith("svd", StringComparison.Ordinal);
        if (options.SvdRank is not null && !svd) throw new OrtLoraException($"--rank applies to the svd combination types, not to {type}");
        if (options.SvdRank is < 1) throw new OrtLoraException($"--rank must be at least 1 (got {options.SvdRank})");
        if (options.SvdClamp is { } clamp && (!svd || clamp is <= 0 or > 1)) throw new OrtLoraException("--svd-clamp is a quantile in (0, 1] for the svd combination types");
        bool prunes = type is not ("svd" or "linear" or "cat");
        if (prunes && options.Density is not (>= 0 and <= 1)) throw new OrtLoraException($"combination type {type} needs --density in [0, 1] (the share of values kept)");
        if (!prunes && options.Density is not null) throw new OrtLoraException($"--density applies to the ties, dare and magnitude_prune types, not to {type}");
        var loaded = inputs.Select(x => (PeftAdapterDirectory.Load(x.Dir), x.Weight)).ToList();
        var template = WithUnionOfTargets(loaded.Select(x => x.Item1.Config).ToList());
        var (newRank, modules) = loaded.Count == 1 ? Single(loaded, options)
            : type == "cat" ? Cat(loaded)
            : svd ? (options.SvdRank ?? loaded.Max(x => x.Item1.Modules.Values.Max(p => p.Rank)), (Dictionary<string, LoraPair>?)null)
            : Factors(loaded, type, options);
        modules ??= Svd(loaded, newRank, options);
        PeftAdapterDirectory.Save(outDir, template, newRank, modules);
        return newRank;
    }
}
