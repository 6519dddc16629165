namespace OrtLora.Inference;

/// <summary>Turns a growing list of token ids into text pieces as they become printable. One token may hold half a
/// UTF-8 character (byte-level BPE, SentencePiece byte fallback), which decodes to U+FFFD until the rest arrives, so
/// a piece is released only when the decoded text no longer ends in U+FFFD (or cannot be completed any more).
/// Decoding a short window with one token of left context (rather than the whole sequence) keeps the cost per token constant and keeps SentencePiece's leading
/// spaces, which a token decoded alone would lose.</summary>
public sealed class TextStreamer(ITextTokenizer tokenizer)
{
    readonly List<int> _ids = [];
    int _prefixStart, _readStart;

    /// <summary>Adds one token; returns the text it completes (possibly empty).</summary>
    public string Push(int id)
    {
        _ids.Add(id);
        var before = Decode(_prefixStart, _readStart);
        var now = Decode(_prefixStart, _ids.Count);
        // A UTF-8 character spans at most 4 bytes, so after 4 held tokens the U+FFFD is final (invalid bytes from an
        // untrained model): print it rather than stall the stream.
        bool stillIncomplete = now.EndsWith('\uFFFD') && _ids.Count - _readStart < 4;
        if (now.Length <= before.Length || stillIncomplete) return "";
        _prefixStart = _readStart;
        _readStart = _ids.Count;
        return now[before.Length..];
    }

    /// <summary>Whatever is still held back (an incomplete character at the very end prints as U+FFFD).</summary>
    public string Flush()
    {
        var before = Decode(_prefixStart, _readStart);
        var now = Decode(_prefixStart, _ids.Count);
        _prefixStart = _readStart = _ids.Count;
        return now.StartsWith(before, StringComparison.Ordinal) ? now[before.Length..] : now;
    }

    string Decode(int start, int end) => end <= start ? "" : tokenizer.Decode(_ids.GetRange(start, end - start));
}
