using OrtLora.Onnx;

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

    /// <summary>Checks the tokenizer against the model's token embedding (see <see cref="EmbeddingRows"/>); a model
    /// whose embedding cannot be found is not checked.</summary>
    public static void Require(TextTokenizer tokenizer, OnnxModel model)
    {
        if (EmbeddingRows(model) is long rows) Require(tokenizer, rows, model.Source);
    }

    /// <summary>Rows of the token embedding: the initializer a Gather indexes with input_ids (through Casts),
    /// else the last dimension of a fixed-size causal-LM logits output; null when neither is there.</summary>
    public static long? EmbeddingRows(OnnxModel model)
    {
        var graph = model.Graph;
        var initializers = graph.Initializer.ToDictionary(t => t.Name);
        var ids = new HashSet<string> { "input_ids" };
        foreach (var node in graph.Node.Where(n => n.OpType == "Cast" && ids.Contains(n.Input[0]))) ids.Add(node.Output[0]);
        foreach (var node in graph.Node.Where(n => n.OpType == "Gather" && n.Input.Count > 1 && ids.Contains(n.Input[1])))
            if (initializers.TryGetValue(node.Input[0], out var table) && table.Dims.Count == 2) return table.Dims[0];
        var logits = graph.Output.FirstOrDefault(o => o.Name == "logits")?.Type?.TensorType?.Shape?.Dim;
        // a causal LM's [batch, sequence, vocabulary]; a classifier's [batch, labels] says nothing of the vocabulary
        return logits is { Count: 3 } && logits[^1].HasDimValue ? logits[^1].DimValue : null;
    }
}
