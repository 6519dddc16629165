using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>The probe runs that give every value of a graph under construction its type and its shape at two batch
/// shapes (which values vary with the batch: the activations).</summary>
public sealed partial class TrainingGraph
{
    /// <remarks>DPO's and reward modelling's batches are row pairs: their graphs are probed with an even second batch.</remarks>
    static ValueTable Probe(ModelProto proto, Dictionary<string, float[]> parameters, SharedInitializers frozen) =>
        ValueTable.Probe(proto, ProbeFeeds(proto, parameters, frozen, 2, 5),
            ProbeFeeds(proto, parameters, frozen, proto.Graph.Output.Any(o => o.Name == SequenceLogProbs) ? 4 : 3, 7), frozen.Values);

    /// <summary>A tiny synthetic batch for the probe run: token 1 everywhere, full attention, positions 0..S-1.</summary>
    static Dictionary<string, HostTensor> ProbeFeeds(ModelProto proto, Dictionary<string, float[]> parameters,
        SharedInitializers frozen, int batch, int sequence)
    {
        var feeds = new Dictionary<string, HostTensor>();
        foreach (var (p, v) in parameters)
            feeds[p] = HostTensor.Of(v, proto.Graph.Input.First(i => i.Name == p).Type.TensorType.Shape.Dim.Select(d => d.DimValue).ToArray());
        foreach (var input in proto.Graph.Input.Where(i => !parameters.ContainsKey(i.Name) && !frozen.Values.ContainsKey(i.Name)))
            feeds[input.Name] = BatchFeed(input, batch, sequence);
        return feeds;
    }

    static HostTensor BatchFeed(ValueInfoProto input, int batch, int sequence)
    {
        var type = input.Type.TensorType;
        var dims = type.Shape?.Dim.Select((d, i) => d.DimValue > 0 ? d.DimValue : i == 0 ? batch : sequence).ToArray() ?? [batch, sequence];
        long n = Tensors.ElementCount(dims);
        if (input.Name is NeftuneNoise.Input or PreferenceLoss.ReferenceInput or PreferenceLoss.RolesInput or PreferenceLoss.RowWeightsInput or RewardLoss.MarginsInput or ClassificationLoss.TargetsInput or ClassificationLoss.MultiLabelTargetsInput or DistillationLoss.TeacherInput or TokenWeights)
            return HostTensor.Of(new float[n], dims);
        if (type.ElemType != (int)DT.Int64)
            throw new OrtLoraException($"model input '{input.Name}' is {(DT)type.ElemType}; ortlora feeds int64 token inputs only");
        var data = input.Name.Contains("position")
            ? Enumerable.Range(0, (int)n).Select(i => (long)(i % dims[^1])).ToArray()
            : Enumerable.Repeat(1L, (int)n).ToArray();
        return HostTensor.Of(data, dims);
    }
}
