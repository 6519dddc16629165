using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>Loading the sessions (per batch shape with static shapes) and placing the state where they read it: host
/// arrays, or device memory from the first session's allocator.</summary>
public sealed partial class TrainingSession
{
    /// <summary>The session in <paramref name="slot"/>, loaded on first use; with static shapes, (re)loaded for the
    /// batch's shape.</summary>
    InferenceSession ForBatch(ref InferenceSession? slot, Func<ModelProto> build, Batch batch)
    {
        var shape = (batch.BatchSize, batch.SequenceLength);
        if (slot is not null && (!_options.StaticShapes || _loadedShapes[slot] == shape)) return slot;
        // The session whose allocator holds device state stays loaded until Dispose.
        if (slot is not null) { _loadedShapes.Remove(slot); if (slot != _allocatorSession) Unload(slot); }
        slot = Load(_options.StaticShapes ? _graph.WithBatchShape(build(), shape.BatchSize, shape.SequenceLength) : build());
        _loadedShapes[slot] = shape;
        return slot;
    }

    void Unload(InferenceSession session)
    {
        _fixed?.Release(session);
        if (_options.ProfilePrefix is not null) ProfileFiles.Add(session.EndProfiling());
        session.Dispose();
    }

    InferenceSession Load(ModelProto proto)
    {
        if (_options.CudaGraphs)
        {
            FixedAddresses.RequireNoRandomness(proto);
            FixedAddresses.RequireNoBatchHostArguments(proto);
        }
        using var options = SessionOptions(profile: true, cudaGraphs: _options.CudaGraphs);
        if (_options.RewritesForPlugin)
        {
            proto = PluginRewrites.Apply(proto);
            PluginRewrites.KeepRewritten(options);
        }
        InferenceSession session;
        try { session = new InferenceSession(proto.ToByteArray(), options); }
        catch (OnnxRuntimeException e) when (_options.CudaGraphs && e.Message.Contains("graph capture", StringComparison.OrdinalIgnoreCase))
        {
            throw new OrtLoraException($"ONNX Runtime will not capture CUDA graphs of the training graph ({e.Message.Split('\n')[0]}); train without --cuda-graphs", e);
        }
        PlaceState(session);
        return session;
    }


    SessionOptions SessionOptions(bool profile, bool cudaGraphs)
    {
        var options = OrtRun.DefaultOptions(_options.Optimization);
        if (_options.IntraOpThreads > 0) options.IntraOpNumThreads = _options.IntraOpThreads;
        options.EnableCpuMemArena = _options.CpuMemArena;
        options.EnableMemoryPattern = _options.MemoryPattern;
        if (profile && _options.ProfilePrefix is { } prefix) { options.ProfileOutputPathPrefix = prefix; options.EnableProfiling = true; } // prefix first: the setter reads it
        ExecutionDevice.Configure(options, _options.Device, _options.EpLibrary, cudaGraphs: cudaGraphs);
        return options;
    }

    /// <summary>On the first session: where does it want the parameters? Host memory (CPU): the state stays in host
    /// arrays. A device's memory (CUDA): parameters, moments, accumulators and the frozen weights move there for good,
    /// allocated by the session's allocator for that memory, so steps copy only the batch in and the loss out.</summary>
    void PlaceState(InferenceSession session)
    {
        if (_statePlaced) return;
        _statePlaced = true;
        var inputs = session.InputNames;
        using var memories = session.GetMemoryInfosForInputs();
        bool OnDevice(int input) => memories[input].GetDeviceType() != OrtMemoryInfoDeviceType.CPU || _options.StateInSessionMemory;
        int first = inputs.ToList().IndexOf(_graph.Parameters[0]);
        if (!OnDevice(first) || _options.StateOnHost) return;
        _stateAllocator = new OrtAllocator(session, memories[first]); // keeps its own copy of the memory info
        _allocatorSession = session;
        _deviceCopy = new DeviceCopy(SessionOptions(profile: false, cudaGraphs: false)); // copies run with new addresses every time
        if (_options.CudaGraphs) _fixed = new FixedAddresses(_stateAllocator, _deviceCopy);
        foreach (var b in StateBuffers()) b.MoveTo(_stateAllocator, _deviceCopy);
        // The frozen weights too, each where the session reads it (a weight only a host-side node reads stays put).
        var weights = inputs.Where((name, i) => _graph.Frozen.Values.ContainsKey(name) && OnDevice(i));
        _graph.Frozen.MoveTo(weights, _stateAllocator, _deviceCopy);
    }

    /// <summary>Parameters, moments, (once made) accumulators, and the gradients the host updates from.</summary>
    IEnumerable<PingPong> StateBuffers() =>
        _params.Values.Concat(_expAvg.Values).Concat(_expAvgSq.Values).Concat((IEnumerable<PingPong>?)_accumulators?.Values ?? []).Concat(_hostGradients.Values)
            .Concat(_reference.Values);

    PingPong Placed(PingPong buffer)
    {
        if (_stateAllocator is not null) buffer.MoveTo(_stateAllocator, _deviceCopy!);
        return buffer;
    }

    /// <summary>Whether parameters and optimizer state live in the sessions' device memory (see PlaceState).</summary>
    public bool StateOnDevice => _params.Values.First().OnDevice;
}
