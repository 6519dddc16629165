using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>How an export's inputs become the training graphs' batch inputs: a generation cache fed empty, narrow token
/// and mask inputs taken as int64.</summary>
public sealed partial class TrainingGraph
{
    /// <summary>A decoder exported for generation (Optimum: past_key_values.N.key/value inputs, present.N outputs) trains
    /// on whole sequences: each cache input becomes an in-graph empty tensor [batch, ..., 0, ...] (the batch size from
    /// input_ids, its other symbolic dimension the past length 0), so the batch feeds stay input_ids/attention_mask.</summary>
    internal static void FeedEmptyCache(ModelProto proto, GraphEditor g)
    {
        var cache = proto.Graph.Input.Where(i => i.Name.StartsWith("past") && i.Type?.TensorType is { } t && t.ElemType != (int)DT.Int64).ToList();
        if (cache.Count == 0) return;
        var tokens = proto.Graph.Input.FirstOrDefault(i => i.Name == "input_ids")
            ?? throw new OrtLoraException($"the model has cache inputs ({cache[0].Name}) but no input_ids to take the batch size from");
        int existing = proto.Graph.Node.Count;
        var batch = g.Add("Slice", [g.Add("Shape", [tokens.Name], name: "empty_cache/Shape"), Ints(g, 0), Ints(g, 1), Ints(g, 0)], name: "empty_cache/Slice");
        foreach (var input in cache)
        {
            // The first symbolic dimension is the batch ([batch, heads, past, dim]; legacy GPT-2: [2, batch, heads,
            // past, dim]), the only other one the past length.
            var dims = (input.Type.TensorType.Shape?.Dim.ToList() ?? []).Select(d => d.DimValue > 0 ? d.DimValue : -1).ToList();
            int batchAxis = dims.IndexOf(-1);
            if (batchAxis < 0 || dims.Count(d => d < 0) != 2)
                throw new OrtLoraException($"model input '{input.Name}': a cache input needs a symbolic batch and one symbolic past-length dimension (fixed heads and head size) to train on an empty cache");
            var shape = g.Add("Concat", [Ints(g, dims.Take(batchAxis).ToArray()), batch, Ints(g, dims.Skip(batchAxis + 1).Select(d => Math.Max(0, d)).ToArray())],
                name: "empty_cache/Concat", attributes: ("axis", 0L));
            g.Add("ConstantOfShape", [shape], name: "empty_cache/" + input.Name, outputs: [input.Name],
                attributes: ("value", Tensors.FromFloats("zero", [1], [0f], input.Type.TensorType.ElemType)));
            proto.Graph.Input.Remove(input);
        }
        // The new nodes read only input_ids and initializers: move them to the front, where the cache inputs were.
        var added = proto.Graph.Node.Skip(existing).ToList();
        foreach (var n in added) proto.Graph.Node.Remove(n);
        for (int i = 0; i < added.Count; i++) proto.Graph.Node.Insert(i, added[i]);
    }

    /// <summary>Token inputs declared int32 and masks declared float (some exporters) become int64 inputs cast to the
    /// declared type inside the graph, so a session feeds every model the same int64 batches.</summary>
    internal static void TakeInt64BatchInputs(ModelProto proto, GraphEditor g)
    {
        var narrow = proto.Graph.Input.Where(i => i.Type?.TensorType?.ElemType is { } t
            && (t == (int)DT.Int32 || Tensors.IsFloat(t) && i.Name.Contains("mask"))).ToList();
        if (narrow.Count == 0) return;
        var casts = new List<NodeProto>();
        foreach (var input in narrow)
        {
            var declared = (long)input.Type.TensorType.ElemType;
            var cast = new NodeProto { OpType = "Cast", Name = g.Unique(input.Name + "/to_declared"), Input = { input.Name }, Output = { g.Unique(input.Name + "_declared") } };
            cast.Attribute.Add(Attrs.Make("to", declared));
            g.ReplaceUses(input.Name, cast.Output[0]);
            input.Type.TensorType.ElemType = (int)DT.Int64;
            casts.Add(g.AddNode(cast));
        }
        // Appended, then moved to the front: they read only graph inputs.
        foreach (var cast in casts) proto.Graph.Node.Remove(cast);
        for (int i = 0; i < casts.Count; i++) proto.Graph.Node.Insert(i, casts[i]);
    }

    static string Ints(GraphEditor g, params long[] values) =>
        g.AddInitializer(Tensors.FromInt64(g.Unique("empty_cache/ints"), [values.Length], values));
}
