using System.Diagnostics;
using System.Text.Json.Nodes;
using OrtLora.Autodiff;
using OrtLora.Inference;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using EngineBatch = OrtLora.Training.Engine.Batch;

namespace OrtLora.Training.Grpo;

/// <summary>TRL's OnlineDPOConfig (and XPOConfig) options of the loss (sampling is <see cref="GrpoOptions"/>').</summary>
/// <param name="Beta">DPO's β: how far the policy may move from the reference</param>
/// <param name="LossType">sigmoid (DPO) or ipo</param>
/// <param name="MissingEosPenalty">subtracted from the reward of a completion that did not end (no EOS or end of turn
/// within max_new_tokens); null: none</param>
/// <param name="XpoAlpha">XPO (TRL's XPOTrainer, Xie et al. 2024): each pair is one completion of the policy and one of
/// the reference model, and the loss adds α·Σ log π of the reference's completion (exploration); null: online DPO</param>
/// <param name="MaxLength">OnlineDPOConfig.max_length: the most tokens of prompt + completion scored; a longer row loses
/// its leftmost tokens, so that as much of the completion as possible stays</param>
public sealed record OnlineDpoOptions(double Beta = 0.1, string LossType = "sigmoid", double? MissingEosPenalty = null, double? XpoAlpha = null,
    int MaxLength = 512)
{
    public bool IsXpo => XpoAlpha is not null;

    public void Validate()
    {
        if (XpoAlpha is < 0) throw new OrtLoraException($"--alpha must not be negative, got {XpoAlpha}");
        if (Beta <= 0) throw new OrtLoraException($"--beta must be positive, got {Beta}");
        if (LossType is not ("sigmoid" or "ipo")) throw new OrtLoraException($"online DPO's --loss-type is sigmoid or ipo, not '{LossType}'");
        if (MissingEosPenalty is < 0) throw new OrtLoraException($"--missing-eos-penalty must not be negative, got {MissingEosPenalty}");
        if (MaxLength < 1) throw new OrtLoraException($"--max-length must be at least 1, got {MaxLength}");
    }
}

/// <summary>TRL's OnlineDPOTrainer on the training engine: each micro-batch samples two completions of each of its
/// prompts from the policy as it is, scores them with the reward functions (a reward model among them), less
/// missing_eos_penalty for one that did not end, and trains on the pairs, the higher-scored completion chosen (the
/// first on a tie), with the DPO loss against the model as training started (<see cref="PreferenceLoss"/>: each row's
/// log-probability summed over its completion's tokens, softmax without temperature, as TRL scores them). A step is
/// gradient_accumulation_steps such micro-batches of per_device_train_batch_size prompts, each micro-batch's loss weighed
/// equally, as TRL divides each by the accumulation steps.</summary>
public static class OnlineDpoTrainer
{
    public static TrainResult Run(GrpoJob job, OnlineDpoOptions dpo, ITrainingReporter reporter)
    {
        dpo.Validate();
        var rewards = new List<IRewardFunction>();
        try
        {
            foreach (var spec in job.RewardFuncs) rewards.Add(RewardFunctions.Parse(spec, job.Grpo.MaxCompletionLength, job.ChatTemplateKwargs));
            job.Grpo.Validate(rewards.Count);
            return Train(job with { Grpo = job.Grpo with { NumGenerations = 2 } }, dpo, rewards, reporter);
        }
        finally
        {
            foreach (var r in rewards) r.Dispose();
        }
    }

    static TrainResult Train(GrpoJob job, OnlineDpoOptions dpo, List<IRewardFunction> rewards, ITrainingReporter reporter)
    {
        var (args, grpo) = (job.Args, job.Grpo);
        Directory.CreateDirectory(args.OutputDir);
        using var model = OnnxModel.Load(job.ModelPath);
        var lora = Trainer.InjectUnlessInjected(model, job.InitFrom, job.Lora);
        Trainer.RefuseDataInits(lora, model.Source);
        var (tokenizer, tokenizerPath, prompts, evalPrompts, stops) = GrpoTrainer.Prepare(job, model, rewards);

        int promptsPerStep = args.PerDeviceTrainBatchSize * args.GradientAccumulationSteps;
        int stepsPerEpoch = (prompts.All.Count + promptsPerStep - 1) / promptsPerStep;
        int totalSteps = args.MaxSteps > 0 ? args.MaxSteps : (int)Math.Ceiling(args.NumTrainEpochs * stepsPerEpoch);
        int warmup = LrSchedule.WarmupSteps(args, totalSteps);
        var preference = new PreferenceOptions(dpo.Beta, dpo.LossType, SumLogps: true, RowTerms: dpo.IsXpo);
        using var session = new TrainingSession(model, new TrainingSessionOptions(args.AdamWFor(model), Optimization: args.OrtOptimizationLevel, Device: args.Device,
            EpLibrary: args.EpLibrary, Compute: args.Compute, GradientCheckpointing: args.GradientCheckpointing, Seed: args.Seed, LossChunks: args.LossChunks,
            Preference: preference, DisableDropout: args.DisableDropout ?? true));
        using var sessionOptions = OrtRun.DefaultOptions();
        using var sampler = new PolicySampler(model, sessionOptions);
        // XPO samples from the reference too: the parameters as training starts (before any resume)
        using var referenceSampler = dpo.IsXpo ? new PolicySampler(model, sessionOptions) : null;
        referenceSampler?.SetParameters(session.GetParameters(), session.Graph.ParameterShapes);

        var (state, best, log) = GrpoTrainer.Start(job, session, reporter);

        reporter.Started(totalSteps, state.GlobalStep,
            $"{lora.Adapters.Count} adapters, {session.ParameterNames.Sum(p => session.Graph.ParameterShapes[p].Aggregate(1L, (a, b) => a * b)):N0} trainable parameters; " +
            $"{prompts.All.Count} prompts, {promptsPerStep} a step × 2 completions; rewards: {string.Join(", ", RewardFunctions.MetricNames(rewards))}; " +
            $"{dpo.LossType} loss, beta {dpo.Beta}; {totalSteps} steps, warmup {warmup}");
        bool evaluates = evalPrompts is not null && args.EvalStrategy != "no";
        void EvaluateAt(int step) => GrpoTrainer.Evaluate(step, sampler, session, evalPrompts!, tokenizer, grpo, stops, rewards, args.Seed, log, reporter);
        int lastEval = -1;
        if (evaluates && state.GlobalStep == 0) { EvaluateAt(0); lastEval = 0; }

        var metrics = new OnlineDpoMetrics(dpo.Beta);
        var clock = Stopwatch.StartNew();
        var runClock = Stopwatch.StartNew();
        double lastLoss = double.NaN, lossThisRun = 0;
        int stepsThisRun = 0;
        long tokensSinceLog = 0;
        while (state.GlobalStep < totalSteps)
        {
            double lr = LrSchedule.At(args.LrSchedulerType, args.LearningRate, state.GlobalStep, warmup, totalSteps, args.LrSchedulerKwargs);
            sampler.SetParameters(session.GetParameters(), session.Graph.ParameterShapes);
            var (epoch, index) = (state.Epoch, (int)state.DataIndex);
            double loss = 0;
            long tokens = 0;
            for (int micro = 0; micro < args.GradientAccumulationSteps; micro++)
            {
                // this micro-batch's prompts in the epoch's order; an epoch's last may take the next epoch's first
                var group = new List<GrpoPrompt>();
                while (group.Count < args.PerDeviceTrainBatchSize)
                {
                    if (index == prompts.All.Count) (epoch, index) = (epoch + 1, 0);
                    group.Add(prompts.At(epoch, index++));
                }
                int key = state.GlobalStep * args.GradientAccumulationSteps + micro;
                var sampled = referenceSampler is null ? GrpoRollout.Sample(sampler, group, tokenizer, grpo, stops, args.Seed, key)
                    : Interleave(GrpoRollout.Sample(sampler, group, tokenizer, grpo with { NumGenerations = 1 }, stops, args.Seed, key),
                        GrpoRollout.Sample(referenceSampler, group, tokenizer, grpo with { NumGenerations = 1 }, stops, args.Seed, key + (1 << 30)));
                var scores = Rewards(sampled, rewards, grpo, dpo);
                var (batch, order) = Pairs(sampled, scores, tokenizer, dpo.MaxLength);
                // XPO: α / prompts on the rows holding the reference's completion (the odd ones of the interleaving)
                if (dpo.XpoAlpha is { } alpha) batch = batch with { RowWeights = [.. order.Select(i => i % 2 == 1 ? (float)(alpha / group.Count) : 0f)] };
                loss += (args.GradientAccumulationSteps == 1 ? session.Step(batch, (float)lr, (float)args.MaxGradNorm)
                    : session.Accumulate(batch, 1f / args.GradientAccumulationSteps)) / args.GradientAccumulationSteps;
                tokens += batch.AttentionMask.Sum();
                if (job.LogCompletions) LogPairs(Path.Combine(args.OutputDir, GrpoTrainer.CompletionsFile), state.GlobalStep + 1, sampled, scores, order, dpo.IsXpo);
                metrics.Add(session.LastSequenceLogps, session.LastReferenceLogps, [.. order.Select(i => scores[i])], [.. order.Select(i => !sampled[i].Truncated)],
                    dpo.IsXpo ? [.. order.Select(i => i % 2 == 1)] : null, dpo.XpoAlpha ?? 0);
            }
            if (args.GradientAccumulationSteps > 1) session.ApplyAccumulated((float)lr, (float)args.MaxGradNorm);
            if (!double.IsFinite(loss))
                throw new OrtLoraException($"loss is {loss} at step {state.GlobalStep + 1}: training stopped. " +
                    (Checkpoint.Latest(args.OutputDir) is { } good ? $"The last good checkpoint is {good}." : "No checkpoint was saved."));
            state = state with { GlobalStep = state.GlobalStep + 1, Epoch = epoch, DataIndex = index, TokensSeen = state.TokensSeen + tokens };
            lastLoss = loss; lossThisRun += loss; stepsThisRun++; tokensSinceLog += tokens;
            metrics.AddLoss(loss);

            double tokensPerSecond = tokensSinceLog / Math.Max(1e-9, clock.Elapsed.TotalSeconds);
            reporter.Stepped(new StepReport(state.GlobalStep, totalSteps, epoch, loss, lr, session.LastGradNorm, tokensPerSecond));
            if (GrpoTrainer.StepRecord(args, state, totalSteps, warmup, epoch, index, prompts.All.Count, session.LastGradNorm, tokensPerSecond) is { } record)
            {
                metrics.Report(record);
                log.Append(record);
                reporter.Info($"step {state.GlobalStep}: loss {(double)record["loss"]!:F4}  scores {(double)record["objective/scores"]!:F4}  " +
                    $"kl {(double)record["objective/kl"]!:F4}  rewards/accuracies {(double)record["rewards/accuracies"]!:F2}");
                tokensSinceLog = 0;
                clock.Restart();
            }
            if (evaluates && args.EvalSteps > 0 && state.GlobalStep % args.EvalSteps == 0 && state.GlobalStep < totalSteps) { EvaluateAt(state.GlobalStep); lastEval = state.GlobalStep; }
            if (args.SaveStrategy == "steps" && args.SaveSteps > 0 && state.GlobalStep % args.SaveSteps == 0)
            {
                Trainer.SaveCheckpoint(model, session, state, best, args.OutputDir, args.SaveOnlyModel);
                Checkpoint.Prune(args.OutputDir, args.SaveTotalLimit);
            }
        }

        return GrpoTrainer.Finish(job, model, session, log, state.GlobalStep, runClock.Elapsed.TotalSeconds, stepsThisRun, lossThisRun, lastLoss, tokenizerPath,
            finalEvaluation: evaluates && lastEval != state.GlobalStep ? () => EvaluateAt(state.GlobalStep) : null);
    }

    /// <summary>TRL's log_completions for pairs, as JSON Lines: each prompt with its chosen and rejected completions and
    /// their rewards (XPO: whether the chosen one is the reference model's).</summary>
    static void LogPairs(string path, int step, IReadOnlyList<Completion> sampled, IReadOnlyList<double> rewards, int[] order, bool xpo)
    {
        using var writer = File.AppendText(path);
        for (int row = 0; row < order.Length; row += 2)
        {
            var (chosen, rejected) = (order[row], order[row + 1]);
            var record = new JsonObject
            {
                ["step"] = step, ["prompt"] = sampled[chosen].Prompt.Text, ["chosen"] = sampled[chosen].Text, ["rejected"] = sampled[rejected].Text,
                ["chosen_reward"] = rewards[chosen], ["rejected_reward"] = rewards[rejected],
            };
            if (xpo) record["chosen_from_reference"] = chosen % 2 == 1;
            writer.WriteLine(record.ToJsonString());
        }
    }

    /// <summary>XPO's pairs: each prompt's policy completion, then its reference completion.</summary>
    static List<Completion> Interleave(List<Completion> policy, List<Completion> reference) =>
        [.. policy.Zip(reference).SelectMany(p => new[] { p.First, p.Second })];

    /// <summary>Each completion's reward: the weighted sum of the functions' scores (TRL's nansum), less
    /// missing_eos_penalty for a completion that did not end.</summary>
    public static double[] Rewards(IReadOnlyList<Completion> completions, IReadOnlyList<IRewardFunction> rewards, GrpoOptions grpo, OnlineDpoOptions dpo)
    {
        var sums = GrpoRollout.Score(completions, rewards, grpo).Rewards;
        return [.. sums.Select((r, i) => completions[i].Truncated && dpo.MissingEosPenalty is { } penalty ? r - penalty : r)];
    }

    /// <summary>The prompts' completion pairs as the DPO engine's rows, chosen then rejected (the higher reward chosen,
    /// the first completion on a tie): prompt + completion, its first tokens dropped beyond <paramref name="maxLength"/>
    /// (OnlineDPOConfig.max_length), right-padded, the completion's tokens labelled.</summary>
    /// <returns>the batch, and for each of its rows the index of its completion in <paramref name="completions"/></returns>
    public static (EngineBatch Batch, int[] Order) Pairs(IReadOnlyList<Completion> completions, IReadOnlyList<double> rewards, TextTokenizer tokenizer,
        int maxLength = int.MaxValue)
    {
        var order = new int[completions.Count];
        for (int p = 0; p < completions.Count / 2; p++)
            (order[2 * p], order[2 * p + 1]) = rewards[2 * p] >= rewards[2 * p + 1] ? (2 * p, 2 * p + 1) : (2 * p + 1, 2 * p);
        var rows = order.Select(i =>
        {
            var c = completions[i];
            int[] ids = [.. c.Prompt.Ids, .. c.Ids], labels = [.. Enumerable.Repeat(ExampleEncoder.IgnoreIndex, c.Prompt.Ids.Length), .. c.Ids];
            int skip = Math.Max(0, ids.Length - maxLength);
            return new Sequence(ids[skip..], labels[skip..], 0, []);
        }).ToList();
        return (Trainer.ToEngine(Batching.Pad(rows, tokenizer.PadId, epoch: 0)), order);
    }
}

/// <summary>TRL's OnlineDPOTrainer statistics, each appended per micro-batch and averaged at logging: the rewards'
/// mean (objective/scores) and chosen − rejected gap (objective/scores_margin), the share of completions that ended
/// (val/contain_eos_token), the KL to the reference summed over each completion (objective/kl), −β·kl
/// (objective/non_score_reward), reward − β·kl (objective/rlhf_reward), −Σ log p (objective/entropy), DPO's implicit
/// rewards (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies), logps/chosen, logps/rejected, beta.</summary>
sealed class OnlineDpoMetrics(double beta)
{
    readonly Dictionary<string, List<double>> _values = new();

    void Put(string name, double value) => (_values.TryGetValue(name, out var list) ? list : _values[name] = []).Add(value);

    public void AddLoss(double loss) => Put("loss", loss);

    /// <param name="policy">each row's summed log-probability (rows chosen, rejected, ...)</param>
    /// <param name="reference">each row's under the reference</param>
    /// <param name="rewards">each row's reward</param>
    /// <param name="ended">whether each row's completion ended within max_new_tokens</param>
    /// <param name="fromReference">XPO: which rows hold the reference model's completion; its KL and entropy are the
    /// policy's completions', its scores split by who wrote them, and its loss split into DPO's and the α term</param>
    public void Add(IReadOnlyList<float> policy, IReadOnlyList<float> reference, IReadOnlyList<double> rewards, IReadOnlyList<bool> ended,
        IReadOnlyList<bool>? fromReference = null, double alpha = 0)
    {
        int rows = rewards.Count, pairs = rows / 2;
        double Mean(Func<int, double> f, IEnumerable<int> over) => over.Average(f);
        var all = Enumerable.Range(0, rows).Where(i => fromReference is null || !fromReference[i]).ToList();
        if (fromReference is not null)
        {
            var referenceRows = Enumerable.Range(0, rows).Where(i => fromReference[i]).ToList();
            Put("objective/model_scores", Mean(i => rewards[i], all));
            Put("objective/ref_scores", Mean(i => rewards[i], referenceRows));
            Put("loss/xpo", Mean(i => alpha * policy[i], referenceRows));
            Put("alpha", alpha);
        }
        var chosen = Enumerable.Range(0, pairs).Select(p => 2 * p).ToList();
        var rejected = chosen.Select(i => i + 1).ToList();
        double Kl(int i) => policy[i] - reference[i];
        double Implicit(int i) => beta * Kl(i);
        Put("objective/scores", Mean(i => rewards[i], Enumerable.Range(0, rows)));
        Put("objective/scores_margin", Mean(i => rewards[i] - rewards[i + 1], chosen));
        Put("val/contain_eos_token", Mean(i => ended[i] ? 1 : 0, Enumerable.Range(0, rows)));
        Put("logps/chosen", Mean(i => policy[i], chosen));
        Put("logps/rejected", Mean(i => policy[i], rejected));
        Put("objective/kl", Mean(Kl, all));
        Put("objective/non_score_reward", Mean(i => -beta * Kl(i), all));
        Put("objective/rlhf_reward", Mean(i => rewards[i] - beta * Kl(i), all));
        Put("objective/entropy", Mean(i => -policy[i], all));
        Put("rewards/chosen", Mean(Implicit, chosen));
        Put("rewards/rejected", Mean(Implicit, rejected));
        Put("rewards/margins", Mean(i => Implicit(i) - Implicit(i + 1), chosen));
        Put("rewards/accuracies", Mean(i => Implicit(i) > Implicit(i + 1) ? 1 : 0, chosen));
        Put("beta", beta);
    }

    public void Report(JsonObject record)
    {
        foreach (var (name, values) in _values) record[name] = values.Average();
        // XPO: the loss less its α term
        if (_values.ContainsKey("loss/xpo")) record["loss/dpo"] = _values["loss"].Average() - _values["loss/xpo"].Average();
        _values.Clear();
    }
}
