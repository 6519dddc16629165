using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>ORT's runtime adapters on the PEFT fixture: one session over the injected llama (fresh adapters, B zero)
/// reproduces PEFT's logits with the fixture adapter active and the base logits with none, switching per request.</summary>
public class OnnxAdapterFixtureTests
{
    static float[] Logits(InferenceSession session, Dictionary<string, HostTensor> feeds, OrtLoraAdapter? adapter)
    {
        using var runOptions = new RunOptions();
        if (adapter is not null) runOptions.AddActiveLoraAdapter(adapter);
        var values = feeds.ToDictionary(f => f.Key, f => f.Value.ToOrtValue());
        try
        {
            using var outputs = session.Run(runOptions, values.Keys.ToList(), values.Values.ToList(), ["logits"]);
            return outputs[0].GetTensorDataAsSpan<float>().ToArray();
        }
        finally { foreach (var v in values.Values) v.Dispose(); }
    }

    [TestCase("model.dynamo.onnx")]
    [TestCase("model.torchscript.onnx")]
    public void InjectedLlamaServesThePeftAdapterThroughOrtsAdapterApi(string file)
    {
        var adapterDir = Shared.Peft("llama", "adapter");
        var reference = SafeTensors.Read(Shared.Peft("llama", "reference.safetensors"));
        var feeds = Shared.Feeds(reference);
        using var model = OnnxModel.Load(Shared.Peft("llama", file));
        var fixtureConfig = PeftAdapter.Load(adapterDir).Config;
        var lora = LoraInjector.Inject(model, new LoraConfig
        {
            R = fixtureConfig.R, LoraAlpha = fixtureConfig.LoraAlpha, TargetModules = fixtureConfig.TargetModules, Seed = 3,
        });
        var parameters = LoraRuntimeForm.MakeOverridable(model);
        Assert.That(parameters, Has.Count.EqualTo(2 * 7 * 2), "q,k,v,o,gate,up,down × 2 layers × (A, B)");

        var dir = Shared.TempDir();
        var file1 = Path.Combine(dir, "fixture.onnx_adapter");
        OnnxAdapterFile.Write(file1, RuntimeAdapters.FromPeftDirectory(adapterDir));
        // The same ΔW re-factored by SVD (rank 4, lora_alpha 4): different A and B, rescaled to the model's scale 2.
        var svdDir = Path.Combine(dir, "svd");
        AdapterCombiner.Combine([(adapterDir, 1.0)], svdDir, rank: 4);

        using var session = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
        using var fixture = RuntimeAdapters.Load(file1, session);
        using var refactored = RuntimeAdapters.Load(svdDir, session, modelScale: lora.Config.Scale);
        var expected = reference["logits"].AsFloats();
        var expectedBase = reference["logits_base"].AsFloats();
        Assert.That(Shared.MaxAbsDiff(Logits(session, feeds, fixture), expected), Is.LessThan(1e-4f), "fixture adapter");
        Assert.That(Shared.MaxAbsDiff(Logits(session, feeds, null), expectedBase), Is.LessThan(1e-4f), "no adapter: B zero");
        Assert.That(Shared.MaxAbsDiff(Logits(session, feeds, refactored), expected), Is.LessThan(1e-4f), "svd-refactored adapter");
        Assert.That(Shared.MaxAbsDiff(Logits(session, feeds, fixture), expected), Is.LessThan(1e-4f), "fixture adapter again");
    }

    [Test]
    public void AdapterForOtherModulesIsRejectedByName()
    {
        using var model = OnnxModel.Load(Shared.Peft("llama", "model.dynamo.onnx"));
        LoraInjector.Inject(model, new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = ["q_proj"] });
        LoraRuntimeForm.MakeOverridable(model);
        using var session = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
        var e = Assert.Throws<OrtLoraException>(() => RuntimeAdapters.Load(Shared.Peft("llama", "adapter"), session))!;
        Assert.That(e.Message, Does.Contain("k_proj").Or.Contain("v_proj").Or.Contain("o_proj").Or.Contain("mlp"));
        Assert.That(e.Message, Does.Contain("not an input of the model"));
    }
}
