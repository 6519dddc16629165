using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The PEFT fixtures as the engine's tests need them: the base model with the fixture's adapter injected
/// (as `ortlora inject --init-from` does), and the reference batches.</summary>
public static class EngineFixtures
{
    public static OnnxModel InjectedModel(string arch, string export)
    {
        var model = OnnxModel.Load(Shared.Peft(arch, $"model.{export}.onnx"));
        LoraInjector.Inject(model, PeftAdapter.Load(Path.GetDirectoryName(Shared.Peft(arch, "adapter/adapter_config.json"))!));
        return model;
    }

    /// <summary>graphs/' LLaMA builder at the tiny shape (seed 3) with r=4 adapters on every linear layer.</summary>
    /// <summary>PEFT's loss, gradients, AdamW step and 20-step trajectory on a fixture export with these options:
    /// every row within its tolerance (PeftParity, what `ortlora verify` prints).</summary>
    public static void AssertPeftParity(OnnxModel model, string arch, TrainingSessionOptions options)
    {
        var reference = SafeTensors.Read(Shared.Peft(arch, "reference.safetensors"));
        var rows = PeftParity.Compare(PeftParity.Compute(model, reference, options: options), reference);
        Assert.That(rows.Where(r => !r.Passed).Select(r => $"{r.Quantity}: {r.MaxDiff:E2} > {r.Tolerance:E2}"), Is.Empty);
        Assert.That(rows, Has.Count.GreaterThanOrEqualTo(4));
    }

    public static OnnxModel TinyWithLora()
    {
        var model = Graphs.LlamaGraph.Build(Graphs.LlamaShape.Tiny, seed: 3);
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["all-linear"] });
        return model;
    }

    /// <summary>Feeds for running a training graph's <paramref name="proto"/> directly: the parameters at their initial
    /// values, and the batch inputs it takes as tokens 1 (positions 0..S-1).</summary>
    public static Dictionary<string, HostTensor> SyntheticFeeds(TrainingGraph graph, global::Onnx.ModelProto proto, int batch, int sequence)
    {
        var feeds = graph.InitialValues.ToDictionary(kv => kv.Key, kv => HostTensor.Of(kv.Value, graph.ParameterShapes[kv.Key]));
        var ids = Enumerable.Repeat(1L, batch * sequence).ToArray();
        foreach (var input in graph.BatchInputs)
            if (proto.Graph.Input.Any(i => i.Name == input))
                feeds[input] = HostTensor.Of(input.Contains("position") ? ids.Select((_, i) => (long)(i % sequence)).ToArray() : ids, [batch, sequence]);
        return feeds;
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
