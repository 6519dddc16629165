using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>A toy causal LM with a key/value cache and position_ids, for testing the cache plumbing before a real
/// cached model exists: the logits of the last position are mean(embeddings of all tokens so far)·Wout +
/// P[position]·Wout, so recomputing the whole sequence and decoding through the cache must agree exactly, and a
/// wrong position_ids or a dropped cache entry changes them.</summary>
public static class GenerateToyModels
{
    public const int Vocab = 11, Dim = 4, MaxPositions = 64;

    public static OnnxModel CachedModel(bool int32Ids = false)
    {
        var rng = new Random(5);
        float[] Rand(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        var graph = new GraphProto { Name = "toy_cached_lm" };
        var editor = new GraphEditor(graph);
        var idType = int32Ids ? TensorProto.Types.DataType.Int32 : TensorProto.Types.DataType.Int64;
        graph.Input.Add(Value("input_ids", idType, "batch", "seq"));
        graph.Input.Add(Value("attention_mask", idType, "batch", "total"));
        graph.Input.Add(Value("position_ids", idType, "batch", "seq"));
        graph.Input.Add(Value("past_key_values.0.key", TensorProto.Types.DataType.Float, "batch", 1, "past", Dim));
        graph.Input.Add(Value("past_key_values.0.value", TensorProto.Types.DataType.Float, "batch", 1, "past", Dim));
        editor.AddInitializer(Tensors.FromFloats("E", [Vocab, Dim], Rand(Vocab * Dim)));
        editor.AddInitializer(Tensors.FromFloats("P", [MaxPositions, Dim], Rand(MaxPositions * Dim)));
        editor.AddInitializer(Tensors.FromFloats("Wout", [Dim, Vocab], Rand(Dim * Vocab)));
        editor.AddInitializer(Tensors.FromInt64("axis1", [1], [1]));
        editor.AddInitializer(Tensors.FromInt64("axis2", [1], [2]));
        var embedded = editor.Add("Unsqueeze", [editor.Add("Gather", ["E", "input_ids"]), "axis1"]); // [b,1,s,D]
        editor.Add("Concat", ["past_key_values.0.key", embedded], outputs: ["present.0.key"], attributes: ("axis", 2L));
        editor.Add("Concat", ["past_key_values.0.value", embedded], outputs: ["present.0.value"], attributes: ("axis", 2L));
        var mean = editor.Add("ReduceMean", ["present.0.key", "axis2"], attributes: ("keepdims", 0L)); // [b,1,D]
        var hidden = editor.Add("Add", [mean, editor.Add("Gather", ["P", "position_ids"])]); // [b,s,D]
        editor.Add("MatMul", [hidden, "Wout"], outputs: ["logits"]);
        graph.Output.Add(Value("logits", TensorProto.Types.DataType.Float, "batch", "seq", Vocab));
        graph.Output.Add(Value("present.0.key", TensorProto.Types.DataType.Float, "batch", 1, "total", Dim));
        graph.Output.Add(Value("present.0.value", TensorProto.Types.DataType.Float, "batch", 1, "total", Dim));
        var proto = new ModelProto { IrVersion = 8, Graph = graph, ProducerName = "ortlora-tests" };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        return new OnnxModel(proto);
    }

    static ValueInfoProto Value(string name, TensorProto.Types.DataType type, params object[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims)
            shape.Dim.Add(d is int n ? new TensorShapeProto.Types.Dimension { DimValue = n } : new TensorShapeProto.Types.Dimension { DimParam = (string)d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)type, Shape = shape } } };
    }
}
