using System.Diagnostics;
using System.Text.Json.Nodes;
using OrtLora.Autodiff;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;

namespace OrtLora.Training.Grpo;

/// <summary>What `ortlora grpo` was asked to do.</summary>
public sealed record GrpoJob
{
    public required string ModelPath { get; init; }
    public required string DataPath { get; init; }
    /// <summary>Auto (a 'prompt' column alone) or Prompt: read any file with a 'prompt' column as prompts, its other
    /// columns (a completion column too) going to the reward functions.</summary>
    public DatasetFormat Format { get; init; } = DatasetFormat.Auto;
    /// <summary>Prompt-only data whose completions are sampled and scored at each evaluation (no update).</summary>
    public string? EvalDataPath { get; init; }
    /// <summary>--reward-funcs specs (<see cref="RewardFunctions.Parse"/>).</summary>
    public required IReadOnlyList<string> RewardFuncs { get; init; }
    public string? TokenizerPath { get; init; }
    public LoraConfig Lora { get; init; } = new();
    public string? InitFrom { get; init; }
    /// <summary>A built-in chat template name for conversational prompts; null: the model's own, else ChatML.</summary>
    public string? ChatTemplate { get; init; }
    /// <summary>TRL's chat_template_kwargs as a JSON object, for a Jinja template.</summary>
    public string? ChatTemplateKwargs { get; init; }
    public GrpoOptions Grpo { get; init; } = new();
    public TrainingArguments Args { get; init; } = new();
    /// <summary>null: start fresh; "": the latest checkpoint in OutputDir; else a checkpoint folder.</summary>
    public string? ResumeFromCheckpoint { get; init; }
    /// <summary>Write each step's prompts, completions, rewards and advantages to OutputDir/completions.jsonl (TRL's log_completions).</summary>
    public bool LogCompletions { get; init; }
    public bool Merge { get; init; }
}

/// <summary>TRL's GRPOTrainer on the training engine, top to bottom: a generation batch samples num_generations
/// completions of (batch × steps_per_generation) / num_generations prompts from the policy as it is, scores them with the
/// reward functions and turns the rewards into group-relative advantages (<see cref="GroupAdvantages"/>). Its
/// micro-batches then train steps_per_generation / accumulation optimizer steps, on the loss of weighted tokens whose
/// gradient is TRL's (<see cref="PolicyLoss"/>), and the pass repeats num_iterations (μ) times. The first step is on-policy
/// (the ratio is 1); the others take the ratio to the policy that sampled the batch. Unlike TRL, the generation batch is
/// not shuffled before it is split: each step trains whole groups, in order. With <see cref="GrpoOptions.Algorithm"/> rloo
/// the same loop is TRL's RLOOTrainer (<see cref="Rloo"/>: the advantages and the loss differ).</summary>
public static class GrpoTrainer
{
    public static TrainResult Run(GrpoJob job, ITrainingReporter reporter)
    {
        var args = job.Args;
        var grpo = job.Grpo;
        grpo.MicroBatchesPerGeneration(args.PerDeviceTrainBatchSize, args.GradientAccumulationSteps);
        var rewards = new List<IRewardFunction>();
        try
        {
            // one at a time: a command reward's process is running once parsed, and a later spec may be the wrong one
            foreach (var spec in job.RewardFuncs) rewards.Add(RewardFunctions.Parse(spec, grpo.MaxCompletionLength, job.ChatTemplateKwargs));
            grpo.Validate(rewards.Count);
            return Train(job, rewards, reporter);
        }
        finally
        {
            foreach (var r in rewards) r.Dispose();
        }
    }

    static TrainResult Train(GrpoJob job, List<IRewardFunction> rewards, ITrainingReporter reporter)
    {
        var args = job.Args;
        var grpo = job.Grpo;
        Directory.CreateDirectory(args.OutputDir);
        using var model = OnnxModel.Load(job.ModelPath);
        var lora = Trainer.InjectUnlessInjected(model, job.InitFrom, job.Lora);
        Trainer.RefuseDataInits(lora, model.Source);
        var (tokenizer, tokenizerPath, prompts, evalPrompts, stops) = Prepare(job, model, rewards);

        // A generation batch is split into steps_per_generation micro-batches, gradient_accumulation_steps of them a step,
        // and the pass over it repeats num_iterations times: a cycle of optimizer steps per generation batch.
        int microBatches = grpo.MicroBatchesPerGeneration(args.PerDeviceTrainBatchSize, args.GradientAccumulationSteps);
        int completionsPerStep = args.PerDeviceTrainBatchSize * args.GradientAccumulationSteps;
        int stepsPerPass = microBatches / args.GradientAccumulationSteps, cycle = stepsPerPass * grpo.NumIterations;
        int promptsPerGeneration = args.PerDeviceTrainBatchSize * microBatches / grpo.NumGenerations;
        int stepsPerEpoch = (prompts.All.Count + promptsPerGeneration - 1) / promptsPerGeneration * cycle;
        if (cycle > 1 && args.SaveStrategy == "steps" && args.SaveSteps % cycle != 0)
            throw new OrtLoraException($"--save-steps ({args.SaveSteps}) must be a multiple of the {cycle} steps each generation batch trains " +
                "(--num-iterations × --steps-per-generation / --gradient-accumulation-steps): a checkpoint inside one could not resume it");
        int totalSteps = args.MaxSteps > 0 ? args.MaxSteps : (int)Math.Ceiling(args.NumTrainEpochs * stepsPerEpoch);
        int warmup = LrSchedule.WarmupSteps(args, totalSteps);

        using var session = new TrainingSession(model, new TrainingSessionOptions(args.AdamWFor(model), Optimization: args.OrtOptimizationLevel, Device: args.Device,
            EpLibrary: args.EpLibrary, Compute: args.Compute, GradientCheckpointing: args.GradientCheckpointing, Seed: args.Seed, LossChunks: args.LossChunks,
            TokenWeighted: true, LogitsTemperature: grpo.Temperature));
        using var sessionOptions = OrtRun.DefaultOptions();
        using var sampler = new PolicySampler(model, sessionOptions);

        var (state, best, log) = Start(job, session, reporter);
        var completionsLog = Path.Combine(args.OutputDir, CompletionsFile);

        var rewardNames = RewardFunctions.MetricNames(rewards);
        reporter.Started(totalSteps, state.GlobalStep,
            $"{lora.Adapters.Count} adapters, {session.ParameterNames.Sum(p => session.Graph.ParameterShapes[p].Aggregate(1L, (a, b) => a * b)):N0} trainable parameters; " +
            $"{prompts.All.Count} prompts ({(prompts.Conversational ? "conversational" : "text")}), {promptsPerGeneration} per generation × {grpo.NumGenerations} completions, " +
            $"{cycle} step{(cycle == 1 ? "" : "s")} each; rewards: {string.Join(", ", rewardNames)}; " +
            (grpo.IsRloo ? "RLOO (leave-one-out baselines, one ratio per completion)" :
                $"loss {grpo.LossType}{(grpo.ImportanceSamplingLevel == "sequence" ? " (sequence ratio)" : "")}") + $", {totalSteps} steps, warmup {warmup}");

        void EvaluateAt(int step) =>
            Evaluate(step, sampler, session, evalPrompts!, tokenizer, grpo with { NumGenerations = grpo.NumGenerationsEval ?? grpo.NumGenerations }, stops, rewards, args.Seed, log, reporter);
        bool evaluates = evalPrompts is not null && args.EvalStrategy != "no";
        int lastEval = -1;
        if (evaluates && state.GlobalStep == 0) { EvaluateAt(0); lastEval = 0; }

        var window = new GrpoMetrics(rewardNames);
        var clock = Stopwatch.StartNew();
        var runClock = Stopwatch.StartNew();
        double lastLoss = double.NaN, lossThisRun = 0;
        int stepsThisRun = 0;
        // The generation batch the current cycle trains on: completions, scores, their log-probabilities under the policy
        // that sampled them (off-policy steps, β > 0, or entropies wanted) and under the reference (β > 0), each computed
        // once; with the data position after its prompts.
        (List<Completion> Rollout, RolloutScores Scores, List<TokenScores>? Sampling, List<TokenScores>? Reference, int Epoch, int Index)? batch = null;
        bool samplingScores = cycle > 1 || grpo.Beta > 0 || grpo.TopEntropyQuantile < 1;
        string? clipping = cycle == 1 ? null : grpo.LossType switch { "cispo" => "cispo_clip_ratio", "sapo" => null, _ => "clip_ratio" };
        while (state.GlobalStep < totalSteps)
        {
            double lr = LrSchedule.At(args.LrSchedulerType, args.LearningRate, state.GlobalStep, warmup, totalSteps, args.LrSchedulerKwargs);
            sampler.SetParameters(session.GetParameters(), session.Graph.ParameterShapes);
            int inCycle = state.GlobalStep % cycle;
            bool generates = batch is null || inCycle == 0;
            if (generates)
            {
                // The generation's prompts, in the epoch's order; an epoch's last may take the next epoch's first prompts.
                var group = new List<GrpoPrompt>();
                var (at, next) = (state.Epoch, (int)state.DataIndex);
                while (group.Count < promptsPerGeneration)
                {
                    if (next == prompts.All.Count) (at, next) = (at + 1, 0);
                    group.Add(prompts.At(at, next++));
                }
                var sampled = GrpoRollout.Sample(sampler, group, tokenizer, grpo, stops, args.Seed, state.GlobalStep);
                var samplingLogps = samplingScores ? GrpoRollout.Logps(sampled, sampler, grpo.Temperature) : null;
                var referenceLogps = grpo.Beta > 0 ? GrpoRollout.Logps(sampled, sampler, grpo.Temperature, reference: true) : null;
                // RLOO penalizes each completion's reward by its KL to the reference under the sampling policy
                var kl = grpo.IsRloo && referenceLogps is not null
                    ? Rloo.SequenceKl([.. sampled.Select(c => GrpoRollout.CountedTokens(c, grpo))], samplingLogps!, referenceLogps)
                    : ((double[], double)?)null;
                batch = (sampled, GrpoRollout.Score(sampled, rewards, grpo, kl), samplingLogps, referenceLogps, at, next);
            }
            var (rollout, scores, sampling, reference, epoch, index) = batch!.Value;
            // The cycle's first step is on-policy: the policy is the sampling one. Later steps (the next slices of the
            // generation batch, or the next iterations over it) score their completions again, and the ratio is to the
            // sampling policy.
            int start = inCycle % stepsPerPass * completionsPerStep;
            bool onPolicy = inCycle == 0;
            var policy = onPolicy ? sampling?.GetRange(start, completionsPerStep) : GrpoRollout.Logps(rollout.GetRange(start, completionsPerStep), sampler, grpo.Temperature);
            var micro = GrpoRollout.MicroBatches(rollout, scores, start, completionsPerStep, tokenizer, grpo, args.PerDeviceTrainBatchSize, policy, reference,
                onPolicy ? null : sampling);
            double engineLoss = 0;
            if (micro.Count == 1) engineLoss = session.Step(micro[0].Batch, (float)lr, (float)args.MaxGradNorm);
            else
            {
                foreach (var m in micro) engineLoss += session.Accumulate(m.Batch, 1f);
                session.ApplyAccumulated((float)lr, (float)args.MaxGradNorm);
            }
            // cispo's loss is a sum of A·log p terms, which needs log-probabilities the first step does not compute: there
            // the engine's Σ w·nll with the same weights is TRL's value
            double loss = micro.Sum(m => m.Loss.Loss);
            if (double.IsNaN(loss)) loss = engineLoss;
            if (!double.IsFinite(session.LastGradNorm))
                throw new OrtLoraException($"the gradient norm is {session.LastGradNorm} at step {state.GlobalStep + 1}: training stopped");
            long tokens = micro.Sum(m => m.Batch.AttentionMask.Sum());
            state = state with { GlobalStep = state.GlobalStep + 1, Epoch = epoch, DataIndex = index, TokensSeen = state.TokensSeen + tokens };
            // the rewards are the generation batch's, logged once (as TRL logs them when it scores)
            if (generates) window.Add(rollout, scores);
            window.AddLoss(micro, loss, tokens);
            lastLoss = loss; lossThisRun += loss; stepsThisRun++;
            if (job.LogCompletions && generates) GrpoRollout.AppendLog(completionsLog, state.GlobalStep, rollout, scores, rewardNames);

            double tokensPerSecond = window.Tokens / Math.Max(1e-9, clock.Elapsed.TotalSeconds);
            reporter.Stepped(new StepReport(state.GlobalStep, totalSteps, epoch, loss, lr, session.LastGradNorm, tokensPerSecond));
            if (StepRecord(args, state, totalSteps, warmup, epoch, index, prompts.All.Count, session.LastGradNorm, tokensPerSecond) is { } record)
            {
                window.Report(record, grpo.Beta > 0, clipping: clipping);
                log.Append(record);
                reporter.Info($"step {state.GlobalStep}: loss {(double?)record["loss"] ?? double.NaN:F4}  {Summary(record)}");
                clock.Restart();
            }
            if (evaluates && args.EvalSteps > 0 && state.GlobalStep % args.EvalSteps == 0 && state.GlobalStep < totalSteps)
            {
                EvaluateAt(state.GlobalStep);
                lastEval = state.GlobalStep;
            }
            if (args.SaveStrategy == "steps" && args.SaveSteps > 0 && state.GlobalStep % args.SaveSteps == 0)
            {
                Trainer.SaveCheckpoint(model, session, state, best, args.OutputDir, args.SaveOnlyModel);
                Checkpoint.Prune(args.OutputDir, args.SaveTotalLimit);
            }
        }

        return Finish(job, model, session, log, state.GlobalStep, runClock.Elapsed.TotalSeconds, stepsThisRun, lossThisRun, lastLoss, tokenizerPath,
            finalEvaluation: evaluates && lastEval != state.GlobalStep ? () => EvaluateAt(state.GlobalStep) : null);
    }

    public const string CompletionsFile = "completions.jsonl";

    /// <summary>A reward-driven run's start: from the checkpoint asked for (its state, best model and log), else from
    /// step 0 with the output folder's metrics and completions logs cleared.</summary>
    internal static (TrainerState State, BestModel Best, TrainingLog Log) Start(GrpoJob job, TrainingSession session, ITrainingReporter reporter)
    {
        var args = job.Args;
        var best = new BestModel(args);
        var log = new TrainingLog(args);
        if (log.TensorBoardFile is { } events) reporter.Info($"TensorBoard: {Path.GetDirectoryName(events)}");
        if (Checkpoint.ToResume(job.ResumeFromCheckpoint, args.OutputDir) is not { } path)
        {
            File.Delete(Path.Combine(args.OutputDir, "metrics.jsonl"));
            File.Delete(Path.Combine(args.OutputDir, CompletionsFile));
            return (new TrainerState(0, 0, 0, args.Seed, 0), best, log);
        }
        var state = Trainer.Restore(session, best, path);
        log.Reload(state.GlobalStep);
        reporter.Info($"resumed from {path} at step {state.GlobalStep}");
        return (state, best, log);
    }

    /// <summary>A logging step's record (null when the step logs nothing): the Trainer's step, fractional epoch, the
    /// learning rate after the scheduler's step, grad_norm, and the tokens seen and per second.</summary>
    internal static JsonObject? StepRecord(TrainingArguments args, TrainerState state, int totalSteps, int warmup, int epoch, int index, int prompts,
        double gradNorm, double tokensPerSecond)
    {
        int step = state.GlobalStep;
        if (!(step % Math.Max(1, args.LoggingSteps) == 0 || step == totalSteps || args.LoggingFirstStep && step == 1)) return null;
        return new JsonObject
        {
            ["step"] = step, ["epoch"] = Math.Round(epoch + (double)index / prompts, 4),
            ["learning_rate"] = LrSchedule.At(args.LrSchedulerType, args.LearningRate, step, warmup, totalSteps, args.LrSchedulerKwargs),
            ["grad_norm"] = gradNorm, ["num_tokens"] = state.TokensSeen, ["tokens_per_second"] = tokensPerSecond,
        };
    }

    /// <summary>The end of a reward-driven run: the Trainer's summary of this run's steps (a resumed run counts from
    /// where it resumed), the last evaluation, the loss plot, the adapter and, with --merge, the merged model.</summary>
    internal static TrainResult Finish(GrpoJob job, OnnxModel model, TrainingSession session, TrainingLog log, int globalStep, double runtime,
        int stepsThisRun, double lossThisRun, double lastLoss, string tokenizerPath, Action? finalEvaluation)
    {
        var outputDir = job.Args.OutputDir;
        if (stepsThisRun > 0)
            log.Append(new JsonObject
            {
                ["step"] = globalStep, ["train_runtime"] = Math.Round(runtime, 4),
                ["train_steps_per_second"] = Math.Round(stepsThisRun / Math.Max(1e-9, runtime), 3), ["train_loss"] = lossThisRun / stepsThisRun,
            });
        finalEvaluation?.Invoke(); // an evaluation after the last step, unless one was just made
        log.SavePlot(Path.Combine(outputDir, "loss.png"));
        var merged = Trainer.SaveAdapter(model, session, outputDir, job.Merge ? tokenizerPath : null);
        return new TrainResult(globalStep, null, null, lastLoss, outputDir, merged);
    }

    /// <summary>What every reward-driven trainer reads before its loop: the tokenizer (checked against the model), the
    /// chat template, the prompts and eval prompts (checked for the columns the reward functions read), and the ids that
    /// end a completion (the template's end of turn for conversational prompts, and EOS).</summary>
    internal static (TextTokenizer Tokenizer, string TokenizerPath, GrpoPrompts Prompts, GrpoPrompts? EvalPrompts, HashSet<int> Stops) Prepare(
        GrpoJob job, OnnxModel model, IReadOnlyList<IRewardFunction> rewards)
    {
        var tokenizerPath = job.TokenizerPath ?? Path.GetDirectoryName(Path.GetFullPath(job.ModelPath))!;
        var tokenizer = TokenizerLoader.Load(tokenizerPath);
        VocabularyCheck.Require(tokenizer, model);
        var tokenizerDir = Directory.Exists(tokenizerPath) ? tokenizerPath : Path.GetDirectoryName(Path.GetFullPath(tokenizerPath))!;
        var config = TokenizerConfig.Read(tokenizerDir);
        var chat = Data.ChatTemplate.Resolve(job.ChatTemplate, config ?? tokenizer.Config, Path.Combine(tokenizerDir, "tokenizer_config.json"), job.ChatTemplateKwargs);
        var prompts = GrpoPrompts.Load(job.DataPath, tokenizer, chat, job.Grpo.MaxPromptLength, job.Args.Seed, job.Format);
        var evalPrompts = job.EvalDataPath is { } evalPath ? GrpoPrompts.Load(evalPath, tokenizer, chat, job.Grpo.MaxPromptLength, job.Args.Seed, job.Format) : null;
        foreach (var set in new[] { prompts, evalPrompts }.OfType<GrpoPrompts>()) RewardFunctions.RequireColumns(rewards, set.Path, set.Columns);
        var stops = PromptFormat.StopIds(prompts.Conversational ? "chat" : "raw", tokenizer, chat).ToHashSet();
        if (tokenizer.EosId is int eos) stops.Add(eos);
        return (tokenizer, tokenizerPath, prompts, evalPrompts, stops);
    }

    /// <summary>An evaluation: every eval prompt's completions sampled from the policy as it is, with the same seeds each
    /// time (the step key -1), so evaluations differ by the policy, not by the draw; scored and logged with the eval_ prefix.</summary>
    internal static void Evaluate(int step, PolicySampler sampler, TrainingSession session, GrpoPrompts evalPrompts, TextTokenizer tokenizer, GrpoOptions options,
        IReadOnlyCollection<int> stops, IReadOnlyList<IRewardFunction> rewards, int seed, TrainingLog log, ITrainingReporter reporter)
    {
        sampler.SetParameters(session.GetParameters(), session.Graph.ParameterShapes);
        var completions = GrpoRollout.Sample(sampler, evalPrompts.All, tokenizer, options, stops, seed, step: -1);
        var metrics = new GrpoMetrics(RewardFunctions.MetricNames(rewards));
        metrics.Add(completions, GrpoRollout.Score(completions, rewards, options));
        var record = new JsonObject { ["step"] = step };
        metrics.Report(record, withKl: false, prefix: "eval_");
        log.Append(record);
        reporter.Info($"eval at step {step}: {Summary(record, "eval_")}");
    }

    /// <summary>The reported metrics of a training (or, with the eval_ prefix, an evaluation) record in one line; a step
    /// that sampled nothing (a later iteration) shows NaN rewards.</summary>
    static string Summary(JsonObject record, string prefix = "")
    {
        double Value(string name) => (double?)record[prefix + name] ?? double.NaN;
        return $"reward {Value("reward"):F4}  reward_std {Value("reward_std"):F4}  mean_length {Value("completions/mean_length"):F1}  " +
            $"clipped_ratio {Value("completions/clipped_ratio"):F2}";
    }
}
