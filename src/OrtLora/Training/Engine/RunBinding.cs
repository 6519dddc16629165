using Microsoft.ML.OnnxRuntime;
using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>Buffers at fixed addresses for CUDA graphs. With ORT's enable_cuda_graph, a session captures the kernels of
/// one Run and replays them on later Runs with that Run's buffer addresses, without looking at what is bound: every
/// input and output must then sit in the same memory each time the same graph runs. This keeps, per session, one buffer
/// in session memory for each value the host feeds (the batch, learning rate, step, loss scale) and each scalar it reads
/// back (loss, gradient norm); host values are copied into them before a Run and out of them after. The state
/// (<see cref="PingPong"/>) is fixed already but alternates between two buffers, so a session holds one captured graph
/// per state parity, chosen with the run option gpu_graph_id.</summary>
public sealed class FixedAddresses : IDisposable
{
    readonly OrtAllocator _allocator;
    readonly DeviceCopy _copy;
    readonly Dictionary<(InferenceSession, string), OrtValue> _buffers = new();
    readonly Dictionary<int, RunOptions> _runOptions = new();

    /// <param name="allocator">allocates in the memory the sessions read their inputs from (the device's)</param>
    /// <param name="copy">host ↔ device copies; its sessions must not capture graphs themselves</param>
    public FixedAddresses(OrtAllocator allocator, DeviceCopy copy) => (_allocator, _copy) = (allocator, copy);

    /// <summary>The session's buffer for <paramref name="name"/>, shaped and typed like <paramref name="like"/>; made on
    /// first use (a static-shape session sees one shape for its life).</summary>
    public OrtValue BufferFor(InferenceSession session, string name, OrtValue like)
    {
        var info = like.GetTensorTypeAndShape();
        if (_buffers.TryGetValue((session, name), out var buffer))
        {
            var have = buffer.GetTensorTypeAndShape();
            if (have.ElementDataType == info.ElementDataType && have.Shape.SequenceEqual(info.Shape)) return buffer;
            throw new InvalidOperationException($"'{name}' changed shape within one session: a captured graph would read the old buffer");
        }
        return _buffers[(session, name)] = OrtValue.CreateAllocatedTensorValue(_allocator, info.ElementDataType, info.Shape);
    }

    public void Copy(OrtValue source, OrtValue destination) => _copy.Copy(source, destination);

    /// <summary>Run options selecting captured graph <paramref name="id"/> (-1: run without capturing or replaying).</summary>
    public RunOptions Graph(int id)
    {
        if (_runOptions.TryGetValue(id, out var options)) return options;
        options = new RunOptions();
        options.AddRunConfigEntry("gpu_graph_id", id.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return _runOptions[id] = options;
    }

    /// <summary>A replay repeats the random numbers of the captured Run: training-mode Dropout and Random* ops are refused.</summary>
    public static void RequireNoRandomness(global::Onnx.ModelProto proto)
    {
        if (proto.Graph.Node.FirstOrDefault(n => n.OpType is "RandomUniform" or "RandomNormal" or "RandomUniformLike" or "RandomNormalLike"
                or "Bernoulli" or "Multinomial" || n.OpType == "Dropout" && n.Input.Count > 2 && n.Input[2] != "") is { } random)
            throw new OrtLoraException($"CUDA graphs replay the random numbers of the captured step: the training graph has {random.OpType} " +
                $"('{random.Name}'); train without --cuda-graphs, or with --lora-dropout 0");
    }

    /// <summary>A captured graph keeps the host-memory arguments its kernels read at capture (a Reshape's shape, a
    /// Range's limit): one computed from the batch's contents would stay at the first batch's value.</summary>
    public static void RequireNoBatchHostArguments(global::Onnx.ModelProto proto)
    {
        if (OrtLora.Onnx.HostArguments.FromFedIntegers(proto) is [var first, ..])
            throw new OrtLoraException($"CUDA graphs keep what a kernel reads from host memory at capture, and {first} is computed from " +
                "the batch's contents: every replay would reuse the first batch's value; train without --cuda-graphs");
    }

    /// <summary>Frees a session's buffers when the session is unloaded (its captured graphs go with it).</summary>
    public void Release(InferenceSession session)
    {
        foreach (var key in _buffers.Keys.Where(k => k.Item1 == session).ToList())
        {
            _buffers[key].Dispose();
            _buffers.Remove(key);
        }
    }

    public void Dispose()
    {
        foreach (var b in _buffers.Values) b.Dispose();
        foreach (var o in _runOptions.Values) o.Dispose();
        _buffers.Clear();
    }
}

/// <summary>One Run's IOBinding. State and weights are bound where they live; values from the host (the batch and
/// scalars) are bound directly, or, with <see cref="FixedAddresses"/>, copied into the session's fixed buffers, and
/// scalar outputs copied back after the Run.</summary>
public sealed class RunBinding : IDisposable
{
    readonly InferenceSession _session;
    readonly FixedAddresses? _fixed;
    readonly List<OrtValue> _owned = [];
    readonly List<(OrtValue Device, OrtValue Host)> _copyOut = [];

    public RunBinding(InferenceSession session, FixedAddresses? fixedAddresses)
    {
        _session = session;
        _fixed = fixedAddresses;
        Binding = session.CreateIoBinding();
    }

    public InferenceSession Session => _session;
    public OrtIoBinding Binding { get; }
    /// <summary>What this Run reads and writes, in binding order: the buffers a captured graph is tied to.</summary>
    public List<(string Name, OrtValue Value)> Bound { get; } = [];

    /// <summary>A value already in the memory the session reads (state, frozen weights).</summary>
    public void Input(string name, OrtValue value)
    {
        Binding.BindInput(name, value);
        Bound.Add((name, value));
    }

    /// <summary>A value in host memory.</summary>
    public void HostInput(string name, OrtValue host)
    {
        if (_fixed is null) { Input(name, host); return; }
        var buffer = _fixed.BufferFor(_session, name, host);
        _fixed.Copy(host, buffer);
        Input(name, buffer);
    }

    /// <summary>A host tensor, wrapped for this Run only.</summary>
    public void HostInput(string name, HostTensor tensor)
    {
        var value = tensor.ToOrtValue();
        _owned.Add(value);
        HostInput(name, value);
    }

    /// <summary>An output written in place (state).</summary>
    public void Output(string name, OrtValue value)
    {
        Binding.BindOutput(name, value);
        Bound.Add((name, value));
    }

    /// <summary>An output the host reads after the Run.</summary>
    public void HostOutput(string name, OrtValue host)
    {
        if (_fixed is null) { Output(name, host); return; }
        var buffer = _fixed.BufferFor(_session, name, host);
        _copyOut.Add((buffer, host));
        Output(name, buffer);
    }

    /// <summary>An output the host reads after the Run into <paramref name="array"/>, shaped [array.Length].</summary>
    public void HostOutput(string name, float[] array)
    {
        var value = OrtValue.CreateTensorValueFromMemory(array, [array.Length]);
        _owned.Add(value);
        HostOutput(name, value);
    }

    /// <summary>Runs captured graph <paramref name="graphId"/> when graphs are captured; -1 for a Run whose buffers are
    /// not fixed.</summary>
    public void Run(RunOptions plain, int graphId)
    {
        _session.RunWithBinding(_fixed is null ? plain : _fixed.Graph(graphId), Binding);
        foreach (var (device, host) in _copyOut) _fixed!.Copy(device, host);
    }

    public void Dispose()
    {
        Binding.Dispose();
        foreach (var v in _owned) v.Dispose();
    }
}
