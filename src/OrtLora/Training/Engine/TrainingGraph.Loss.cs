using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>Where the loss enters the training graphs: whole, or in chunks through the lm_head.</summary>
public sealed partial class TrainingGraph
{
    /// <summary>The eval graph's outputs: the loss, in chunks too (each after the previous chunk's loss: two [B, S/C, V]
    /// values alive instead of the whole logits and log-probabilities), and the number of counted tokens predicted right
    /// (<see cref="CorrectTokens"/>). The head's values have the same names in both graphs.</summary>
    static void EvalOutputs(ModelProto eval, CausalLmLoss loss, int logitsType, ValueTable types, int opset, int chunks, PreferenceLoss? preference,
        string? tokenWeights)
    {
        var g = new GraphEditor(eval.Graph);
        string correct;
        var chunked = preference is not null
            ? ChunkedLoss.AppendPreference(g, loss.Logits, Labels, logitsType, types, opset, chunks, preference.Options, withGradient: false)
            : ChunkedLoss.Append(g, loss.Logits, Labels, logitsType, types, opset, chunks, withGradient: false, smoothing: loss.Smoothing, tokenWeights: tokenWeights);
        if (chunked is not null)
        {
            ReadLoss(eval, g, chunked.Loss);
            if (chunked.SequenceLogProbs is { } rows) ReadLoss(eval, g, rows, SequenceLogProbs);
            correct = chunked.Correct;
        }
        else correct = loss.AppendCorrect(g);
        g.Add("Identity", [correct], name: "accuracy/output", outputs: [CorrectTokens]);
        eval.Graph.Output.Add(new ValueInfoProto { Name = CorrectTokens });
        g.Cleanup();
    }

    /// <summary>A loss with a closed-form gradient at the logits (a reward model's, a classifier's, a distillation's):
    /// the backward's seed, <paramref name="gradient"/> appended to <paramref name="g"/>, times the loss scale with
    /// float16 compute (the Cast back to the logits' type is the upcast's gradient).</summary>
    static Dictionary<string, string> LogitsSeed(ModelProto proto, GraphEditor g, string logits, Func<GraphEditor, string> gradient, bool scalesLoss)
    {
        if (scalesLoss) proto.Graph.Input.Add(Input(LossScale, (int)DT.Float, []));
        var seed = gradient(g);
        if (scalesLoss) seed = g.Add("Mul", [seed, LossScale], name: "loss/scale");
        return new() { [logits] = seed };
    }

    /// <summary>The eval graph's count of what was predicted right (<see cref="CorrectTokens"/>), appended by
    /// <paramref name="correct"/>: pairs ranked right, rows classified right.</summary>
    static void CorrectOutput(ModelProto eval, Func<GraphEditor, string> correct)
    {
        var g = new GraphEditor(eval.Graph);
        g.Add("Identity", [correct(g)], name: "accuracy/output", outputs: [CorrectTokens]);
        eval.Graph.Output.Add(new ValueInfoProto { Name = CorrectTokens });
        g.Cleanup();
    }

    /// <summary>The vocabulary dimension of the teacher's logits input: the student's logits' declared size, else its
    /// token embedding's rows.</summary>
    static long VocabularyOf(ModelProto proto, string logits, OnnxModel model)
    {
        var output = proto.Graph.Output.FirstOrDefault(o => o.Name == logits) ?? proto.Graph.Output.FirstOrDefault(o => o.Name == "logits");
        if (output?.Type?.TensorType?.Shape?.Dim is { Count: 3 } dims && dims[2].DimValue > 0) return dims[2].DimValue;
        return Training.Data.VocabularyCheck.EmbeddingRows(model)
            ?? throw new OrtLoraException($"{model.Source}: distillation needs the vocabulary size: the logits output declares none and no token embedding was found");
    }

    static OrtLoraException NotAClassifier(string source, IReadOnlyList<long> shape, bool classes = false) => classes
        ? new($"{source}: sequence classification reads a classifier's logits [batch, num_labels ≥ 2]; this model's logits are [{string.Join(", ", shape)}]" +
            (shape.Count == 3 ? " (a causal LM: `ortlora classify` turns one into a classifier itself when it is given the plain export)"
                : " (one label: a reward model, `ortlora reward`)"))
        : new($"{source}: reward modelling scores each sequence with a classifier's logits [batch, 1]; this model's logits are [{string.Join(", ", shape)}]" +
            (shape.Count == 3 ? " (a causal LM: `ortlora reward` turns one into a classifier itself when it is given the plain export)"
                : " (a classifier of several labels: a reward model has one, num_labels = 1)"));

    /// <summary>The loss output (or <paramref name="output"/>) reads <paramref name="value"/>; its node moves after the
    /// nodes appended since.</summary>
    static void ReadLoss(ModelProto proto, GraphEditor g, string value, string outputName = Loss)
    {
        var output = proto.Graph.Node.Single(n => n.Output.Contains(outputName));
        g.RemoveNode(output);
        output.Input[0] = value;
        g.AddNode(output);
    }

    /// <summary>Where the backward starts: d loss / d logits in closed form (an upcast's Cast takes it back to the
    /// model's dtype), or with a chunked loss d loss / d h at the lm_head's input, the loss output then reading the
    /// chunks' sum. Float16 loss scaling (torch.amp's GradScaler) multiplies the gradient by a loss_scale input so that
    /// small gradients survive float16's range; each float32 parameter gradient is divided back. Also the count of
    /// tokens predicted right (TRL's training mean_token_accuracy), from the same logits. With DPO the seed is
    /// <see cref="PreferenceLoss"/>'s.</summary>
    static (Dictionary<string, string> Seeds, string Correct) LossGradient(ModelProto proto, GraphEditor g, CausalLmLoss loss, int logitsType,
        ValueTable types, int opset, bool scalesLoss, int chunks, PreferenceLoss? preference, string? tokenWeights)
    {
        if (scalesLoss) proto.Graph.Input.Add(Input(LossScale, (int)DT.Float, []));
        var chunked = preference is not null
            ? ChunkedLoss.AppendPreference(g, loss.Logits, Labels, logitsType, types, opset, chunks, preference.Options, lossScale: scalesLoss ? LossScale : null)
            : ChunkedLoss.Append(g, loss.Logits, Labels, logitsType, types, opset, chunks, lossScale: scalesLoss ? LossScale : null, smoothing: loss.Smoothing,
                tokenWeights: tokenWeights);
        if (chunked is not null)
        {
            ReadLoss(proto, g, chunked.Loss);
            if (chunked.SequenceLogProbs is { } rows) ReadLoss(proto, g, rows, SequenceLogProbs);
            return (new() { [chunked.Hidden] = chunked.HiddenGradient }, chunked.Correct);
        }
        var correct = loss.AppendCorrect(g);
        var logitsGradient = preference?.AppendLogitsGradient(g) ?? loss.AppendLogitsGradient(g);
        if (scalesLoss) logitsGradient = g.Add("Mul", [logitsGradient, LossScale], name: "loss/scale");
        return (new() { [loss.Logits] = logitsGradient }, correct);
    }

    /// <summary>Whether the head (the first MatMul/Gemm on the way back from the logits) reads a weight computed from a
    /// parameter: a modules_to_save copy, or a table with trainable token rows.</summary>
    static bool HeadIsTrained(GraphEditor g, string logits, IReadOnlyList<string> parameters)
    {
        var node = g.Producer(logits);
        while (node is not null && node.OpType is not ("MatMul" or "Gemm")) node = node.Input.Count > 0 ? g.Producer(node.Input[0]) : null;
        if (node is null) return false;
        var trained = parameters.ToHashSet();
        var seen = new HashSet<string>();
        var pending = new Stack<string>([node.Input[1]]);
        while (pending.TryPop(out var value))
        {
            if (trained.Contains(value)) return true;
            if (!seen.Add(value) || g.Producer(value) is not { } producer) continue;
            foreach (var input in producer.Input.Where(i => i != "")) pending.Push(input);
        }
        return false;
    }
}
