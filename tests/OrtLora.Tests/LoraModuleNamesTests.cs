using OrtLora.Lora;

namespace OrtLora.Tests;

/// <summary>PEFT's module matching rules (peft.tuners.tuners_utils.check_target_module_exists) and the export
/// wrapper prefix, on names as real exports spell them.</summary>
public class LoraModuleNamesTests
{
    [TestCase("q_proj", "model.layers.0.self_attn.q_proj", true)]
    [TestCase("self_attn.q_proj", "model.layers.0.self_attn.q_proj", true)]
    [TestCase("proj", "model.layers.0.self_attn.q_proj", false)] // a suffix must start at a dot
    [TestCase("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.q_proj", true)]
    [TestCase("c_attn", "transformer.h.0.attn.c_attn", true)]
    [TestCase("attn", "transformer.h.0.attn.c_attn", false)]
    public void NamesMatchAsPeftMatchesThem(string target, string path, bool expected) =>
        Assert.That(ModuleNames.IsTarget([target], path, isHead: false), Is.EqualTo(expected));

    [TestCase(@".*\.(q|v)_proj", "model.layers.0.self_attn.q_proj", true)]
    [TestCase(@".*\.(q|v)_proj", "model.layers.0.self_attn.k_proj", false)]
    [TestCase(@"layers\.0\..*", "model.layers.0.self_attn.q_proj", false)] // full match, not search
    [TestCase(@".*layers\.1\..*_proj", "model.layers.1.mlp.up_proj", true)]
    public void OneRegexMustMatchTheWholePath(string regex, string path, bool expected) =>
        Assert.That(ModuleNames.IsTarget([regex], path, isHead: false), Is.EqualTo(expected));

    [Test]
    public void TheHeadIsTakenOnlyWhenNamed()
    {
        Assert.That(ModuleNames.IsTarget(["all-linear"], "lm_head", isHead: true), Is.False);
        Assert.That(ModuleNames.IsTarget(["all-linear"], "model.layers.0.mlp.up_proj", isHead: false), Is.True);
        Assert.That(ModuleNames.IsTarget([".*"], "lm_head", isHead: true), Is.False);
        Assert.That(ModuleNames.IsTarget([".*lm_head"], "lm_head", isHead: true), Is.True);
        Assert.That(ModuleNames.IsTarget(["q_proj", "lm_head"], "lm_head", isHead: true), Is.True);
    }

    [TestCase(new[] { "model_.model.layers.0.self_attn.q_proj", "model_.lm_head" }, "model_.")]
    [TestCase(new[] { "model_.model.layers.0.self_attn.q_proj", "model_.model.layers.1.self_attn.q_proj" }, "model_.")]
    [TestCase(new[] { "model.model.layers.0.self_attn.q_proj", "model.lm_head" }, "model.")] // a wrapper named model
    [TestCase(new[] { "model.layers.0.self_attn.q_proj", "lm_head" }, "")] // Hugging Face's own paths
    [TestCase(new[] { "layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj" }, "")] // children are layer indices
    [TestCase(new[] { "transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn" }, "")]
    public void WrapperPrefix(string[] paths, string expected) =>
        Assert.That(ModuleNames.WrapperPrefix(paths), Is.EqualTo(expected));

    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "model.layers.0.self_attn.q_proj", "lora_A")]
    [TestCase("base_model.model.transformer.h.1.mlp.c_fc.lora_B.weight", "transformer.h.1.mlp.c_fc", "lora_B")]
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight", "model.layers.0.self_attn.q_proj", "lora_A")]
    public void AdapterKeys(string key, string module, string kind)
    {
        Assert.That(ModuleNames.ParseAdapterKey(key), Is.EqualTo((module, kind)));
        if (!key.Contains(".default.")) Assert.That(kind == "lora_A" ? ModuleNames.LoraAKey(module) : ModuleNames.LoraBKey(module), Is.EqualTo(key));
    }

    [Test]
    public void PeftDefaultsByArchitecture()
    {
        Assert.That(ModuleNames.DefaultTargets(["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc"]), Is.EqualTo(new[] { "c_attn" }));
        Assert.That(ModuleNames.DefaultTargets(["model.layers.0.self_attn.qkv_proj", "model.layers.0.mlp.gate_up_proj"]), Is.EqualTo(new[] { "qkv_proj" }));
        Assert.That(ModuleNames.DefaultTargets(["encoder.layer.0.attention.self.query"]), Is.EqualTo(new[] { "query", "value" }));
        Assert.That(ModuleNames.DefaultTargets(["fc1", "fc2"]), Is.Null);
    }
}
