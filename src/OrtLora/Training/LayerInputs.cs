using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>The model as a function of a batch with adapted layers' inputs as its outputs, for the inits that read
/// them (EVA, CorDA): the generation cache fed empty and narrow inputs taken as int64, as the training graphs take
/// them, the weights shared from native memory.</summary>
internal sealed class LayerInputs : IDisposable
{
    readonly Microsoft.ML.OnnxRuntime.InferenceSession _session;
    readonly SharedInitializers _weights;
    readonly List<string> _inputs;

    /// <summary>x as an adapter's branch reads it: the input of the MatMul with Aᵀ (float32, after any Cast).</summary>
    public static string BranchInput(OnnxModel model, GraphEditor g, LoraAdapter adapter)
    {
        var transpose = g.Consumers(adapter.LoraA).FirstOrDefault(n => n.OpType == "Transpose");
        var matmul = transpose is null ? null : g.Consumers(transpose.Output[0]).FirstOrDefault(n => n.OpType == "MatMul");
        return matmul?.Input[0] ?? throw new OrtLoraException($"{model.Source}: the LoRA branch of '{adapter.Module}' has no MatMul with its A");
    }

    /// <summary>The graph input that says which rows a covariance takes (1) or leaves out (0), [batch].</summary>
    public const string RowsInput = "layer_inputs_rows";
    public static string CovarianceOf(string input) => input + "/covariance";

    /// <param name="outputs">the layer inputs to read whole</param>
    /// <param name="covariances">[features] of layer inputs whose Σ over the taken rows of XᵀX to read instead
    /// (<see cref="CovarianceOf"/>), each row's attended positions X divided by |max(X)| (CorDA's scaling)</param>
    public LayerInputs(OnnxModel model, IEnumerable<string> outputs, IReadOnlyDictionary<string, int>? covariances = null)
    {
        var proto = model.Proto.Clone();
        var g = new GraphEditor(proto.Graph);
        TrainingGraph.FeedEmptyCache(proto, g);
        TrainingGraph.TakeInt64BatchInputs(proto, g);
        proto.Graph.Output.Clear();
        foreach (var name in outputs) proto.Graph.Output.Add(new ValueInfoProto { Name = name });
        if (covariances is { Count: > 0 }) AddCovariances(proto, g, covariances, model.Opset());
        _weights = SharedInitializers.Extract(model, proto.Graph);
        var defaults = proto.Graph.Initializer.Select(t => t.Name).ToHashSet(); // inputs with a default (runtime adapters' A and B)
        _inputs = proto.Graph.Input.Select(i => i.Name).Where(n => !_weights.Values.ContainsKey(n) && !defaults.Contains(n)).ToList();
        using var options = OrtRun.DefaultOptions();
        try
        {
            using var graph = new OnnxModel(proto, source: model.Source);
            _session = new Microsoft.ML.OnnxRuntime.InferenceSession(graph.ToBytes(), options);
        }
        catch { _weights.Dispose(); throw; }
    }

    /// <summary>The asked-for outputs on one batch, a layer input [batch·sequence·features] flat.</summary>
    /// <param name="rows">with covariances: 1 for each row they take, 0 for one they leave out</param>
    public Dictionary<string, HostTensor> Run(DataBatch batch, IEnumerable<string> outputs, float[]? rows = null)
    {
        var feeds = new Engine.Batch(batch.InputIds, batch.AttentionMask, batch.Labels, batch.BatchSize, batch.SeqLength)
            .Feeds(_inputs.Where(i => i != RowsInput).ToList());
        if (_inputs.Contains(RowsInput)) feeds[RowsInput] = HostTensor.Of(rows ?? throw new ArgumentException("which rows the covariances take"), batch.BatchSize);
        return OrtRun.Run(_session, feeds, outputs, _weights.Values);
    }

    /// <summary>For each x [.., features]: X = x as [batch, sequence, features] times the mask of attended positions of
    /// taken rows, divided per row by |max| over those positions; output Xᵀ·X summed over the rows, [features, features]
    /// (ONNX Runtime's GEMM, in float32 as PEFT accumulates it).</summary>
    static void AddCovariances(ModelProto proto, GraphEditor g, IReadOnlyDictionary<string, int> covariances, int opset)
    {
        if (!proto.Graph.Input.Any(i => i.Name == "attention_mask"))
            proto.Graph.Input.Add(new ValueInfoProto { Name = "attention_mask", Type = Int64Matrix() });
        proto.Graph.Input.Add(new ValueInfoProto { Name = RowsInput, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor
            { ElemType = (int)TensorProto.Types.DataType.Float, Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimParam = "batch" } } } } } });
        string Op(string op, IEnumerable<string> inputs, params (string, object)[] attributes) => g.Add(op, inputs, name: "covariance/" + op, attributes: attributes);
        string Ints(params long[] v) => Autodiff.GraphConstants.Int64s(g, "covariance/ints", v);
        string Scalar(float v) => Autodiff.GraphConstants.Scalar(g, "covariance/const", v, (int)TensorProto.Types.DataType.Float);
        var mask = Op("Mul", [Op("Cast", ["attention_mask"], ("to", (long)TensorProto.Types.DataType.Float)), Op("Unsqueeze", [RowsInput, Ints(1)])]);
        var counted = Op("Unsqueeze", [mask, Ints(2)]); // [B, S, 1]
        var attended = Op("Cast", [counted], ("to", (long)TensorProto.Types.DataType.Bool));
        foreach (var (input, features) in covariances)
        {
            var x = Op("Reshape", [input, Op("Concat", [Op("Shape", ["attention_mask"]), Ints(features)], ("axis", 0L))]);
            var kept = Op("Where", [attended, x, Scalar(float.MinValue)]);
            // ReduceMax takes its axes as an input from opset 18, as an attribute before
            var max = opset >= 18 ? Op("ReduceMax", [kept, Ints(1, 2)], ("keepdims", 1L)) : Op("ReduceMax", [kept], ("axes", new long[] { 1, 2 }), ("keepdims", 1L));
            var divisor = Op("Max", [Op("Abs", [max]), Scalar(1e-30f)]);
            var scaled = Op("Reshape", [Op("Div", [Op("Mul", [x, counted]), divisor]), Ints(-1, features)]);
            var covariance = Op("MatMul", [Op("Transpose", [scaled], ("perm", new long[] { 1, 0 })), scaled]);
            proto.Graph.Output.Add(new ValueInfoProto { Name = g.Add("Identity", [covariance], name: "covariance/Identity", outputs: [CovarianceOf(input)]) });
        }
    }

    static TypeProto Int64Matrix() => new()
    {
        TensorType = new TypeProto.Types.Tensor
        {
            ElemType = (int)TensorProto.Types.DataType.Int64,
            Shape = new TensorShapeProto { Dim = { new TensorShapeProto.Types.Dimension { DimParam = "batch" }, new TensorShapeProto.Types.Dimension { DimParam = "sequence" } } },
        },
    };

    public void Dispose()
    {
        _session.Dispose();
        _weights.Dispose();
    }
}
