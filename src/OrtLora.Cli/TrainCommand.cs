using System.CommandLine;
using OrtLora.Autodiff;
using OrtLora.Training;
using OrtLora.Training.Data;

namespace OrtLora.Cli;

/// <summary>ortlora train MODEL --data FILE.parquet -o DIR: options named as the Hugging Face Trainer's. And the same
/// loop and options for `ortlora reward` (a reward model on preference pairs: TRL's RewardTrainer and RewardConfig) and
/// `ortlora distill` (knowledge distillation from a teacher: TRL's GKDTrainer and GKDConfig), and `ortlora classify` (a
/// sequence classifier: transformers' AutoModelForSequenceClassification trained by the Trainer, PEFT's SEQ_CLS task).</summary>
public static class TrainCommand
{
    public static Command Create() => Build("train", "Train LoRA adapters on Parquet or JSON Lines data", reward: false, distill: false);

    public static Command CreateClassify() => Build("classify",
        "Train a classifier: a sequence classifier on text and label data (AutoModelForSequenceClassification with the Trainer, PEFT's SEQ_CLS), " +
        "or with --task-type TOKEN_CLS a token classifier on words and their labels (NER, run_ner.py's AutoModelForTokenClassification); LoRA adapters " +
        "and a trained classification head [num_labels, hidden]; a causal LM export is turned into one", reward: false, distill: false, classify: true);

    public static Command CreateReward() => Build("reward",
        "Train a reward model on preference pairs (TRL's RewardTrainer): a sequence classifier with LoRA adapters and a trained score head; " +
        "a causal LM export is turned into one", reward: true, distill: false);

    public static Command CreateDistill() => Build("distill",
        "Distill a teacher model into the LoRA adapters (TRL's GKDTrainer): the generalized Jensen-Shannon divergence to the teacher's " +
        "distribution at every completion token, on the data's completions and, with --lmbda, on the student's own", reward: false, distill: true);

    static Command Build(string name, string description, bool reward, bool distill, bool classify = false)
    {
        var model = new Argument<string>("model") { Description = reward || classify
            ? "ONNX model: a plain causal LM export (its LM head becomes a classification head; injected with the LoRA options) or a classifier export"
            : "ONNX model: plain (injected with the LoRA options) or already injected" };
        var output = new Option<string>("--output", "-o") { Description = "output directory (adapter, checkpoints, metrics.jsonl, loss.png)", Required = true };
        var lora = new LoraOptions();
        var data = new Option<string>("--data") { Description = classify
            ? "training data: a .parquet or .jsonl file, a directory of them or a pattern, with the text (--dataset-text-field; else GLUE's pairs, sentence1/sentence2 ..., or 'sentence') and a 'label' column: class indices, booleans or names, or numbers for a regression. " +
              "TOKEN_CLS: a list of words ('tokens') and a list of their labels ('ner_tags', 'tags', 'labels')"
            : "training data: a .parquet or .jsonl file, a directory of them or a pattern (data/train-*.parquet); text, instruction/input/output, prompt/completion, chat messages, or chosen/rejected preferences (DPO)", Required = true };
        var numLabels = new Option<int?>("--num-labels") { Description = "the classes (default: the largest integer label + 1, or the number of label names; 1: a regression)" };
        var taskType = new Option<string>("--task-type") { Description = "PEFT's task_type: SEQ_CLS (a class a row) or TOKEN_CLS (a class a word: named entities, tags)", DefaultValueFactory = _ => "SEQ_CLS" };
        taskType.AcceptOnlyFromAmong("SEQ_CLS", "TOKEN_CLS");
        var labelAllTokens = new Option<bool>("--label-all-tokens") { Description = "TOKEN_CLS: a word's later tokens take its label too (B-X as I-X), not only its first (run_ner's label_all_tokens)" };
        var classifierDropout = new Option<double?>("--classifier-dropout") { Description = "TOKEN_CLS: dropout on the classification head's input while training (default: config.json's classifier_dropout, else hidden_dropout, else 0.1, as transformers)" };
        var evalData = new Option<string?>("--eval-data") { Description = "evaluation data: a .parquet or .jsonl file, a directory of them or a pattern" };
        var evalSplit = new Option<double>("--eval-split") { Description = "fraction of the training rows held out for evaluation" };
        var dataOptions = new DataCliOptions();
        var packing = new Option<bool>("--packing") { Description = "pack several examples into each sequence" };
        var groupByLength = new Option<bool>("--group-by-length") { Description = "batches of similar lengths (the Trainer's length-grouped sampler): less padding, faster steps" };
        var dropLast = new Option<bool>("--dataloader-drop-last") { Description = "leave out each epoch's last batch when it has fewer rows than the batch size" };
        var padToMax = new Option<bool>("--pad-to-max-length") { Description = "pad every batch to --max-seq-length and the full batch size: one shape, graphs loaded for it" };
        var epochs = new Option<double>("--num-train-epochs") { DefaultValueFactory = _ => 1 };
        var maxSteps = new Option<int>("--max-steps") { Description = "total optimizer steps (overrides epochs)", DefaultValueFactory = _ => -1 };
        var batch = new Option<int>("--per-device-train-batch-size") { DefaultValueFactory = _ => 8 };
        var evalBatch = new Option<int>("--per-device-eval-batch-size") { Description = "rows per eval batch (default: the training batch size)" };
        var accumulation = new Option<int>("--gradient-accumulation-steps") { DefaultValueFactory = _ => 1 };
        // RewardConfig's learning rate and max_length
        var lr = new Option<double>("--learning-rate") { DefaultValueFactory = _ => reward ? 1e-4 : 2e-4 };
        if (reward)
        {
            dataOptions.MaxSeqLength.DefaultValueFactory = _ => 1024;
            dataOptions.MaxSeqLength.Description = "leave out pairs whose chosen or rejected sequence is longer than this many tokens (RewardConfig.max_length)";
        }
        var teacher = new Option<string>("--teacher-model") { Description = "the teacher: an ONNX causal LM with the student's tokenizer", Required = true };
        var jsdBeta = new Option<double>("--beta") { Description = "the generalized JSD's interpolation: 0 is KL(teacher||student), 1 KL(student||teacher) (GKDConfig.beta)", DefaultValueFactory = _ => 0.5 };
        var lmbda = new Option<double>("--lmbda") { Description = "the share of micro-batches trained on completions the student samples itself (on-policy; GKDConfig.lmbda)", DefaultValueFactory = _ => 0.5 };
        var temperature = new Option<double>("--temperature") { Description = "sampling temperature of the student's completions", DefaultValueFactory = _ => 0.9 };
        var maxNewTokens = new Option<int>("--max-new-tokens") { Description = "the longest completion the student (or teacher) samples", DefaultValueFactory = _ => 128 };
        var disableDropout = new Option<bool?>("--disable-dropout") { Description = "no dropout while training, --lora-dropout included (TRL's disable_dropout; default: on for preference data, reward models and distillation, as TRL's configs; --disable-dropout false keeps it)" };
        var seqKd = new Option<bool>("--seq-kd") { Description = "sequence-level KD: train on completions the teacher samples (GKDConfig.seq_kd)" };
        var center = new Option<double>("--center-rewards-coefficient") { Description = "add this times the mean (chosen + rejected score)² to the loss, pulling rewards towards zero (RewardConfig.center_rewards_coefficient; 0.01 recommended)" };
        var scheduler = new Option<string>("--lr-scheduler-type") { DefaultValueFactory = _ => "linear" };
        scheduler.AcceptOnlyFromAmong(LrSchedule.Types);
        var schedulerKwargs = new Option<string?>("--lr-scheduler-kwargs") { Description = "JSON object for the scheduler, e.g. {\"num_cycles\": 2} or {\"min_lr\": 1e-5}" };
        var warmupRatio = new Option<double>("--warmup-ratio");
        var warmupSteps = new Option<int>("--warmup-steps");
        var weightDecay = new Option<double>("--weight-decay");
        // The optimizer is torch.optim.AdamW's arithmetic (fused or not, the same numbers): the Trainer's names for it are
        // taken, so its command lines carry over; any other optimizer is refused by the parser, listing these.
        var optim = new Option<string>("--optim") { Description = "the Trainer's optim: adamw_torch or adamw_torch_fused (the AdamW ortlora computes), or lorafa (PEFT's create_lorafa_optimizer: A frozen, B's gradient projected)", DefaultValueFactory = _ => "adamw_torch" };
        optim.AcceptOnlyFromAmong("adamw_torch", "adamw_torch_fused", "lorafa");
        var beta1 = new Option<double>("--adam-beta1") { DefaultValueFactory = _ => 0.9 };
        var beta2 = new Option<double>("--adam-beta2") { DefaultValueFactory = _ => 0.999 };
        var epsilon = new Option<double>("--adam-epsilon") { DefaultValueFactory = _ => 1e-8 };
        var maxGradNorm = new Option<double>("--max-grad-norm") { DefaultValueFactory = _ => 1.0 };
        var logging = new Option<int>("--logging-steps") { DefaultValueFactory = _ => 10 };
        var loggingFirst = new Option<bool>("--logging-first-step") { Description = "also log the first step" };
        var loggingStrategy = new Option<string>("--logging-strategy") { Description = "steps (every --logging-steps, and the last), epoch or no", DefaultValueFactory = _ => "steps" };
        loggingStrategy.AcceptOnlyFromAmong("no", "steps", "epoch");
        var saveSteps = new Option<int>("--save-steps") { DefaultValueFactory = _ => 500 };
        var saveLimit = new Option<int>("--save-total-limit");
        var saveOnlyModel = new Option<bool>("--save-only-model") { Description = "checkpoints hold the adapter and trainer state but no optimizer state: smaller, and not resumable" };
        var evalSteps = new Option<int>("--eval-steps");
        var evalStrategy = new Option<string>("--eval-strategy") { Description = "steps (every --eval-steps), epoch or no; eval data is also scored before the first step and after the last", DefaultValueFactory = _ => "steps" };
        evalStrategy.AcceptOnlyFromAmong("no", "steps", "epoch");
        var saveStrategy = new Option<string>("--save-strategy") { Description = "steps (every --save-steps), epoch or no", DefaultValueFactory = _ => "steps" };
        saveStrategy.AcceptOnlyFromAmong("no", "steps", "epoch");
        var loadBest = new Option<bool>("--load-best-model-at-end") { Description = "the adapter (and --merge) take the parameters of the evaluation with the best --metric-for-best-model (default: the lowest eval_loss)" };
        var metricForBest = new Option<string>("--metric-for-best-model") { Description = "the evaluation metric --load-best-model-at-end and early stopping compare: eval_loss, or any other the evaluations report (accuracy, f1, rewards/accuracies ...; eval_ is prepended)", DefaultValueFactory = _ => "eval_loss" };
        var greaterIsBetter = new Option<bool?>("--greater-is-better") { Description = "whether a larger --metric-for-best-model is better (default: true unless its name ends in loss; perplexity: false)" };
        var patience = new Option<int>("--early-stopping-patience") { Description = "stop after this many evaluations without a better --metric-for-best-model (transformers' EarlyStoppingCallback)" };
        var threshold = new Option<double>("--early-stopping-threshold") { Description = "how much lower eval_loss must be to count as better, for --early-stopping-patience" };
        var neftune = new Option<double>("--neftune-noise-alpha") { Description = "NEFTune: uniform noise of magnitude alpha/sqrt(seq_len·hidden) on the token embeddings while training (the papers use 5)" };
        var labelSmoothing = new Option<double>("--label-smoothing-factor") { Description = "label smoothing ε: (1 − ε)·cross-entropy + ε·mean −log p over the vocabulary (train and eval loss)" };
        var preference = new PreferenceCliOptions();
        var lossChunks = new Option<int?>("--loss-chunks") { Description = "take the loss in this many sequence chunks through the lm_head: less memory (default: 8 from a vocabulary of 8192, else 1)" };
        var precompute = new Option<bool>("--precompute-ref-log-probs") { Description = "preference data: compute the reference's log-probabilities of every pair once before training instead of in every step" };
        var loraplus = new Option<double>("--loraplus-lr-ratio") { Description = "LoRA+: B's learning rate is this times --learning-rate", DefaultValueFactory = _ => 1 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        var fp16 = new Option<bool>("--fp16") { Description = "mixed precision: the frozen model computes in float16, LoRA weights, loss and optimizer stay float32" };
        var bf16 = new Option<bool>("--bf16") { Description = "as --fp16 with bfloat16 (needs --device cuda: ONNX Runtime's CPU provider has no bfloat16 kernels)" };
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "recompute each layer's forward in the backward instead of storing its activations: less memory, about a third more compute" };
        var recomputeAttention = new Option<bool>("--recompute-attention") { Description = "recompute attention's probabilities in the backward instead of storing them, as PyTorch's sdpa (Hugging Face's default attention) does: the same numbers, much less memory at long sequences, a little more compute; `--recompute-attention false` stores them (eager attention's memory)", DefaultValueFactory = _ => true };
        var cudaGraphs = new Option<bool>("--cuda-graphs") { Description = "capture each step's kernels once and replay them (ONNX Runtime's enable_cuda_graph; implies --pad-to-max-length, not with --lora-dropout)" };
        var epLibrary = new Option<string?>("--ep-library") { Description = "plugin execution provider library (e.g. libonnxruntime_providers_cuda.so)" };
        var optimization = new Option<string>("--graph-optimization-level")
        {
            Description = "ONNX Runtime's optimization of the training graphs (above basic it adds com.microsoft fusions; see docs/gpu.md)",
            DefaultValueFactory = _ => "all",
        };
        optimization.AcceptOnlyFromAmong("all", "extended", "basic", "none");
        var resume = new Option<string?>("--resume-from-checkpoint") { Description = "continue from a checkpoint folder (no value: the latest in the output directory)", Arity = ArgumentArity.ZeroOrOne };
        var merge = new Option<bool>("--merge") { Description = "also write the merged model to OUTPUT/merged" };
        var plain = new Option<bool>("--plain-log") { Description = "one line per logging step instead of a progress bar" };
        var reporting = new ReportingCliOptions();

        var cmd = new Command(name, description) { model, output };
        lora.AddTo(cmd);
        // a reward model and a distillation have their own losses: no DPO options (and pairs are never packed or grouped apart)
        foreach (var o in reward || distill || classify ? dataOptions.All : dataOptions.All.Concat(preference.All)) cmd.Options.Add(o);
        foreach (var o in new Option[] { data, evalData, evalSplit, dropLast, padToMax,
                     epochs, maxSteps, batch, evalBatch, accumulation, lr, scheduler, schedulerKwargs, warmupRatio, warmupSteps, weightDecay,
                     optim, beta1, beta2, epsilon, maxGradNorm, logging, loggingFirst, loggingStrategy, saveSteps, saveOnlyModel, saveStrategy, saveLimit, evalSteps, evalStrategy,
                     loadBest, metricForBest, greaterIsBetter, patience, threshold, neftune, loraplus, fp16, bf16, checkpointing, recomputeAttention, cudaGraphs, device, epLibrary, optimization, resume, merge, plain }.Concat(reporting.All))
            cmd.Options.Add(o);
        foreach (var o in reward ? new Option[] { center, disableDropout } : distill ? [teacher, jsdBeta, lmbda, temperature, maxNewTokens, seqKd, disableDropout, packing, groupByLength]
                     : classify ? [numLabels, taskType, labelAllTokens, classifierDropout, groupByLength, labelSmoothing, disableDropout]
                     : [packing, groupByLength, labelSmoothing, precompute, lossChunks, disableDropout]) cmd.Options.Add(o);
        T Unless<T>(Option<T> option, ParseResult parse) => reward || classify && ReferenceEquals(option, packing) ? default! : parse.GetValue(option)!;
        T TrainOnly<T>(Option<T> option, ParseResult parse) => reward || distill || classify && !ReferenceEquals(option, labelSmoothing) ? default! : parse.GetValue(option)!;

        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var args = new TrainingArguments
            {
                OutputDir = parse.GetValue(output)!, NumTrainEpochs = parse.GetValue(epochs), MaxSteps = parse.GetValue(maxSteps),
                PerDeviceTrainBatchSize = parse.GetValue(batch), PerDeviceEvalBatchSize = parse.GetValue(evalBatch), GradientAccumulationSteps = parse.GetValue(accumulation),
                LearningRate = parse.GetValue(lr), LrSchedulerType = parse.GetValue(scheduler)!, LrSchedulerKwargs = LrSchedule.ParseKwargs(parse.GetValue(schedulerKwargs)), WarmupRatio = parse.GetValue(warmupRatio),
                WarmupSteps = parse.GetValue(warmupSteps), WeightDecay = parse.GetValue(weightDecay),
                AdamBeta1 = parse.GetValue(beta1), AdamBeta2 = parse.GetValue(beta2), AdamEpsilon = parse.GetValue(epsilon), MaxGradNorm = parse.GetValue(maxGradNorm),
                Seed = parse.GetValue(lora.Seed), LoggingSteps = parse.GetValue(logging), LoggingFirstStep = parse.GetValue(loggingFirst), LoggingStrategy = parse.GetValue(loggingStrategy)!, SaveSteps = parse.GetValue(saveSteps), SaveOnlyModel = parse.GetValue(saveOnlyModel),
                SaveTotalLimit = parse.GetValue(saveLimit), EvalSteps = parse.GetValue(evalSteps), EvalStrategy = parse.GetValue(evalStrategy)!, SaveStrategy = parse.GetValue(saveStrategy)!, LoraplusLrRatio = parse.GetValue(loraplus),
                Fp16 = parse.GetValue(fp16), Bf16 = parse.GetValue(bf16), Device = parse.GetValue(device)!, EpLibrary = parse.GetValue(epLibrary),
                GraphOptimizationLevel = parse.GetValue(optimization)!, GradientCheckpointing = parse.GetValue(checkpointing),
                RecomputeAttention = parse.GetValue(recomputeAttention), CudaGraphs = parse.GetValue(cudaGraphs), LoadBestModelAtEnd = parse.GetValue(loadBest),
                MetricForBestModel = parse.GetValue(metricForBest)!, GreaterIsBetter = parse.GetValue(greaterIsBetter),
                EarlyStoppingPatience = parse.GetValue(patience), EarlyStoppingThreshold = parse.GetValue(threshold),
                NeftuneNoiseAlpha = parse.GetValue(neftune), Optim = parse.GetValue(optim)!, DisableDropout = parse.GetValue(disableDropout), LabelSmoothingFactor = TrainOnly(labelSmoothing, parse),
                Preference = reward ? RewardOptions(parse.GetValue(center)) : distill || classify ? new PreferenceOptions() : preference.Read(parse),
                PrecomputeRefLogProbs = TrainOnly(precompute, parse), LossChunks = TrainOnly(lossChunks, parse),
            };
            reporting.Apply(parse, args);
            Validate(args);
            var job = new TrainJob
            {
                ModelPath = parse.GetValue(model)!, DataPath = parse.GetValue(data)!, EvalDataPath = parse.GetValue(evalData),
                TokenizerPath = parse.GetValue(dataOptions.Tokenizer), Lora = lora.Read(parse), InitFrom = parse.GetValue(lora.InitFrom),
                Data = dataOptions.Read(parse) with
                {
                    Packing = Unless(packing, parse), GroupByLength = Unless(groupByLength, parse), DropLast = parse.GetValue(dropLast), PadToMaxLength = parse.GetValue(padToMax), EvalSplit = parse.GetValue(evalSplit),
                },
                Args = args,
                ResumeFromCheckpoint = parse.GetResult(resume) is null ? null : parse.GetValue(resume) ?? "",
                Merge = parse.GetValue(merge),
                Distillation = distill ? new DistillationOptions(parse.GetValue(teacher)!, parse.GetValue(jsdBeta), parse.GetValue(lmbda), parse.GetValue(temperature),
                    parse.GetValue(maxNewTokens), parse.GetValue(seqKd)) : null,
                Classification = classify ? new ClassificationOptions(parse.GetValue(numLabels), parse.GetValue(taskType)!, parse.GetValue(labelAllTokens),
                    parse.GetValue(classifierDropout)) : null,
            };
            var result = TrainingRunner.Run(job, parse.GetValue(plain));
            Console.WriteLine($"adapter: {result.AdapterDir}" + (result.MergedModel is { } m ? $"; merged model: {m}" : ""));
        }));
        return cmd;
    }

    static PreferenceOptions RewardOptions(double centerRewardsCoefficient)
    {
        if (centerRewardsCoefficient < 0) throw new OrtLoraException("--center-rewards-coefficient must not be negative");
        return new PreferenceOptions(LossType: PreferenceOptions.RewardModelLoss, CenterRewardsCoefficient: centerRewardsCoefficient);
    }

    static void Validate(TrainingArguments a)
    {
        if (a.PerDeviceTrainBatchSize < 1) throw new OrtLoraException("--per-device-train-batch-size must be at least 1");
        if (a.GradientAccumulationSteps < 1) throw new OrtLoraException("--gradient-accumulation-steps must be at least 1");
        if (a.LearningRate <= 0) throw new OrtLoraException("--learning-rate must be positive");
        if (a.WarmupRatio is < 0 or > 1) throw new OrtLoraException("--warmup-ratio must be in [0, 1]");
        if (a.PerDeviceEvalBatchSize < 0) throw new OrtLoraException("--per-device-eval-batch-size must be at least 1");
        if (a.AdamBeta1 is < 0 or >= 1 || a.AdamBeta2 is < 0 or >= 1) throw new OrtLoraException("--adam-beta1 and --adam-beta2 must be in [0, 1)");
        if (a.AdamEpsilon <= 0) throw new OrtLoraException("--adam-epsilon must be positive");
        if (a.EarlyStoppingPatience < 0 || a.EarlyStoppingThreshold < 0) throw new OrtLoraException("--early-stopping-patience and --early-stopping-threshold must not be negative");
        if (a.LabelSmoothingFactor is < 0 or >= 1) throw new OrtLoraException("--label-smoothing-factor must be in [0, 1)");
        if (a.LossChunks is < 1) throw new OrtLoraException("--loss-chunks must be at least 1");
        if (a.NeftuneNoiseAlpha < 0) throw new OrtLoraException("--neftune-noise-alpha must not be negative");
        if (a.Fp16 && a.Bf16) throw new OrtLoraException("choose one of --fp16 and --bf16");
        if (a.MaxSteps <= 0 && a.NumTrainEpochs <= 0) throw new OrtLoraException("give --num-train-epochs > 0 or --max-steps > 0");
    }
}
