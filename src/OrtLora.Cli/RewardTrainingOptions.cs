using System.CommandLine;
using OrtLora.Training;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>The options `grpo`, `rloo` and `online-dpo` share, named as TRL's GRPOConfig, RLOOConfig and OnlineDPOConfig
/// name them. These cover the prompts, the reward functions, sampling, the clipped ratio of off-policy steps (not
/// online DPO's) and the Trainer's own options. Each command adds its own loss options.</summary>
public sealed class RewardTrainingOptions
{
    readonly Argument<string> _model = new("model") { Description = "ONNX model: plain (injected with the LoRA options), already injected, or with --init-from an SFT adapter" };
    readonly Option<string> _output = new("--output", "-o") { Description = "output directory (adapter, checkpoints, metrics.jsonl, loss.png)", Required = true };
    readonly LoraOptions _lora = new();
    readonly Option<string> _data = new("--data") { Description = "prompt-only data (.parquet or .jsonl): a 'prompt' column (text or messages) and the columns the reward functions read", Required = true };
    readonly Option<string> _format = new("--dataset-format") { Description = "auto, or prompt-only: any file's 'prompt' column as the prompts, its other columns (a completion too) for the rewards", DefaultValueFactory = _ => "auto" };
    readonly Option<string?> _evalData = new("--eval-data") { Description = "prompt-only data sampled and scored at each evaluation (eval_reward ...)" };
    readonly Option<int> _evalSteps = new("--eval-steps") { Description = "evaluate every N steps (also before the first and after the last)" };
    readonly Option<string> _evalStrategy = new("--eval-strategy") { Description = "steps or no", DefaultValueFactory = _ => "steps" };
    readonly Option<int?> _generationsEval = new("--num-generations-eval") { Description = "completions per eval prompt (default: --num-generations)" };
    readonly Option<string[]> _rewardFuncs = new("--reward-funcs")
    {
        Description = $"reward functions, each one of: {string.Join(", ", RewardFunctions.Names)} (several: --reward-funcs a b)",
        Required = true, AllowMultipleArgumentsPerToken = true,
    };
    readonly Option<double[]> _rewardWeights = new("--reward-weights") { Description = "one weight per reward function (default: all 1)", AllowMultipleArgumentsPerToken = true };
    readonly Option<string?> _tokenizer = new("--tokenizer") { Description = "tokenizer file or directory (default: beside the model)" };
    readonly Option<string?> _chatTemplate = new("--chat-template") { Description = "conversational prompts: chatml, llama2 or a Jinja template file (default: the tokenizer's own, else chatml)" };
    readonly Option<string?> _chatTemplateKwargs = new("--chat-template-kwargs") { Description = "JSON object of variables for a Jinja chat template, as TRL's chat_template_kwargs (e.g. '{\"enable_thinking\": false}' for Qwen3)" };
    readonly Option<int> _generations;
    readonly Option<int> _maxCompletion = new("--max-completion-length") { DefaultValueFactory = _ => 256 };
    readonly Option<int> _maxPrompt = new("--max-prompt-length") { Description = "keep the prompt's last N tokens", DefaultValueFactory = _ => 512 };
    readonly Option<double> _temperature = new("--temperature") { DefaultValueFactory = _ => 1.0 };
    readonly Option<double> _topP = new("--top-p") { DefaultValueFactory = _ => 1.0 };
    readonly Option<int> _topK = new("--top-k") { Description = "0: no top-k filtering" };
    readonly Option<double> _minP = new("--min-p") { Description = "only tokens at least this times as likely as the most likely one (0: off)" };
    readonly Option<double> _repetition = new("--repetition-penalty") { DefaultValueFactory = _ => 1.0 };
    readonly Option<double> _beta;
    readonly Option<int> _iterations = new("--num-iterations") { Description = "optimizer steps on each generation batch (TRL's mu); from the second on the policy ratio is clipped", DefaultValueFactory = _ => 1 };
    readonly Option<double> _clip = new("--epsilon") { Description = "the ratio's lower clip, 1 - epsilon", DefaultValueFactory = _ => 0.2 };
    readonly Option<double?> _epsilonHigh = new("--epsilon-high") { Description = "the ratio's upper clip, 1 + epsilon_high (default: --epsilon; DAPO: 0.28)" };
    readonly Option<int?> _stepsPerGeneration = new("--steps-per-generation") { Description = "micro-batches one generation batch is split over (default: --gradient-accumulation-steps); later steps are off-policy" };
    readonly Option<int?> _generationBatchSize = new("--generation-batch-size") { Description = "completions sampled at once (instead of --steps-per-generation)" };
    readonly Option<bool> _maskTruncated = new("--mask-truncated-completions") { Description = "completions cut at --max-completion-length count in the rewards, not in the loss" };
    readonly Option<bool> _logCompletions = new("--log-completions") { Description = "write every completion with its rewards to OUTPUT/completions.jsonl" };
    readonly Option<double> _epochs = new("--num-train-epochs") { DefaultValueFactory = _ => 1 };
    readonly Option<int> _maxSteps = new("--max-steps") { Description = "total optimizer steps (overrides epochs)", DefaultValueFactory = _ => -1 };
    readonly Option<int> _batch = new("--per-device-train-batch-size") { Description = "completions per micro-batch", DefaultValueFactory = _ => 8 };
    readonly Option<int> _accumulation = new("--gradient-accumulation-steps") { DefaultValueFactory = _ => 1 };
    readonly Option<double> _lr = new("--learning-rate") { Description = "TRL's default, made for full fine-tuning: LoRA usually takes 1e-5 to 1e-4", DefaultValueFactory = _ => 1e-6 };
    readonly Option<string> _scheduler = new("--lr-scheduler-type") { DefaultValueFactory = _ => "linear" };
    readonly Option<double> _warmupRatio = new("--warmup-ratio");
    readonly Option<int> _warmupSteps = new("--warmup-steps");
    readonly Option<double> _weightDecay = new("--weight-decay");
    readonly Option<double> _beta1 = new("--adam-beta1") { DefaultValueFactory = _ => 0.9 };
    readonly Option<double> _beta2 = new("--adam-beta2") { DefaultValueFactory = _ => 0.999 };
    readonly Option<double> _adamEpsilon = new("--adam-epsilon") { DefaultValueFactory = _ => 1e-8 };
    readonly Option<double> _maxGradNorm = new("--max-grad-norm") { DefaultValueFactory = _ => 1.0 };
    readonly Option<int> _logging = new("--logging-steps") { DefaultValueFactory = _ => 10 };
    readonly Option<bool> _loggingFirst = new("--logging-first-step");
    readonly Option<int> _saveSteps = new("--save-steps") { DefaultValueFactory = _ => 500 };
    readonly Option<int> _saveLimit = new("--save-total-limit");
    readonly Option<bool> _saveOnlyModel = new("--save-only-model");
    readonly Option<double> _loraplus = new("--loraplus-lr-ratio") { DefaultValueFactory = _ => 1 };
    readonly Option<int?> _lossChunks = new("--loss-chunks") { Description = "the loss in this many sequence chunks through the lm_head (default: 8 from a vocabulary of 8192)" };
    readonly Option<string> _device = new("--device") { DefaultValueFactory = _ => "cpu" };
    readonly Option<string?> _epLibrary = new("--ep-library") { Description = "plugin execution provider library for the training graphs" };
    readonly Option<bool> _fp16 = new("--fp16");
    readonly Option<bool> _bf16 = new("--bf16");
    readonly Option<bool> _checkpointing = new("--gradient-checkpointing");
    readonly ReportingCliOptions _reporting = new();
    readonly Option<string?> _resume = new("--resume-from-checkpoint") { Description = "continue from a checkpoint folder (no value: the latest)", Arity = ArgumentArity.ZeroOrOne };
    readonly Option<bool> _merge = new("--merge") { Description = "also write the merged model to OUTPUT/merged" };
    readonly Option<bool> _plain = new("--plain-log") { Description = "one line per step instead of a progress bar" };
    readonly Option<bool> _disableDropout = new("--disable-dropout") { Description = "no dropout while training, --lora-dropout included (TRL's disable_dropout; --disable-dropout false keeps it)", DefaultValueFactory = _ => true };
    /// <summary>Online DPO samples two completions of each prompt and takes no off-policy steps.</summary>
    readonly bool _onlineDpo;

    /// <param name="numGenerations">the trainer's default num_generations (GRPO 8, RLOO 2)</param>
    /// <param name="beta">the trainer's default KL coefficient (GRPO 0, RLOO 0.05)</param>
    /// <param name="betaDescription">what β does in this trainer</param>
    /// <param name="onlineDpo">the options of `online-dpo` (OnlineDPOConfig's defaults; a batch counts prompts)</param>
    public RewardTrainingOptions(int numGenerations, double beta, string betaDescription, bool onlineDpo = false)
    {
        _onlineDpo = onlineDpo;
        if (onlineDpo)
        {
            _batch.Description = "prompts per micro-batch, each sampled twice";
            _lr.DefaultValueFactory = _ => 5e-7;
            _maxCompletion.Aliases.Add("--max-new-tokens");
            _maxCompletion.DefaultValueFactory = _ => 128;
            _topK.DefaultValueFactory = _ => 30;
        }
        _generations = new("--num-generations") { Description = "completions sampled per prompt (the group the rewards are compared in)", DefaultValueFactory = _ => numGenerations };
        _beta = new("--beta") { Description = betaDescription, DefaultValueFactory = _ => beta };
        _format.AcceptOnlyFromAmong("auto", "prompt-only");
        _evalStrategy.AcceptOnlyFromAmong("steps", "no");
        _scheduler.AcceptOnlyFromAmong(LrSchedule.Types.Where(t => t != ReduceLrOnPlateau.Name).ToArray());
        _device.AcceptOnlyFromAmong("cpu", "cuda");
    }

    /// <summary>The --beta given (its meaning is the command's).</summary>
    public double Beta(ParseResult parse) => parse.GetValue(_beta);

    /// <summary>The model argument, the output and LoRA options, then the shared options and the command's own.</summary>
    public void AddTo(Command command, params Option[] own)
    {
        command.Arguments.Add(_model);
        command.Options.Add(_output);
        _lora.AddTo(command);
        Option[] groups = _onlineDpo ? [_disableDropout, _logCompletions] : [_generationsEval, _generations, _iterations, _clip, _epsilonHigh, _stepsPerGeneration, _generationBatchSize, _maskTruncated, _logCompletions];
        foreach (var o in new Option[] { _data, _format, _evalData, _evalSteps, _evalStrategy, _rewardFuncs, _rewardWeights, _tokenizer, _chatTemplate, _chatTemplateKwargs,
                     _maxCompletion, _maxPrompt, _temperature, _topP, _topK, _minP, _repetition, _beta }.Concat(groups).Concat(own)
                     .Concat([_epochs, _maxSteps, _batch, _accumulation, _lr, _scheduler,
                         _warmupRatio, _warmupSteps, _weightDecay, _beta1, _beta2, _adamEpsilon, _maxGradNorm, _logging, _loggingFirst, _saveSteps, _saveLimit,
                         _saveOnlyModel, _loraplus, _lossChunks, _device, _epLibrary, _fp16, _bf16, _checkpointing, _resume, _merge, _plain, .. _reporting.All]))
            command.Options.Add(o);
    }

    /// <summary>Runs the trainer on the parsed job; <paramref name="algorithm"/> holds the command's own loss options,
    /// the shared ones are filled in here.</summary>
    /// <param name="train">the trainer (default: GRPO's loop, which also runs RLOO)</param>
    public void Run(ParseResult parse, GrpoOptions algorithm, Func<GrpoJob, ITrainingReporter, TrainResult>? train = null)
    {
        T Shared<T>(Option<T> option, T otherwise) => _onlineDpo ? otherwise : parse.GetValue(option)!;
        var args = new TrainingArguments
        {
            OutputDir = parse.GetValue(_output)!, NumTrainEpochs = parse.GetValue(_epochs), MaxSteps = parse.GetValue(_maxSteps),
            PerDeviceTrainBatchSize = parse.GetValue(_batch), GradientAccumulationSteps = parse.GetValue(_accumulation),
            LearningRate = parse.GetValue(_lr), LrSchedulerType = parse.GetValue(_scheduler)!, WarmupRatio = parse.GetValue(_warmupRatio), WarmupSteps = parse.GetValue(_warmupSteps),
            WeightDecay = parse.GetValue(_weightDecay), AdamBeta1 = parse.GetValue(_beta1), AdamBeta2 = parse.GetValue(_beta2), AdamEpsilon = parse.GetValue(_adamEpsilon),
            MaxGradNorm = parse.GetValue(_maxGradNorm), Seed = parse.GetValue(_lora.Seed), LoggingSteps = parse.GetValue(_logging), LoggingFirstStep = parse.GetValue(_loggingFirst),
            SaveSteps = parse.GetValue(_saveSteps), SaveTotalLimit = parse.GetValue(_saveLimit), SaveOnlyModel = parse.GetValue(_saveOnlyModel), LoraplusLrRatio = parse.GetValue(_loraplus),
            LossChunks = parse.GetValue(_lossChunks), Device = parse.GetValue(_device)!, EpLibrary = parse.GetValue(_epLibrary), Fp16 = parse.GetValue(_fp16), Bf16 = parse.GetValue(_bf16),
            GradientCheckpointing = parse.GetValue(_checkpointing), DisableDropout = _onlineDpo ? parse.GetValue(_disableDropout) : null, EvalSteps = parse.GetValue(_evalSteps), EvalStrategy = parse.GetValue(_evalStrategy)!,
        };
        _reporting.Apply(parse, args);
        if (args.PerDeviceTrainBatchSize < 1 || args.GradientAccumulationSteps < 1) throw new OrtLoraException("--per-device-train-batch-size and --gradient-accumulation-steps must be at least 1");
        if (args.LearningRate <= 0) throw new OrtLoraException("--learning-rate must be positive");
        if (args.MaxSteps <= 0 && args.NumTrainEpochs <= 0) throw new OrtLoraException("give --num-train-epochs > 0 or --max-steps > 0");
        if (args.Fp16 && args.Bf16) throw new OrtLoraException("choose one of --fp16 and --bf16");
        var weights = parse.GetValue(_rewardWeights);
        var job = new GrpoJob
        {
            ModelPath = parse.GetValue(_model)!, DataPath = parse.GetValue(_data)!, EvalDataPath = parse.GetValue(_evalData),
            Format = Training.Data.ParquetDataset.ParseFormat(parse.GetValue(_format)!), RewardFuncs = parse.GetValue(_rewardFuncs)!,
            TokenizerPath = parse.GetValue(_tokenizer), ChatTemplate = parse.GetValue(_chatTemplate), ChatTemplateKwargs = parse.GetValue(_chatTemplateKwargs), Lora = _lora.Read(parse), InitFrom = parse.GetValue(_lora.InitFrom),
            Grpo = algorithm with
            {
                NumGenerations = Shared(_generations, 2), NumGenerationsEval = Shared(_generationsEval, null), MaxCompletionLength = parse.GetValue(_maxCompletion),
                MaxPromptLength = parse.GetValue(_maxPrompt), Temperature = parse.GetValue(_temperature), TopP = parse.GetValue(_topP), TopK = parse.GetValue(_topK), MinP = parse.GetValue(_minP),
                RepetitionPenalty = parse.GetValue(_repetition), Beta = Shared(_beta, 0), NumIterations = Shared(_iterations, 1), Epsilon = Shared(_clip, 0.2),
                EpsilonHigh = Shared(_epsilonHigh, null), StepsPerGeneration = Shared(_stepsPerGeneration, null), GenerationBatchSize = Shared(_generationBatchSize, null),
                MaskTruncatedCompletions = Shared(_maskTruncated, false), RewardWeights = weights is { Length: > 0 } ? weights : null,
            },
            Args = args, LogCompletions = parse.GetValue(_logCompletions), Merge = parse.GetValue(_merge),
            ResumeFromCheckpoint = parse.GetResult(_resume) is null ? null : parse.GetValue(_resume) ?? "",
        };
        train ??= GrpoTrainer.Run;
        var result = TrainingRunner.Run(reporter => train(job, reporter), args.LoggingSteps, parse.GetValue(_plain));
        Console.WriteLine($"adapter: {result.AdapterDir}" + (result.MergedModel is { } m ? $"; merged model: {m}" : ""));
    }
}
