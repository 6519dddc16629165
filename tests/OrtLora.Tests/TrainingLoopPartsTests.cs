using System.Text.Json.Nodes;
using OrtLora.Lora;
using OrtLora.Training;

namespace OrtLora.Tests;

public class TrainingLoopPartsTests
{
    // Values of transformers.get_scheduler(...) lambdas (warmup 2, 10 steps), written out from its definitions.
    [TestCase("linear", 0, 0.0)]
    [TestCase("linear", 1, 0.5)]
    [TestCase("linear", 2, 1.0)]
    [TestCase("linear", 6, 0.5)]
    [TestCase("linear", 10, 0.0)]
    [TestCase("cosine", 2, 1.0)]
    [TestCase("cosine", 6, 0.5)]
    [TestCase("cosine", 4, 0.8535533905932737)]
    [TestCase("constant", 0, 1.0)] // get_constant_schedule takes no warmup
    [TestCase("constant", 1, 1.0)]
    [TestCase("constant_with_warmup", 1, 0.5)]
    [TestCase("constant_with_warmup", 7, 1.0)]
    [TestCase("cosine_with_restarts", 1, 0.5)]
    [TestCase("cosine_with_restarts", 6, 0.5)]
    [TestCase("cosine_with_restarts", 10, 0.0)]
    [TestCase("polynomial", 6, 0.50005)] // ((1e-3 − 1e-7)·0.5 + 1e-7) / 1e-3
    [TestCase("polynomial", 10, 1e-4)] // lr_end / lr
    [TestCase("inverse_sqrt", 1, 0.5)]
    [TestCase("inverse_sqrt", 2, 1.0)]
    [TestCase("inverse_sqrt", 8, 0.5)] // 1 / √((8 + 0) / 2)
    public void LrScheduleMatchesTransformers(string type, int step, double factor)
    {
        Assert.That(LrSchedule.At(type, 1e-3, step, warmup: 2, total: 10), Is.EqualTo(1e-3 * factor).Within(1e-15));
    }

    // lr_scheduler_kwargs, as transformers' lambdas take them (warmup 2, 10 steps).
    [TestCase("cosine_with_min_lr", """{"min_lr_rate": 0.1}""", 6, 0.55)]
    [TestCase("cosine_with_min_lr", """{"min_lr_rate": 0.1}""", 10, 0.1)]
    [TestCase("cosine_with_min_lr", """{"min_lr": 1e-4}""", 6, 0.55)]
    [TestCase("cosine_with_restarts", """{"num_cycles": 2}""", 4, 0.5)]
    [TestCase("cosine_with_restarts", """{"num_cycles": 2}""", 6, 1.0)]
    [TestCase("cosine", """{"num_cycles": 1}""", 6, 0.0)]
    [TestCase("polynomial", """{"power": 2, "lr_end": 0}""", 6, 0.25)]
    [TestCase("inverse_sqrt", """{"timescale": 8}""", 8, 0.7559289460184544)] // 1 / √((8 + 6) / 8)
    // warmup_stable_decay: 2 warmup, 10 − 2 − 4 = 4 stable, 4 decay steps
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4}""", 1, 0.5)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4}""", 3, 1.0)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4}""", 6, 1.0)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4}""", 7, 0.8535533905932737)] // ½(1 + cos(π/4))
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4}""", 10, 0.0)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4, "min_lr_ratio": 0.1, "warmup_type": "1-sqrt", "decay_type": "linear"}""", 1, 0.36360389693210724)] // (1 − √½)·0.9 + 0.1
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4, "min_lr_ratio": 0.1, "warmup_type": "1-sqrt", "decay_type": "linear"}""", 8, 0.55)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 4, "min_lr_ratio": 0.1, "warmup_type": "1-sqrt", "decay_type": "linear"}""", 12, 0.1)]
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 2, "num_stable_steps": 1, "warmup_type": "cosine"}""", 1, 0.5)] // ½(1 − cos(π/2))
    [TestCase("warmup_stable_decay", """{"num_decay_steps": 2, "num_stable_steps": 1}""", 4, 0.5)] // decay from step 3: ½(1 + cos(π/2))
    // cosine_warmup_with_min_lr: the warmup reaches 1 at its last step, the cosine counts from the step after
    [TestCase("cosine_warmup_with_min_lr", """{"min_lr_rate": 0.1}""", 0, 0.5)]
    [TestCase("cosine_warmup_with_min_lr", """{"min_lr_rate": 0.1}""", 1, 1.0)]
    [TestCase("cosine_warmup_with_min_lr", """{"min_lr_rate": 0.1}""", 2, 0.9657457896300791)] // ½(1 + cos(π/8))·0.9 + 0.1
    [TestCase("cosine_warmup_with_min_lr", """{"min_lr_rate": 0.1, "warmup_lr_rate": 0.2}""", 0, 0.2)]
    [TestCase("cosine_warmup_with_min_lr", """{"min_lr_rate": 0.1, "warmup_lr_rate": 0.2}""", 1, 1.0)]
    public void LrSchedulerKwargsMatchTransformers(string type, string kwargs, int step, double factor)
    {
        Assert.That(LrSchedule.At(type, 1e-3, step, warmup: 2, total: 10, LrSchedule.ParseKwargs(kwargs)), Is.EqualTo(1e-3 * factor).Within(1e-15));
    }

    // The Trainer's get_decay_parameter_names and PEFT's create_loraplus_optimizer groups, on the names ortlora gives parameters.
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", false, true, false)]
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", false, true, true)]
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias", true, false, true)]
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.bias", true, false, true)]
    [TestCase("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector", true, true, true)]
    [TestCase("base_model.model.model.embed_tokens.lora_embedding_A", false, true, false)]
    [TestCase("base_model.model.model.embed_tokens.lora_embedding_B", false, true, false)]
    [TestCase("base_model.model.lm_head.modules_to_save.default.weight", false, true, false)]
    [TestCase("base_model.model.model.norm.modules_to_save.default.weight", true, false, true)]
    [TestCase("base_model.model.model.layers.0.post_attention_layernorm.weight", true, false, true)]
    [TestCase("base_model.model.transformer.h.0.ln_1.weight", true, true, true)] // neither name rule; the Trainer goes by the LayerNorm type here
    public void WeightDecayAndLoraPlusGroupsFollowTheirNames(string parameter, bool isVector, bool decays, bool groupB)
    {
        Assert.That(TrainingArguments.DecaysWeight(parameter), Is.EqualTo(decays), "weight decay");
        Assert.That(TrainingArguments.LoraPlusGroupB(parameter, isVector), Is.EqualTo(groupB), "LoRA+ group B");
    }

    /// <summary>reduce_lr_on_plateau against torch's ReduceLROnPlateau, its rules written out: better means below best·(1 −
    /// threshold); after more than `patience` evaluations that are not, the rate is multiplied by `factor` (not below
    /// min_lr), and `cooldown` evaluations follow in which bad ones do not count.</summary>
    [TestCase("""{"patience": 2, "factor": 0.5}""", new[] { 1.0, 0.9, 0.95, 0.96, 0.97, 0.5, 0.6 }, new[] { 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5 })]
    [TestCase("""{"patience": 0, "factor": 0.5, "cooldown": 1}""", new[] { 1.0, 1.1, 1.2, 1.3, 1.4 }, new[] { 1.0, 0.5, 0.5, 0.25, 0.25 })]
    [TestCase("""{"patience": 0, "factor": 0.5, "threshold": 0.5}""", new[] { 1.0, 0.6, 0.4, 0.3 }, new[] { 1.0, 0.5, 0.5, 0.25 })] // 0.4 < 1.0·0.5 is better; 0.3 ≥ 0.4·0.5 is not
    [TestCase("""{"patience": 0, "factor": 0.1, "min_lr": 0.05}""", new[] { 1.0, 2.0, 3.0, 4.0 }, new[] { 1.0, 0.1, 0.05, 0.05 })]
    [TestCase("""{"patience": 0, "mode": "max", "threshold_mode": "abs", "threshold": 0.1}""", new[] { 1.0, 1.05, 1.2 }, new[] { 1.0, 0.1, 0.1 })]
    public void ReduceLrOnPlateauFollowsTorch(string kwargs, double[] metrics, double[] lrs)
    {
        var k = LrSchedule.ParseKwargs(kwargs);
        var state = ReduceLrOnPlateau.Start(1.0, k);
        var seen = new List<double>();
        foreach (var metric in metrics)
        {
            state = ReduceLrOnPlateau.Step(state, metric, k);
            seen.Add(state.Lr);
        }
        Assert.That(seen, Is.EqualTo(lrs).Within(1e-12));
        var restored = TrainerState.FromJson(JsonNode.Parse((new TrainerState(3, 0, 0, 42, 0) { Plateau = state }).ToJson().ToJsonString())!);
        Assert.That(restored.Plateau, Is.EqualTo(state), "kept in checkpoints");
    }

    [Test]
    public void SchedulerArgumentsThatCannotWorkAreOneError()
    {
        Assert.That(() => LrSchedule.At("cosine_with_min_lr", 1e-3, 5, 2, 10), Throws.TypeOf<OrtLoraException>().With.Message.Contain("min_lr or min_lr_rate"));
        Assert.That(() => LrSchedule.ParseKwargs("num_cycles=2"), Throws.TypeOf<OrtLoraException>().With.Message.Contain("--lr-scheduler-kwargs"));
        Assert.That(() => LrSchedule.At("warmup_stable_decay", 1e-3, 5, 2, 10), Throws.TypeOf<OrtLoraException>().With.Message.Contain("num_decay_steps"));
        Assert.That(() => LrSchedule.At("warmup_stable_decay", 1e-3, 5, 2, 10, LrSchedule.ParseKwargs("""{"num_decay_steps": 2, "decay_type": "exp"}""")),
            Throws.TypeOf<OrtLoraException>().With.Message.Contain("decay_type 'exp' is not one of linear, cosine, 1-sqrt"));
        Assert.That(() => LrSchedule.At("polynomial", 1e-3, 5, 2, 10, LrSchedule.ParseKwargs("""{"lr_end": 0.1}""")),
            Throws.TypeOf<OrtLoraException>().With.Message.Contain("lr_end"));
    }

    [Test]
    public void WarmupRatioRoundsUpLikeTransformers()
    {
        Assert.That(LrSchedule.WarmupSteps(new TrainingArguments { WarmupRatio = 0.03 }, 100), Is.EqualTo(3));
        Assert.That(LrSchedule.WarmupSteps(new TrainingArguments { WarmupRatio = 0.1 }, 15), Is.EqualTo(2));
        Assert.That(LrSchedule.WarmupSteps(new TrainingArguments { WarmupRatio = 0.1, WarmupSteps = 7 }, 15), Is.EqualTo(7));
    }

    [Test]
    public void CheckpointsAreWholeListedInOrderAndPruned()
    {
        var dir = Shared.TempDir();
        var config = new LoraConfig { R = 2 };
        var adapter = new Dictionary<string, SafeTensor> { ["x.lora_A.weight"] = SafeTensor.FromFloats([2, 2], [1, 2, 3, 4]) };
        foreach (var step in new[] { 10, 2, 30 })
            Checkpoint.Save(dir, new TrainerState(step, 0, step, 7, step * 100), config, adapter, adapter);
        Directory.CreateDirectory(Path.Combine(dir, "checkpoint-99")); // an incomplete folder (no state) is never picked
        Assert.That(Checkpoint.List(dir).Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint-2", "checkpoint-10", "checkpoint-30" }));
        var (state, a, _) = Checkpoint.Load(Checkpoint.Latest(dir)!);
        Assert.That(state, Is.EqualTo(new TrainerState(30, 0, 30, 7, 3000)));
        Assert.That(a["x.lora_A.weight"].AsFloats(), Is.EqualTo(new float[] { 1, 2, 3, 4 }));
        Checkpoint.Prune(dir, 2);
        Assert.That(Checkpoint.List(dir).Select(Path.GetFileName), Is.EqualTo(new[] { "checkpoint-10", "checkpoint-30" }));
    }

    [Test]
    public void MetricsLogReloadDropsStepsAfterTheCheckpoint()
    {
        var dir = Shared.TempDir();
        var log = new TrainingLog(dir);
        for (int s = 1; s <= 5; s++) log.Append(new JsonObject { ["step"] = s, ["loss"] = 5.0 - s });
        var resumed = new TrainingLog(dir);
        resumed.Reload(upToStep: 3);
        Assert.That(resumed.TrainLoss.Select(p => p.Step), Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")), Has.Length.EqualTo(3));
        resumed.SavePlot(Path.Combine(dir, "loss.png"));
        Assert.That(new FileInfo(Path.Combine(dir, "loss.png")).Length, Is.GreaterThan(1000));
    }
}
