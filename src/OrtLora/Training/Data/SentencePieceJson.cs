using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Google.Protobuf;

namespace OrtLora.Training.Data;

/// <summary>A SentencePiece-style Hugging Face tokenizer.json (Llama 2, Mistral: BPE over "▁"-escaped text with byte
/// fallback) restated as the SentencePiece model it was converted from, so it loads as a tokenizer.model does
/// (encoded by <see cref="SentencePieceBpe"/>, decoded by Microsoft.ML.Tokenizers). SentencePiece merges the adjacent
/// pair whose joined piece scores highest; the file's merges are listed in that order, so a piece's score is minus the
/// rank of the first merge that forms it.</summary>
static partial class SentencePieceJson
{
    // sentencepiece_model.proto field numbers.
    const int ModelPieces = 1, ModelTrainerSpec = 2, ModelNormalizerSpec = 3;
    const int PieceText = 1, PieceScore = 2, PieceType = 3;
    const int TypeNormal = 1, TypeUnknown = 2, TypeControl = 3, TypeUserDefined = 4, TypeByte = 6;
    const int TrainerModelType = 3, TrainerVocabSize = 4, TrainerByteFallback = 35;
    const int TrainerUnkId = 40, TrainerBosId = 41, TrainerEosId = 42, TrainerPadId = 43;
    const int TrainerUnkPiece = 45, TrainerBosPiece = 46, TrainerEosPiece = 47;
    const int ModelTypeBpe = 2;
    const int NormalizerName = 1, NormalizerAddDummyPrefix = 3, NormalizerRemoveExtraWhitespaces = 4, NormalizerEscapeWhitespaces = 5;

    [GeneratedRegex("^<0x[0-9A-Fa-f]{2}>$")]
    private static partial Regex BytePiece();

    /// <summary>The serialized ModelProto for <paramref name="root"/>; ids beyond the model's vocabulary (tokens
    /// added later, like a pad token) are left to the special-token list.</summary>
    public static byte[] ToModelProto(JsonObject root, string path, string? bosToken, string? eosToken)
    {
        var model = root["model"]!.AsObject();
        var vocab = model["vocab"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>());
        var pieces = new string[vocab.Count];
        foreach (var (piece, id) in vocab)
        {
            if (id < 0 || id >= pieces.Length || pieces[id] is not null)
                throw new OrtLoraException($"{path}: vocabulary ids are not 0..{vocab.Count - 1} without gaps (id {id} for '{piece}')");
            pieces[id] = piece;
        }
        var added = (root["added_tokens"] as JsonArray ?? []).OfType<JsonObject>().ToList();
        var special = added.Where(t => t["special"]?.GetValue<bool>() == true).Select(t => t["content"]!.GetValue<string>()).ToHashSet();
        var userDefined = added.Select(t => t["content"]!.GetValue<string>()).Where(t => !special.Contains(t)).ToHashSet();
        var unk = model["unk_token"]?.GetValue<string>();
        var byteFallback = model["byte_fallback"]?.GetValue<bool>() == true;
        var scores = ScoresFromMerges(model["merges"]!.AsArray(), vocab);

        var output = new MemoryStream();
        var writer = new CodedOutputStream(output);
        for (int id = 0; id < pieces.Length; id++)
        {
            var piece = pieces[id];
            int type = piece == unk ? TypeUnknown
                : special.Contains(piece) ? TypeControl
                : userDefined.Contains(piece) ? TypeUserDefined
                : byteFallback && BytePiece().IsMatch(piece) ? TypeByte
                : TypeNormal;
            WriteMessage(writer, ModelPieces, w =>
            {
                w.WriteTag(PieceText, WireFormat.WireType.LengthDelimited); w.WriteString(piece);
                w.WriteTag(PieceScore, WireFormat.WireType.Fixed32); w.WriteFloat(scores.TryGetValue(piece, out var s) ? s : -(scores.Count + id));
                w.WriteTag(PieceType, WireFormat.WireType.Varint); w.WriteInt32(type);
            });
        }
        int IdOf(string? token) => token is not null && vocab.TryGetValue(token, out var id) ? id : -1;
        WriteMessage(writer, ModelTrainerSpec, w =>
        {
            WriteInt(w, TrainerModelType, ModelTypeBpe);
            WriteInt(w, TrainerVocabSize, pieces.Length);
            WriteInt(w, TrainerByteFallback, byteFallback ? 1 : 0);
            WriteInt(w, TrainerUnkId, Math.Max(0, IdOf(unk)));
            WriteInt(w, TrainerBosId, IdOf(bosToken));
            WriteInt(w, TrainerEosId, IdOf(eosToken));
            WriteInt(w, TrainerPadId, -1);
            if (unk is not null) WriteString(w, TrainerUnkPiece, unk);
            if (bosToken is not null) WriteString(w, TrainerBosPiece, bosToken);
            if (eosToken is not null) WriteString(w, TrainerEosPiece, eosToken);
        });
        WriteMessage(writer, ModelNormalizerSpec, w =>
        {
            WriteString(w, NormalizerName, "identity");
            WriteInt(w, NormalizerAddDummyPrefix, AddsDummyPrefix(root) ? 1 : 0);
            WriteInt(w, NormalizerRemoveExtraWhitespaces, 0);
            WriteInt(w, NormalizerEscapeWhitespaces, 1);
        });
        writer.Flush();
        return output.ToArray();
    }

    static Dictionary<string, float> ScoresFromMerges(JsonArray merges, Dictionary<string, int> vocab)
    {
        var scores = new Dictionary<string, float>();
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank] is JsonArray pair
                ? (pair[0]!.GetValue<string>(), pair[1]!.GetValue<string>())
                : SplitMerge(merges[rank]!.GetValue<string>());
            var joined = left + right;
            if (vocab.ContainsKey(joined)) scores.TryAdd(joined, -rank);
        }
        return scores;
    }

    static (string, string) SplitMerge(string merge)
    {
        var space = merge.IndexOf(' ');
        return space > 0 ? (merge[..space], merge[(space + 1)..]) : (merge, "");
    }

    /// <summary>"▁" put before the text: a Prepend normalizer (older files) or a Metaspace pre-tokenizer that prepends.</summary>
    static bool AddsDummyPrefix(JsonObject root)
    {
        var normalizer = root["normalizer"]?.ToJsonString() ?? "";
        if (normalizer.Contains("\"Prepend\"")) return true;
        var pre = root["pre_tokenizer"];
        var steps = pre?["type"]?.GetValue<string>() == "Sequence" ? pre["pretokenizers"]!.AsArray().ToList() : [pre];
        var metaspace = steps.FirstOrDefault(s => s?["type"]?.GetValue<string>() == "Metaspace");
        if (metaspace is null) return false;
        var scheme = metaspace["prepend_scheme"]?.GetValue<string>();
        return scheme is "always" or "first" || (scheme is null && metaspace["add_prefix_space"]?.GetValue<bool>() != false);
    }

    static void WriteMessage(CodedOutputStream writer, int field, Action<CodedOutputStream> body)
    {
        var inner = new MemoryStream();
        var w = new CodedOutputStream(inner);
        body(w);
        w.Flush();
        writer.WriteTag(field, WireFormat.WireType.LengthDelimited);
        writer.WriteBytes(ByteString.CopyFrom(inner.ToArray()));
    }

    static void WriteInt(CodedOutputStream w, int field, int value) { w.WriteTag(field, WireFormat.WireType.Varint); w.WriteInt32(value); }
    static void WriteString(CodedOutputStream w, int field, string value) { w.WriteTag(field, WireFormat.WireType.LengthDelimited); w.WriteString(value); }
}
