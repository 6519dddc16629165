using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The PEFT fixtures as the engine's tests need them: a model with the fixture adapter added, and batches.
/// The adapter is added by a minimal private rewrite (y += scale·(x·Aᵀ)·Bᵀ after each adapted MatMul/Gemm), so
/// these tests exercise the engine alone, independent of the inject command.</summary>
public static class EngineFixtures
{
    public static OnnxModel InjectedModel(string arch, string export)
    {
        var model = OnnxModel.Load(Shared.Peft(arch, $"model.{export}.onnx"));
        var adapter = SafeTensors.Read(Shared.Peft(arch, "adapter/adapter_model.safetensors"));
        var config = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Shared.Peft(arch, "adapter/adapter_config.json")))!;
        float scale = config["lora_alpha"]!.GetValue<float>() / config["r"]!.GetValue<float>();
        var g = new GraphEditor(model.Graph);
        foreach (var key in adapter.Keys.Where(k => k.EndsWith(".lora_A.weight")))
        {
            var module = key["base_model.model.".Length..^".lora_A.weight".Length];
            var linear = FindLinear(g, module) ?? throw new InvalidOperationException($"no linear node for {module}");
            var bKey = key.Replace(".lora_A.weight", ".lora_B.weight");
            g.AddInitializer(Tensors.FromFloats(key, adapter[key].Shape, adapter[key].AsFloats()));
            g.AddInitializer(Tensors.FromFloats(bKey, adapter[bKey].Shape, adapter[bKey].AsFloats()));
            var scaleName = g.Unique(module + ".lora_scale");
            g.AddInitializer(Tensors.Scalar(scaleName, scale, 1));
            var y = linear.Output[0];
            var xa = g.Add("MatMul", [linear.Input[0], g.Add("Transpose", [key], attributes: ("perm", new long[] { 1, 0 }))]);
            var xab = g.Add("MatMul", [xa, g.Add("Transpose", [bKey], attributes: ("perm", new long[] { 1, 0 }))]);
            var sum = g.Add("Add", [y, g.Add("Mul", [xab, scaleName])], name: module + ".lora_add");
            g.ReplaceUses(y, sum, g.Producer(sum)!);
        }
        g.TopologicalSort();
        return model;
    }

    static global::Onnx.NodeProto? FindLinear(GraphEditor g, string module)
    {
        // dynamo: the weight keeps its module name (maybe behind a Transpose); torchscript: the node name has the path
        var weight = "model_." + module + ".weight";
        foreach (var consumer in g.Consumers(weight))
        {
            if (consumer.OpType is "MatMul" or "Gemm") return consumer;
            if (consumer.OpType == "Transpose") return g.Consumers(consumer.Output[0]).FirstOrDefault(n => n.OpType is "MatMul" or "Gemm");
        }
        // dynamo with folded weights (val_N): the module path is in the node's "namespace" metadata
        var scope = "/model_." + module + ": ";
        var byScope = g.Graph.Node.FirstOrDefault(n => n.OpType is "MatMul" or "Gemm"
            && n.MetadataProps.Any(m => m.Key == "namespace" && m.Value.Contains(scope)));
        if (byScope is not null) return byScope;
        var path = ".model_." + module + ".";
        return g.Graph.Node.FirstOrDefault(n => n.OpType is "MatMul" or "Gemm" && n.Name.Replace('/', '.') is var dotted
            && dotted.StartsWith(path) && dotted.Length == path.Length + n.OpType.Length);
    }

    public static Batch ReferenceBatch(Dictionary<string, SafeTensor> reference, string prefix = "", int index = -1)
    {
        long[] Take(string key)
        {
            var all = reference[prefix + key].AsInt64s();
            if (index < 0) return all;
            var shape = reference[prefix + key].Shape;
            long n = shape[1] * shape[2];
            return all.Skip((int)(index * n)).Take((int)n).ToArray();
        }
        var s = reference[prefix + "input_ids"].Shape;
        return new Batch(Take("input_ids"), Take("attention_mask"), Take("labels"), (int)s[^2], (int)s[^1]);
    }

    /// <summary>The reference's name for a parameter: PyTorch names the adapter "default".</summary>
    public static string ReferenceName(string parameter) =>
        parameter.Replace(".lora_A.weight", ".lora_A.default.weight").Replace(".lora_B.weight", ".lora_B.default.weight");
}
