using Microsoft.ML.OnnxRuntime;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Deploy;

/// <summary>Serving one injected model with many adapters through ONNX Runtime's adapter API: the session's LoRA
/// parameters become overridable inputs, and each request activates the adapter it wants.</summary>
public static class RuntimeAdapters
{
    /// <summary>A PEFT adapter directory's LoRA parameters (adapter_model.safetensors) as float32 arrays, keyed as the
    /// injected model names its initializers. When <paramref name="modelScale"/> differs from the adapter's own
    /// lora_alpha/r, B is rescaled so that the model's baked-in scale yields the adapter's update.</summary>
    public static Dictionary<string, (float[] Values, long[] Shape)> FromPeftDirectory(string adapterDir, double? modelScale = null)
    {
        var weights = Path.Combine(adapterDir, "adapter_model.safetensors");
        var configPath = Path.Combine(adapterDir, "adapter_config.json");
        if (!File.Exists(weights)) throw new OrtLoraException($"{adapterDir}: no adapter_model.safetensors (not a PEFT adapter directory)");
        var config = File.Exists(configPath) ? LoraConfig.FromPeftJson(configPath) : null;
        double ratio = modelScale is { } s && config is not null ? config.Scale / s : 1.0;
        var result = new Dictionary<string, (float[], long[])>();
        foreach (var (key, tensor) in SafeTensors.Read(weights))
        {
            // A modules_to_save weight goes to the injected model's copy of it (same layout, PyTorch's); its bias is
            // trained under the adapter's own key.
            var name = ModulesToSave.PathOfPeftKey(key, config?.ModulesToSave ?? []) is { } saved ? key.EndsWith(".bias", StringComparison.Ordinal) ? key : ModulesToSave.WeightName(saved)
                : key.Replace(".default.weight", ".weight", StringComparison.Ordinal).Replace(".lora_B.default.bias", ".lora_B.bias", StringComparison.Ordinal) is var k && k.EndsWith(".default", StringComparison.Ordinal) ? k[..^".default".Length] : k;
            if (!LoraRuntimeForm.IsLoraParameter(name)) continue;
            var values = tensor.AsFloats();
            if (ratio != 1.0 && (ModuleNames.IsLoraB(name) || ModuleNames.IsLoraBias(name))) // both inside the scale
                for (int i = 0; i < values.Length; i++) values[i] = (float)(values[i] * ratio);
            result[name] = (values, tensor.Shape);
        }
        if (result.Count == 0) throw new OrtLoraException($"{weights}: no lora_A / lora_B tensors");
        return result;
    }

    /// <summary>An ORT adapter from an .onnx_adapter file or a PEFT adapter directory (converted in memory), checked
    /// against <paramref name="session"/>'s inputs when one is given.</summary>
    public static OrtLoraAdapter Load(string path, InferenceSession? session = null, double? modelScale = null)
    {
        bool isDirectory = Directory.Exists(path);
        if (!isDirectory && !File.Exists(path)) throw new OrtLoraException($"{path}: adapter not found");
        var parameters = isDirectory ? FromPeftDirectory(path, modelScale) : OnnxAdapterFile.Read(path);
        bool renamed = false;
        if (session is not null)
        {
            var mapped = ToBuilderNames(parameters, name => session.OverridableInitializerMetadata.ContainsKey(name) || session.InputMetadata.ContainsKey(name));
            renamed = !mapped.Keys.ToHashSet().SetEquals(parameters.Keys);
            parameters = mapped;
            CheckFits(session, parameters, path);
        }
        // A file whose names the session knows under the builder's names goes to ORT re-serialized with those.
        try { return isDirectory || renamed ? OrtLoraAdapter.Create(OnnxAdapterFile.Serialize(parameters), null) : OrtLoraAdapter.Create(path, null); }
        catch (OnnxRuntimeException e) { throw new OrtLoraException($"{path}: ONNX Runtime rejected the adapter ({e.Message})", e); }
    }

    /// <summary>A session over the model with its LoRA parameters as overridable inputs. A model already in that form
    /// is opened from its file; otherwise the form is made in memory (models under 2 GB). <paramref name="modelScale"/>
    /// is the LoRA scale baked into the model (from its ortlora metadata), for adapters trained with another one.</summary>
    /// <param name="pluginRewrites">load the graph without the ops the GPU machine's CUDA plugin crashes on (<see cref="PluginRewrites"/>)</param>
    public static InferenceSession OpenOverridable(string modelPath, SessionOptions options, out double? modelScale, bool pluginRewrites = false)
    {
        using var model = OnnxModel.Load(modelPath);
        modelScale = LoraModel.Read(model)?.Config.Scale;
        var inputs = model.Graph.Input.Select(i => i.Name).ToHashSet();
        bool overridable = model.Graph.Initializer.Where(t => LoraRuntimeForm.IsLoraParameter(t.Name)).All(t => inputs.Contains(t.Name))
            && model.Graph.Initializer.Any(t => LoraRuntimeForm.IsLoraParameter(t.Name));
        if (!overridable) LoraRuntimeForm.MakeOverridable(model);
        if (pluginRewrites) return PluginRewrites.Load(model, options);
        if (overridable) return new InferenceSession(modelPath, options);
        if (model.Graph.Initializer.Sum(Tensors.ByteSize) > 1_800_000_000L)
            throw new OrtLoraException($"{modelPath}: too large to prepare for runtime adapters in memory; inject it with --runtime-adapters");
        return new InferenceSession(model.ToBytes(), options);
    }

    /// <summary>A PEFT adapter's Hugging Face names on an ORT GenAI builder export (<see cref="GenAiNames"/>): a name the
    /// model lacks is tried as the builder's (attn for self_attn), and q_proj / k_proj / v_proj as the parts of a
    /// packed qkv_proj injected with --variant canonical. Names the model has are kept.</summary>
    public static Dictionary<string, (float[] Values, long[] Shape)> ToBuilderNames(Dictionary<string, (float[] Values, long[] Shape)> parameters, Func<string, bool> exists)
    {
        var result = new Dictionary<string, (float[], long[])>();
        foreach (var (name, value) in parameters)
        {
            var mapped = name;
            if (!exists(name) && ModuleNames.ParseAdapterKey(name) is var (module, kind) && kind is "lora_A" or "lora_B")
            {
                var builder = GenAiNames.FromPeft(module);
                string Key(string path, string? part = null) => kind == "lora_A" ? ModuleNames.LoraAKey(path, part) : ModuleNames.LoraBKey(path, part);
                if (exists(Key(builder))) mapped = Key(builder);
                else if (GenAiNames.PackedPart(builder) is var (packed, part) && exists(Key(packed, $".part{part}"))) mapped = Key(packed, $".part{part}");
            }
            result[mapped] = value;
        }
        return result;
    }

    /// <summary>Checks that every adapter parameter is an input of the session with the same shape, so a mismatch is
    /// reported by name instead of failing inside ORT (or, for a missing name, being silently ignored).</summary>
    public static void CheckFits(InferenceSession session, IReadOnlyDictionary<string, (float[] Values, long[] Shape)> parameters, string adapterName)
    {
        foreach (var (name, (_, shape)) in parameters)
        {
            // Inputs that have an initializer default are listed by ORT as overridable initializers, not as inputs.
            if (!session.OverridableInitializerMetadata.TryGetValue(name, out var meta) && !session.InputMetadata.TryGetValue(name, out meta))
                throw new OrtLoraException($"{adapterName}: parameter '{name}' is not an input of the model (different target modules, or not an injected model?)");
            if (!meta.Dimensions.Select(d => (long)d).SequenceEqual(shape))
                throw new OrtLoraException($"{adapterName}: parameter '{name}' has shape [{string.Join(",", shape)}], the model expects [{string.Join(",", meta.Dimensions)}] (different rank?)");
        }
    }
}
