using System.Diagnostics;
using System.Text.Json.Nodes;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>What `ortlora train` was asked to do.</summary>
public sealed record TrainJob
{
    public required string ModelPath { get; init; }
    public required string DataPath { get; init; }
    public string? EvalDataPath { get; init; }
    /// <summary>Tokenizer file or directory; null: the files beside the model.</summary>
    public string? TokenizerPath { get; init; }
    /// <summary>Used when the model is not injected yet.</summary>
    public LoraConfig Lora { get; init; } = new();
    public string? InitFrom { get; init; }
    public DataOptions Data { get; init; } = new();
    public TrainingArguments Args { get; init; } = new();
    /// <summary>null: start fresh; "": the latest checkpoint in OutputDir; else a checkpoint folder.</summary>
    public string? ResumeFromCheckpoint { get; init; }
    /// <summary>Also write the merged model (OutputDir/merged/model.onnx) with the tokenizer files.</summary>
    public bool Merge { get; init; }
    /// <summary>Knowledge distillation from a teacher (`ortlora distill`, TRL's GKD); null: the data's own loss.</summary>
    public DistillationOptions? Distillation { get; init; }
    /// <summary>Sequence classification (`ortlora classify`, transformers' AutoModelForSequenceClassification with the
    /// Trainer): text and label data; null: the data's own loss.</summary>
    public ClassificationOptions? Classification { get; init; }
}

public sealed record StepReport(int Step, int TotalSteps, int Epoch, double Loss, double LearningRate, double GradNorm, double TokensPerSecond);

/// <summary>How the loop tells the outside what happens (the CLI draws a progress bar or prints lines).</summary>
public interface ITrainingReporter
{
    void Started(int totalSteps, int startStep, string summary);
    void Stepped(StepReport report);
    /// <param name="metrics">what else to show: perplexity and mean_token_accuracy (the share of counted tokens whose arg-max
    /// is the target), or with preference data DPO's rewards/accuracies and rewards/margins</param>
    void Evaluated(int step, double loss, IReadOnlyList<(string Name, double Value)> metrics);
    void Info(string message);
}

public sealed record TrainResult(int Steps, double? FirstEvalLoss, double? LastEvalLoss, double LastTrainLoss, string AdapterDir, string? MergedModel);

/// <summary>The training loop, top to bottom like nanoGPT's train.py: model, tokenizer, data, engine, loop (lr schedule,
/// gradient accumulation, logging, eval, checkpoints), then the adapter in PEFT's format and optionally the merged model.</summary>
public static partial class Trainer
{
    public static TrainResult Run(TrainJob job, ITrainingReporter reporter)
    {
        var args = job.Args;
        job.Distillation?.Validate();
        Directory.CreateDirectory(args.OutputDir);

        using var model = OnnxModel.Load(job.ModelPath);
        var modelDir = Path.GetDirectoryName(Path.GetFullPath(job.ModelPath))!;
        var tokenizerPath = job.TokenizerPath ?? modelDir;
        var tokenizer = TokenizerLoader.Load(tokenizerPath);
        bool rewardModel = args.Preference.IsRewardModel;
        var classes = job.Classification is { } classification ? ReadClasses(job, classification) : null;
        bool classifier = classes is not null, perToken = job.Classification?.PerToken == true;
        var loraConfig = rewardModel || classifier ? Reward.RewardModeling.Prepare(model, job, tokenizer, reporter, classes, perToken) : job.Lora;
        var lora = InjectUnlessInjected(model, job.InitFrom, loraConfig);

        // Tokenizer and data.
        VocabularyCheck.Require(tokenizer, model);
        var tokenizerDir = Directory.Exists(tokenizerPath) ? tokenizerPath : Path.GetDirectoryName(Path.GetFullPath(tokenizerPath))!;
        var dataOptions = job.Data with { BatchSize = args.PerDeviceTrainBatchSize,
            EvalBatchSize = args.PerDeviceEvalBatchSize > 0 ? args.PerDeviceEvalBatchSize : args.PerDeviceTrainBatchSize, Seed = args.Seed,
            PadToMaxLength = job.Data.PadToMaxLength || args.CudaGraphs, RewardModeling = rewardModel,
            Format = perToken ? DatasetFormat.TokenClassification : classifier ? DatasetFormat.Classification : job.Data.Format, ClassLabels = classes,
            LabelAllTokens = job.Classification?.LabelAllTokens == true };
        using var data = TrainingData.Open(job.DataPath, tokenizer, dataOptions, job.EvalDataPath, TokenizerConfig.Read(tokenizerDir));
        if (job.Distillation is not null && data.IsPreference)
            throw new OrtLoraException($"{job.DataPath}: distillation trains on completions (text, instruction, prompt-completion or chat data), not on preference pairs");
        if (job.Distillation is { Lmbda: > 0 } or { SeqKd: true } && dataOptions.PadToMaxLength)
            throw new OrtLoraException("--lmbda > 0 and --seq-kd sample completions of their own lengths: not with --pad-to-max-length or --cuda-graphs");
        if (data.IsClassification && !classifier)
            throw new OrtLoraException($"{job.DataPath}: classification data ({(data.IsTokenClassification ? "words and their labels" : "text and label")}) trains a classifier: " +
                $"`ortlora classify{(data.IsTokenClassification ? " --task-type TOKEN_CLS" : "")}`");
        if (rewardModel && !data.IsPreference)
            throw new OrtLoraException($"{job.DataPath}: a reward model trains on preference pairs (chosen and rejected columns); this is {ParquetDataset.FormatName(data.Train.Format)} data");

        // EVA and CorDA (init_lora_weights "eva", "corda"): A (and B) from the training batches' activations. EVA
        // redistributes the ranks, which a resumed run takes from its checkpoint, which holds the values.
        var resumePath = Checkpoint.ToResume(job.ResumeFromCheckpoint, args.OutputDir);
        if (lora.Config.Init == "eva")
        {
            if (resumePath is null) Eva.Initialize(model, lora, epoch => data.Batches(new DataPosition(epoch, 0)), reporter, labelsPerToken: !classifier);
            else Eva.RestoreRanks(model, lora, Checkpoint.Load(resumePath).Optimizer, resumePath);
        }
        // CorDA rewrites the base weights too: a resumed run rebuilds them the same way (its A and B then come from the checkpoint)
        if (lora.Config.Init == "corda") Corda.Initialize(model, lora, data.Batches(new DataPosition(0, 0)), reporter);

        var best = new BestModel(args);
        if (best.Tracking && (!data.HasEval || args.EvalStrategy == "no"))
            throw new OrtLoraException($"{job.DataPath}: --load-best-model-at-end and --early-stopping-patience compare evaluations during " +
                "training: give --eval-data or --eval-split, and an --eval-strategy other than no");

        if (data.IsPreference) data.RequireLoss(args.Preference);
        if (data.IsUnpaired && args.PrecomputeRefLogProbs)
            throw new OrtLoraException($"{job.DataPath}: KTO's KL rows pair each prompt with another row's completion in its batch; --precompute-ref-log-probs is for paired data");
        if (data.IsPreference && args.LabelSmoothingFactor > 0)
            throw new OrtLoraException($"{job.DataPath}: preference data trains with the DPO loss; --label-smoothing-factor is for the causal-LM loss");
        int batchesPerEpoch = args.MaxSteps > 0 ? 0 : data.CountBatches();
        if (args.MaxSteps <= 0 && batchesPerEpoch == 0) throw new OrtLoraException($"{job.DataPath}: no training examples ({data.Summary})");
        int stepsPerEpoch = Math.Max(1, (batchesPerEpoch + args.GradientAccumulationSteps - 1) / args.GradientAccumulationSteps);
        int totalSteps = args.MaxSteps > 0 ? args.MaxSteps : (int)Math.Ceiling(args.NumTrainEpochs * stepsPerEpoch);
        int warmup = LrSchedule.WarmupSteps(args, totalSteps);

        // The session trains a copy of the model (half compute with --fp16/--bf16); `model` stays float32 for the adapter
        // and the merge.
        var compute = args.Compute;
        // LoRA-FA: A frozen, B's gradient projected; every parameter in the graphs' update (the host's is torch's AdamW)
        bool loraFa = args.Optim == LoraFa.Optim;
        if (loraFa) LoraFa.Require(lora, args, model.Source);
        using var session = new TrainingSession(model, new TrainingSessionOptions(loraFa ? LoraFa.Options(model, lora, args.WeightDecay) : args.AdamWFor(model),
            HostUpdateFrom: loraFa ? long.MaxValue : Autodiff.ParameterBundle.AloneFrom, Optimization: args.OrtOptimizationLevel, Device: args.Device, EpLibrary: args.EpLibrary, Compute: compute,
            GradientCheckpointing: args.GradientCheckpointing, RecomputeAttention: args.RecomputeAttention, StaticShapes: dataOptions.PadToMaxLength, CudaGraphs: args.CudaGraphs,
            NeftuneNoiseAlpha: args.NeftuneNoiseAlpha, Seed: args.Seed, LabelSmoothing: args.LabelSmoothingFactor, LossChunks: args.LossChunks,
            Preference: data.IsPreference ? args.Preference : null, DistillationBeta: job.Distillation?.Beta, DisableDropout: DropoutDisabled(args, data, job, lora, reporter),
            Classification: classifier && !perToken, TokenClassification: perToken, MultiLabel: classes?.IsMultiLabel == true,             ClassifierDropout: job.Classification is { PerToken: true } tokenOptions ? tokenOptions.ClassifierDropout ?? Reward.SequenceClassifier.ClassifierDropout(job.ModelPath) : 0),
            loraFa ? LoraFa.Parameters(model) : null);
        using var distillation = job.Distillation is { } distill ? new Distillation(distill, model, session, data, args.Seed) : null;
        if (dataOptions.PadToMaxLength)
            reporter.Info($"every batch padded to [{dataOptions.BatchSize}, {dataOptions.MaxSeqLength}]; graphs loaded for that shape" +
                (!args.CudaGraphs ? "" : args.Device == "cuda" ? "; CUDA graphs: each session captures its kernels once per state parity and replays them"
                    : "; every buffer bound at a fixed address (the CUDA graphs themselves need --device cuda)"));
        else if (session.RewritesForPlugin)
            reporter.Info("note: with --ep-library, graphs with dynamic shapes crashed the CUDA plugin on the GPU machine where static ones ran " +
                "(docs/gpu.md); --pad-to-max-length (or --cuda-graphs) loads them for one padded batch shape");
        if (session.Graph.HalfPrecision is { } half)
            reporter.Info($"{(args.Bf16 ? "bf16" : "fp16")} compute: {half.HalfNodes} nodes in half, {half.Float32Nodes} in float32 (LoRA branches, " +
                $"norms, softmax), {half.Casts} casts; {half.ConvertedTensors} frozen tensors stored in half ({half.ConvertedBytes / 1048576.0:F1} MiB)");
        if (args.RecomputeAttention && !args.GradientCheckpointing)
        {
            int segments = Autodiff.Checkpoints.CountSegments(session.Graph.Gradients.Graph);
            reporter.Info(segments > 0 ? $"recompute attention: the backward recomputes {segments} layers' attention probabilities"
                : "recompute attention: no Softmax between a Q·Kᵀ and a P·V MatMul was found; training stores them");
        }
        if (args.GradientCheckpointing)
        {
            int segments = Autodiff.Checkpoints.CountSegments(session.Graph.Gradients.Graph);
            reporter.Info(segments > 0 ? $"gradient checkpointing: the backward recomputes {segments} forward segments"
                : "gradient checkpointing: no value carries the whole forward at any point (no segment to recompute); training stores all activations");
        }

        var state = new TrainerState(0, 0, 0, args.Seed, 0);
        var log = new TrainingLog(args);
        if (log.TensorBoardFile is { } events) reporter.Info($"TensorBoard: {Path.GetDirectoryName(events)}");
        if (resumePath is { } path)
        {
            state = Restore(session, best, path);
            log.Reload(state.GlobalStep);
            reporter.Info($"resumed from {path} at step {state.GlobalStep} ({state.Position})");
        }
        else if (File.Exists(Path.Combine(args.OutputDir, "metrics.jsonl"))) File.Delete(Path.Combine(args.OutputDir, "metrics.jsonl"));
        bool plateau = args.LrSchedulerType == ReduceLrOnPlateau.Name;
        if (plateau)
        {
            if (!data.HasEval || args.EvalStrategy == "no")
                throw new OrtLoraException($"{job.DataPath}: --lr-scheduler-type {ReduceLrOnPlateau.Name} lowers the learning rate when eval_loss stops improving: " +
                    "give --eval-data or --eval-split, and an --eval-strategy other than no");
            state = state with { Plateau = state.Plateau ?? ReduceLrOnPlateau.Start(args.LearningRate, args.LrSchedulerKwargs) };
        }
        // The schedule's rate at a step; reduce_lr_on_plateau's is where the evaluations have left it.
        double LearningRateAt(int step) => plateau ? state.Plateau!.Lr : LrSchedule.At(args.LrSchedulerType, args.LearningRate, step, warmup, totalSteps, args.LrSchedulerKwargs);

        var references = new ReferenceLogps(session);
        if (data.IsPreference && args.PrecomputeRefLogProbs && args.Preference.UsesReference) references.Precompute(data, reporter);

        reporter.Started(totalSteps, state.GlobalStep,
            $"{lora.Adapters.Count} adapters{(lora.SavedModules.Count > 0 ? $" and {lora.SavedModules.Count} modules_to_save ({string.Join(", ", lora.SavedModules.Select(m => m.Module))})" : "")}{(lora.TrainableTokens.Count > 0 ? $", {lora.TrainableTokens.Sum(t => t.TokenIds.Count)} trainable token rows" : "")}, {session.ParameterNames.Sum(p => session.Graph.ParameterShapes[p].Aggregate(1L, (a, b) => a * b)):N0} trainable parameters; " +
            $"{tokenizer.Kind} tokenizer ({tokenizer.VocabSize} tokens); {totalSteps} steps, warmup {warmup}; data: {data.Describe()}");

        // TRL's metrics of preference batches: the DPO family's rewards, or a reward model's scores
        IPreferenceMetrics? NewMetrics() => !data.IsPreference ? null : rewardModel ? new Reward.RewardMetrics() : new PreferenceMetrics(args.Preference.Beta);
        double? firstEval = null, lastEval = null;
        int lastEvalStep = -1;
        var lastRecord = new JsonObject();
        double EvaluateAt(int step)
        {
            var clock = Stopwatch.StartNew();
            var evalPreference = NewMetrics();
            var classified = classes is null ? null : Reward.ClassificationMetrics.For(classes, perToken);
            var score = Score(session, data, evalPreference, evalPreference is null ? null : references.ForEvaluation(), distillation is null ? null : distillation.WithTeacher,
                classified);
            double loss = score.Loss, runtime = Math.Max(1e-9, clock.Elapsed.TotalSeconds);
            // The Trainer's evaluate() names, TRL's eval_mean_token_accuracy, and perplexity; DPO's eval_rewards/* instead.
            var record = new JsonObject { ["step"] = step, ["eval_loss"] = loss };
            if (evalPreference is not null) evalPreference.Report(record, "eval_");
            else if (classified is not null) classified.Report(record, "eval_");
            else
            {
                if (distillation is null) record["perplexity"] = Math.Exp(loss); // a divergence's exp is no perplexity
                record["eval_mean_token_accuracy"] = score.MeanTokenAccuracy;
            }
            record["eval_runtime"] = Math.Round(runtime, 4);
            record["eval_samples_per_second"] = Math.Round(score.Samples / runtime, 3);
            record["eval_steps_per_second"] = Math.Round(score.Batches / runtime, 3);
            log.Append(record);
            string[] shown = classifier ? ["eval_f1", "eval_accuracy", "eval_pearson"] : evalPreference is null ? ["perplexity", "eval_mean_token_accuracy"]
                : rewardModel ? ["eval_accuracy", "eval_margin"] : ["eval_rewards/accuracies", "eval_rewards/margins", "eval_kl"];
            reporter.Evaluated(step, loss, [.. shown.Where(record.ContainsKey).Select(name => (name.Replace("eval_", ""), (double)record[name]!))]);
            lastEvalStep = step;
            lastRecord = record;
            return loss;
        }
        if (data.HasEval && state.GlobalStep == 0)
        {
            firstEval = lastEval = EvaluateAt(0); // the baseline: never the "best model"
            if (best.Tracking) best.ValueIn(lastRecord); // a metric the evaluations lack is said before training, not after
        }

        var position = state.Position;
        using var batches = new BatchStream(data, position);
        double lossSinceLog = 0, lastLoss = double.NaN, correctSinceLog = 0;
        int stepsSinceLog = 0;
        long tokensSinceLog = 0, scoredSinceLog = 0;
        var clock = Stopwatch.StartNew();
        var runClock = Stopwatch.StartNew();
        double lossThisRun = 0;
        int stepsThisRun = 0;
        long samplesThisRun = 0;
        bool stoppedEarly = false;
        var preference = NewMetrics();
        while (state.GlobalStep < totalSteps && !stoppedEarly)
        {
            var window = batches.Take(args.GradientAccumulationSteps);
            double lr = LearningRateAt(state.GlobalStep);
            distillation?.BeginStep(state.GlobalStep);
            var (loss, correct) = Update(session, window, (float)lr, (float)args.MaxGradNorm, preference,
                distillation is null ? references.ForTraining : distillation.ForTraining, equalWeights: distillation is not null);
            position = window[^1].Next;
            long tokens = window.Sum(b => b.AttentionMask.Sum());
            state = state with
            {
                GlobalStep = state.GlobalStep + 1, Epoch = position.Epoch, DataIndex = position.Index, DataSkipBatches = position.SkipBatches,
                TokensSeen = state.TokensSeen + tokens,
            };
            if (!double.IsFinite(loss))
                throw new OrtLoraException($"loss is {loss} at step {state.GlobalStep}: training stopped. " +
                    (Checkpoint.Latest(args.OutputDir) is { } good ? $"The last good checkpoint is {good}." : "No checkpoint was saved."));
            lastLoss = loss; lossSinceLog += loss; stepsSinceLog++; tokensSinceLog += tokens;
            correctSinceLog += correct; scoredSinceLog += window.Sum(b => Scored(session, b));
            lossThisRun += loss; stepsThisRun++; samplesThisRun += window.Sum(b => (long)b.Rows.Length) / (data.IsPreference ? 2 : 1);

            double tokensPerSecond = tokensSinceLog / Math.Max(1e-9, clock.Elapsed.TotalSeconds);
            reporter.Stepped(new StepReport(state.GlobalStep, totalSteps, position.Epoch, loss, lr, session.LastGradNorm, tokensPerSecond));
            bool epochEnded = batches.EpochEnded;
            if (args.LoggingStrategy switch
                {
                    "steps" => state.GlobalStep % Math.Max(1, args.LoggingSteps) == 0 || state.GlobalStep == totalSteps,
                    "epoch" => epochEnded,
                    _ => false,
                } || args.LoggingFirstStep && state.GlobalStep == 1)
            {
                var record = new JsonObject
                {
                    // learning_rate as the Trainer logs it: the scheduler's value after its step, i.e. the next step's
                    ["step"] = state.GlobalStep, ["epoch"] = FractionalEpoch(position, data),
                    ["loss"] = lossSinceLog / stepsSinceLog,
                    ["learning_rate"] = LearningRateAt(state.GlobalStep),
                    ["grad_norm"] = session.LastGradNorm, ["tokens_per_second"] = tokensPerSecond,
                };
                if (rewardModel) record["num_tokens"] = state.TokensSeen;
                if (preference is not null) preference.Report(record);
                // a distillation's on-policy batches are not the data's: its tokens are not the data batches' to count
                else if (distillation is null && !classifier) record["mean_token_accuracy"] = correctSinceLog / Math.Max(1, scoredSinceLog);
                log.Append(record);
                lossSinceLog = 0; stepsSinceLog = 0; tokensSinceLog = 0; correctSinceLog = 0; scoredSinceLog = 0; clock.Restart();
            }
            if (data.HasEval && state.GlobalStep < totalSteps && args.EvalStrategy switch
                {
                    "steps" => args.EvalSteps > 0 && state.GlobalStep % args.EvalSteps == 0,
                    "epoch" => epochEnded,
                    _ => false,
                })
            {
                lastEval = EvaluateAt(state.GlobalStep);
                if (plateau) state = state with { Plateau = ReduceLrOnPlateau.Step(state.Plateau!, lastEval.Value, args.LrSchedulerKwargs) };
                stoppedEarly = best.Observe(state.GlobalStep, lastRecord, session.GetParameters);
                state = state with { Best = best.Best };
                if (stoppedEarly)
                    reporter.Info($"early stopping at step {state.GlobalStep}: {args.EarlyStoppingPatience} evaluations without improving {best.Metric} " +
                        $"by more than {args.EarlyStoppingThreshold} (best {best.Best!.Metric:F4} at step {best.Best.Step})");
            }
            if (args.SaveStrategy switch { "steps" => args.SaveSteps > 0 && state.GlobalStep % args.SaveSteps == 0, "epoch" => epochEnded, _ => false })
            {
                SaveCheckpoint(model, session, state, best, args.OutputDir, args.SaveOnlyModel);
                Checkpoint.Prune(args.OutputDir, args.SaveTotalLimit);
            }
        }

        // The Trainer's closing summary (this run's steps: a resumed run counts from where it resumed).
        double runtime = runClock.Elapsed.TotalSeconds;
        if (stepsThisRun > 0)
            log.Append(new JsonObject
            {
                ["step"] = state.GlobalStep, ["epoch"] = FractionalEpoch(position, data),
                ["train_runtime"] = Math.Round(runtime, 4), ["train_samples_per_second"] = Math.Round(samplesThisRun / Math.Max(1e-9, runtime), 3),
                ["train_steps_per_second"] = Math.Round(stepsThisRun / Math.Max(1e-9, runtime), 3), ["train_loss"] = lossThisRun / stepsThisRun,
            });
        if (data.HasEval && lastEvalStep != state.GlobalStep)
        {
            lastEval = EvaluateAt(state.GlobalStep);
            best.Observe(state.GlobalStep, lastRecord, session.GetParameters);
        }
        if (args.LoadBestModelAtEnd && best is { Best: { } b, Parameters: { } bestParameters } && b.Step != state.GlobalStep)
        {
            session.SetParameters(bestParameters);
            lastEval = best.LossAtBest ?? lastEval;
            log.Append(new JsonObject { ["step"] = state.GlobalStep, ["best_global_step"] = b.Step, ["best_metric"] = b.Metric });
            reporter.Info($"loaded the best model: step {b.Step}, {best.Metric} {b.Metric:F4}");
        }
        log.SavePlot(Path.Combine(args.OutputDir, "loss.png"));
        if (distillation is { Prepared: > 0 })
            reporter.Info($"distillation: {distillation.OnPolicy} of {distillation.Prepared} micro-batches trained on the student's own completions" +
                (distillation.TeacherSampled > 0 ? $", {distillation.TeacherSampled} on the teacher's (seq_kd)" : ""));
        if (session.Scaler is { SkippedSteps: > 0 } scaler)
            reporter.Info($"fp16 loss scaling skipped {scaler.SkippedSteps} steps whose gradients overflowed (scale now {scaler.Scale})");

        var merged = SaveAdapter(model, session, args.OutputDir, job.Merge ? tokenizerPath : null);
        return new TrainResult(state.GlobalStep, firstEval, lastEval, lastLoss, args.OutputDir, merged);
    }

    /// <summary>One optimizer step over a window of micro-batches. The loss is normalized by the window's counted
    /// tokens, as the Hugging Face Trainer does (num_items_in_batch), so accumulation equals one large batch; the DPO
    /// loss, a mean over pairs, by the window's pairs.</summary>
    /// <param name="preference">with preference data, takes each micro-batch's rewards</param>
    /// <returns>the loss, and the counted tokens the model predicted right</returns>
    /// <param name="prepare">the batch as the engine takes it</param>
    static (double Loss, double CorrectTokens) Update(TrainingSession session, IReadOnlyList<DataBatch> window, float lr, float maxGradNorm,
        IPreferenceMetrics? preference, Func<DataBatch, Engine.Batch> prepare, bool equalWeights = false)
    {
        void Observe(DataBatch b) => preference?.Add(session.LastSequenceLogps[..b.Sequences], session.LastReferenceLogps[..b.Sequences], Roles(b));
        if (window.Count == 1)
        {
            var loss = session.Step(prepare(window[0]), lr, maxGradNorm);
            Observe(window[0]);
            return (loss, session.LastCorrectTokens);
        }
        // distillation: each micro-batch's loss is its own tokens' mean, and the Trainer divides each by the accumulation steps
        long Weight(DataBatch b) => equalWeights ? 1 : preference is null ? Scored(session, b) : b.Sequences / 2;
        long total = Math.Max(1, window.Sum(Weight));
        double weighted = 0, correct = 0;
        foreach (var b in window)
        {
            weighted += session.Accumulate(prepare(b), (float)Weight(b) / total) * Weight(b);
            correct += session.LastCorrectTokens;
            Observe(b);
        }
        session.ApplyAccumulated(lr, maxGradNorm);
        return (weighted / total, correct);
    }

    /// <summary>One pass over the eval data: the loss and the mean token accuracy over the counted tokens, those tokens,
    /// the batches run and their rows.</summary>
    public sealed record EvalScore(double Loss, double MeanTokenAccuracy, long Tokens, int Batches, long Samples);

    /// <param name="preference">with preference data: the DPO loss is averaged over pairs, whose rewards this takes</param>
    /// <param name="reference">preference data: each batch's reference log-probabilities from elsewhere (another
    /// model's session); null: the session's own starting parameters</param>
    /// <param name="prepare">distillation: each batch with the teacher's logits; its loss, a mean over the batch's
    /// tokens, is then weighed by the batch's rows, as the Trainer's evaluation loop averages per-batch losses</param>
    /// <param name="classified">a classifier's evaluation: takes each batch's predictions (<see cref="Reward.IClassifierMetrics"/>)</param>
    public static EvalScore Score(TrainingSession session, TrainingData data, IPreferenceMetrics? preference = null,
        Func<Engine.Batch, float[]>? reference = null, Func<Engine.Batch, Engine.Batch>? prepare = null, Reward.IClassifierMetrics? classified = null)
    {
        double sum = 0, correct = 0, weights = 0;
        long tokens = 0, samples = 0;
        int batches = 0;
        foreach (var b in data.EvalBatches())
        {
            long scored = Scored(session, b);
            if (scored == 0) continue;
            var batch = prepare is null ? ToEngine(b) : prepare(ToEngine(b));
            var (loss, right) = session.Evaluate(reference is null ? batch : batch with { ReferenceLogps = reference(batch) });
            double weight = prepare is not null ? b.Sequences : preference is null ? scored : b.Sequences / 2;
            sum += loss * weight;
            weights += weight;
            correct += right;
            tokens += scored;
            samples += preference is null ? b.Sequences : b.Sequences / 2;
            batches++;
            preference?.Add(session.LastSequenceLogps[..b.Sequences], session.LastReferenceLogps[..b.Sequences], Roles(b));
            classified?.Add(session.LastSequenceLogps, b);
        }
        return new(tokens == 0 ? double.NaN : sum / weights, tokens == 0 ? double.NaN : correct / tokens, tokens, batches, samples);
    }

    /// <summary>What a batch's loss averages over: the causal LM's scored tokens, or a classifier's rows (one label each,
    /// which may sit in column 0 of a one-token row), or a token classifier's labelled tokens (unshifted).</summary>
    static long Scored(TrainingSession session, DataBatch b) => session.Graph.Classification ? b.TrainedTokens : b.LossTokens;

    /// <summary>The epoch as the Trainer logs it, fractional: the share of the epoch's rows used so far.</summary>
    static double FractionalEpoch(DataPosition position, TrainingData data) =>
        Math.Round(position.Epoch + (double)position.Index / Math.Max(1, data.Train.RowCount), 4);

    /// <summary>KTO's rows' roles, null for other data.</summary>
    static float[]? Roles(DataBatch b) => b.Roles.Any(r => r != 0) ? b.Roles[..b.Sequences] : null;

    internal static Engine.Batch ToEngine(DataBatch b) => new(b.InputIds, b.AttentionMask, b.Labels, b.BatchSize, b.SeqLength) { Roles = b.Roles, RowValues = b.RowValues };
}
