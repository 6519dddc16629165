using Microsoft.ML.OnnxRuntime;
using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>The deployment path as a user takes it: inject --runtime-adapters writes a model that a plain ORT session
/// loads once; adapter files exported by ortlora are switched per request through ORT's own adapter API.</summary>
public class RuntimeAdapterCliTests
{
    [TestCase("model.dynamo.onnx")]
    [TestCase("model.torchscript.onnx")]
    public void InjectedRuntimeFormServesExportedAdaptersPerRequest(string export)
    {
        var dir = Shared.TempDir();
        var reference = Reference("llama");
        var baseModel = Path.Combine(dir, "base.onnx");
        OrtloraOk("inject", Shared.Peft("llama", export), "-o", baseModel, "--r", "4", "--lora-alpha", "8",
            "--target-modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", "--runtime-adapters");
        var trained = Path.Combine(dir, "peft.onnx");
        OrtloraOk("inject", Shared.Peft("llama", export), "-o", trained, "--init-from", Shared.Peft("llama", "adapter"));
        var adapterFile = Path.Combine(dir, "peft.onnx_adapter");
        OrtloraOk("export-adapter", trained, "--format", "onnx-adapter", "-o", adapterFile);

        using var options = OrtRun.DefaultOptions();
        using var session = new InferenceSession(baseModel, options);
        using var adapter = OrtLoraAdapter.Create(adapterFile, null);
        var feeds = Shared.Feeds(reference);
        float[] Run(OrtLoraAdapter? active)
        {
            var inputs = feeds.ToDictionary(f => f.Key, f => f.Value.ToOrtValue());
            using var run = new RunOptions();
            if (active is not null) run.AddActiveLoraAdapter(active);
            using var outputs = session.Run(run, inputs, ["logits"]);
            foreach (var v in inputs.Values) v.Dispose();
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        Assert.That(Shared.MaxAbsDiff(Run(adapter), reference["logits"].AsFloats()), Is.LessThan(1e-4f), "with the adapter: PEFT's logits");
        Assert.That(Shared.MaxAbsDiff(Run(null), reference["logits_base"].AsFloats()), Is.LessThan(1e-5f), "without: the base model");
        Assert.That(Shared.MaxAbsDiff(Run(adapter), reference["logits"].AsFloats()), Is.LessThan(1e-4f), "and again, same session");
    }

    /// <summary>A model injected with --runtime-adapters (A and B also listed as graph inputs) trains as the plain injected
    /// one does, to the same adapter bytes, and takes the data-driven inits (EVA resizes the listed inputs too).</summary>
    [Test]
    public void ARuntimeFormModelTrainsAsThePlainOne()
    {
        var dir = Shared.TempDir();
        string Injected(string name, params string[] extra)
        {
            var path = Path.Combine(dir, name);
            OrtloraOk(["inject", Tiny("model.onnx"), "-o", path, "--target-modules", "all-linear", "--r", "4", .. extra]);
            return path;
        }
        string Trained(string model, string name)
        {
            var output = Path.Combine(dir, name);
            OrtloraOk("train", model, "--data", Tiny("demo.parquet"), "--tokenizer", Tiny(""), "-o", output, "--max-steps", "2", "--plain-log", "--max-seq-length", "128");
            return Path.Combine(output, "adapter_model.safetensors");
        }
        Assert.That(File.ReadAllBytes(Trained(Injected("runtime.onnx", "--runtime-adapters"), "runtime")),
            Is.EqualTo(File.ReadAllBytes(Trained(Injected("plain.onnx"), "plain"))));
        Assert.That(File.ReadAllBytes(Trained(Injected("runtime-eva.onnx", "--runtime-adapters", "--init-lora-weights", "eva"), "runtime-eva")),
            Is.EqualTo(File.ReadAllBytes(Trained(Injected("plain-eva.onnx", "--init-lora-weights", "eva"), "plain-eva"))));
    }
}
