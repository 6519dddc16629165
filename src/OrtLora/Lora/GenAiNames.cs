using System.Text.RegularExpressions;
using Onnx;

namespace OrtLora.Lora;

/// <summary>ONNX Runtime GenAI's model builder names a model's modules as Hugging Face does, except attention: it writes
/// <c>model.layers.N.attn.*</c> for <c>self_attn.*</c> and packs q_proj, k_proj and v_proj into one
/// <c>attn.qkv_proj</c> that GroupQueryAttention reads. PEFT adapters use the Hugging Face names, so export writes
/// those (a packed adapter as one adapter per part) and import reads them into the builder's layers.</summary>
public static partial class GenAiNames
{
    public static readonly string[] PackedParts = ["q_proj", "k_proj", "v_proj"];

    [GeneratedRegex(@"^(model\.layers\.\d+)\.attn\.")] private static partial Regex Attn();
    [GeneratedRegex(@"^(model\.layers\.\d+)\.self_attn\.")] private static partial Regex SelfAttn();

    /// <summary>A builder export: it computes attention with com.microsoft GroupQueryAttention.</summary>
    public static bool Applies(GraphProto graph) => graph.Node.Any(n => n.OpType == "GroupQueryAttention" && n.Domain == "com.microsoft");

    /// <summary>The Hugging Face (PEFT) path of a builder module path.</summary>
    public static string ToPeft(string path) => Attn().Replace(path, "$1.self_attn.");

    /// <summary>The builder path of a Hugging Face (PEFT) module path.</summary>
    public static string FromPeft(string path) => SelfAttn().Replace(path, "$1.attn.");

    public static bool IsPacked(string path) => path.EndsWith(".attn.qkv_proj", StringComparison.Ordinal);

    /// <summary>For a builder path ending in q_proj, k_proj or v_proj: the packed module's path and the part's index.</summary>
    public static (string Packed, int Part)? PackedPart(string path)
    {
        int dot = path.LastIndexOf('.');
        int part = Array.IndexOf(PackedParts, path[(dot + 1)..]);
        return dot < 0 || part < 0 ? null : (path[..dot] + ".qkv_proj", part);
    }
}
