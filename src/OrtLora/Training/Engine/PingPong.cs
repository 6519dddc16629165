using Microsoft.ML.OnnxRuntime;

namespace OrtLora.Training.Engine;

/// <summary>One float32 tensor kept in two host buffers wrapped as OrtValues: a run reads <see cref="Current"/> and
/// writes <see cref="Next"/>, then <see cref="Swap"/> makes the result current. ORT reads and writes these buffers
/// in place (IOBinding), so a training step copies nothing between host and runtime but the loss.</summary>
public sealed class PingPong : IDisposable
{
    readonly float[][] _buffers;
    readonly OrtValue[] _values;
    int _current;

    public PingPong(long[] shape, float[]? initial = null)
    {
        Shape = shape;
        long n = shape.Aggregate(1L, (a, b) => a * b);
        _buffers = [new float[n], new float[n]];
        if (initial is not null) initial.CopyTo(_buffers[0], 0);
        _values = [OrtValue.CreateTensorValueFromMemory(_buffers[0], shape), OrtValue.CreateTensorValueFromMemory(_buffers[1], shape)];
    }

    public long[] Shape { get; }
    public OrtValue Current => _values[_current];
    public OrtValue Next => _values[1 - _current];
    public float[] CurrentData => _buffers[_current];
    public void Swap() => _current = 1 - _current;

    public float[] Read() => (float[])_buffers[_current].Clone();

    public void Write(float[] values)
    {
        if (values.Length != _buffers[_current].Length)
            throw new OrtLoraException($"tensor of {values.Length} values given for shape [{string.Join(", ", Shape)}]");
        values.CopyTo(_buffers[_current], 0);
    }

    public void Clear() => Array.Clear(_buffers[_current]);

    public void Dispose() { foreach (var v in _values) v.Dispose(); }
}

/// <summary>A float32 scalar the host sets before a run or reads after one (lr, step, loss, ...).</summary>
public sealed class HostScalar : IDisposable
{
    readonly float[] _data = new float[1];
    public HostScalar() => Value = OrtValue.CreateTensorValueFromMemory(_data, Array.Empty<long>());
    public OrtValue Value { get; }
    public float Get() => _data[0];
    public void Set(float v) => _data[0] = v;
    public void Dispose() => Value.Dispose();
}
