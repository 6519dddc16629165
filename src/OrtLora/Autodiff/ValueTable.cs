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
        public bool IsFloat => Tensors.IsFloat(ElemType);
    }

    readonly Dictionary<string, Info> _values = new();

    public Info? Find(string name) => _values.GetValueOrDefault(name);

    public Info this[string name] => _values.TryGetValue(name, out var i) ? i
        : throw new OrtLoraException($"autodiff: no type information for value '{name}' (not produced in the probe run)");

    public int Rank(string name) => this[name].Rank;
    public int ElemType(string name) => this[name].ElemType;
    public bool IsFloat(string name) => Find(name)?.IsFloat ?? false;

    /// <summary>True for a value whose shape differed between the two probe runs: its size grows with the batch or the
    /// sequence (an activation, a gradient of one), unlike parameters, weights and constants.</summary>
    public bool VariesWithBatch(string name) => Find(name) is { } t && !t.ShapeA.SequenceEqual(t.ShapeB);

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
        // ONNX Runtime's CPU provider has almost no bfloat16 kernels: a bfloat16 graph is probed as its float16 twin
        // (same shapes, float16 kernels or casts to float32), and float16 read back as bfloat16.
        const int bf16 = (int)TensorProto.Types.DataType.Bfloat16, fp16 = (int)TensorProto.Types.DataType.Float16;
        var declared = ElementTypes.Mentioned(model);
        bool twin = declared.Contains(bf16) && !declared.Contains(fp16);
        var probe = twin ? ElementTypes.Retype(model, bf16, fp16) : model.Clone();
        var g = probe.Graph;
        var existing = new HashSet<string>(g.Output.Select(o => o.Name));
        foreach (var n in g.Node)
            foreach (var o in n.Output)
                if (o != "" && existing.Add(o)) g.Output.Add(new ValueInfoProto { Name = o });
        var outputs = g.Output.Select(o => o.Name).ToList();
        using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new InferenceSession(probe.ToByteArray(), options);
        var converted = new List<OrtValue>();
        var twinInputs = twin ? AsFloat16(fixedInputs, converted) : null;
        try
        {
            var a = RunAll(session, feedsA, twinInputs ?? fixedInputs, outputs);
            var b = RunAll(session, feedsB, twinInputs ?? fixedInputs, outputs);
            foreach (var (name, (type, shape)) in a) table.Set(name, new(twin && type == fp16 ? bf16 : type, shape, b[name].Shape));
        }
        finally { foreach (var v in converted) v.Dispose(); }
        return table;
    }

    /// <summary>The element type of every value of any graph, from a probe run on synthetic inputs: each symbolic
    /// dimension is 2 (the first) or 3 (the others), integers are 1 (positions count 0, 1, ...), floats 0.5. Values do
    /// not change types, so any feed that runs will do.</summary>
    /// <param name="fixedInputs">inputs that have values already (a training graph's frozen weights): fed as they are,
    /// not made again</param>
    public static Dictionary<string, int> ElemTypes(ModelProto model, IReadOnlyDictionary<string, OrtValue>? fixedInputs = null)
    {
        var given = new HashSet<string>(model.Graph.Initializer.Select(t => t.Name).Concat(fixedInputs?.Keys ?? []));
        var feeds = model.Graph.Input.Where(i => !given.Contains(i.Name)).ToDictionary(i => i.Name, SyntheticFeed);
        var table = Probe(model, feeds, feeds, fixedInputs);
        return table._values.ToDictionary(v => v.Key, v => v.Value.ElemType);
    }

    static HostTensor SyntheticFeed(ValueInfoProto input)
    {
        var type = input.Type?.TensorType ?? throw new OrtLoraException($"graph input '{input.Name}' is not a tensor");
        int symbolic = 0;
        var dims = type.Shape?.Dim.Select(d => d.DimValue > 0 ? d.DimValue : symbolic++ == 0 ? 2L : 3L).ToArray() ?? [];
        int n = (int)Tensors.ElementCount(dims);
        long Int(int i) => input.Name.Contains("position") ? i % Math.Max(1, dims.LastOrDefault(1)) : 1;
        Array data = (TensorProto.Types.DataType)type.ElemType switch
        {
            TensorProto.Types.DataType.Float => Enumerable.Repeat(0.5f, n).ToArray(),
            TensorProto.Types.DataType.Double => Enumerable.Repeat(0.5, n).ToArray(),
            TensorProto.Types.DataType.Float16 => Enumerable.Repeat((Float16)0.5f, n).ToArray(),
            // Probe runs a bfloat16 graph as its float16 twin, which takes float16 here.
            TensorProto.Types.DataType.Bfloat16 => Enumerable.Repeat((Float16)0.5f, n).ToArray(),
            TensorProto.Types.DataType.Int64 => Enumerable.Range(0, n).Select(Int).ToArray(),
            TensorProto.Types.DataType.Int32 => Enumerable.Range(0, n).Select(i => (int)Int(i)).ToArray(),
            TensorProto.Types.DataType.Bool => Enumerable.Repeat(true, n).ToArray(),
            var t => throw new OrtLoraException($"graph input '{input.Name}': no synthetic value for {t} inputs"),
        };
        return new HostTensor(data, dims);
    }

    /// <summary>bfloat16 inputs converted to float16 for the twin probe (values in range; only types and shapes are read).
    /// The converted values are added to <paramref name="converted"/> for the caller to dispose.</summary>
    public static Dictionary<string, OrtValue> AsFloat16(IReadOnlyDictionary<string, OrtValue> inputs, List<OrtValue> converted)
    {
        var result = new Dictionary<string, OrtValue>();
        foreach (var (name, v) in inputs)
        {
            var info = v.GetTensorTypeAndShape();
            if (info.ElementDataType != Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.BFloat16) { result[name] = v; continue; }
            var halves = v.GetTensorDataAsSpan<BFloat16>().ToArray().Select(b => (Float16)(float)b).ToArray();
            converted.Add(result[name] = OrtValue.CreateTensorValueFromMemory(halves, info.Shape));
        }
        return result;
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
