using System.Text.RegularExpressions;

namespace OrtLora.Lora;

/// <summary>Module paths as PEFT sees them: relative to the Hugging Face model (the exporter's wrapper prefix such as
/// <c>model_.</c> removed), matched against target_modules the way PEFT matches them, and turned into PEFT's adapter
/// keys (<c>base_model.model.{path}.lora_A.weight</c>).</summary>
public static class ModuleNames
{
    public const string PeftKeyPrefix = "base_model.model.";

    /// <summary>The wrapper prefix that every module path shares: one leading segment common to all paths, stripped
    /// when it looks like an export wrapper (ends with '_', as torch names a wrapped attribute) or when it holds
    /// several named children (<c>model.model.layers</c> and <c>model.lm_head</c>), never when its children are
    /// layer indices.</summary>
    public static string WrapperPrefix(IReadOnlyCollection<string> paths)
    {
        if (paths.Count == 0) return "";
        var first = paths.Select(p => p.Split('.')).ToList();
        if (first.Any(s => s.Length < 2)) return "";
        var head = first[0][0];
        if (first.Any(s => s[0] != head)) return "";
        var children = first.Select(s => s[1]).Distinct().ToList();
        bool namedChildren = children.Count >= 2 && children.All(c => !c.All(char.IsDigit));
        return head.EndsWith('_') || namedChildren ? head + "." : "";
    }

    public static string Strip(string path, string prefix) => prefix != "" && path.StartsWith(prefix) ? path[prefix.Length..] : path;

    public static string LoraAKey(string peftPath, string? part = null) => $"{PeftKeyPrefix}{peftPath}{part}.lora_A.weight";
    public static string LoraBKey(string peftPath, string? part = null) => $"{PeftKeyPrefix}{peftPath}{part}.lora_B.weight";
    /// <summary>An embedding's A [r, vocabulary] and B [hidden, r]: PEFT keeps them in ParameterDicts, so its keys have no ".weight".</summary>
    public static string LoraEmbeddingAKey(string peftPath) => $"{PeftKeyPrefix}{peftPath}.lora_embedding_A";
    public static string LoraEmbeddingBKey(string peftPath) => $"{PeftKeyPrefix}{peftPath}.lora_embedding_B";
    public static string LoraAKey(string peftPath, bool embedding) => embedding ? LoraEmbeddingAKey(peftPath) : LoraAKey(peftPath);
    public static string LoraBKey(string peftPath, bool embedding) => embedding ? LoraEmbeddingBKey(peftPath) : LoraBKey(peftPath);
    /// <summary>lora_bias: B's bias [out], as PEFT saves it (its nn.Linear's bias).</summary>
    public static string LoraBiasKey(string peftPath, string? part = null) => $"{PeftKeyPrefix}{peftPath}{part}.lora_B.bias";
    public static bool IsLoraBias(string name) => name.EndsWith(".lora_B.bias", StringComparison.Ordinal);
    /// <summary>An adapter's A (a linear layer's or an embedding's), by the name ortlora gives its initializer.</summary>
    public static bool IsLoraA(string name) => name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || name.EndsWith(".lora_embedding_A", StringComparison.Ordinal);
    public static bool IsLoraB(string name) => name.EndsWith(".lora_B.weight", StringComparison.Ordinal) || name.EndsWith(".lora_embedding_B", StringComparison.Ordinal);
    /// <summary>DoRA's magnitude vector m [out], as PEFT saves it (no ".weight").</summary>
    public static string MagnitudeKey(string peftPath) => $"{PeftKeyPrefix}{peftPath}.lora_magnitude_vector";

    /// <summary>PEFT's rule: a name matches when the path equals it or ends with ".name"; a single string that is a
    /// regular expression must match the whole path; "all-linear" takes every linear layer except the output head.
    /// The head (and tied weights) are only taken when a listed name or regex names them explicitly.</summary>
    public static bool IsTarget(IReadOnlyList<string> targets, string peftPath, bool isHead)
    {
        if (targets.Count == 1 && targets[0] == "all-linear") return !isHead;
        if (targets.Count == 1 && LoraConfig.IsRegex(targets[0]))
        {
            bool match = Regex.IsMatch(peftPath, $"^(?:{targets[0]})$");
            return match && (!isHead || targets[0].Contains(LastSegment(peftPath)));
        }
        return targets.Any(t => NameMatches(t, peftPath));
    }

    /// <summary>PEFT's exclude_modules: one regex must match the whole path; names match as target names do.</summary>
    public static bool IsExcluded(IReadOnlyList<string> excluded, string peftPath) =>
        excluded.Count == 1 && LoraConfig.IsRegex(excluded[0]) ? Regex.IsMatch(peftPath, $"^(?:{excluded[0]})$")
            : excluded.Any(e => NameMatches(e, peftPath));

    /// <summary>PEFT's layers_to_transform: the layer index is the number in "PATTERN.N." (each pattern tried in order),
    /// or without a pattern in the last "NAME.N." preceded by a dot; a module with no index is not taken.</summary>
    public static bool InLayers(IReadOnlyList<int> layers, IReadOnlyList<string> patterns, string peftPath)
    {
        if (layers.Count == 0) return true;
        var match = patterns.Count == 0 ? Regex.Match(peftPath, @"^.*\.[^.]*\.(\d+)\.")
            : patterns.Select(p => Regex.Match(peftPath, $@"^.*\.{p}\.(\d+)\.")).FirstOrDefault(m => m.Success) ?? Match.Empty;
        return match.Success && layers.Contains(int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>PEFT's default target_modules per architecture (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING),
    /// most common first: llama/mistral/qwen q_proj,v_proj; GPT-2 c_attn; Bloom/Falcon/GPT-NeoX query_key_value;
    /// Phi-3/CodeGen qkv_proj; MPT Wqkv; BERT/RoBERTa query,value; T5 q,v.</summary>
    public static readonly string[][] PeftDefaultTargets =
        [["q_proj", "v_proj"], ["c_attn"], ["query_key_value"], ["qkv_proj"], ["Wqkv"], ["query", "value"], ["q", "v"]];

    /// <summary>The first of PEFT's default target lists that names a layer of this model, or null.</summary>
    public static List<string>? DefaultTargets(IEnumerable<string> peftPaths)
    {
        var paths = peftPaths.ToList();
        return PeftDefaultTargets.FirstOrDefault(t => paths.Any(p => t.Any(n => NameMatches(n, p))))?.ToList();
    }

    public static bool NameMatches(string name, string path) => path == name || path.EndsWith("." + name);

    public static string LastSegment(string path) => path[(path.LastIndexOf('.') + 1)..];

    /// <summary>The module part of a PEFT adapter key: <c>base_model.model.X.lora_A.weight</c> (or with PEFT's
    /// in-memory <c>.default</c>) → X; also an embedding's <c>X.lora_embedding_A</c>, DoRA's <c>X.lora_magnitude_vector</c>
    /// and lora_bias's <c>X.lora_B.bias</c> (kind "lora_bias"); null for keys that are none of these.</summary>
    public static (string Module, string Kind)? ParseAdapterKey(string key)
    {
        foreach (var kind in new[] { "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "lora_bias" })
            foreach (var suffix in kind switch
                     {
                         "lora_magnitude_vector" => [$".{kind}", $".{kind}.default.weight", $".{kind}.weight"],
                         "lora_embedding_A" or "lora_embedding_B" => [$".{kind}", $".{kind}.default"],
                         "lora_bias" => [".lora_B.bias", ".lora_B.default.bias"], // lora_bias: B's own bias
                         _ => new[] { $".{kind}.weight", $".{kind}.default.weight" },
                     })
                if (key.EndsWith(suffix))
                {
                    var module = key[..^suffix.Length];
                    if (module.StartsWith(PeftKeyPrefix)) module = module[PeftKeyPrefix.Length..];
                    return (module, kind);
                }
        return null;
    }
}
