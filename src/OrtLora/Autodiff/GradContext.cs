using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>What a gradient rule sees of one forward node, in ORT's gradient-builder vocabulary: <see cref="I"/> input i,
/// <see cref="O"/> output i, <see cref="GO"/> the gradient of output i (null when nothing downstream needs it),
/// <see cref="Needs"/> whether anyone wants the gradient of input i; plus a few words to emit standard ONNX nodes.</summary>
public sealed class GradContext
{
    readonly GraphEditor _graph;
    readonly string?[] _outputGrads;
    readonly bool[] _needed;
    readonly Dictionary<(double, int), string> _scalars;
    readonly Dictionary<string, string> _shapes;
    readonly IReadOnlyDictionary<string, TensorProto> _constants;

    internal GradContext(GraphEditor graph, NodeProto node, ValueTable types, int opset, string?[] outputGrads,
        bool[] needed, Dictionary<(double, int), string> scalars, Dictionary<string, string> shapes,
        IReadOnlyDictionary<string, TensorProto> constants)
    {
        _graph = graph; Node = node; Types = types; Opset = opset; _constants = constants;
        _outputGrads = outputGrads; _needed = needed; _scalars = scalars; _shapes = shapes;
    }

    public NodeProto Node { get; }
    public ValueTable Types { get; }
    public int Opset { get; }

    public string I(int i) => Node.Input[i];
    public string O(int i) => Node.Output[i];
    public string? GO(int i) => i < _outputGrads.Length ? _outputGrads[i] : null;
    public bool Needs(int i) => i < _needed.Length && _needed[i];
    public int InputCount => Node.Input.Count;
    public bool HasInput(int i) => i < Node.Input.Count && Node.Input[i] != "";
    public int Rank(string value) => Types.Rank(value);
    public long Attr(string name, long fallback) => Attrs.Int(Node, name, fallback);
    public float Attr(string name, float fallback) => Attrs.Float(Node, name, fallback);
    public string Attr(string name, string fallback) => Attrs.Str(Node, name, fallback);

    /// <summary>Gives a forward Dropout node a named mask output (its second output), for its gradient.</summary>
    internal void AddMaskOutput()
    {
        var mask = _graph.Unique(Node.Name + "_mask");
        if (Node.Output.Count < 2) Node.Output.Add(mask); else Node.Output[1] = mask;
    }

    /// <summary>A failure naming this node: for cases a rule cannot differentiate.</summary>
    public OrtLoraException Unsupported(string why) =>
        new($"autodiff: cannot differentiate {Node.OpType} node '{Node.Name}': {why}");

    // ---- emitting nodes -------------------------------------------------------------------------------------------

    public string Op(string op, string[] inputs, params (string Name, object Value)[] attributes) =>
        _graph.Add(op, inputs, name: $"grad/{Node.Name}/{op}", attributes: attributes);

    public string[] OpN(string op, string[] inputs, int outputs, params (string Name, object Value)[] attributes)
    {
        var name = _graph.Unique($"grad/{Node.Name}/{op}");
        var outs = Enumerable.Range(0, outputs).Select(i => _graph.Unique($"{name}_out{i}")).ToArray();
        _graph.Add(op, inputs, name: name, outputs: outs, attributes: attributes);
        return outs;
    }

    public string Add(string a, string b) => Op("Add", [a, b]);
    public string Sub(string a, string b) => Op("Sub", [a, b]);
    public string Mul(string a, string b) => Op("Mul", [a, b]);
    public string Div(string a, string b) => Op("Div", [a, b]);
    public string Neg(string a) => Op("Neg", [a]);
    public string Where(string cond, string a, string b) => Op("Where", [cond, a, b]);
    public string Cast(string a, int to) => Op("Cast", [a], ("to", (long)to));
    public string CastLike(string a, string like) => Cast(a, Types.ElemType(like));
    public string MatMul(string a, string b) => Op("MatMul", [a, b]);
    public string Transpose(string a, long[] perm) => Op("Transpose", [a], ("perm", perm));
    public string Reshape(string a, string shape) => Op("Reshape", [a, shape]);

    /// <summary>A scalar constant with the element type of forward value <paramref name="like"/>.</summary>
    public string Scalar(double value, string like) => ScalarOfType(value, Types.ElemType(like));

    public string ScalarOfType(double value, int elemType)
    {
        if (_scalars.TryGetValue((value, elemType), out var name)) return name;
        return _scalars[(value, elemType)] = GraphConstants.Scalar(_graph, $"grad/const_{(DT)elemType}_{value}", value, elemType);
    }

    public string Ints(params long[] values) => GraphConstants.Int64s(_graph, "grad/ints", values);

    /// <summary>Shape(<paramref name="value"/>), emitted once per value.</summary>
    public string ShapeOf(string value)
    {
        if (_shapes.TryGetValue(value, out var s)) return s;
        return _shapes[value] = _graph.Add("Shape", [value], name: $"grad/shape/{value}");
    }

    public string ZerosLike(string value) =>
        Op("ConstantOfShape", [ShapeOf(value)], ("value", Tensors.FromFloats("zero", [1], [0f], Types.ElemType(value))));

    /// <summary>Reshape <paramref name="grad"/> back to the shape of forward value <paramref name="target"/>.</summary>
    /// <remarks>The shape comes from Shape(target), so a 0 in it is a real empty dim (a chunk past the end of a short
    /// sequence), which Reshape must keep rather than copy from the input: allowzero from opset 14.</remarks>
    public string ReshapeLike(string grad, string target) => Opset >= 14
        ? Op("Reshape", [grad, ShapeOf(target)], ("allowzero", 1L)) : Reshape(grad, ShapeOf(target));

    /// <summary>As above, for a gradient whose shapes in the two probe runs are known: the target shape is then a constant
    /// where it can be, so no Shape node runs per step without static shapes either. A dim both probes agree on is
    /// itself; one that varies is 0 (Reshape copies the gradient's dim) when the gradient has it at the same index, else
    /// -1 (inferred), for one such dim; Shape(target) only when more vary.</summary>
    public string ReshapeLike(string grad, string target, (long[] A, long[] B) gradShapes)
    {
        var (a, b) = (Types[target].ShapeA, Types[target].ShapeB);
        var dims = new long[a.Length];
        for (int i = 0; i < a.Length; i++)
        {
            bool sameInGrad = i < gradShapes.A.Length && gradShapes.A[i] == a[i] && gradShapes.B[i] == b[i];
            dims[i] = a[i] == b[i] && a[i] > 0 ? a[i] : sameInGrad && a[i] > 0 && b[i] > 0 ? 0 : -1;
        }
        return dims.Count(d => d == -1) <= 1 ? Reshape(grad, Ints(dims)) : ReshapeLike(grad, target);
    }

    // ---- opset-aware helpers (axes moved from attributes to inputs in opsets 13 and 18) ------------------------------

    public string ReduceSum(string x, long[] axes, bool keepdims) => Opset >= 13
        ? Op("ReduceSum", [x, Ints(axes)], ("keepdims", keepdims ? 1L : 0L))
        : Op("ReduceSum", [x], ("axes", axes), ("keepdims", keepdims ? 1L : 0L));

    public string ReduceMean(string x, long[] axes, bool keepdims) => Opset >= 18
        ? Op("ReduceMean", [x, Ints(axes)], ("keepdims", keepdims ? 1L : 0L))
        : Op("ReduceMean", [x], ("axes", axes), ("keepdims", keepdims ? 1L : 0L));

    public string Unsqueeze(string x, long[] axes) => Opset >= 13
        ? Op("Unsqueeze", [x, Ints(axes)]) : Op("Unsqueeze", [x], ("axes", axes));

    /// <summary>Axes from an attribute (older opsets) or a constant input (newer), or null when neither is there.</summary>
    public long[]? AxesOf(int inputIndex, string attribute = "axes")
    {
        if (Attrs.Ints(Node, attribute) is { } fromAttr) return fromAttr;
        if (!HasInput(inputIndex)) return null;
        return ConstInts(I(inputIndex)) ?? throw Unsupported($"input {inputIndex} ('{I(inputIndex)}') must be a constant");
    }

    /// <summary>The integer values of a constant (initializer or Constant node), or null if it is computed.</summary>
    public long[]? ConstInts(string value)
    {
        if (!_constants.TryGetValue(value, out var t)) return null;
        return Tensors.ReadInt64s(Tensors.InlineBytes(t), t.DataType);
    }

    /// <summary>The values of a constant float tensor (any float type), or null if it is computed.</summary>
    public float[]? ConstFloats(string value) =>
        _constants.TryGetValue(value, out var t) && Types.IsFloat(value) ? Tensors.BytesToFloats(Tensors.InlineBytes(t), t.DataType) : null;

    /// <summary>The value of a constant boolean scalar, or null if it is computed.</summary>
    public bool? ConstBool(string value) =>
        _constants.TryGetValue(value, out var t) ? Tensors.InlineBytes(t).Any(b => b != 0) : null;

    public static long[] Normalize(IEnumerable<long> axes, int rank) => axes.Select(a => a < 0 ? a + rank : a).ToArray();

    public string Concat(params string[] parts) => Op("Concat", parts, ("axis", 0L));

    /// <summary>Dims [<paramref name="from"/>, <paramref name="to"/>) of a forward value's shape, as an int64 vector: a
    /// constant when both probe runs saw the same extents there (model dims: hidden size, heads, head dim), which ORT
    /// folds with whatever reads it; else sliced from Shape(value) in the graph.</summary>
    public string Dims(string value, int from, int to)
    {
        var (a, b) = (Types[value].ShapeA[from..to], Types[value].ShapeB[from..to]);
        return a.SequenceEqual(b) && a.All(d => d > 0) ? Ints(a) : Op("Slice", [ShapeOf(value), Ints(from), Ints(to), Ints(0)]);
    }

    /// <summary>The last <paramref name="count"/> dims of a forward value's shape, as an int64 vector.</summary>
    public string LastDims(string value, int count) => Dims(value, Rank(value) - count, Rank(value));

    /// <summary>Sums away the leading axes of a rank-<paramref name="rank"/> value down to rank <paramref name="keep"/>.</summary>
    public string SumLeading(string x, int rank, int keep) =>
        rank == keep ? x : ReduceSum(x, Enumerable.Range(0, rank - keep).Select(i => (long)i).ToArray(), keepdims: false);

    // ---- broadcasting, handled here once ------------------------------------------------------------------------------

    /// <summary>Sums <paramref name="grad"/> (shaped like forward value <paramref name="like"/>) over the axes along which
    /// <paramref name="target"/> was broadcast, giving target's shape. Skipped when both probe runs saw equal shapes;
    /// static axes when the probes agree on them; else fully dynamic (Shape, Equal, NonZero, ReduceSum, Reshape).</summary>
    public string Unbroadcast(string grad, string like, string target) =>
        Unbroadcast(grad, (Types[like].ShapeA, Types[like].ShapeB), target);

    /// <summary>As above, with the gradient's shapes in the two probe runs given directly.</summary>
    public string Unbroadcast(string grad, (long[] A, long[] B) gradShapes, string target)
    {
        var t = Types[target];
        if (gradShapes.A.SequenceEqual(t.ShapeA) && gradShapes.B.SequenceEqual(t.ShapeB)) return grad;
        int gradRank = gradShapes.A.Length;
        if (StaticBroadcastAxes(gradShapes.A, t.ShapeA) is { } axesA && StaticBroadcastAxes(gradShapes.B, t.ShapeB) is { } axesB
            && axesA.SequenceEqual(axesB))
        {
            var summed = axesA.Length == 0 ? grad : ReduceSum(grad, axesA, keepdims: true);
            long[] Kept(long[] shape) => shape.Select((d, i) => axesA.Contains(i) ? 1 : d).ToArray();
            return gradRank == t.Rank ? summed : ReshapeLike(summed, target, (Kept(gradShapes.A), Kept(gradShapes.B)));
        }
        if (Opset < 13) throw Unsupported("dynamic broadcasting needs opset 13 or later");
        int pad = gradRank - t.Rank;
        var padded = pad == 0 ? ShapeOf(target) : Op("Concat", [Ints(Enumerable.Repeat(1L, pad).ToArray()), ShapeOf(target)], ("axis", 0L));
        var one = Ints(1);
        var broadcastDims = Op("And", [Op("Equal", [padded, one]), Op("Not", [Op("Equal", [Op("Shape", [grad]), one])])]);
        var axes = Reshape(Op("NonZero", [broadcastDims]), Ints(-1));
        var reduced = Op("ReduceSum", [grad, axes], ("keepdims", 1L), ("noop_with_empty_axes", 1L));
        return ReshapeLike(reduced, target);
    }

    /// <summary>Axes of a [rank g] gradient to sum to get shape t, or null if these shapes are not a broadcast pair.</summary>
    static long[]? StaticBroadcastAxes(long[] g, long[] t)
    {
        int pad = g.Length - t.Length;
        if (pad < 0) return null;
        var axes = new List<long>();
        for (int i = 0; i < g.Length; i++)
        {
            long td = i < pad ? 1 : t[i - pad];
            if (i < pad || (td == 1 && g[i] != 1)) axes.Add(i);
            else if (td != g[i]) return null;
        }
        return axes.ToArray();
    }
}

/// <summary>A gradient rule: the grads of a node's inputs (null where none is needed or none exists) from its context.</summary>
public delegate string?[] GradientRule(GradContext c);
