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
        foreach (var group in lora.ByLayer())
        {
            var layer = LayerAdapter.Read(model, group);
            if (group[0].InitialA is { } initialA)
            {
                layer = RelativeToOriginal(model, layer, initialA, group[0].InitialB!);
                tensors[group[0].LoraA] = SafeTensor.FromFloats([layer.R, layer.In], layer.A);
                tensors[group[0].LoraB] = SafeTensor.FromFloats([layer.Out, layer.R], layer.B);
            }
            else if (layer.IsCanonical)
            {
                // One adapter per part of a fused layer is, exactly, one PEFT adapter of rank parts·r on the fused module.
                tensors[ModuleNames.LoraAKey(layer.Module)] = SafeTensor.FromFloats([layer.R, layer.In], layer.A);
                tensors[ModuleNames.LoraBKey(layer.Module)] = SafeTensor.FromFloats([layer.Out, layer.R], layer.B);
            }
            else
            {
                tensors[group[0].LoraA] = Raw(model, group[0].LoraA);
                tensors[group[0].LoraB] = Raw(model, group[0].LoraB);
                if (group[0].Magnitude is { } m) tensors[m] = Raw(model, m);
            }
            RecordRankAndScale(config, layer);
        }
        foreach (var saved in lora.SavedModules)
        {
            var t = model.Graph.Initializer.First(i => i.Name == saved.Weight); // already in PyTorch's layout
            tensors[ModulesToSave.PeftKey(saved.Module)] = SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
        }
        foreach (var rows in lora.TrainableTokens)
        {
            var t = model.Graph.Initializer.First(i => i.Name == rows.Rows); // named by PEFT's key already
            tensors[rows.Rows] = SafeTensor.FromFloats(t.Dims.ToArray(), model.ReadFloats(t));
        }
        config.Variant = "performant";
        return new PeftAdapter { Config = config, Tensors = tensors };
    }

    /// <summary>PEFT derives each module's rank from r (or rank_pattern) and its scale from lora_alpha (or
    /// alpha_pattern): add pattern entries where this layer's rank or scale differs from what the config implies.</summary>
    static void RecordRankAndScale(LoraConfig config, LayerAdapter layer)
    {
        if (config.RankFor(layer.Module) != layer.R) config.RankPattern[layer.Module] = layer.R;
        if (Math.Abs(config.ScaleFor(layer.Module, layer.R) - layer.Scale) > 1e-9 * Math.Abs(layer.Scale))
            config.AlphaPattern[layer.Module] = config.UseRslora ? layer.Scale * Math.Sqrt(layer.R) : layer.Scale * layer.R;
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
