using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>One float32 tensor kept in two buffers: a run reads <see cref="Current"/> and writes <see cref="Next"/>, then
/// <see cref="Swap"/> makes the result current. The buffers start as host arrays wrapped as OrtValues; <see cref="MoveTo"/>
/// puts them in an execution device's memory (a GPU's), where the sessions read and write them in place (IOBinding),
/// so a training step copies nothing between host and device but the batch in and the loss out.</summary>
public sealed class PingPong : IDisposable
{
    readonly long _count;
    float[][]? _host;
    OrtValue[] _values;
    DeviceCopy? _copy;
    int _current;

    /// <param name="adopt">the first buffer is <paramref name="initial"/> itself, not a copy: the caller gives the array
    /// up (a modules_to_save weight's starting values are as large as the weight)</param>
    /// <param name="single">one host buffer that is both Current and Next, for a tensor updated in place on the host
    /// (<see cref="HostAdamW"/>): never bind it as an output of a run that reads it</param>
    public PingPong(long[] shape, float[]? initial = null, bool adopt = false, bool single = false)
    {
        Shape = shape;
        _count = shape.Aggregate(1L, (a, b) => a * b);
        var first = adopt && initial is not null ? Check(initial) : new float[_count];
        _host = [first, single ? first : new float[_count]];
        if (initial is not null && !adopt) Check(initial).CopyTo(_host[0], 0);
        var value = OrtValue.CreateTensorValueFromMemory(_host[0], shape);
        _values = [value, single ? value : OrtValue.CreateTensorValueFromMemory(_host[1], shape)];
    }

    /// <summary>The current host array, for updates in place (host buffers only).</summary>
    public float[] HostArray => _host?[_current] ?? throw new InvalidOperationException("the buffers are in a device's memory");
    public bool Single => ReferenceEquals(_values[0], _values[1]);

    public long[] Shape { get; }
    public OrtValue Current => _values[_current];
    public OrtValue Next => _values[1 - _current];
    public void Swap() => _current = 1 - _current;

    /// <summary>Makes what a run wrote into <see cref="Next"/> current without swapping: <see cref="Current"/> stays the
    /// same buffer. Host buffers copy here (a single buffer, updated in place, needs nothing); device buffers are left to
    /// the caller, which copies many in one Run (<see cref="DeviceCopy.CopyAll"/>): returns false for those.</summary>
    public bool CopyBackOnHost()
    {
        if (Single) return true;
        if (_host is null) return false;
        Array.Copy(_host[1 - _current], _host[_current], _count);
        return true;
    }
    /// <summary>Which buffer is current (0 or 1).</summary>
    public int Parity => _current;
    /// <summary>Whether the buffers are in a device's memory rather than host arrays.</summary>
    public bool OnDevice => _host is null;

    /// <summary>Moves both buffers into memory from <paramref name="allocator"/>, keeping the current value.</summary>
    public void MoveTo(OrtAllocator allocator, DeviceCopy copy)
    {
        if (_host is null) return; // already moved
        _copy = copy;
        var current = _host[_current];
        var first = Allocate(allocator);
        var moved = new[] { first, Single ? first : Allocate(allocator) };
        foreach (var v in _values.Distinct()) v.Dispose();
        _values = moved;
        _host = null;
        Write(current);
    }

    public float[] Read()
    {
        if (_host is not null) return (float[])_host[_current].Clone();
        var result = new float[_count];
        using var host = OrtValue.CreateTensorValueFromMemory(result, Shape);
        _copy!.Copy(Current, host);
        return result;
    }

    public void Write(float[] values)
    {
        if (_host is not null) { Check(values).CopyTo(_host[_current], 0); return; }
        using var host = OrtValue.CreateTensorValueFromMemory(Check(values), Shape);
        _copy!.Copy(host, Current);
    }

    public void Clear()
    {
        if (_host is not null) Array.Clear(_host[_current]);
        else Write(new float[_count]);
    }

    OrtValue Allocate(OrtAllocator allocator) => OrtValue.CreateAllocatedTensorValue(allocator, TensorElementType.Float, Shape);

    float[] Check(float[] values) => values.Length == _count ? values
        : throw new OrtLoraException($"tensor of {values.Length} values given for shape [{string.Join(", ", Shape)}]");

    public void Dispose() { foreach (var v in _values.Distinct()) v.Dispose(); }
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
