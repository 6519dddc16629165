using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>The dropouts the training graphs add, in training mode (evaluation runs without them): PEFT's lora_dropout
/// on each adapter's input, and a token classifier's classifier_dropout on its head's input.</summary>
public sealed partial class TrainingGraph
{
    /// <summary>PEFT's lora_dropout: Dropout(x) in training mode feeds x·Aᵀ (the base path keeps x).</summary>
    /// <returns>lora_A name → its dropout's output (the dropped-out input) and input</returns>
    static Dictionary<string, (string Output, string Input)> AddLoraDropout(GraphEditor g, IReadOnlyList<string> parameters, double ratio)
    {
        var dropped = new Dictionary<string, (string, string)>();
        var ratioName = g.Unique("lora_dropout/ratio");
        g.AddInitializer(Tensors.Scalar(ratioName, ratio, (int)DT.Float));
        var training = g.Unique("lora_dropout/training_mode");
        g.AddInitializer(Tensors.Scalar(training, 1, (int)DT.Bool));
        foreach (var a in parameters.Where(p => p.EndsWith(".lora_A.weight")))
        {
            var uses = g.Consumers(a).SelectMany(n => n.OpType == "Transpose" ? g.Consumers(n.Output[0]) : [n])
                .Where(n => n.OpType is "MatMul" or "Gemm" && !n.Name.Contains("/dora/")).ToList(); // DoRA's B·A is not x·Aᵀ
            foreach (var use in uses)
            {
                var output = g.Add("Dropout", [use.Input[0], ratioName, training], name: a + "/lora_dropout",
                    outputs: [g.Unique(a + "/lora_dropout_output"), g.Unique(a + "/lora_dropout_mask")]);
                dropped[a] = (output, use.Input[0]);
                use.Input[0] = output;
            }
        }
        return dropped;
    }

    /// <summary>GenericForTokenClassification's dropout(hidden) before its score head (classifier_dropout, 0.1 unless the
    /// config says otherwise): a Dropout in training mode on the input of each layer that reads a trained head's weight
    /// (the modules_to_save copy of <c>score</c> or <c>classifier</c>).</summary>
    static void AddClassifierDropout(GraphEditor g, IReadOnlyList<string> parameters, double ratio, string source)
    {
        var heads = parameters.Where(p => Lora.ModulesToSave.IsWeight(p)
            && (p == Lora.ModulesToSave.WeightName(Reward.SequenceClassifier.ScoreModule) || p == Lora.ModulesToSave.WeightName("classifier"))).ToHashSet();
        var readers = g.Graph.Node.Where(n => n.OpType is "MatMul" or "Gemm" && heads.Contains(Source(g, n.Input[1]))).ToList();
        if (readers.Count == 0)
            throw new OrtLoraException($"{source}: classifier_dropout goes before the trained classification head (modules_to_save 'score'); the model has none");
        var ratioName = GraphConstants.Scalar(g, "classifier_dropout/ratio", ratio, (int)DT.Float);
        var training = g.AddInitializer(Tensors.Scalar(g.Unique("classifier_dropout/training_mode"), 1, (int)DT.Bool));
        foreach (var head in readers)
            head.Input[0] = g.Add("Dropout", [head.Input[0], ratioName, training], name: "classifier_dropout",
                outputs: [g.Unique("classifier_dropout/output"), g.Unique("classifier_dropout/mask")]);
        g.TopologicalSort();
    }

    /// <summary>The value a weight input comes from, through the Transpose, Cast and Identity nodes between.</summary>
    static string Source(GraphEditor g, string value)
    {
        while (g.Producer(value) is { OpType: "Transpose" or "Cast" or "Identity" } hop) value = hop.Input[0];
        return value;
    }
}
