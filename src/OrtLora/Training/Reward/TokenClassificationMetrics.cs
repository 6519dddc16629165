using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training.Reward;

/// <summary>What an evaluation of a token classifier reports, as run_ner.py computes it with seqeval: over each row's
/// labelled tokens (a word's first token; every token with label_all_tokens), the entities of the predicted and the
/// true tags (IOB2/IOBES chunks, seqeval's default conlleval-style reading) give <c>precision</c>, <c>recall</c> and
/// <c>f1</c> (micro-averaged, 0 where nothing is predicted or true), and the tags themselves <c>accuracy</c>. Entities
/// need tag names (B-PER, I-PER, O): classes known only by their indices report the accuracy alone.</summary>
public sealed class TokenClassificationMetrics(ClassLabels classes) : IClassifierMetrics
{
    readonly List<(int[] Predicted, int[] Target)> _rows = [];

    /// <param name="predictions">each token's predicted class, [batch · sequence] (<see cref="Engine.TrainingGraph.TokenClassification"/>)</param>
    public void Add(IReadOnlyList<float> predictions, DataBatch batch)
    {
        for (int row = 0; row < batch.Sequences; row++)
        {
            var predicted = new List<int>();
            var target = new List<int>();
            for (int t = 0; t < batch.SeqLength; t++)
            {
                long label = batch.Labels[row * batch.SeqLength + t];
                if (label == ExampleEncoder.IgnoreIndex) continue;
                predicted.Add((int)predictions[row * batch.SeqLength + t]);
                target.Add((int)label);
            }
            if (target.Count > 0) _rows.Add(([.. predicted], [.. target]));
        }
    }

    public void Report(JsonObject record, string prefix = "")
    {
        if (_rows.Count == 0) return;
        long tokens = _rows.Sum(r => r.Target.Length), right = _rows.Sum(r => r.Target.Where((c, i) => r.Predicted[i] == c).Count());
        if (classes.Names is { } names)
        {
            var predicted = Entities(_rows.Select(r => r.Predicted.Select(c => names[c])));
            var truth = Entities(_rows.Select(r => r.Target.Select(c => names[c])));
            double found = predicted.Count, wanted = truth.Count, hits = predicted.Intersect(truth).Count();
            double precision = found == 0 ? 0 : hits / found, recall = wanted == 0 ? 0 : hits / wanted;
            record[prefix + "precision"] = precision;
            record[prefix + "recall"] = recall;
            record[prefix + "f1"] = precision + recall == 0 ? 0 : 2 * precision * recall / (precision + recall);
        }
        record[prefix + "accuracy"] = (double)right / tokens;
        _rows.Clear();
    }

    /// <summary>seqeval's get_entities over the rows, each followed by an O: (type, first, last) of every chunk.</summary>
    public static HashSet<(string Type, int First, int Last)> Entities(IEnumerable<IEnumerable<string>> rows)
    {
        var tags = rows.SelectMany(r => r.Append("O")).Append("O").ToList();
        var chunks = new HashSet<(string, int, int)>();
        char previousTag = 'O';
        string previousType = "";
        int begin = 0;
        for (int i = 0; i < tags.Count; i++)
        {
            var chunk = tags[i];
            char tag = chunk.Length > 0 ? chunk[0] : 'O';
            // chunk[1:].split('-', maxsplit=1)[-1] or '_'
            var rest = chunk.Length > 1 ? chunk[1..] : "";
            var type = rest.IndexOf('-') is var dash and >= 0 ? rest[(dash + 1)..] : rest;
            if (type.Length == 0) type = "_";
            if (EndOfChunk(previousTag, tag, previousType, type)) chunks.Add((previousType, begin, i - 1));
            if (StartOfChunk(previousTag, tag, previousType, type)) begin = i;
            previousTag = tag;
            previousType = type;
        }
        return chunks;
    }

    static bool EndOfChunk(char previous, char tag, string previousType, string type) =>
        previous is 'E' or 'S'
        || previous is 'B' or 'I' && tag is 'B' or 'S' or 'O'
        || previous != 'O' && previous != '.' && previousType != type;

    static bool StartOfChunk(char previous, char tag, string previousType, string type) =>
        tag is 'B' or 'S'
        || previous is 'E' or 'S' or 'O' && tag is 'E' or 'I'
        || tag != 'O' && tag != '.' && previousType != type;
}
