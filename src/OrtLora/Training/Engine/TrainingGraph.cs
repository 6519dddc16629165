using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>The graphs a training session runs, all derived from one injected model. The trainable parameters
/// (initializers named *.lora_A.weight / *.lora_B.weight) become graph inputs; everything else stays frozen.
/// <list type="bullet">
/// <item><see cref="Eval"/>: forward + loss.</item>
/// <item><see cref="Gradients"/>: forward + loss + backward, outputs <c>loss</c> and <c>grad.P</c>.</item>
/// <item><see cref="BuildStep"/>: that plus clipping and AdamW: one Run per optimizer step.</item>
/// <item><see cref="BuildAccumulate"/> / <see cref="BuildApply"/>: gradient accumulation, one Run per micro-batch
/// adding scale·grad into accumulators, then a small graph applying clipping and AdamW to them.</item>
/// </list>
/// The frozen weights are not in these graphs: they are graph inputs, fed from <see cref="Frozen"/>, one copy in native
/// memory that every session of the model reads in place.</summary>
public sealed partial class TrainingGraph : IDisposable
{
    public const string Labels = "labels", Loss = "loss", CorrectTokens = "correct_tokens", SequenceLogProbs = "sequence_logps", GradNorm = "grad_norm", LearningRate = "lr", Step = "step",
        MaxGradNorm = "max_grad_norm", GradScale = "grad_scale", LossScale = "loss_scale", ClipCoefficient = "clip_coefficient",
        TokenWeights = "token_weights";
    public static string GradOf(string p) => "grad." + p;
    public static string ExpAvgOf(string p) => "exp_avg." + p;
    public static string ExpAvgSqOf(string p) => "exp_avg_sq." + p;
    public static string AccumulatorOf(string p) => "grad_acc." + p;
    public static string Updated(string name) => "updated." + name;

    public IReadOnlyList<string> Parameters { get; }
    public IReadOnlyDictionary<string, long[]> ParameterShapes { get; }
    /// <summary>The parameters' values in the model (float32), the starting point of training. A TrainingSession adopts
    /// these arrays as its parameters' first buffers (no second copy), so through a session's graph they hold whatever
    /// that buffer last held.</summary>
    public IReadOnlyDictionary<string, float[]> InitialValues { get; }
    /// <summary>Model inputs fed from a batch (input_ids, attention_mask, ...), plus labels.</summary>
    public IReadOnlyList<string> BatchInputs { get; }
    public ModelProto Eval { get; }
    public ModelProto Gradients { get; }
    /// <summary>What the half-precision conversion did (null for float32 compute).</summary>
    public HalfPrecisionReport? HalfPrecision { get; private init; }
    /// <summary>With NEFTune: the hidden size d of the <see cref="NeftuneNoise.Input"/> [batch, sequence, d] that the
    /// gradient graphs (not eval) take.</summary>
    public long? NeftuneWidth { get; private init; }
    /// <summary>The loss is DPO's (<see cref="PreferenceLoss"/>): batches are preference pairs, the graphs take the
    /// reference model's <see cref="PreferenceLoss.ReferenceInput"/> and output each row's <see cref="SequenceLogProbs"/>.</summary>
    public bool Preference { get; private init; }
    /// <summary>The loss is TRL's reward-model loss (<see cref="RewardLoss"/>) on a sequence classifier's scores, which
    /// <see cref="SequenceLogProbs"/> then holds (one per row); also <see cref="Preference"/>: batches are pairs.</summary>
    public bool RewardModel { get; private init; }
    /// <summary>The loss is a sequence classifier's cross-entropy over its classes (<see cref="ClassificationLoss"/>), or
    /// a token classifier's (<see cref="TokenClassification"/>); <see cref="CorrectTokens"/> then counts the rows (the
    /// tokens) classified right, and <see cref="SequenceLogProbs"/> holds the predictions.</summary>
    public bool Classification { get; private init; }
    /// <summary>The loss is Σ weight·nll over the counted tokens with each token's weight a <see cref="TokenWeights"/>
    /// input (a policy gradient: GRPO's advantages, normalized), not a mean.</summary>
    public bool TokenWeighted { get; private init; }
    /// <summary>The graph outputs a session reads back after each Run (the loss, the tokens predicted right, with DPO
    /// the rows' log-probabilities).</summary>
    public IReadOnlyList<string> ReportedOutputs => Preference || Classification ? [Loss, CorrectTokens, SequenceLogProbs] : [Loss, CorrectTokens];
    /// <summary>The gradient graphs take a <c>loss_scale</c> input (float16 compute).</summary>
    public bool ScalesLoss { get; private init; }
    /// <summary>With loss scaling: each parameter's gradient before the division by the scale. The step and accumulate
    /// graphs divide whole parameter bundles instead (one Div a bundle, not one a parameter).</summary>
    Dictionary<string, string> ScaledGradients { get; init; } = new();
    /// <summary>The model's frozen weights, inputs of <see cref="Eval"/>, <see cref="Gradients"/> and the graphs built
    /// from it; owned by this graph.</summary>
    public SharedInitializers Frozen { get; }
    int Opset { get; }

    /// <summary>What training updates by default: LoRA's A and B, DoRA's magnitudes, the weights of modules_to_save, the
    /// rows of trainable tokens, the biases of bias="all"/"lora_only".</summary>
    public static bool IsTrainable(string name) => Lora.ModuleNames.IsLoraA(name) || Lora.ModuleNames.IsLoraB(name) || Lora.ModuleNames.IsLoraBias(name) || name.EndsWith(".lora_magnitude_vector")
        || Lora.ModulesToSave.IsWeight(name) || Lora.TrainableTokens.IsRows(name) || Lora.TrainedBiases.IsBias(name);

    TrainingGraph(IReadOnlyList<string> parameters, Dictionary<string, long[]> shapes, Dictionary<string, float[]> values,
        IReadOnlyList<string> batchInputs, ModelProto eval, ModelProto gradients, SharedInitializers frozen, int opset)
    {
        Parameters = parameters; ParameterShapes = shapes; InitialValues = values; BatchInputs = batchInputs;
        Eval = eval; Gradients = gradients; Frozen = frozen; Opset = opset;
    }

    /// <param name="parameters">trainable initializers; default: every LoRA parameter</param>
    /// <param name="logits">the logits output; default: the output named "logits", else the first output</param>
    /// <param name="loraDropout">dropout on each LoRA input in the training graphs; default: the model's LoRA config</param>
    /// <param name="compute">float16/bfloat16: the frozen model computes in half (<see cref="Onnx.HalfPrecision"/>), the
    /// LoRA branches, parameters, loss and optimizer in float32</param>
    /// <param name="gradientCheckpointing">the backward recomputes the forward segment by segment instead of keeping
    /// its activations (<see cref="Checkpoints"/>): less memory, about one more forward of compute</param>
    /// <param name="recomputeAttention">the backward recomputes attention's probabilities from Q and K instead of
    /// keeping them (<see cref="Checkpoints.Attention"/>): the same numbers, much less memory at long sequences</param>
    /// <param name="lossChunks">the loss and its gradient in this many chunks of the sequence, through the lm_head
    /// (<see cref="ChunkedLoss"/>); default: 8 when the vocabulary has 8192 or more entries, else 1 (whole)</param>
    /// <param name="neftuneNoise">NEFTune: the training graphs add the <see cref="NeftuneNoise.Input"/> to the token embeddings</param>
    /// <param name="labelSmoothing">the Trainer's label_smoothing_factor, in the training and the eval loss (as the Trainer computes both)</param>
    /// <param name="preference">DPO: the loss is <see cref="PreferenceLoss"/> over row pairs (chosen, rejected) instead of
    /// the causal-LM loss; null: the causal-LM loss</param>
    /// <param name="tokenWeights">the loss is Σ w·nll with w a <see cref="TokenWeights"/> input [batch, sequence] aligned
    /// with the labels, not divided by the token count (<see cref="TokenWeighted"/>)</param>
    /// <param name="logitsTemperature">the loss reads logits / T (TRL's GRPO scores completions at the sampling temperature)</param>
    /// <param name="distillationBeta">knowledge distillation (TRL's GKD): the loss is <see cref="DistillationLoss"/>'s
    /// generalized JSD with this β against the teacher's logits, a <see cref="DistillationLoss.TeacherInput"/> input;
    /// null: no distillation</param>
    /// <param name="classification">sequence classification: the logits are [batch, num_labels] and the loss is
    /// <see cref="ClassificationLoss"/>'s, each row's class read from its labels</param>
    /// <param name="tokenClassification">token classification: the logits are [batch, sequence, num_labels] and the
    /// loss is the cross-entropy at each labelled token, unshifted (<see cref="TokenClassification"/>)</param>
    /// <param name="classifierDropout">token classification: dropout on the head's input in the training graphs
    /// (transformers' classifier_dropout)</param>
    public static TrainingGraph Build(OnnxModel model, IReadOnlyList<string>? parameters = null, string? logits = null,
        double? loraDropout = null, ComputeType compute = ComputeType.Float32, bool gradientCheckpointing = false, int? lossChunks = null,
        bool neftuneNoise = false, double labelSmoothing = 0, PreferenceOptions? preference = null, bool tokenWeights = false,
        double logitsTemperature = 1, double? distillationBeta = null, bool classification = false, bool tokenClassification = false,
        double classifierDropout = 0, bool multiLabel = false, bool recomputeAttention = false)
    {
        if (multiLabel && !classification) throw new OrtLoraException("multi-label is a sequence classifier's problem type");
        if (tokenClassification && (classification || preference is not null || tokenWeights || distillationBeta is not null))
            throw new OrtLoraException("token classification has its own loss: not with sequence classification, a preference loss, token weights or distillation");
        if (logitsTemperature <= 0) throw new OrtLoraException($"the logits' temperature must be positive, got {logitsTemperature}");
        if (tokenWeights && (preference is not null || labelSmoothing > 0))
            throw new OrtLoraException("a loss of weighted tokens is its own loss: not with a preference loss or label smoothing");
        int opset = model.Opset();
        if (opset < 13) throw new OrtLoraException($"{model.Source}: opset {opset}; training needs opset 13 or later (re-export the model)");
        // A copy of the structure: tensors in raw_data share their bytes with the model, external ones stay external.
        // Half compute converts the weights in it, each read from the model as it is converted, and makes the rest
        // inline: the weights are then read from the copy.
        var proto = model.Proto.Clone();
        // Opsets 13-15 go to 16 in the training graphs: an embedding's gradient (Gather's) is a scatter-add, ScatterND's
        // reduction from 16; nothing an exported LM uses means anything else there.
        if (opset < 16) { OpsetRaise.Raise(proto, 16, model.Source); opset = 16; }
        var halfReport = compute == ComputeType.Float32 ? null : ToHalfCompute(proto, model, compute);
        using var converted = halfReport is null ? null : new OnnxModel(proto, source: model.Source);
        var weightSource = converted ?? model;
        var g = new GraphEditor(proto.Graph);
        parameters ??= proto.Graph.Initializer.Select(t => t.Name).Where(IsTrainable).ToList();
        if (parameters.Count == 0)
            throw new OrtLoraException($"{model.Source}: no trainable parameters (no initializer ends in .lora_A.weight / .lora_B.weight); run `ortlora inject` first");
        var taken = proto.Graph.Input.Select(i => i.Name).Concat(proto.Graph.Node.SelectMany(n => n.Output)).Concat(proto.Graph.Initializer.Select(t => t.Name));
        if (taken.FirstOrDefault(n => n is Labels or Loss or CorrectTokens or SequenceLogProbs or TokenWeights or PreferenceLoss.ReferenceInput or PreferenceLoss.RolesInput or PreferenceLoss.RowWeightsInput or RewardLoss.MarginsInput or ClassificationLoss.TargetsInput or ClassificationLoss.MultiLabelTargetsInput or DistillationLoss.TeacherInput) is { } clash)
            throw new OrtLoraException($"{model.Source}: the model already has a value named '{clash}' (exported with labels and a loss?); " +
                "export it with input_ids and attention_mask in, logits out");
        logits ??= proto.Graph.Output.Any(o => o.Name == "logits") ? "logits" : proto.Graph.Output[0].Name;
        var logitsType = proto.Graph.Output.FirstOrDefault(o => o.Name == logits)?.Type?.TensorType?.ElemType ?? (int)DT.Float;

        var shapes = new Dictionary<string, long[]>();
        var values = new Dictionary<string, float[]>();
        foreach (var p in parameters)
        {
            var t = g.Initializer(p) ?? throw new OrtLoraException($"{model.Source}: parameter '{p}' is not an initializer");
            if (t.DataType != (int)DT.Float) throw new OrtLoraException($"{model.Source}: parameter '{p}' is {(DT)t.DataType}; trainable parameters must be float32");
            shapes[p] = t.Dims.ToArray();
            values[p] = Tensors.BytesToFloats(weightSource.ReadBytes(t), t.DataType);
            g.RemoveInitializer(p);
            // a model prepared for runtime adapters already lists it as an (overridable) input: one input stays
            if (proto.Graph.Input.FirstOrDefault(i => i.Name == p) is { } listed) proto.Graph.Input.Remove(listed);
            proto.Graph.Input.Add(Input(p, (int)DT.Float, t.Dims.Select(d => (object)d)));
        }
        FeedEmptyCache(proto, g);
        TakeInt64BatchInputs(proto, g);
        var batchInputs = proto.Graph.Input.Select(i => i.Name).Where(n => !shapes.ContainsKey(n)).Append(Labels).ToList();
        proto.Graph.Input.Add(Input(Labels, (int)DT.Int64, ["batch", "sequence"]));
        string? weightsInput = null;
        if (tokenWeights)
        {
            weightsInput = TokenWeights;
            proto.Graph.Input.Add(Input(TokenWeights, (int)DT.Float, ["batch", "sequence"]));
            batchInputs.Add(TokenWeights);
        }
        if (logitsType is (int)DT.Float16 or (int)DT.Bfloat16)
        {
            // As Hugging Face's causal-LM heads do (logits.float()): the loss in float32, where it is stable and where
            // ORT's CPU kernels exist (ScatterElements has no fp16 'add').
            logits = g.Add("Cast", [logits], name: "loss/upcast", attributes: ("to", (int)DT.Float));
            logitsType = (int)DT.Float;
        }
        // a position-wise Div: the chunked loss still finds the head through it
        if (logitsTemperature != 1) logits = g.Add("Div", [logits, GraphConstants.Scalar(g, "loss/temperature", logitsTemperature, logitsType)], name: "loss/temperature");
        RewardLoss? reward = null;
        CausalLmLoss? loss = null;
        DistillationLoss? distill = null;
        PreferenceLoss? preferenceLoss = null;
        ClassificationLoss? classify = null;
        int? multiLabelClasses = null;
        if (classification)
        {
            if (preference is not null || tokenWeights || distillationBeta is not null)
                throw new OrtLoraException("sequence classification has its own loss: not with a preference loss, token weights or distillation");
            var declared = proto.Graph.Output.FirstOrDefault(o => o.Name == logits)?.Type?.TensorType?.Shape;
            if (declared is not null && declared.Dim.Count != 2)
                throw NotAClassifier(model.Source, [.. declared.Dim.Select(d => d.DimValue > 0 ? d.DimValue : -1)], classes: true);
            // num_labels 1: transformers' regression (the MSE to each row's target)
            bool regression = declared?.Dim[1].DimValue == 1;
            if (regression)
            {
                proto.Graph.Input.Add(Input(ClassificationLoss.TargetsInput, (int)DT.Float, ["batch"]));
                batchInputs.Add(ClassificationLoss.TargetsInput);
            }
            if (multiLabel)
            {
                if (regression || declared?.Dim[1] is not { DimValue: > 1 } classes)
                    throw new OrtLoraException($"{model.Source}: multi-label classification needs a classifier of 2 or more declared labels");
                multiLabelClasses = (int)classes.DimValue;
                proto.Graph.Input.Add(Input(ClassificationLoss.MultiLabelTargetsInput, (int)DT.Float, ["batch", classes.DimValue]));
                batchInputs.Add(ClassificationLoss.MultiLabelTargetsInput);
            }
            classify = ClassificationLoss.Append(g, logits, Labels, labelSmoothing, regression, multiLabel);
        }
        else if (preference is { IsRewardModel: true })
        {
            if (tokenWeights || labelSmoothing > 0) throw new OrtLoraException("reward modelling has its own loss: not with token weights or label smoothing");
            if (proto.Graph.Output.FirstOrDefault(o => o.Name == logits)?.Type?.TensorType?.Shape is { } declared && declared.Dim.Count != 2)
                throw NotAClassifier(model.Source, [.. declared.Dim.Select(d => d.DimValue > 0 ? d.DimValue : -1)]);
            proto.Graph.Input.Add(Input(RewardLoss.MarginsInput, (int)DT.Float, ["batch"]));
            batchInputs.Add(RewardLoss.MarginsInput);
            reward = RewardLoss.Append(g, logits, Labels, preference.CenterRewardsCoefficient);
        }
        else
        {
            var targets = CausalLmLoss.AppendTargets(g, Labels, logitsType, weightsInput, shift: !tokenClassification);
            loss = CausalLmLoss.Append(g, logits, targets, labelSmoothing);
            if (distillationBeta is { } beta)
            {
                if (preference is not null || tokenWeights || labelSmoothing > 0)
                    throw new OrtLoraException("distillation has its own loss: not with a preference loss, token weights or label smoothing");
                proto.Graph.Input.Add(Input(DistillationLoss.TeacherInput, (int)DT.Float, ["batch", "sequence", VocabularyOf(proto, logits, model)]));
                batchInputs.Add(DistillationLoss.TeacherInput);
                distill = DistillationLoss.Append(g, logits, targets, beta);
            }
        }
        if (preference is { IsRewardModel: false })
        {
            proto.Graph.Input.Add(Input(PreferenceLoss.ReferenceInput, (int)DT.Float, ["batch"]));
            batchInputs.Add(PreferenceLoss.ReferenceInput);
            if (preference.Unpaired)
            {
                proto.Graph.Input.Add(Input(PreferenceLoss.RolesInput, (int)DT.Float, ["batch"]));
                batchInputs.Add(PreferenceLoss.RolesInput);
            }
            if (preference.RowTerms)
            {
                proto.Graph.Input.Add(Input(PreferenceLoss.RowWeightsInput, (int)DT.Float, ["batch"]));
                batchInputs.Add(PreferenceLoss.RowWeightsInput);
            }
            preferenceLoss = PreferenceLoss.Append(g, loss!, preference);
        }
        g.Add("Identity", [reward?.Loss ?? classify?.Loss ?? distill?.Loss ?? preferenceLoss?.Loss ?? loss!.Loss], name: "loss/output", outputs: [Loss]);
        proto.Graph.Output.Clear();
        proto.Graph.Output.Add(new ValueInfoProto { Name = Loss });
        if (distill is not null)
        {
            // the tokens predicted right, from the student's logits; in both graphs, before the cross-entropy's nodes go
            g.Add("Identity", [loss!.AppendCorrect(g)], name: "accuracy/output", outputs: [CorrectTokens]);
            proto.Graph.Output.Add(new ValueInfoProto { Name = CorrectTokens });
        }
        if ((reward?.Rewards ?? preferenceLoss?.SequenceLogProbs ?? classify?.AppendPredictions(g) ?? (tokenClassification ? AppendTokenPredictions(g, logits) : null)) is { } rows)
        {
            g.Add("Identity", [rows], name: "dpo/output", outputs: [SequenceLogProbs]);
            proto.Graph.Output.Add(new ValueInfoProto { Name = SequenceLogProbs });
        }
        g.Cleanup();
        var frozen = SharedInitializers.Extract(weightSource, proto.Graph);
        try
        {
            g = new GraphEditor(proto.Graph);
            var eval = proto.Clone();
            // The gradient graph computes Attention and RotaryEmbedding (opset 23), and the contrib ops of ORT GenAI's
            // builder, from primitives it can differentiate; eval keeps the fused ops.
            if (ContribOpDecomposition.Applies(g))
                ContribOpDecomposition.Apply(g, Probe(proto, values, frozen));
            if (FusedOpDecomposition.Applies(g))
                FusedOpDecomposition.Apply(g, Probe(proto, values, frozen));
            var lora = Lora.LoraModel.Read(model);
            var dropout = loraDropout ?? lora?.Config.LoraDropout ?? 0;
            if (dropout > 0)
            {
                var dora = lora is { Config.UseDora: true } ? lora : null;
                var typesBefore = dora is null ? null : Probe(proto, values, frozen);
                var dropped = AddLoraDropout(g, parameters, dropout);
                if (dora is not null) Lora.Dora.UseDroppedInput(g, dora, a => dropped.TryGetValue(a.LoraA, out var d) ? d : null, typesBefore!);
                g.TopologicalSort();
            }

            if (tokenClassification && classifierDropout > 0) AddClassifierDropout(g, parameters, classifierDropout, model.Source);
            long? neftuneWidth = neftuneNoise ? NeftuneNoise.Apply(g, model.Source) : null;

            var types = Probe(proto, values, frozen);
            SlicesAsSplit.Apply(g, types, opset);
            if (Environment.GetEnvironmentVariable("ORTLORA_ROTATE_HALF_MATMUL") != "0") RotateHalfAsMatMul.Apply(g, types);
            // In eval too, so that eval and a DPO reference (the eval graph) compute what the training forward does.
            // ORTLORA_RMSNORM_OP=0 keeps the exported norms (a provider without the op's kernel; docs/gpu.md).
            if (Environment.GetEnvironmentVariable("ORTLORA_RMSNORM_OP") != "0")
            {
                RmsNormAsOp.Apply(g, types);
                RmsNormAsOp.Apply(new GraphEditor(eval.Graph), types);
            }
            bool scalesLoss = compute == ComputeType.Float16;
            Dictionary<string, string> seeds;
            string? correct = null;
            if (reward is not null)
            {
                if (types[reward.Logits].ShapeA is { } shape && (shape.Length != 2 || shape[^1] != 1)) throw NotAClassifier(model.Source, shape);
                (seeds, correct) = (LogitsSeed(proto, g, reward.Logits, reward.AppendLogitsGradient, scalesLoss), reward.AppendAccurate(g));
                CorrectOutput(eval, reward.AppendAccurate);
            }
            else if (classify is not null)
            {
                if (types[classify.Logits].ShapeA is { } shape && (shape.Length != 2 || shape[^1] < 2 != classify.Regression)) throw NotAClassifier(model.Source, shape, classes: true);
                (seeds, correct) = (LogitsSeed(proto, g, classify.Logits, classify.AppendLogitsGradient, scalesLoss), classify.AppendCorrect(g));
                CorrectOutput(eval, classify.AppendCorrect);
            }
            else if (distill is not null)
            {
                seeds = LogitsSeed(proto, g, distill.Logits, distill.AppendLogitsGradient, scalesLoss);
            }
            else
            {
                var lmLoss = loss!;
                int chunks = tokenClassification ? 1 : lossChunks ?? (types[lmLoss.Logits].ShapeA[^1] >= 8192 ? 8 : 1);
                // A trained lm_head (modules_to_save) needs the whole logits' gradient: the chunks give d loss / d h only.
                if (HeadIsTrained(g, lmLoss.Logits, parameters)) chunks = 1;
                (seeds, correct) = LossGradient(proto, g, lmLoss, logitsType, types, opset, scalesLoss, chunks, preferenceLoss, weightsInput);
                EvalOutputs(eval, lmLoss, logitsType, types, opset, chunks, preferenceLoss, weightsInput);
            }
            if (correct is not null)
            {
                g.Add("Identity", [correct], name: "accuracy/output", outputs: [CorrectTokens]);
                proto.Graph.Output.Add(new ValueInfoProto { Name = CorrectTokens });
            }
            // DoRA's weight norms are constants to the gradient, as PEFT detaches them.
            var detached = lora?.Adapters.Select(a => a.WeightNorm).OfType<string>().ToHashSet() ?? [];
            var grads = GradientBuilder.Build(g, seeds, parameters, types, opset, gradientCheckpointing, detached, recomputeAttention);
            foreach (var p in parameters)
            {
                var grad = scalesLoss ? g.Add("Div", [grads[p], LossScale], name: "grad/unscale") : grads[p]; // Gradients' own outputs (verify)
                g.Add("Identity", [grad], name: "grad/output", outputs: [GradOf(p)]);
                proto.Graph.Output.Add(new ValueInfoProto { Name = GradOf(p) });
            }
            g.Cleanup(); // recomputed values no rule read, the full logits of a chunked loss
            return new TrainingGraph(parameters, shapes, values, batchInputs, eval, proto, frozen, opset) { HalfPrecision = halfReport, ScalesLoss = scalesLoss, NeftuneWidth = neftuneWidth,
                Preference = preferenceLoss is not null || reward is not null, RewardModel = reward is not null, Classification = classify is not null || tokenClassification,
                TokenClassification = tokenClassification, MultiLabelClasses = multiLabelClasses,
                TokenWeighted = tokenWeights,
                ScaledGradients = scalesLoss ? new(grads) : new() };
        }
        catch
        {
            frozen.Dispose();
            throw;
        }
    }

    /// <summary>PEFT's mixed precision on a model loaded in half: the base converted, the LoRA branches kept float32.</summary>
    static HalfPrecisionReport ToHalfCompute(ModelProto proto, OnnxModel model, ComputeType compute)
    {
        var source = model.Source;
        var lora = Lora.LoraModel.Read(proto, source)
            ?? throw new OrtLoraException($"{source}: half-precision training keeps the LoRA branches in float32 and finds them by the metadata of `ortlora inject`; inject the model with ortlora");
        int half = compute == ComputeType.Float16 ? (int)DT.Float16 : (int)DT.Bfloat16;
        // The bfloat16 graph's probe runs as float16 on CPU (ValueTable.Probe), which needs float16 to be unused.
        if (half == (int)DT.Bfloat16 && ElementTypes.Mentioned(proto).Contains((int)DT.Float16))
            throw new OrtLoraException($"{source}: the model already computes in float16; --bf16 converts float32 models (use --fp16)");
        // modules_to_save weights and trainable token rows stay float32 master weights that the half graph casts where it reads them: as graph
        // inputs during the conversion (float32 inputs take their reader's type), initializers again after it.
        var saved = proto.Graph.Initializer.Where(t => IsTrainable(t.Name) && !t.Name.Contains(".lora_")).ToList();
        foreach (var t in saved)
        {
            proto.Graph.Initializer.Remove(t);
            proto.Graph.Input.Add(Input(t.Name, t.DataType, t.Dims.Select(d => (object)d)));
        }
        // One weight at a time in float32 (TinyLlama's whole float32 copy was 4.4 GB next to the 2.2 GB converted)
        var report = Onnx.HalfPrecision.Apply(proto, half, lora.BranchNodes(proto.Graph), model.ReadIfNotInline);
        foreach (var t in saved)
        {
            proto.Graph.Input.Remove(proto.Graph.Input.Single(i => i.Name == t.Name));
            proto.Graph.Initializer.Add(t);
        }
        model.InlineInto(proto);
        return report;
    }

    public void Dispose() => Frozen.Dispose();

    /// <summary>A copy of <paramref name="graph"/> whose batch inputs (input_ids, attention_mask, labels, ...) are
    /// fixed to [batch, sequence]. ORT then knows every shape when it loads the graph and folds the shape arithmetic of
    /// the export and of the backward (Shape, Gather, Concat, Unsqueeze ... feeding Reshape, Expand, Slice) into
    /// constants: fewer nodes per run, and static shapes, which CUDA graphs need.</summary>
    public ModelProto WithBatchShape(ModelProto graph, int batch, int sequence)
    {
        var result = graph.Clone();
        foreach (var input in result.Graph.Input.Where(i => BatchInputs.Contains(i.Name) || i.Name == NeftuneNoise.Input))
        {
            var dims = input.Type?.TensorType?.Shape?.Dim;
            if (input.Name is PreferenceLoss.ReferenceInput or PreferenceLoss.RolesInput or PreferenceLoss.RowWeightsInput or RewardLoss.MarginsInput or ClassificationLoss.TargetsInput && dims is { Count: 1 }
                || input.Name == ClassificationLoss.MultiLabelTargetsInput && dims is { Count: 2 }) { dims![0] = new TensorShapeProto.Types.Dimension { DimValue = batch }; continue; }
            if (dims is null || dims.Count != (input.Name is NeftuneNoise.Input or DistillationLoss.TeacherInput ? 3 : 2)) continue;
            dims[0] = new TensorShapeProto.Types.Dimension { DimValue = batch };
            dims[1] = new TensorShapeProto.Types.Dimension { DimValue = sequence };
        }
        return result;
    }

    internal static ValueInfoProto Input(string name, int elemType, IEnumerable<object> dims)
    {
        var tensor = new TypeProto.Types.Tensor { ElemType = elemType, Shape = new TensorShapeProto() };
        foreach (var d in dims)
            tensor.Shape.Dim.Add(d is long v ? new TensorShapeProto.Types.Dimension { DimValue = v }
                : new TensorShapeProto.Types.Dimension { DimParam = (string)d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensor } };
    }
}
