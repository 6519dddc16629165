using OrtLora.Training.Data;

namespace OrtLora.Inference;

/// <summary>What generation needs from a tokenizer: text to ids (with BOS where the model family adds it),
/// ids to text, and the special ids.</summary>
public interface ITextTokenizer
{
    IReadOnlyList<int> Encode(string text);
    string Decode(IEnumerable<int> ids);
    int? EosId { get; }
    int? BosId { get; }
}

/// <summary>The project's shared tokenizer loader (<see cref="TokenizerLoader"/>: tokenizer.json, SentencePiece
/// .model, GPT-2 vocab + merges, with tokenizer_config.json's special tokens) behind <see cref="ITextTokenizer"/>.
/// Prompts get BOS when the tokenizer says the model expects it; decoding drops special tokens.</summary>
public sealed class LoadedTokenizer(TextTokenizer tokenizer) : ITextTokenizer
{
    public TextTokenizer Inner => tokenizer;
    public int? EosId => tokenizer.EosId;
    public int? BosId => tokenizer.BosId;
    public IReadOnlyList<int> Encode(string text) => tokenizer.Encode(text, addBos: tokenizer.AddsBos);
    public string Decode(IEnumerable<int> ids) => tokenizer.Decode(ids, skipSpecialTokens: true);

    /// <summary>A tokenizer file, or a directory holding one (typically the model's directory).</summary>
    public static LoadedTokenizer Load(string path) => new(TokenizerLoader.Load(path));
}
