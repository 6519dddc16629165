using System.Text;
using Google.Protobuf;

namespace OrtLora.Training.Data;

/// <summary>SentencePiece BPE encoding exactly as Google's sentencepiece does it (bpe_model.cc, normalizer.cc,
/// sentencepiece_processor.cc), for a ModelProto with identity normalization (Llama 2, Mistral).
/// Microsoft.ML.Tokenizers 2.0.1 breaks ties between equal-score merges from the right where sentencepiece takes the
/// leftmost pair, which splits runs of one character ("aaaa…", spaces) differently from the ids a model was trained
/// on, and it offers no way to change that; so the SentencePiece paths encode here and keep the package for decoding
/// and the vocabulary.</summary>
sealed class SentencePieceBpe
{
    // sentencepiece_model.proto field numbers and piece types.
    const int ModelPieces = 1, ModelTrainerSpec = 2, ModelNormalizerSpec = 3;
    const int PieceText = 1, PieceScore = 2, PieceType = 3;
    const int TrainerModelType = 3, TrainerTreatWhitespaceAsSuffix = 24, TrainerByteFallback = 35, TrainerUnkId = 40;
    const int NormalizerCharsMap = 2, NormalizerAddDummyPrefix = 3, NormalizerRemoveExtraWhitespaces = 4, NormalizerEscapeWhitespaces = 5;
    const int TypeNormal = 1, TypeUnknown = 2, TypeUserDefined = 4, TypeUnused = 5, TypeByte = 6;
    const int ModelTypeBpe = 2;
    const char SpaceSymbol = '▁';

    readonly Dictionary<string, int> _ids = new();
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    readonly List<float> _scores = [];
    readonly List<int> _types = [];
    readonly string[] _userDefinedLongestFirst;
    readonly int[]? _byteIds;
    int _unkId;
    bool _byteFallback, _addDummyPrefix = true, _removeExtraWhitespaces = true, _escapeWhitespaces = true;

    SentencePieceBpe(byte[] modelProto, out bool supported)
    {
        _lookup = _ids.GetAlternateLookup<ReadOnlySpan<char>>();
        int modelType = 1;
        bool suffix = false, charsMap = false;
        ForEachField(modelProto, (field, input) =>
        {
            if (field == ModelPieces) ReadPiece(input.ReadBytes().ToByteArray());
            else if (field == ModelTrainerSpec) ForEachField(input.ReadBytes().ToByteArray(), (f, spec) =>
            {
                if (f == TrainerModelType) modelType = spec.ReadInt32();
                else if (f == TrainerTreatWhitespaceAsSuffix) suffix = spec.ReadBool();
                else if (f == TrainerByteFallback) _byteFallback = spec.ReadBool();
                else if (f == TrainerUnkId) _unkId = spec.ReadInt32();
                else spec.SkipLastField();
            });
            else if (field == ModelNormalizerSpec) ForEachField(input.ReadBytes().ToByteArray(), (f, spec) =>
            {
                if (f == NormalizerCharsMap) charsMap = spec.ReadBytes().Length > 0;
                else if (f == NormalizerAddDummyPrefix) _addDummyPrefix = spec.ReadBool();
                else if (f == NormalizerRemoveExtraWhitespaces) _removeExtraWhitespaces = spec.ReadBool();
                else if (f == NormalizerEscapeWhitespaces) _escapeWhitespaces = spec.ReadBool();
                else spec.SkipLastField();
            });
            else input.SkipLastField();
        });
        supported = modelType == ModelTypeBpe && !suffix && !charsMap;
        _userDefinedLongestFirst = [.. _ids.Where(kv => _types[kv.Value] == TypeUserDefined).Select(kv => kv.Key).OrderByDescending(p => p.Length)];
        if (_byteFallback)
            _byteIds = [.. Enumerable.Range(0, 256).Select(b => _ids.TryGetValue($"<0x{b:X2}>", out var id) && _types[id] == TypeByte ? id : _unkId)];
    }

    /// <summary>The encoder for a serialized ModelProto, or null where this class does not reproduce sentencepiece
    /// (a Unigram model, a normalization charsmap such as nmt_nfkc, whitespace as suffix): those stay with the package.</summary>
    public static SentencePieceBpe? TryCreate(byte[] modelProto)
    {
        var bpe = new SentencePieceBpe(modelProto, out var supported);
        return supported ? bpe : null;
    }

    static void ForEachField(byte[] message, Action<int, CodedInputStream> read)
    {
        var input = new CodedInputStream(message);
        uint tag;
        while ((tag = input.ReadTag()) != 0) read(WireFormat.GetTagFieldNumber(tag), input);
    }

    void ReadPiece(byte[] message)
    {
        string text = "";
        float score = 0;
        int type = TypeNormal;
        ForEachField(message, (f, input) =>
        {
            if (f == PieceText) text = input.ReadString();
            else if (f == PieceScore) score = input.ReadFloat();
            else if (f == PieceType) type = input.ReadInt32();
            else input.SkipLastField();
        });
        _ids.TryAdd(text, _scores.Count);
        _scores.Add(score);
        _types.Add(type);
    }

    /// <summary>A piece two symbols may merge into: sentencepiece's BPE merges into normal, user-defined and unused
    /// pieces only.</summary>
    bool TryMergeable(ReadOnlySpan<char> piece, out int id) =>
        _lookup.TryGetValue(piece, out id) && _types[id] is TypeNormal or TypeUserDefined or TypeUnused;

    /// <summary>sentencepiece's identity normalization: optional removal of leading, trailing and repeated spaces,
    /// the dummy "▁" prefix, spaces written as "▁".</summary>
    string Normalize(string text)
    {
        if (_removeExtraWhitespaces) text = string.Join(' ', text.Split(' ', StringSplitOptions.RemoveEmptyEntries));
        if (text.Length == 0) return "";
        var normalized = new StringBuilder(text.Length + 1);
        if (_addDummyPrefix) normalized.Append(_escapeWhitespaces ? SpaceSymbol : ' ');
        normalized.Append(_escapeWhitespaces ? text.Replace(' ', SpaceSymbol) : text);
        return normalized.ToString();
    }

    /// <summary>The ids sentencepiece gives <paramref name="text"/> (no BOS/EOS).</summary>
    public List<int> Encode(string text)
    {
        var normalized = Normalize(text);
        var symbols = Split(normalized);
        var unusedSplits = Merge(normalized, symbols);
        var output = new List<int>();
        bool previousUnknown = false;
        for (int i = 0; symbols.Length > 0 && i >= 0; i = symbols[i].Next)
            Emit(normalized.AsSpan(symbols[i].Start, symbols[i].Length), output, unusedSplits, ref previousUnknown);
        return output;
    }

    /// <summary>Merges adjacent symbols in place, best-scoring pair first, and returns how each unused piece formed
    /// was split (sentencepiece splits those back when it emits them).</summary>
    Dictionary<string, (string, string)> Merge(string normalized, Symbol[] symbols)
    {
        // The agenda pops the highest score first and, among equal scores, the leftmost pair (as sentencepiece's
        // SymbolPairComparator does).
        var agenda = new PriorityQueue<(int Left, int Right, int Length), (float Score, int Left)>(
            Comparer<(float Score, int Left)>.Create((a, b) => a.Score != b.Score ? b.Score.CompareTo(a.Score) : a.Left.CompareTo(b.Left)));
        var unusedSplits = new Dictionary<string, (string, string)>();
        void MaybeAddPair(int left, int right)
        {
            if (left < 0 || right < 0 || symbols[left].Frozen || symbols[right].Frozen) return;
            var length = symbols[left].Length + symbols[right].Length;
            var piece = normalized.AsSpan(symbols[left].Start, length);
            if (!TryMergeable(piece, out var id)) return;
            agenda.Enqueue((left, right, length), (_scores[id], left));
            if (_types[id] == TypeUnused) unusedSplits[piece.ToString()] = (symbols[left].Text(normalized), symbols[right].Text(normalized));
        }
        for (int i = 1; i < symbols.Length; i++) MaybeAddPair(i - 1, i);
        while (agenda.TryDequeue(out var pair, out _))
        {
            ref var left = ref symbols[pair.Left];
            ref var right = ref symbols[pair.Right];
            // A pair is stale once either side was merged away or grew.
            if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != pair.Length) continue;
            left.Length += right.Length;
            left.Next = right.Next;
            if (right.Next >= 0) symbols[right.Next].Prev = pair.Left;
            right.Length = 0;
            MaybeAddPair(left.Prev, pair.Left);
            MaybeAddPair(pair.Left, left.Next);
        }
        return unusedSplits;
    }

    /// <summary>One symbol's ids: an unused piece is split back into the pieces it was merged from; an unknown one
    /// becomes its UTF-8 bytes with byte fallback, else one unknown id for a whole run of unknown symbols.</summary>
    void Emit(ReadOnlySpan<char> piece, List<int> output, Dictionary<string, (string Left, string Right)> unusedSplits, ref bool previousUnknown)
    {
        bool known = _lookup.TryGetValue(piece, out var id) && _types[id] != TypeUnknown;
        if (known && _types[id] == TypeUnused && unusedSplits.TryGetValue(piece.ToString(), out var split))
        {
            Emit(split.Left, output, unusedSplits, ref previousUnknown);
            Emit(split.Right, output, unusedSplits, ref previousUnknown);
            return;
        }
        if (known) output.Add(id);
        else if (_byteIds is not null) output.AddRange(Encoding.UTF8.GetBytes(piece.ToArray()).Select(b => _byteIds[b]));
        else if (!previousUnknown) output.Add(_unkId);
        previousUnknown = !known;
    }

    record struct Symbol(int Start, int Length, int Prev, int Next, bool Frozen)
    {
        public readonly string Text(string normalized) => normalized.Substring(Start, Length);
    }

    /// <summary>The normalized text as one symbol per Unicode character, a user-defined piece being one symbol that
    /// never merges.</summary>
    Symbol[] Split(string normalized)
    {
        var symbols = new List<Symbol>();
        for (int at = 0; at < normalized.Length;)
        {
            var userDefined = _userDefinedLongestFirst.Length == 0 ? null : _userDefinedLongestFirst.FirstOrDefault(p => normalized.AsSpan(at).StartsWith(p, StringComparison.Ordinal));
            int length = userDefined?.Length ?? (char.IsHighSurrogate(normalized[at]) && at + 1 < normalized.Length && char.IsLowSurrogate(normalized[at + 1]) ? 2 : 1);
            symbols.Add(new Symbol(at, length, symbols.Count - 1, at + length < normalized.Length ? symbols.Count + 1 : -1, userDefined is not null));
            at += length;
        }
        return [.. symbols];
    }
}
