using Onnx;

namespace OrtLora.Onnx;

/// <summary>The int64 initializers a graph rewrite needs (indices, axes, bounds), one per value and shape, named
/// <c>prefix/value</c>: a rewrite of many nodes reuses them instead of adding one per node.</summary>
public sealed class Int64Constants(GraphEditor g, string prefix)
{
    readonly Dictionary<(long Value, bool Vector), string> _names = new();

    /// <summary>A scalar (shape []).</summary>
    public string Scalar(long value) => Get(value, vector: false);

    /// <summary>A one-element vector (shape [1]), as Reshape's and Concat's shape inputs take it.</summary>
    public string Vector(long value) => Get(value, vector: true);

    string Get(long value, bool vector)
    {
        if (_names.TryGetValue((value, vector), out var name)) return name;
        name = g.Unique($"{prefix}/{value}");
        g.Graph.Initializer.Add(Tensors.FromInt64(name, vector ? [1] : [], [value]));
        return _names[(value, vector)] = name;
    }
}
