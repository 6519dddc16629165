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
