using System.CommandLine;
using OrtLora.Training;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>ortlora grpo MODEL --data PROMPTS --reward-funcs ... -o DIR: TRL's GRPOTrainer (GRPOConfig's names), on
/// the LoRA parameters.</summary>
public static class GrpoCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model: plain (injected with the LoRA options), already injected, or with --init-from an SFT adapter" };
        var output = new Option<string>("--output", "-o") { Description = "output directory (adapter, checkpoints, metrics.jsonl, loss.png)", Required = true };
        var lora = new LoraOptions();
        var data = new Option<string>("--data") { Description = "prompt-only data (.parquet or .jsonl): a 'prompt' column (text or messages) and the columns the reward functions read", Required = true };
        var format = new Option<string>("--dataset-format") { Description = "auto, or prompt-only: any file's 'prompt' column as the prompts, its other columns (a completion too) for the rewards", DefaultValueFactory = _ => "auto" };
        format.AcceptOnlyFromAmong("auto", "prompt-only");
        var evalData = new Option<string?>("--eval-data") { Description = "prompt-only data sampled and scored at each evaluation (eval_reward ...)" };
        var evalSteps = new Option<int>("--eval-steps") { Description = "evaluate every N steps (also before the first and after the last)" };
        var evalStrategy = new Option<string>("--eval-strategy") { Description = "steps or no", DefaultValueFactory = _ => "steps" };
        evalStrategy.AcceptOnlyFromAmong("steps", "no");
        var generationsEval = new Option<int?>("--num-generations-eval") { Description = "completions per eval prompt (default: --num-generations)" };
        var rewardFuncs = new Option<string[]>("--reward-funcs")
        {
            Description = $"reward functions, each one of: {string.Join(", ", RewardFunctions.Names)} (several: --reward-funcs a b)",
            Required = true, AllowMultipleArgumentsPerToken = true,
        };
        var rewardWeights = new Option<double[]>("--reward-weights") { Description = "one weight per reward function (default: all 1)", AllowMultipleArgumentsPerToken = true };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file or directory (default: beside the model)" };
        var chatTemplate = new Option<string?>("--chat-template") { Description = "conversational prompts: chatml, llama2 or a Jinja template file (default: the tokenizer's own, else chatml)" };
        var generations = new Option<int>("--num-generations") { Description = "completions sampled per prompt (the group the rewards are compared in)", DefaultValueFactory = _ => 8 };
        var maxCompletion = new Option<int>("--max-completion-length") { DefaultValueFactory = _ => 256 };
        var maxPrompt = new Option<int>("--max-prompt-length") { Description = "keep the prompt's last N tokens", DefaultValueFactory = _ => 512 };
        var temperature = new Option<double>("--temperature") { DefaultValueFactory = _ => 1.0 };
        var topP = new Option<double>("--top-p") { DefaultValueFactory = _ => 1.0 };
        var topK = new Option<int>("--top-k") { Description = "0: no top-k filtering" };
        var repetition = new Option<double>("--repetition-penalty") { DefaultValueFactory = _ => 1.0 };
        var beta = new Option<double>("--beta") { Description = "KL coefficient against the model as training starts (TRL's default 0: no reference pass)" };
        var iterations = new Option<int>("--num-iterations") { Description = "optimizer steps on each generation batch (TRL's mu); from the second on the policy ratio is clipped", DefaultValueFactory = _ => 1 };
        var clip = new Option<double>("--epsilon") { Description = "the ratio's lower clip, 1 - epsilon", DefaultValueFactory = _ => 0.2 };
        var epsilonHigh = new Option<double?>("--epsilon-high") { Description = "the ratio's upper clip, 1 + epsilon_high (default: --epsilon; DAPO: 0.28)" };
        var lossType = new Option<string>("--loss-type") { Description = "dapo, grpo, bnpo, dr_grpo; cispo (MiniMax-M1), sapo (soft gate), luspo (GSPO scaled by length)", DefaultValueFactory = _ => "dapo" };
        lossType.AcceptOnlyFromAmong(GrpoOptions.LossTypes);
        var level = new Option<string>("--importance-sampling-level") { Description = "token, or sequence (GSPO: one ratio per completion, the geometric mean of its tokens')", DefaultValueFactory = _ => "token" };
        level.AcceptOnlyFromAmong(GrpoOptions.ImportanceSamplingLevels);
        var delta = new Option<double?>("--delta") { Description = "two-sided clip (INTELLECT-2): cap the unclipped ratio at delta (more than 1 + epsilon)" };
        var sapoPos = new Option<double>("--sapo-temperature-pos") { Description = "sapo's gate temperature for positive advantages", DefaultValueFactory = _ => 1.0 };
        var sapoNeg = new Option<double>("--sapo-temperature-neg") { Description = "sapo's gate temperature for the others", DefaultValueFactory = _ => 1.05 };
        var offPolicyMask = new Option<double?>("--off-policy-mask-threshold") { Description = "drop completions with A < 0 whose mean log(pi_old / pi) exceeds this (DeepSeek-V3.2)" };
        var biasCorrection = new Option<bool>("--use-bias-correction-kl") { Description = "the KL term times the importance ratio (DeepSeek-V3.2)" };
        var topEntropy = new Option<double>("--top-entropy-quantile") { Description = "train only each micro-batch's top share of tokens by entropy (0.2 in 'Beyond the 80/20 rule'; 1: all)", DefaultValueFactory = _ => 1.0 };
        var aggregation = new Option<string>("--multi-objective-aggregation") { Description = "sum_then_normalize, or normalize_then_sum (GDPO: each reward normalized in its group first)", DefaultValueFactory = _ => "sum_then_normalize" };
        aggregation.AcceptOnlyFromAmong(GrpoOptions.Aggregations);
        var stepsPerGeneration = new Option<int?>("--steps-per-generation") { Description = "micro-batches one generation batch is split over (default: --gradient-accumulation-steps); later steps are off-policy" };
        var generationBatchSize = new Option<int?>("--generation-batch-size") { Description = "completions sampled at once (instead of --steps-per-generation)" };
        var scale = new Option<string>("--scale-rewards") { Description = "divide advantages by the group's reward std, the batch's, or none", DefaultValueFactory = _ => "group" };
        scale.AcceptOnlyFromAmong(GrpoOptions.RewardScalings);
        var maskTruncated = new Option<bool>("--mask-truncated-completions") { Description = "completions cut at --max-completion-length count in the rewards, not in the loss" };
        var logCompletions = new Option<bool>("--log-completions") { Description = "write every completion with its rewards to OUTPUT/completions.jsonl" };
        var epochs = new Option<double>("--num-train-epochs") { DefaultValueFactory = _ => 1 };
        var maxSteps = new Option<int>("--max-steps") { Description = "total optimizer steps (overrides epochs)", DefaultValueFactory = _ => -1 };
        var batch = new Option<int>("--per-device-train-batch-size") { Description = "completions per micro-batch", DefaultValueFactory = _ => 8 };
        var accumulation = new Option<int>("--gradient-accumulation-steps") { DefaultValueFactory = _ => 1 };
        var lr = new Option<double>("--learning-rate") { Description = "TRL's GRPO default, made for full fine-tuning: LoRA usually takes 1e-5 to 1e-4", DefaultValueFactory = _ => 1e-6 };
        var scheduler = new Option<string>("--lr-scheduler-type") { DefaultValueFactory = _ => "linear" };
        scheduler.AcceptOnlyFromAmong(LrSchedule.Types.Where(t => t != ReduceLrOnPlateau.Name).ToArray());
        var warmupRatio = new Option<double>("--warmup-ratio");
        var warmupSteps = new Option<int>("--warmup-steps");
        var weightDecay = new Option<double>("--weight-decay");
        var beta1 = new Option<double>("--adam-beta1") { DefaultValueFactory = _ => 0.9 };
        var beta2 = new Option<double>("--adam-beta2") { DefaultValueFactory = _ => 0.999 };
        var epsilon = new Option<double>("--adam-epsilon") { DefaultValueFactory = _ => 1e-8 };
        var maxGradNorm = new Option<double>("--max-grad-norm") { DefaultValueFactory = _ => 1.0 };
        var logging = new Option<int>("--logging-steps") { DefaultValueFactory = _ => 10 };
        var loggingFirst = new Option<bool>("--logging-first-step");
        var saveSteps = new Option<int>("--save-steps") { DefaultValueFactory = _ => 500 };
        var saveLimit = new Option<int>("--save-total-limit");
        var saveOnlyModel = new Option<bool>("--save-only-model");
        var loraplus = new Option<double>("--loraplus-lr-ratio") { DefaultValueFactory = _ => 1 };
        var lossChunks = new Option<int?>("--loss-chunks") { Description = "the loss in this many sequence chunks through the lm_head (default: 8 from a vocabulary of 8192)" };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        var epLibrary = new Option<string?>("--ep-library") { Description = "plugin execution provider library for the training graphs" };
        var fp16 = new Option<bool>("--fp16");
        var bf16 = new Option<bool>("--bf16");
        var checkpointing = new Option<bool>("--gradient-checkpointing");
        var resume = new Option<string?>("--resume-from-checkpoint") { Description = "continue from a checkpoint folder (no value: the latest)", Arity = ArgumentArity.ZeroOrOne };
        var merge = new Option<bool>("--merge") { Description = "also write the merged model to OUTPUT/merged" };
        var plain = new Option<bool>("--plain-log") { Description = "one line per step instead of a progress bar" };

        var cmd = new Command("grpo", "GRPO (TRL's GRPOTrainer): sample completions of prompts, score them with reward functions, train the adapters toward the better ones") { model, output };
        lora.AddTo(cmd);
        foreach (var o in new Option[] { data, format, evalData, evalSteps, evalStrategy, generationsEval, rewardFuncs, rewardWeights, tokenizer, chatTemplate, generations, maxCompletion, maxPrompt, temperature, topP, topK, repetition,
                     beta, iterations, clip, epsilonHigh, lossType, level, delta, sapoPos, sapoNeg, offPolicyMask, biasCorrection, topEntropy, aggregation,
                     stepsPerGeneration, generationBatchSize, scale, maskTruncated, logCompletions, epochs, maxSteps, batch, accumulation, lr, scheduler, warmupRatio, warmupSteps, weightDecay,
                     beta1, beta2, epsilon, maxGradNorm, logging, loggingFirst, saveSteps, saveLimit, saveOnlyModel, loraplus, lossChunks, device, epLibrary, fp16, bf16,
                     checkpointing, resume, merge, plain })
            cmd.Options.Add(o);

        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var args = new TrainingArguments
            {
                OutputDir = parse.GetValue(output)!, NumTrainEpochs = parse.GetValue(epochs), MaxSteps = parse.GetValue(maxSteps),
                PerDeviceTrainBatchSize = parse.GetValue(batch), GradientAccumulationSteps = parse.GetValue(accumulation),
                LearningRate = parse.GetValue(lr), LrSchedulerType = parse.GetValue(scheduler)!, WarmupRatio = parse.GetValue(warmupRatio), WarmupSteps = parse.GetValue(warmupSteps),
                WeightDecay = parse.GetValue(weightDecay), AdamBeta1 = parse.GetValue(beta1), AdamBeta2 = parse.GetValue(beta2), AdamEpsilon = parse.GetValue(epsilon),
                MaxGradNorm = parse.GetValue(maxGradNorm), Seed = parse.GetValue(lora.Seed), LoggingSteps = parse.GetValue(logging), LoggingFirstStep = parse.GetValue(loggingFirst),
                SaveSteps = parse.GetValue(saveSteps), SaveTotalLimit = parse.GetValue(saveLimit), SaveOnlyModel = parse.GetValue(saveOnlyModel), LoraplusLrRatio = parse.GetValue(loraplus),
                LossChunks = parse.GetValue(lossChunks), Device = parse.GetValue(device)!, EpLibrary = parse.GetValue(epLibrary), Fp16 = parse.GetValue(fp16), Bf16 = parse.GetValue(bf16),
                GradientCheckpointing = parse.GetValue(checkpointing), EvalSteps = parse.GetValue(evalSteps), EvalStrategy = parse.GetValue(evalStrategy)!,
            };
            if (args.PerDeviceTrainBatchSize < 1 || args.GradientAccumulationSteps < 1) throw new OrtLoraException("--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1");
            if (args.LearningRate <= 0) throw new OrtLoraException("--learning-rate must be positive");
            if (args.MaxSteps <= 0 && args.NumTrainEpochs <= 0) throw new OrtLoraException("give --num-train-epochs > 0 or --max-steps > 0");
            if (args.Fp16 && args.Bf16) throw new OrtLoraException("choose one of --fp16 and --bf16");
            var weights = parse.GetValue(rewardWeights);
            var job = new GrpoJob
            {
                ModelPath = parse.GetValue(model)!, DataPath = parse.GetValue(data)!, EvalDataPath = parse.GetValue(evalData),
                Format = Training.Data.ParquetDataset.ParseFormat(parse.GetValue(format)!), RewardFuncs = parse.GetValue(rewardFuncs)!,
                TokenizerPath = parse.GetValue(tokenizer), ChatTemplate = parse.GetValue(chatTemplate), Lora = lora.Read(parse), InitFrom = parse.GetValue(lora.InitFrom),
                Grpo = new GrpoOptions
                {
                    NumGenerations = parse.GetValue(generations), NumGenerationsEval = parse.GetValue(generationsEval), MaxCompletionLength = parse.GetValue(maxCompletion), MaxPromptLength = parse.GetValue(maxPrompt),
                    Temperature = parse.GetValue(temperature), TopP = parse.GetValue(topP), TopK = parse.GetValue(topK), RepetitionPenalty = parse.GetValue(repetition),
                    Beta = parse.GetValue(beta), NumIterations = parse.GetValue(iterations), Epsilon = parse.GetValue(clip), EpsilonHigh = parse.GetValue(epsilonHigh),
                    LossType = parse.GetValue(lossType)!, ScaleRewards = parse.GetValue(scale)!, ImportanceSamplingLevel = parse.GetValue(level)!,
                    Delta = parse.GetValue(delta), SapoTemperaturePos = parse.GetValue(sapoPos), SapoTemperatureNeg = parse.GetValue(sapoNeg),
                    OffPolicyMaskThreshold = parse.GetValue(offPolicyMask), UseBiasCorrectionKl = parse.GetValue(biasCorrection),
                    TopEntropyQuantile = parse.GetValue(topEntropy), MultiObjectiveAggregation = parse.GetValue(aggregation)!,
                    StepsPerGeneration = parse.GetValue(stepsPerGeneration), GenerationBatchSize = parse.GetValue(generationBatchSize),
                    MaskTruncatedCompletions = parse.GetValue(maskTruncated), RewardWeights = weights is { Length: > 0 } ? weights : null,
                },
                Args = args, LogCompletions = parse.GetValue(logCompletions), Merge = parse.GetValue(merge),
                ResumeFromCheckpoint = parse.GetResult(resume) is null ? null : parse.GetValue(resume) ?? "",
            };
            var result = TrainingRunner.Run(reporter => GrpoTrainer.Run(job, reporter), args.LoggingSteps, parse.GetValue(plain));
            Console.WriteLine($"adapter: {result.AdapterDir}" + (result.MergedModel is { } m ? $"; merged model: {m}" : ""));
        }));
        return cmd;
    }
}
