using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>What EVA did: the batches it read, whether every component it kept converged, and each adapter's rank.</summary>
public sealed record EvaResult(int Batches, bool Converged, IReadOnlyDictionary<string, int> Ranks);

/// <summary>PEFT's EVA initialization (init_lora_weights="eva", Paischer et al. 2024), from PEFT's eva.py. Before
/// training, the model (B = 0, so the original) runs on the training batches; each adapted linear layer's inputs at
/// the counted positions (attention mask, and with use_label_mask a label other than -100) feed an incremental PCA of
/// round(r·rho) components. Batches repeat until every component a layer needs has stopped turning (cosine similarity
/// to the previous batch's at least tau). The rank budget, Σ r, then goes to the components with the largest explained
/// variance ratio over all layers, so a layer ends with 0 to r·rho; A is its top components (B stays zero), a layer
/// given 0 loses its adapter. Layers that read the same value (q, k, v) share one PCA, and the one that holds it gets
/// the largest rank of its group, as PEFT swaps them. Embedding adapters keep their init, as in PEFT.</summary>
public static class Eva
{
    /// <summary>An upper bound on the batches read, where PEFT's loop has none: a component that never settles (tau
    /// too close to 1 for the data) would otherwise run forever.</summary>
    public const int MaxBatches = 1000;

    sealed class Hook(string input, IncrementalPca pca)
    {
        public string Input => input;
        public IncrementalPca Pca => pca;
        public bool[] Converged { get; } = new bool[pca.Count];
        public bool ConvergedUpTo(int rank) => Converged.Take(rank).All(c => c);
    }

    sealed record Layer(LoraAdapter Adapter, string Input, int MaxComponents, double Alpha);

    /// <param name="labelsPerToken">false for a sequence classifier's batches, whose one label a row marks no tokens:
    /// every attended position counts, as PEFT's mask does where the labels are the rows' (use_label_mask has no token
    /// labels to read)</param>
    public static EvaResult Initialize(OnnxModel model, LoraModel lora, Func<int, IEnumerable<DataBatch>> epoch, ITrainingReporter? reporter = null,
        bool labelsPerToken = true)
    {
        var eva = lora.Config.EvaConfig ?? new EvaConfig();
        var layers = Layers(model, lora, eva);
        var hooks = new Dictionary<string, Hook>();
        int seed = lora.Config.Seed;
        foreach (var group in layers.GroupBy(l => l.Input))
            hooks[group.Key] = new Hook(group.Key, new IncrementalPca(group.Max(l => l.MaxComponents), (int)group.First().Adapter.In, seed++));
        var holder = layers.GroupBy(l => l.Input).ToDictionary(g => g.Key, g => g.First().Adapter.Module); // the layer whose rank bounds its hook's
        int budget = layers.Sum(l => l.Adapter.R);
        var rankOf = layers.ToDictionary(l => l.Adapter.Module, l => l.MaxComponents);
        using var forward = new LayerInputs(model, hooks.Keys);
        int batches = 0;
        bool converged = false;
        for (int e = 0; !converged && batches < MaxBatches; e++)
        {
            bool any = false;
            foreach (var batch in epoch(e))
            {
                any = true;
                var active = hooks.Values.Where(h => !h.ConvergedUpTo(rankOf[holder[h.Input]])).ToList();
                if (active.Count == 0) { converged = true; break; }
                if (batches >= MaxBatches) break;
                batches++;
                var rows = CountedPositions(batch, eva.UseLabelMask && labelsPerToken);
                var activations = forward.Run(batch, active.Select(h => h.Input));
                foreach (var hook in active)
                {
                    // PEFT skips a batch with fewer positions than components (the first SVD needs that many rows)
                    if (rows.Count < hook.Pca.Count) continue;
                    var x = Rows(activations[hook.Input], rows, hook.Pca.Features);
                    var previous = hook.Pca.Components;
                    hook.Pca.PartialFit(x, rows.Count);
                    if (previous is not null) Compare(hook, previous, eva.Tau);
                }
                if (hooks.Values.All(h => h.Pca.Components is not null)) rankOf = Distribute(layers, hooks, holder, budget);
            }
            if (!any) throw new OrtLoraException("EVA needs training batches, and the data gave none");
        }
        if (!converged)
            reporter?.Info($"EVA: not every component converged within {MaxBatches} batches (tau {eva.Tau}); using the components as they are");
        if (hooks.Values.Any(h => h.Pca.Components is null))
            throw new OrtLoraException($"EVA: no batch had the {hooks.Values.Max(h => h.Pca.Count)} counted positions the components need; use larger batches or a smaller --eva-rho");

        var ranks = new Dictionary<string, AdapterRank>();
        foreach (var layer in layers)
        {
            int rank = rankOf[layer.Adapter.Module];
            var hook = hooks[layer.Input];
            var a = new float[rank * layer.Adapter.In];
            for (int c = 0; c < rank; c++)
            {
                double divisor = eva.Whiten ? Math.Sqrt(hook.Pca.SingularValues[c]) : 1;
                for (long f = 0; f < layer.Adapter.In; f++) a[c * layer.Adapter.In + f] = (float)(hook.Pca.Components![c * layer.Adapter.In + f] / divisor);
            }
            double alpha = eva.AdjustScalingFactors ? layer.Alpha * rank / layer.Adapter.R : layer.Alpha;
            ranks[layer.Adapter.Module] = new AdapterRank(rank, alpha, a);
        }
        AdapterRanks.Apply(model, lora, ranks);
        var result = new EvaResult(batches, converged, ranks.ToDictionary(p => p.Key, p => p.Value.Rank));
        reporter?.Info($"EVA: {batches} batches; ranks {string.Join(", ", result.Ranks.Values.GroupBy(r => r).OrderByDescending(g => g.Key).Select(g => $"{g.Key}×{g.Count()}"))} " +
            $"(budget {budget}){(result.Ranks.Values.Count(r => r == 0) is > 0 and var removed ? $"; {removed} adapters removed" : "")}");
        return result;
    }

    /// <summary>On resume: the ranks EVA gave, read from the checkpoint's A shapes (an adapter it lacks had rank 0).
    /// The values come from the checkpoint afterwards.</summary>
    public static void RestoreRanks(OnnxModel model, LoraModel lora, IReadOnlyDictionary<string, SafeTensor> checkpoint, string checkpointDir)
    {
        if (!checkpoint.Keys.Any(k => k.StartsWith("param.", StringComparison.Ordinal)))
            throw new OrtLoraException($"{checkpointDir}: the checkpoint holds no parameters to resume from (saved with --save-only-model?)");
        var eva = lora.Config.EvaConfig ?? new EvaConfig();
        var ranks = new Dictionary<string, AdapterRank>();
        foreach (var adapter in lora.Adapters.Where(a => !a.Embedding))
        {
            int rank = checkpoint.TryGetValue("param." + adapter.LoraA, out var a) ? (int)a.Shape[0] : 0;
            double alpha = lora.Config.AlphaFor(adapter.Module);
            ranks[adapter.Module] = new AdapterRank(rank, eva.AdjustScalingFactors ? alpha * rank / adapter.R : alpha);
        }
        AdapterRanks.Apply(model, lora, ranks);
    }

    static List<Layer> Layers(OnnxModel model, LoraModel lora, EvaConfig eva)
    {
        if (eva.Rho < 1) throw new OrtLoraException($"EVA: rho must be at least 1 (got {eva.Rho})");
        if (eva.Tau is < 0 or > 1) throw new OrtLoraException($"EVA: tau must be in [0, 1] (got {eva.Tau})");
        var g = new GraphEditor(model.Graph);
        var layers = new List<Layer>();
        foreach (var adapter in lora.Adapters.Where(a => !a.Embedding))
        {
            if (adapter.Part is not null)
                throw new OrtLoraException($"{model.Source}: EVA on '{adapter.Module}', one part of a fused layer: use --variant performant");
            var input = LayerInputs.BranchInput(model, g, adapter);
            int components = (int)Math.Round(adapter.R * eva.Rho, MidpointRounding.ToEven); // Python's round()
            if (components > adapter.In)
                throw new OrtLoraException($"{model.Source}: EVA on '{adapter.Module}': r·rho = {components} components of {adapter.In} input features; lower --r or --eva-rho");
            layers.Add(new Layer(adapter, input, components, lora.Config.AlphaFor(adapter.Module)));
        }
        if (layers.Count == 0) throw new OrtLoraException($"{model.Source}: EVA initializes linear layers' adapters, and the model has none");
        // layers on one input share a PCA, so they share its number of components (the largest r·rho of the group), as PEFT sets them
        var shared = layers.GroupBy(l => l.Input).ToDictionary(g => g.Key, g => g.Max(l => l.MaxComponents));
        return [.. layers.Select(l => l with { MaxComponents = shared[l.Input] })];
    }

    /// <summary>The flat [batch·sequence] positions whose activations count.</summary>
    static List<int> CountedPositions(DataBatch batch, bool useLabelMask)
    {
        var rows = new List<int>();
        for (int i = 0; i < batch.AttentionMask.Length; i++)
            if (batch.AttentionMask[i] != 0 && (!useLabelMask || batch.Labels[i] != ExampleEncoder.IgnoreIndex)) rows.Add(i);
        return rows;
    }

    static double[] Rows(HostTensor activations, List<int> rows, int features)
    {
        var values = activations.Floats;
        if (values.Length % features != 0) throw new OrtLoraException($"EVA: an activation of {values.Length} values is not rows of {features}");
        var x = new double[rows.Count * features];
        for (int r = 0; r < rows.Count; r++)
            for (int f = 0; f < features; f++) x[r * features + f] = values[(long)rows[r] * features + f];
        return x;
    }

    /// <summary>Component i has converged when it points where it pointed a batch ago (both unit length, svd_flip-signed).</summary>
    static void Compare(Hook hook, double[] previous, double tau)
    {
        int features = hook.Pca.Features;
        for (int c = 0; c < hook.Pca.Count; c++)
        {
            double dot = 0;
            for (int f = 0; f < features; f++) dot += previous[c * features + f] * hook.Pca.Components![c * features + f];
            hook.Converged[c] = dot >= tau;
        }
    }

    /// <summary>The budget's components go to the largest explained variance ratios of all layers (a layer sharing a
    /// PCA counts its values again, as in PEFT; ties in layer order); then within a group of layers on one input, the
    /// layer holding the PCA takes the largest rank.</summary>
    static Dictionary<string, int> Distribute(List<Layer> layers, Dictionary<string, Hook> hooks, Dictionary<string, string> holder, int budget)
    {
        var candidates = layers.SelectMany((l, order) => hooks[l.Input].Pca.ExplainedVarianceRatio.Take(l.MaxComponents)
            .Select(v => (Module: l.Adapter.Module, Value: v, Order: order)));
        var counts = layers.ToDictionary(l => l.Adapter.Module, _ => 0);
        foreach (var c in candidates.OrderByDescending(c => c.Value).ThenBy(c => c.Order).Take(budget)) counts[c.Module]++;
        foreach (var layer in layers)
        {
            var owner = holder[layer.Input];
            if (owner != layer.Adapter.Module && counts[owner] < counts[layer.Adapter.Module])
                (counts[owner], counts[layer.Adapter.Module]) = (counts[layer.Adapter.Module], counts[owner]);
        }
        return counts;
    }
}
