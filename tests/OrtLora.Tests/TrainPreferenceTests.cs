using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>`ortlora train` on preference data (DPO) with the embedded tiny model: pairs made from its demo
/// instructions, the row's answer chosen and an evasive one rejected.</summary>
public class TrainPreferenceTests
{
    sealed class PreferenceRow { public string? prompt { get; set; } public string? chosen { get; set; } public string? rejected { get; set; } }
    sealed class Turn { public string? role { get; set; } public string? content { get; set; } }
    sealed class ConversationRow { public List<Turn>? chosen { get; set; } public List<Turn>? rejected { get; set; } }
    sealed class UnpairedRow { public string? prompt { get; set; } public string? completion { get; set; } public bool? label { get; set; } }

    /// <summary>Each demo prompt with its answer (desirable) and with an evasive reply (undesirable), as KTO's rows.</summary>
    static string UnpairedOf(string instructions, string name)
    {
        using var demo = ParquetDataset.Open(Tiny(instructions));
        var rows = demo.ReadAll().Select(r => (InstructionRecord)r.Record).ToList();
        return Shared.WriteParquet(rows.SelectMany((row, i) => new[]
        {
            new UnpairedRow { prompt = AlpacaTemplate.Prompt(row), completion = row.Output, label = true },
            new UnpairedRow { prompt = AlpacaTemplate.Prompt(row), completion = i % 2 == 0 ? "I do not know." : "I would rather not say.", label = false },
        }), name);
    }

    static readonly Lazy<string> Pairs = new(() => PairsOf("demo.parquet", "tiny_preferences.parquet"));
    static readonly Lazy<string> EvalPairs = new(() => PairsOf("demo_eval.parquet", "tiny_eval_preferences.parquet"));

    static string PairsOf(string instructions, string name)
    {
        using var demo = ParquetDataset.Open(Tiny(instructions));
        var rows = demo.ReadAll().Select(r => (InstructionRecord)r.Record).ToList();
        return Shared.WriteParquet(rows.Select((row, i) => new PreferenceRow
        {
            prompt = AlpacaTemplate.Prompt(row), chosen = row.Output, rejected = i % 2 == 0 ? "I do not know." : "I would rather not say.",
        }), name);
    }

    static string[] TrainArgs(string output, params string[] extra) =>
    [
        "train", Tiny("model.onnx"), "--data", Pairs.Value, "--target-modules", "all-linear", "--r", "8",
        "--learning-rate", "5e-3", "--logging-steps", "1", "--eval-steps", "15", "--plain-log",
        "-o", output, .. extra,
    ];

    static List<JsonNode> Metrics(string dir) => [.. File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)];

    /// <summary>The policy starts as its own reference: the first step's loss and the step-0 eval loss are ln 2 and
    /// every reward 0. Training then prefers the chosen answers on held-out pairs: eval rewards/accuracies near 1, margins
    /// positive, eval loss far below ln 2; the logged rewards are β times the log-probability moves.</summary>
    [Test]
    public void DpoLearnsToPreferTheChosenAnswers()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk(TrainArgs(dir, "--max-steps", "30", "--beta", "0.1", "--eval-split", "0.1", "--per-device-train-batch-size", "4"));
        Assert.That(run.Out, Does.Contain("preference data"));
        var metrics = Metrics(dir);
        var evals = metrics.Where(m => m["eval_loss"] is not null).ToList();
        var steps = metrics.Where(m => m["loss"] is not null).ToList();
        Assert.That(evals.Select(m => (int)m["step"]!), Is.EqualTo(new[] { 0, 15, 30 }));

        Assert.That((double)evals[0]["eval_loss"]!, Is.EqualTo(Math.Log(2)).Within(1e-6));
        Assert.That((double)evals[0]["eval_rewards/chosen"]!, Is.EqualTo(0).Within(1e-9));
        Assert.That((double)steps[0]["loss"]!, Is.EqualTo(Math.Log(2)).Within(1e-6), "step 1 computes its loss before its update");
        Assert.That((double)steps[0]["rewards/margins"]!, Is.EqualTo(0).Within(1e-9));

        var last = evals[^1];
        Assert.That((double)last["eval_loss"]!, Is.LessThan(0.35));
        Assert.That((double)last["eval_rewards/accuracies"]!, Is.GreaterThan(0.85));
        Assert.That((double)last["eval_rewards/margins"]!, Is.GreaterThan(1));
        Assert.That((double)last["eval_rewards/margins"]!,
            Is.EqualTo((double)last["eval_rewards/chosen"]! - (double)last["eval_rewards/rejected"]!).Within(1e-9));
        // β·(π − r): the chosen answers' reward is β times how far their mean log-probability rose
        double chosenRise = (double)last["eval_logps/chosen"]! - (double)evals[0]["eval_logps/chosen"]!;
        Assert.That((double)last["eval_rewards/chosen"]!, Is.EqualTo(0.1 * chosenRise).Within(1e-3 * Math.Abs(chosenRise) + 1e-6));
        Assert.That(metrics.Any(m => m["mean_token_accuracy"] is not null || m["perplexity"] is not null), Is.False, "DPO logs rewards, not token metrics");
        Assert.That(File.Exists(Path.Combine(dir, "adapter_model.safetensors")));
    }

    /// <summary>Gradient accumulation averages the DPO loss over the window's pairs: two micro-batches of 2 pairs give the
    /// step of one batch of 4 (same adapter to float32 rounding), and padding every batch to a fixed shape changes nothing.</summary>
    [Test]
    public void AccumulationAndFixedShapesTrainAsOneBatch()
    {
        string[] Short(string dir, params string[] extra) => TrainArgs(dir, ["--max-steps", "3", "--max-grad-norm", "0", .. extra]);
        var whole = Shared.TempDir();
        var accumulated = Shared.TempDir();
        var padded = Shared.TempDir();
        OrtloraOk(Short(whole, "--per-device-train-batch-size", "4"));
        OrtloraOk(Short(accumulated, "--gradient-accumulation-steps", "2", "--per-device-train-batch-size", "2"));
        OrtloraOk(Short(padded, "--per-device-train-batch-size", "4", "--pad-to-max-length", "--max-length", "320"));
        var reference = Lora.SafeTensors.Read(Path.Combine(whole, "adapter_model.safetensors"));
        foreach (var other in new[] { accumulated, padded })
        {
            var tensors = Lora.SafeTensors.Read(Path.Combine(other, "adapter_model.safetensors"));
            foreach (var (name, tensor) in reference)
            {
                Assert.That(Shared.MaxAbsDiff(tensors[name].AsFloats(), tensor.AsFloats()), Is.LessThan(2e-5f), $"{other}: {name}");
            }
        }
    }

    [Test]
    public void PreferenceDataRefusesWhatWouldSplitItsPairs()
    {
        var packed = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--packing"));
        Assert.That(packed.ExitCode, Is.Not.EqualTo(0));
        Assert.That(packed.Error, Does.Contain("tiny_preferences.parquet").And.Contain("--packing"));
        var smoothed = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--label-smoothing-factor", "0.1"));
        Assert.That(smoothed.Error, Does.Contain("DPO loss"));
        var eval = Ortlora("eval", Tiny("model.onnx"), "--data", Pairs.Value);
        Assert.That(eval.ExitCode, Is.Not.EqualTo(0));
        Assert.That(eval.Error, Does.Contain("tiny_preferences.parquet").And.Contain("--adapter DIR").And.Contain("--reference-model"));
    }

    /// <summary>A resumed run ends with the uninterrupted run's adapter byte for byte: the reference is the model as
    /// injected, which the resumed run rebuilds.</summary>
    [Test]
    public void ResumedRunEndsWithTheSameAdapter()
    {
        AssertResumedRunEndsLikeStraight(dir => TrainArgs(dir, "--max-steps", "6", "--save-steps", "3", "--per-device-train-batch-size", "2"), "checkpoint-6");
    }

    /// <summary>DPO after SFT: with --init-from the reference is the starting adapter (what TRL's ref_adapter_name gives),
    /// so the step-0 eval loss is ln 2 although that adapter's log-probabilities differ from the base model's.</summary>
    [Test]
    public void StartingFromAnAdapterMakesItTheReference()
    {
        var sft = Shared.TempDir();
        OrtloraOk(["train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--target-modules", "all-linear", "--r", "8", "--max-steps", "20",
            "--learning-rate", "5e-3", "--plain-log", "-o", sft]);
        var fromBase = Shared.TempDir();
        var fromSft = Shared.TempDir();
        OrtloraOk(TrainArgs(fromBase, "--max-steps", "1", "--eval-split", "0.1"));
        OrtloraOk([.. TrainArgs(fromSft, "--max-steps", "1", "--eval-split", "0.1"), "--init-from", sft]);
        var baseEval = Metrics(fromBase).First(m => m["eval_loss"] is not null);
        var sftEval = Metrics(fromSft).First(m => m["eval_loss"] is not null);
        Assert.That((double)sftEval["eval_loss"]!, Is.EqualTo(Math.Log(2)).Within(1e-6));
        Assert.That((double)sftEval["eval_logps/chosen"]! - (double)baseEval["eval_logps/chosen"]!, Is.GreaterThan(5),
            "the SFT adapter made the chosen answers more likely than the base model does");
    }

    [Test]
    public void ShowDataPrintsBothSequencesOfAPair()
    {
        var shown = OrtloraOk("show-data", Pairs.Value, "--tokenizer", Tiny(""), "--rows", "2");
        Assert.That(shown.Out, Does.Contain("preference data"));
        var headers = shown.Out.Split('\n').Where(l => l.StartsWith("── ")).ToList();
        Assert.That(headers.Select(h => h.Split(':')[0]), Is.EqualTo(new[] { "── row 0 chosen", "── row 0 rejected", "── row 1 chosen", "── row 1 rejected" }));
        Assert.That(shown.Out, Does.Contain("⟦I do not know.<|endoftext|>⟧").And.Contain("⟦I would rather not say.<|endoftext|>⟧"));
    }

    /// <summary>--loss-type and --label-smoothing reach the loss: where the policy is its own reference (a = b = 0) each
    /// type's eval loss is its value at zero: (1/(2β))² for IPO, 1 for the hinge, ln 2 for robust DPO, 2 ln 2 for nca_pair
    /// and bco_pair, 2·(1/(2β))² for sppo_hard, 1 for both APO losses, (ln 2 + 1)/2 for discopop, ½ log(¼ / (ε(1 − ε)))
    /// for exo_pair at ε 0.1; a type that takes no smoothing refuses it, and exo_pair refuses none.</summary>
    [TestCase("ipo", 25.0)]
    [TestCase("hinge", 1.0)]
    [TestCase("robust", 0.69314718)]
    [TestCase("nca_pair", 1.38629436)]
    [TestCase("bco_pair", 1.38629436)]
    [TestCase("sppo_hard", 50.0)]
    [TestCase("apo_zero", 1.0)]
    [TestCase("apo_down", 1.0)]
    [TestCase("discopop", 0.84657359)]
    [TestCase("exo_pair", 0.51082562)]
    [TestCase("aot", 0.69314718)]
    [TestCase("aot_unpaired", 0.69314718)]
    [TestCase("sigmoid_norm", 0.69314718)]
    [TestCase("sigmoid bco_pair", 0.83177662, "0.8 0.2")] // Σ w·(value at zero): 0.8 ln 2 + 0.2·2 ln 2
    public void LossTypesStartAtTheirValueAtZero(string lossType, double atZero, string? weights = null)
    {
        var dir = Shared.TempDir();
        string[] smoothing = lossType is "robust" or "exo_pair" ? ["--label-smoothing", "0.1"] : [];
        string[] weighted = weights is null ? [] : ["--loss-weights", .. weights.Split(' ')];
        OrtloraOk([.. TrainArgs(dir, "--max-steps", "2", "--eval-split", "0.1", "--beta", "0.1", "--loss-type"), .. lossType.Split(' '), .. smoothing, .. weighted]);
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).ToList();
        Assert.That((double)evals[0]["eval_loss"]!, Is.EqualTo(atZero).Within(1e-5 * atZero));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.Not.EqualTo(atZero).Within(1e-4 * atZero), "two steps move it");
        var refused = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "hinge", "--label-smoothing", "0.1"));
        Assert.That(refused.Error, Does.Contain("label smoothing applies to the sigmoid, robust, simpo, exo_pair and aot losses"));
        var exo = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "exo_pair"));
        Assert.That(exo.Error, Does.Contain("exo_pair needs --label-smoothing above 0"));
    }

    /// <summary>TRL's lists of loss types: --loss-weights must give one weight each, IPO (token means) combines with
    /// nothing, and a list holds DPOTrainer's losses only; an f-divergence goes with the losses of L only, and starts at
    /// ln 2 as DPO does.</summary>
    [Test]
    public void LossTypeListsRefuseWhatTheyCannotCombine()
    {
        var counted = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "sigmoid", "sft", "--loss-weights", "1"));
        Assert.That(counted.Error, Does.Contain("--loss-weights: 1 weights for 2 loss types"));
        var ipo = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "ipo", "sigmoid"));
        Assert.That(ipo.Error, Does.Contain("ipo cannot be combined"));
        var orpo = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "sigmoid", "orpo"));
        Assert.That(orpo.Error, Does.Contain("a list of loss types combines DPOTrainer's losses"));
        var fdpo = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "bco_pair", "--f-divergence-type", "js_divergence"));
        Assert.That(fdpo.Error, Does.Contain("f_divergence_type js_divergence remaps the log-ratios"));
        var forward = OrtloraOk(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--eval-split", "0.1", "--f-divergence-type", "forward_kl"));
        Assert.That(forward.Out, Does.Contain("eval_loss 0.6931"), "f-DPO starts at ln 2 too: equal scores");
        var unknown = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "sigmoid", "bogus"));
        Assert.That(unknown.ExitCode, Is.Not.EqualTo(0));
        Assert.That(unknown.Error, Does.Contain("bogus"));
    }

    /// <summary>`ortlora eval` on preference data scores a DPO adapter against the model without it, and a merged model
    /// against a --reference-model: both give train's last eval_loss and rewards on the same file.</summary>
    [Test]
    public void EvalScoresTheAdapterAndTheMergeAsTrainDid()
    {
        var dir = Shared.TempDir();
        OrtloraOk(TrainArgs(dir, "--max-steps", "12", "--eval-data", EvalPairs.Value, "--per-device-train-batch-size", "4", "--merge"));
        var last = Metrics(dir).Last(m => m["eval_loss"] is not null);
        (double Loss, double Margins, double Accuracies) Parse(string output)
        {
            double Value(string name) => double.Parse(System.Text.RegularExpressions.Regex.Match(output, name + @" (-?\d+\.\d+)").Groups[1].Value,
                System.Globalization.CultureInfo.InvariantCulture);
            return (Value("eval_loss"), Value("rewards/margins"), Value("rewards/accuracies"));
        }
        var viaAdapter = Parse(OrtloraOk("eval", Tiny("model.onnx"), "--data", EvalPairs.Value, "--adapter", dir).Out);
        var viaMerge = Parse(OrtloraOk("eval", Path.Combine(dir, "merged", "model.onnx"), "--data", EvalPairs.Value, "--reference-model", Tiny("model.onnx")).Out);
        Assert.That((double)last["eval_loss"]!, Is.LessThan(0.6), "the adapter has learned something to compare");
        foreach (var (what, scored, tolerance) in new[] { ("--adapter", viaAdapter, 2e-4), ("merged", viaMerge, 2e-3) })
        {
            Assert.That(scored.Loss, Is.EqualTo((double)last["eval_loss"]!).Within(tolerance), what);
            Assert.That(scored.Margins, Is.EqualTo((double)last["eval_rewards/margins"]!).Within(tolerance * 10), what);
            Assert.That(scored.Accuracies, Is.EqualTo((double)last["eval_rewards/accuracies"]!).Within(1e-4), what);
        }
    }

    /// <summary>--precompute-ref-log-probs (TRL's precompute_ref_log_probs): the reference's log-probabilities of every
    /// training pair, computed once in file order, train as those computed in each step (the same adapter to float32
    /// rounding, the same eval losses); a run resumed from a checkpoint recomputes them and ends byte for byte the same.</summary>
    [Test]
    public void PrecomputedReferencesTrainAsPerStepOnes()
    {
        string[] Run(string dir, params string[] extra) => TrainArgs(dir, ["--max-steps", "6", "--eval-split", "0.1",
            "--per-device-train-batch-size", "4", "--max-grad-norm", "0", .. extra]);
        var perStep = Shared.TempDir();
        var precomputed = Shared.TempDir();
        OrtloraOk(Run(perStep));
        var log = OrtloraOk(Run(precomputed, "--precompute-ref-log-probs", "--save-steps", "3"));
        Assert.That(log.Out, Does.Match(@"precomputed the reference log-probabilities of 2\d\d pairs"));
        var a = Lora.SafeTensors.Read(Path.Combine(perStep, "adapter_model.safetensors"));
        var b = Lora.SafeTensors.Read(Path.Combine(precomputed, "adapter_model.safetensors"));
        foreach (var (name, tensor) in a) Assert.That(Shared.MaxAbsDiff(b[name].AsFloats(), tensor.AsFloats()), Is.LessThan(2e-5f), name);
        double[] EvalLosses(string dir) => [.. Metrics(dir).Where(m => m["eval_loss"] is not null).Select(m => (double)m["eval_loss"]!)];
        Assert.That(EvalLosses(precomputed), Is.EqualTo(EvalLosses(perStep)).Within(1e-5));

        var adapter = File.ReadAllBytes(Path.Combine(precomputed, "adapter_model.safetensors"));
        File.Delete(Path.Combine(precomputed, "adapter_model.safetensors"));
        Directory.Delete(Path.Combine(precomputed, "checkpoint-6"), recursive: true);
        OrtloraOk(Run(precomputed, "--precompute-ref-log-probs", "--save-steps", "3", "--resume-from-checkpoint"));
        Assert.That(File.ReadAllBytes(Path.Combine(precomputed, "adapter_model.safetensors")), Is.EqualTo(adapter));
    }

    /// <summary>--loss-type orpo (TRL's ORPOTrainer): no reference model (no reference pass; `eval` needs none); the
    /// rewards are β times the mean log-probabilities, as ORPOTrainer logs them; training lowers the loss and prefers the
    /// chosen answers.</summary>
    [Test]
    public void OrpoTrainsWithoutAReference()
    {
        var dir = Shared.TempDir();
        OrtloraOk(TrainArgs(dir, "--max-steps", "20", "--eval-split", "0.1", "--loss-type", "orpo", "--beta", "0.1", "--per-device-train-batch-size", "4"));
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).ToList();
        foreach (var e in evals)
            Assert.That((double)e["eval_rewards/chosen"]!, Is.EqualTo(0.1 * (double)e["eval_logps/chosen"]!).Within(1e-6));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan((double)evals[0]["eval_loss"]! - 0.5));
        Assert.That((double)evals[^1]["eval_rewards/accuracies"]!, Is.GreaterThan((double)evals[0]["eval_rewards/accuracies"]!));
        var scored = OrtloraOk("eval", Tiny("model.onnx"), "--data", Pairs.Value, "--loss-type", "orpo", "--adapter", dir);
        Assert.That(scored.Out, Does.Contain("rewards/accuracies"));
        var refused = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "orpo", "--rpo-alpha", "0.5"));
        Assert.That(refused.Error, Does.Contain("rpo_alpha is for the DPO losses"));
    }

    /// <summary>Conversational pairs (TRL's implicit-prompt kind: two whole conversations that differ in the last
    /// answer) through `ortlora train`: read as preference data through the chat template, and DPO prefers the chosen
    /// answers on held-out conversations.</summary>
    [Test]
    public void ConversationalPairsTrainThroughTheChatTemplate()
    {
        using var demo = ParquetDataset.Open(Tiny("demo.parquet"));
        var rows = demo.ReadAll().Select(r => (InstructionRecord)r.Record).ToList();
        static Turn T(string role, string content) => new() { role = role, content = content };
        var path = Shared.WriteParquet(rows.Select((row, i) => new ConversationRow
        {
            chosen = [T("user", row.Instruction + (row.Input == "" ? "" : "\n" + row.Input)), T("assistant", row.Output)],
            rejected = [T("user", row.Instruction + (row.Input == "" ? "" : "\n" + row.Input)), T("assistant", i % 2 == 0 ? "I do not know." : "No.")],
        }), "tiny_chat_preferences.parquet");
        var dir = Shared.TempDir();
        var run = OrtloraOk(["train", Tiny("model.onnx"), "--data", path, "--target-modules", "all-linear", "--r", "8", "--learning-rate", "5e-3",
            "--max-steps", "20", "--eval-split", "0.1", "--per-device-train-batch-size", "4", "--plain-log", "-o", dir]);
        Assert.That(run.Out, Does.Contain("preference (conversational) data").And.Contain("template"));
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).ToList();
        Assert.That((double)evals[0]["eval_loss"]!, Is.EqualTo(Math.Log(2)).Within(1e-6));
        Assert.That((double)evals[^1]["eval_loss"]!, Is.LessThan(0.4));
        Assert.That((double)evals[^1]["eval_rewards/accuracies"]!, Is.GreaterThan(0.85));
    }

    /// <summary>KTO (TRL's KTOTrainer) on unpaired rows (prompt, completion, label): each demo prompt with its answer
    /// (desirable) and with an evasive reply (undesirable). Policy = reference at step 0, so each example's loss is
    /// 1 − σ(0) = 0.5 and kl 0; training lowers the held-out loss and puts the desirable rewards above the undesirable;
    /// the batches' KL rows give kl. Paired data with --loss-type kto, and unpaired data without it, are one error each.</summary>
    [Test]
    public void KtoTrainsOnUnpairedRows()
    {
        var path = UnpairedOf("demo.parquet", "tiny_unpaired.parquet");
        string[] OnUnpaired(string[] args) => [.. args.Select(a => a == Pairs.Value ? path : a)];
        var dir = Shared.TempDir();
        var run = OrtloraOk(OnUnpaired(TrainArgs(dir, "--max-steps", "30", "--eval-split", "0.1", "--loss-type", "kto", "--per-device-train-batch-size", "4")));
        Assert.That(run.Out, Does.Contain("unpaired-preference data"));
        var evals = Metrics(dir).Where(m => m["eval_loss"] is not null).ToList();
        Assert.That((double)evals[0]["eval_loss"]!, Is.EqualTo(0.5).Within(1e-6));
        Assert.That((double)evals[0]["eval_kl"]!, Is.EqualTo(0).Within(1e-9));
        var last = evals[^1];
        Assert.That((double)last["eval_loss"]!, Is.LessThan(0.3));
        Assert.That((double)last["eval_rewards/chosen"]!, Is.GreaterThan((double)last["eval_rewards/rejected"]!));
        Assert.That(last["eval_kl"], Is.Not.Null);
        Assert.That(last["eval_rewards/accuracies"], Is.Null, "KTO has no pairs to compare");
        var shown = OrtloraOk("show-data", path, "--tokenizer", Tiny(""), "--rows", "2").Out.Split('\n').Where(l => l.StartsWith("── ")).ToList();
        Assert.That(shown.Select(h => h.Split(':')[0]), Is.EqualTo(new[] { "── row 0", "── row 1" }), "show-data: one sequence a row");

        var paired = Ortlora(TrainArgs(Shared.TempDir(), "--max-steps", "1", "--loss-type", "kto"));
        Assert.That(paired.Error, Does.Contain("tiny_preferences.parquet").And.Contain("--loss-type kto takes unpaired preference data"));
        var unpaired = Ortlora(OnUnpaired(TrainArgs(Shared.TempDir(), "--max-steps", "1")));
        Assert.That(unpaired.Error, Does.Contain("tiny_unpaired.parquet").And.Contain("trains with --loss-type kto"));
    }

    /// <summary>`ortlora eval --loss-type kto` scores a KTO adapter against the model without it: train's last eval loss,
    /// rewards and kl on the same file with the same eval batches (the KL rows depend on them).</summary>
    [Test]
    public void KtoEvalScoresTheAdapterAsTrainDid()
    {
        var (train, eval) = (UnpairedOf("demo.parquet", "kto_train.parquet"), UnpairedOf("demo_eval.parquet", "kto_eval.parquet"));
        var dir = Shared.TempDir();
        OrtloraOk(["train", Tiny("model.onnx"), "--data", train, "--eval-data", eval, "--target-modules", "all-linear", "--r", "8", "--learning-rate", "5e-3",
            "--max-steps", "12", "--per-device-train-batch-size", "4", "--loss-type", "kto", "--plain-log", "-o", dir]);
        var last = Metrics(dir).Last(m => m["eval_loss"] is not null);
        var scored = OrtloraOk("eval", Tiny("model.onnx"), "--data", eval, "--adapter", dir, "--loss-type", "kto", "--per-device-eval-batch-size", "4").Out;
        double Value(string name) => double.Parse(System.Text.RegularExpressions.Regex.Match(scored, "(?<![/_])" + name + @" (-?\d+\.\d+)").Groups[1].Value,
            System.Globalization.CultureInfo.InvariantCulture);
        Assert.That((double)last["eval_loss"]!, Is.LessThan(0.45), "the adapter has learned something to compare");
        Assert.That(Value("eval_loss"), Is.EqualTo((double)last["eval_loss"]!).Within(2e-4));
        Assert.That(Value("rewards/margins"), Is.EqualTo((double)last["eval_rewards/margins"]!).Within(2e-3));
        Assert.That(Value("kl"), Is.EqualTo((double)last["eval_kl"]!).Within(2e-3));
        var unsaid = Ortlora("eval", Tiny("model.onnx"), "--data", eval, "--adapter", dir);
        Assert.That(unsaid.Error, Does.Contain("kto_eval.parquet").And.Contain("--loss-type kto"));
    }
}
