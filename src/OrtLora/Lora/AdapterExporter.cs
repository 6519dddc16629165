using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>An injected (and possibly trained) model's adapters, and its modules_to_save weights, as a PEFT adapter
/// that PeftModel.from_pretrained loads onto the original Hugging Face model. Tensors keep the model's initializer names and bytes, so an adapter
/// imported with --init-from comes back unchanged.</summary>
public static class AdapterExporter
{
    public static PeftAdapter Export(OnnxModel model)
    {
        var lora = LoraModel.Read(model) ?? throw new OrtLoraException($"{model.Source}: the model has no LoRA adapters to export (no '{LoraModel.MetadataKey}' metadata)");
        var config = Clone(lora.Config);
        var tensors = new Dictionary<string, SafeTensor>();
        bool pissa = lora.Adapters.Any(a => a.InitialA is not null);
        if (pissa)
        {
            // PEFT's conversion of a PiSSA or OLoRA adapter for the original weight: ΔW = scale·(B·A − B₀·A₀) is a rank-2r LoRA
            // with A' = [A; A₀] and B' = [B, −B₀], at the same scale.
            config.R *= 2;
            config.LoraAlpha *= config.UseRslora ? Math.Sqrt(2) : 2;
            config.Init = "kaiming";
        }
        // ORT GenAI builder exports: Hugging Face names, and the packed qkv_proj as q_proj, k_proj and v_proj.
        bool genAi = GenAiNames.Applies(model.Graph);
        var graph = genAi ? new GraphEditor(model.Graph) : null;
        var written = new List<string>();
        foreach (var group in lora.ByLayer())
        {
            var layer = LayerAdapter.Read(model, group);
            var module = genAi ? GenAiNames.ToPeft(layer.Module) : layer.Module;
            if (genAi && group[0].InitialA is null && group[0].Magnitude is null && GenAiNames.IsPacked(layer.Module)
                && LinearLayers.FusedParts(graph!, group[0].Output, layer.Out) is { Length: 3 } widths)
            {
                foreach (var part in PackedParts(model, group, layer, widths))
                {
                    tensors[ModuleNames.LoraAKey(part.Module)] = SafeTensor.FromFloats([part.R, part.In], part.A);
                    tensors[ModuleNames.LoraBKey(part.Module)] = SafeTensor.FromFloats([part.Out, part.R], part.B);
                    RecordRankAndScale(config, part);
                    written.Add(part.Module);
                }
                continue;
            }
            bool embedding = group[0].Embedding;
            string keyA = genAi ? ModuleNames.LoraAKey(module, embedding) : group[0].LoraA, keyB = genAi ? ModuleNames.LoraBKey(module, embedding) : group[0].LoraB;
            if (group[0].InitialA is { } initialA)
            {
                layer = RelativeToOriginal(model, layer, initialA, group[0].InitialB!);
                tensors[keyA] = SafeTensor.FromFloats([layer.R, layer.In], layer.A);
                tensors[keyB] = SafeTensor.FromFloats([layer.Out, layer.R], layer.B);
                if (group[0].LoraBias is { } bias) tensors[bias] = Raw(model, bias);
            }
            else if (layer.IsCanonical)
            {
                // One adapter per part of a fused layer is, exactly, one PEFT adapter of rank parts·r on the fused module.
                tensors[ModuleNames.LoraAKey(module)] = SafeTensor.FromFloats([layer.R, layer.In], layer.A);
                tensors[ModuleNames.LoraBKey(module)] = SafeTensor.FromFloats([layer.Out, layer.R], layer.B);
                if (layer.Bias is { } bias) tensors[ModuleNames.LoraBiasKey(module)] = SafeTensor.FromFloats([layer.Out], bias);
            }
            else
            {
                tensors[keyA] = Raw(model, group[0].LoraA);
                tensors[keyB] = Raw(model, group[0].LoraB);
                if (group[0].LoraBias is { } bias) tensors[bias] = Raw(model, bias);
                if (group[0].Magnitude is { } m) tensors[genAi ? ModuleNames.MagnitudeKey(module) : m] = Raw(model, m);
            }
            RecordRankAndScale(config, layer with { Module = module });
            written.Add(module);
        }
        // target_modules must name what the Hugging Face model has; the builder's own names would match nothing there.
        if (genAi && config.TargetModules is not ["all-linear"])
            config.TargetModules = written.Select(ModuleNames.LastSegment).Distinct().ToList();
        foreach (var saved in lora.SavedModules)
        {
            var t = model.Graph.Initializer.First(i => i.Name == saved.Weight); // already in PyTorch's layout
            tensors[ModulesToSave.PeftKey(saved.Module)] = SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
        }
        foreach (var bias in lora.TrainedBiases)
        {
            var t = model.Graph.Initializer.First(i => i.Name == bias.Weight); // named by PEFT's key already
            tensors[bias.Weight] = SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
        }
        foreach (var rows in lora.TrainableTokens)
        {
            var t = model.Graph.Initializer.First(i => i.Name == rows.Rows); // named by PEFT's key already
            tensors[rows.Rows] = SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
        }
        config.Variant = "performant";
        // a classifier's classes travel in the weights file's metadata, which PEFT and safetensors leave alone
        var classes = model.Proto.MetadataProps.Where(p => PeftAdapter.ClassifierMetadataKeys.Contains(p.Key)).ToDictionary(p => p.Key, p => p.Value);
        return new PeftAdapter { Config = config, Tensors = tensors, Metadata = classes };
    }

    /// <summary>PEFT derives each module's rank from r (or rank_pattern) and its scale from lora_alpha (or
    /// alpha_pattern): add pattern entries where this layer's rank or scale differs from what the config implies.</summary>
    static void RecordRankAndScale(LoraConfig config, LayerAdapter layer)
    {
        if (config.RankFor(layer.Module) != layer.R) config.RankPattern[layer.Module] = layer.R;
        if (Math.Abs(config.ScaleFor(layer.Module, layer.R) - layer.Scale) > 1e-9 * Math.Abs(layer.Scale))
            config.AlphaPattern[layer.Module] = config.UseRslora ? layer.Scale * Math.Sqrt(layer.R) : layer.Scale * layer.R;
    }

    /// <summary>A packed q|k|v adapter as three Hugging Face modules: one adapter per part of a canonical one (a part
    /// that is all zeros, as an import fills a part the PEFT adapter did not have, is left out), or a performant one's
    /// A with each part's rows of B (exact: the part's rows of B·A).</summary>
    static IEnumerable<LayerAdapter> PackedParts(OnnxModel model, IReadOnlyList<LoraAdapter> group, LayerAdapter layer, int[] widths)
    {
        long offset = 0;
        for (int i = 0; i < widths.Length; offset += widths[i], i++)
        {
            var name = GenAiNames.ToPeft(layer.Module[..^"qkv_proj".Length] + GenAiNames.PackedParts[i]);
            if (!layer.IsCanonical)
            {
                yield return layer with { Module = name, Out = widths[i], B = layer.B[(int)(offset * layer.R)..(int)((offset + widths[i]) * layer.R)] };
                continue;
            }
            var e = group.Single(x => x.Part!.Index == i);
            var (a, b) = (Raw(model, e.LoraA).AsFloats(), Raw(model, e.LoraB).AsFloats());
            if (a.All(v => v == 0) && b.All(v => v == 0)) continue;
            yield return layer with { Module = name, R = e.R, Out = widths[i], A = a, B = b };
        }
    }

    static LayerAdapter RelativeToOriginal(OnnxModel model, LayerAdapter layer, string initialA, string initialB)
    {
        float[] Read(string name) => model.ReadFloats(model.Graph.Initializer.First(i => i.Name == name));
        var (a0, b0) = (Read(initialA), Read(initialB));
        int r = layer.R;
        var b = new float[layer.Out * 2 * r];
        for (long o = 0; o < layer.Out; o++)
            for (int k = 0; k < r; k++)
            {
                b[o * 2 * r + k] = layer.B[o * r + k];
                b[o * 2 * r + r + k] = -b0[o * r + k];
            }
        return layer with { R = 2 * r, A = [.. layer.A, .. a0], B = b };
    }

    static SafeTensor Raw(OnnxModel model, string name)
    {
        var t = model.Graph.Initializer.First(i => i.Name == name);
        return SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
    }

    static LoraConfig Clone(LoraConfig c)
    {
        var copy = LoraConfig.FromJson(c.ToJson());
        copy.RankPattern = new(c.RankPattern);
        copy.AlphaPattern = new(c.AlphaPattern);
        return copy;
    }
}
