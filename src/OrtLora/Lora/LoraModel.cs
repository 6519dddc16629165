using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>One part of a fused projection that has its own adapter (canonical variant): columns
/// [Offset, Offset + Size) of the layer's output, part Index of Count.</summary>
public sealed record LoraPart(int Index, int Count, long Offset, long Size);

/// <summary>One adapter as recorded in the injected model: its A [r, in] and B [out, r] initializers (PEFT key names,
/// float32), the scale initializer, the base layer it adapts and how that layer's weight is stored, and the nodes
/// injection added (merge removes exactly those).</summary>
public sealed record LoraAdapter
{
    /// <summary>Module path relative to the Hugging Face model, as PEFT names it (e.g. model.layers.0.self_attn.q_proj).</summary>
    public required string Module { get; init; }
    [JsonPropertyName("lora_A")] public required string LoraA { get; init; }
    [JsonPropertyName("lora_B")] public required string LoraB { get; init; }
    public required int R { get; init; }
    /// <summary>lora_alpha / r (or / sqrt(r) with rsLoRA), also stored as the scalar initializer <see cref="ScaleName"/>.</summary>
    public required double Scale { get; init; }
    public required string ScaleName { get; init; }
    public required string BaseWeight { get; init; }
    [JsonConverter(typeof(JsonStringEnumConverter))] public required WeightLayout Layout { get; init; }
    public required long In { get; init; }
    /// <summary>Width of the whole layer output (all parts together for a fused layer).</summary>
    public required long Out { get; init; }
    /// <summary>Gemm's alpha multiplies x·W; merge divides the delta by it so the merged layer is exact.</summary>
    public float GemmAlpha { get; init; } = 1;
    public LoraPart? Part { get; init; }
    /// <summary>An embedding's adapter (PEFT's lora_embedding_A [r, vocabulary] and lora_embedding_B [hidden, r]): the base
    /// node is a Gather, its table the weight stored [in, out].</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)] public bool Embedding { get; init; }
    /// <summary>lora_bias: B's bias initializer ([part size], inside the scale), and the value the layer adds as its own
    /// bias, an initializer or an Identity of one, that merge adds it to (null when the layer has none: then merge
    /// refuses, as PEFT does).</summary>
    public string? LoraBias { get; init; }
    public string? BaseBias { get; init; }
    /// <summary>The base layer's node; its output was renamed to <see cref="BaseOutput"/>, and the LoRA Add now
    /// produces the original name <see cref="Output"/>.</summary>
    public required string Node { get; init; }
    public required string BaseOutput { get; init; }
    public required string Output { get; init; }
    public required List<string> Nodes { get; init; }
    /// <summary>DoRA: the magnitude vector m [Out] (a trainable initializer) and the value ‖W + scale·B·A‖ per output
    /// feature, which training treats as a constant (DoRA §4.3, as PEFT detaches it).</summary>
    public string? Magnitude { get; init; }
    public string? WeightNorm { get; init; }
    /// <summary>PiSSA and OLoRA: the initial A and B (the base weight holds W − scale·B₀·A₀); export turns the adapter into a LoRA
    /// relative to the original W.</summary>
    public string? InitialA { get; init; }
    public string? InitialB { get; init; }
}

/// <summary>The <c>ortlora.lora</c> metadata of an injected model: the config and one entry per adapter.</summary>
public sealed class LoraModel
{
    public const string MetadataKey = "ortlora.lora";
    static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        WriteIndented = false,
    };

    public int Version { get; init; } = 1;
    public required LoraConfig Config { get; init; }
    public required List<LoraAdapter> Adapters { get; init; }
    /// <summary>modules_to_save: the modules trained whole (<see cref="Lora.ModulesToSave"/>).</summary>
    public List<SavedModule> SavedModules { get; init; } = [];
    /// <summary>trainable_token_indices: the tables with trainable rows (<see cref="Lora.TrainableTokens"/>).</summary>
    public List<TokenRows> TrainableTokens { get; init; } = [];
    /// <summary>bias "all" / "lora_only": the biases trained in place (<see cref="Lora.TrainedBiases"/>).</summary>
    public List<TrainedBias> TrainedBiases { get; init; } = [];

    /// <summary>The adapters of a model, or null when it has none (not injected).</summary>
    public static LoraModel? Read(OnnxModel model) => Read(model.Proto, model.Source);

    public static LoraModel? Read(ModelProto proto, string source = "<memory>")
    {
        var entry = proto.MetadataProps.FirstOrDefault(p => p.Key == MetadataKey);
        if (entry is null) return null;
        try
        {
            var node = JsonNode.Parse(entry.Value)!.AsObject();
            return new LoraModel
            {
                Version = node["version"]?.GetValue<int>() ?? 1,
                Config = LoraConfig.FromJson(node["config"]!),
                Adapters = node["adapters"]!.Deserialize<List<LoraAdapter>>(Json)!,
                SavedModules = node["saved_modules"]?.Deserialize<List<SavedModule>>(Json) ?? [],
                TrainableTokens = node["trainable_tokens"]?.Deserialize<List<TokenRows>>(Json) ?? [],
                TrainedBiases = node["trained_biases"]?.Deserialize<List<TrainedBias>>(Json) ?? [],
            };
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
        {
            throw new OrtLoraException($"{source}: metadata '{MetadataKey}' is not valid ortlora LoRA metadata ({e.Message})");
        }
    }

    public string ToJson() => new JsonObject
    {
        ["version"] = Version,
        ["config"] = Config.ToJson(),
        ["adapters"] = JsonSerializer.SerializeToNode(Adapters, Json),
        ["saved_modules"] = SavedModules.Count == 0 ? null : JsonSerializer.SerializeToNode(SavedModules, Json),
        ["trainable_tokens"] = TrainableTokens.Count == 0 ? null : JsonSerializer.SerializeToNode(TrainableTokens, Json),
        ["trained_biases"] = TrainedBiases.Count == 0 ? null : JsonSerializer.SerializeToNode(TrainedBiases, Json),
    }.ToJsonString();

    public void Write(ModelProto proto)
    {
        Remove(proto);
        proto.MetadataProps.Add(new StringStringEntryProto { Key = MetadataKey, Value = ToJson() });
    }

    public static void Remove(ModelProto proto)
    {
        foreach (var p in proto.MetadataProps.Where(p => p.Key == MetadataKey).ToList()) proto.MetadataProps.Remove(p);
    }

    /// <summary>The nodes that compute the LoRA deltas: every node of each branch but the Add that joins it to the base
    /// layer's output.</summary>
    public HashSet<string> BranchNodes(GraphProto graph)
    {
        var outputs = new HashSet<string>(Adapters.Select(a => a.Output));
        var joins = new HashSet<string>(graph.Node.Where(n => n.Output.Any(outputs.Contains)).Select(n => n.Name));
        return Adapters.SelectMany(a => a.Nodes).Where(n => !joins.Contains(n)).ToHashSet();
    }

    /// <summary>Adapters grouped by base layer: one group for a performant or plain adapter, the parts of a canonical one.</summary>
    public IEnumerable<IReadOnlyList<LoraAdapter>> ByLayer() =>
        Adapters.GroupBy(a => a.Node).Select(g => (IReadOnlyList<LoraAdapter>)g.OrderBy(a => a.Part?.Index ?? 0).ToList());
}
