using Microsoft.ML.OnnxRuntime;
using Onnx;

namespace OrtLora.Onnx;

/// <summary>What a graph loads as on the GPU machine's CUDA plugin: without the ops it crashes on (docs/gpu.md). Its
/// kernels for Slice, GatherElements and Size call CPU helpers that a CPU build of the core lacks, so every Slice
/// becomes Gathers (<see cref="SliceAsGather"/>), the loss's marked GatherElements and ScatterElements a flat Gather and
/// ScatterND (<see cref="RowIndexAsGather"/>) and Size the Shape of the flattened tensor (<see cref="SizeAsShape"/>):
/// the same values, tested against ORT's own ops.</summary>
public static class PluginRewrites
{
    /// <summary>Whether graphs load rewritten: with a plugin execution provider library, unless the environment says
    /// otherwise (ORTLORA_PLUGIN_REWRITES=0 or 1, to tell a provider that needs them from one that does not).</summary>
    public static bool Wanted(string? epLibrary) => Environment.GetEnvironmentVariable("ORTLORA_PLUGIN_REWRITES") switch
    {
        "1" => true,
        "0" => false,
        _ => epLibrary is not null,
    };

    /// <summary>A rewritten copy of <paramref name="proto"/>.</summary>
    public static ModelProto Apply(ModelProto proto)
    {
        proto = proto.Clone();
        SliceAsGather.Apply(proto.Graph);
        RowIndexAsGather.Apply(proto);
        SizeAsShape.Apply(proto.Graph);
        return proto;
    }

    /// <summary>ORT's optimizer would undo <see cref="SliceAsGather"/>: GatherToSliceFusion (level extended, for the CPU and
    /// CUDA providers) turns a Gather of a Range back into a Slice. With static shapes the Range folds into constant
    /// indices first, so only dynamic shapes met it: on the GPU machine a Range and its Gather crashed together at level
    /// all and ran at basic (2026-12-04), the crash of every unpadded graph.</summary>
    public const string UndoingFusions = "GatherToSliceFusion";

    const string DisabledOptimizers = "optimization.disable_specified_optimizers";

    /// <summary>Keeps a session's optimizer from undoing the rewrites (<see cref="UndoingFusions"/>), with any optimizers
    /// ORTLORA_ORT_CONFIG disables too: the entry is one list, which a second write would replace. Its names are separated
    /// by ';' (tested: ORT 1.31 read "A,B" as one name, whatever its header says), so that variable names one optimizer an
    /// entry, as often as needed.</summary>
    public static void KeepRewritten(SessionOptions options)
    {
        var asked = OrtRun.KeyValues(Environment.GetEnvironmentVariable("ORTLORA_ORT_CONFIG"), "ORTLORA_ORT_CONFIG")
            .Where(kv => kv.Key == DisabledOptimizers).Select(kv => kv.Value);
        options.AddSessionConfigEntry(DisabledOptimizers, string.Join(";", asked.Append(UndoingFusions)));
    }

    /// <summary>An inference session on the model at <paramref name="path"/>, rewritten.</summary>
    public static InferenceSession Load(string path, SessionOptions options)
    {
        using var model = OnnxModel.Load(path);
        return Load(model, options);
    }

    /// <summary>An inference session on the rewritten <paramref name="model"/>: from memory, or through a temporary copy
    /// with external data when the weights are too large for one protobuf message.</summary>
    public static InferenceSession Load(OnnxModel model, SessionOptions options)
    {
        KeepRewritten(options);
        using var rewritten = new OnnxModel(Apply(model.Proto), model.BaseDirectory, model.Source);
        if (rewritten.Graph.Initializer.Sum(Tensors.ByteSize) < 1_800_000_000L) return new InferenceSession(rewritten.ToBytes(), options);
        var dir = Directory.CreateTempSubdirectory("ortlora-plugin-").FullName;
        try
        {
            var path = Path.Combine(dir, "model.onnx");
            rewritten.Save(path, externalData: true);
            return new InferenceSession(path, options); // ORT has read or mapped the weights: the files may go
        }
        finally { Directory.Delete(dir, recursive: true); }
    }
}
