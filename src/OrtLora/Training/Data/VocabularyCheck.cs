namespace OrtLora.Training.Data;

public static class VocabularyCheck
{
    /// <summary>Fails when the tokenizer can produce ids the model has no embedding row for.</summary>
    public static void Require(TextTokenizer tokenizer, long embeddingRows, string modelPath)
    {
        if (tokenizer.VocabSize > embeddingRows)
            throw new OrtLoraException($"tokenizer {tokenizer.Source} has {tokenizer.VocabSize} tokens but model {modelPath} " +
                                       $"has only {embeddingRows} embedding rows: the tokenizer does not belong to this model");
    }
}
