using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>A new rank for one adapter: A [Rank, in] (null: zeros, for values a checkpoint fills in later), B zero,
/// and the lora_alpha its scale is taken from. Rank 0 removes the adapter.</summary>
public sealed record AdapterRank(int Rank, double Alpha, float[]? A = null);

/// <summary>Changes the ranks of an injected model's adapters in place, as PEFT's update_layer does when EVA
/// redistributes them: an adapter's A and B initializers are replaced ([rank, in], [out, rank]; B zero, so the model
/// still computes the original), its scale initializer takes the new alpha / rank, and an adapter given rank 0 is
/// removed with its nodes (the layer computes its own output again) and left out of the config's targets
/// (exclude_modules), as PEFT drops it from target_modules. The LoRA branch's nodes do not depend on the rank.</summary>
public static class AdapterRanks
{
    public static void Apply(OnnxModel model, LoraModel lora, IReadOnlyDictionary<string, AdapterRank> ranks)
    {
        var g = new GraphEditor(model.Graph);
        var removedNodes = new HashSet<string>();
        for (int i = lora.Adapters.Count - 1; i >= 0; i--)
        {
            var adapter = lora.Adapters[i];
            if (!ranks.TryGetValue(adapter.Module, out var rank)) continue;
            if (adapter.Part is not null)
                throw new OrtLoraException($"{model.Source}: '{adapter.Module}' is one part of a fused layer; its rank cannot change alone (use --variant performant)");
            foreach (var name in new[] { adapter.LoraA, adapter.LoraB, adapter.ScaleName }) g.RemoveInitializer(name);
            if (rank.Rank == 0)
            {
                var baseNode = g.Producer(adapter.BaseOutput)
                    ?? throw new OrtLoraException($"{model.Source}: the base layer of adapter '{adapter.LoraA}' (output '{adapter.BaseOutput}') is missing");
                baseNode.Output[0] = adapter.Output;
                removedNodes.UnionWith(adapter.Nodes);
                if (adapter.LoraBias is { } bias) g.RemoveInitializer(bias);
                if (adapter.Magnitude is { } m)
                    foreach (var name in model.Graph.Initializer.Select(t => t.Name).Where(n => n.StartsWith(m, StringComparison.Ordinal)).ToList()) g.RemoveInitializer(name);
                lora.Adapters.RemoveAt(i);
                if (!lora.Config.ExcludeModules.Contains(adapter.Module)) lora.Config.ExcludeModules.Add(adapter.Module);
                continue;
            }
            if (rank.A is { } a && a.Length != rank.Rank * adapter.In)
                throw new ArgumentException($"A of '{adapter.Module}' must hold {rank.Rank}×{adapter.In} values, got {a.Length}");
            double scale = lora.Config.UseRslora ? rank.Alpha / Math.Sqrt(rank.Rank) : rank.Alpha / rank.Rank;
            g.AddInitializer(Tensors.FromFloats(adapter.LoraA, [rank.Rank, adapter.In], rank.A ?? new float[rank.Rank * adapter.In]));
            g.AddInitializer(Tensors.FromFloats(adapter.LoraB, [adapter.Out, rank.Rank], new float[adapter.Out * rank.Rank]));
            g.AddInitializer(Tensors.Scalar(adapter.ScaleName, scale, (int)global::Onnx.TensorProto.Types.DataType.Float));
            lora.Adapters[i] = adapter with { R = rank.Rank, Scale = scale };
        }
        // A model prepared for runtime adapters lists A and B as graph inputs too: their declared shapes follow the
        // initializers, and a removed adapter's inputs go with it.
        var initializers = model.Graph.Initializer.ToDictionary(t => t.Name);
        foreach (var input in model.Graph.Input.Where(i => ModuleNames.IsLoraA(i.Name) || ModuleNames.IsLoraB(i.Name)).ToList())
        {
            int at = model.Graph.Input.IndexOf(input);
            model.Graph.Input.RemoveAt(at);
            if (initializers.TryGetValue(input.Name, out var tensor)) model.Graph.Input.Insert(at, Deploy.LoraRuntimeForm.InputFor(tensor));
        }
        if (removedNodes.Count > 0)
        {
            var keep = model.Graph.Node.Where(n => !removedNodes.Contains(n.Name)).ToList();
            model.Graph.Node.Clear();
            model.Graph.Node.AddRange(keep);
        }
        lora.Write(model.Proto);
    }
}
