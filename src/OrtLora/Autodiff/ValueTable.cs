using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Element type and shape of every value of a graph, learned by running it: the "probe run". The graph is
/// run twice on tiny inputs of two different sizes with every intermediate value made a graph output; a dim that is
/// the same in both runs is taken as static. This works on any architecture the runtime can run, with or without
/// value_info, and tells the gradient rules each value's rank and dtype.</summary>
public sealed class ValueTable
{
    public sealed record Info(int ElemType, long[] ShapeA, long[] ShapeB)
    {
        public int Rank => ShapeA.Length;
        public bool IsFloat => ElemType is (int)TensorProto.Types.DataType.Float or (int)TensorProto.Types.DataType.Double
            or (int)TensorProto.Types.DataType.Float16 or (int)TensorProto.Types.DataType.Bfloat16;
    }

    readonly Dictionary<string, Info> _values = new();

    public Info? Find(string name) => _values.GetValueOrDefault(name);

    public Info this[string name] => _values.TryGetValue(name, out var i) ? i
        : throw new OrtLoraException($"autodiff: no type information for value '{name}' (not produced in the probe run)");

    public int Rank(string name) => this[name].Rank;
    public int ElemType(string name) => this[name].ElemType;
    public bool IsFloat(string name) => Find(name)?.IsFloat ?? false;

    /// <summary>True when both probe runs saw the two values with identical shapes (so no broadcast between them).</summary>
    public bool SameShape(string a, string b)
    {
        var x = this[a]; var y = this[b];
        return x.ShapeA.SequenceEqual(y.ShapeA) && x.ShapeB.SequenceEqual(y.ShapeB);
    }

    public void Set(string name, Info info) => _values[name] = info;

    /// <summary>Runs <paramref name="model"/> on two feed sets (ideally of different batch and sequence sizes) and
    /// records every value. Initializers and Constant outputs are recorded from their tensors.</summary>
    /// <param name="fixedInputs">inputs with the same value in both runs, e.g. shared frozen weights (not disposed)</param>
    public static ValueTable Probe(ModelProto model, IReadOnlyDictionary<string, HostTensor> feedsA,
        IReadOnlyDictionary<string, HostTensor> feedsB, IReadOnlyDictionary<string, OrtValue>? fixedInputs = null)
    {
        fixedInputs ??= new Dictionary<string, OrtValue>();
        var table = new ValueTable();
        foreach (var t in model.Graph.Initializer) table.Set(t.Name, new(t.DataType, t.Dims.ToArray(), t.Dims.ToArray()));
        var probe = model.Clone();
        var g = probe.Graph;
        var existing = new HashSet<string>(g.Output.Select(o => o.Name));
        foreach (var n in g.Node)
            foreach (var o in n.Output)
                if (o != "" && existing.Add(o)) g.Output.Add(new ValueInfoProto { Name = o });
        var outputs = g.Output.Select(o => o.Name).ToList();
        using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new InferenceSession(probe.ToByteArray(), options);
        var a = RunAll(session, feedsA, fixedInputs, outputs);
        var b = RunAll(session, feedsB, fixedInputs, outputs);
        foreach (var (name, (type, shape)) in a) table.Set(name, new(type, shape, b[name].Shape));
        return table;
    }

    static Dictionary<string, (int Type, long[] Shape)> RunAll(InferenceSession session,
        IReadOnlyDictionary<string, HostTensor> feeds, IReadOnlyDictionary<string, OrtValue> fixedInputs, List<string> outputs)
    {
        var result = new Dictionary<string, (int, long[])>();
        var inputs = new Dictionary<string, OrtValue>();
        var owned = new List<OrtValue>();
        try
        {
            foreach (var (k, v) in feeds)
                if (session.InputNames.Contains(k)) owned.Add(inputs[k] = v.ToOrtValue());
            foreach (var (k, v) in fixedInputs)
                if (session.InputNames.Contains(k)) inputs[k] = v;
            foreach (var name in session.InputNames)
                if (!inputs.ContainsKey(name)) throw new OrtLoraException($"autodiff probe: no value for graph input '{name}'");
            foreach (var (k, v) in inputs)
            {
                var info = v.GetTensorTypeAndShape();
                result[k] = ((int)info.ElementDataType, info.Shape);
            }
            using var runOptions = new RunOptions();
            using var values = session.Run(runOptions, inputs, outputs);
            for (int i = 0; i < outputs.Count; i++)
            {
                if (!values[i].IsTensor) continue;
                var info = values[i].GetTensorTypeAndShape();
                result[outputs[i]] = ((int)info.ElementDataType, info.Shape);
            }
            return result;
        }
        finally { foreach (var v in owned) v.Dispose(); }
    }
}
