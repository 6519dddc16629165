using OrtLora.Graphs;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>GRPO's sampler: a group of completions decoded side by side in one batch per step draws what each would
/// alone, with and without the export's KV cache, and with the adapter it is given.</summary>
public class GrpoSamplerTests
{
    static OnnxModel Injected(bool kvCache)
    {
        var model = LlamaGraph.Build(LlamaShape.Tiny, 42, new LlamaOptions(WithKvCache: kvCache, WithPositionIds: kvCache));
        LoraInjector.Inject(model, new LoraConfig { R = 4, TargetModules = ["q_proj", "v_proj"] });
        return model;
    }

    static List<GenerationOptions> Options(int rows, int stop) => [.. Enumerable.Range(0, rows).Select(r => new GenerationOptions
    {
        MaxNewTokens = 12, Temperature = 1.0, TopK = 40, Seed = 1000 + r, StopTokenIds = [stop], RepetitionPenalty = r % 2 == 0 ? 1.0 : 1.3,
    })];

    [TestCase(false)]
    [TestCase(true)]
    public void AGroupDrawsWhatEachCompletionDrawsAlone(bool kvCache)
    {
        using var model = Injected(kvCache);
        using var options = OrtRun.DefaultOptions();
        using var sampler = new PolicySampler(model, options);
        // B moved from zero, so that the adapter changes the logits
        var parameters = model.Graph.Initializer.Where(t => ModuleNames.IsLoraA(t.Name) || ModuleNames.IsLoraB(t.Name))
            .ToDictionary(t => t.Name, t => model.ReadFloats(t).Select((v, i) => ModuleNames.IsLoraB(t.Name) ? 0.05f * MathF.Sin(i) : v).ToArray());
        sampler.SetParameters(parameters, model.Graph.Initializer.Where(t => parameters.ContainsKey(t.Name)).ToDictionary(t => t.Name, t => t.Dims.ToArray()));
        int[] prompt = [5, 17, 3, 99, 42];
        // a stop token some rows draw: the most likely first token under the moved adapter
        var first = sampler.SampleGroup(prompt, [new GenerationOptions { MaxNewTokens = 1, Temperature = 0 }])[0].Ids[0];
        var group = sampler.SampleGroup(prompt, Options(6, first));
        var alone = Options(6, first).Select(o => sampler.Sample(prompt, o)).ToList();
        Assert.That(group.Select(g => g.Ids), Is.EqualTo(alone.Select(a => a.Ids)));
        Assert.That(group.Select(g => g.Truncated), Is.EqualTo(alone.Select(a => a.Truncated)));
        Assert.That(group.Count(g => !g.Truncated), Is.GreaterThan(0), "some rows stop early");
        Assert.That(group.Count(g => g.Truncated), Is.GreaterThan(0), "some rows run to the limit");
        Assert.That(group.Where(g => g.Truncated).Select(g => g.Ids.Count), Is.All.EqualTo(12));
    }
}
