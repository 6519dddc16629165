using Microsoft.ML.OnnxRuntime;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>The precision the frozen model computes in; LoRA parameters, their branches, the loss and AdamW are float32 in all.</summary>
public enum ComputeType { Float32, Float16, BFloat16 }

/// <summary>Settings fixed for a session's life. Learning rate and max_grad_norm are given per call.</summary>
/// <param name="CpuMemArena">ORT's arena allocator; off returns activation memory to the system between steps, which
/// lowers the peak of large training graphs at a small speed cost</param>
/// <param name="ProfilePrefix">when set, ORT's profiler writes a JSON trace per session (PREFIX_DATE.json, one event per
/// node run) when the session is disposed: where a step's time goes, op by op</param>
/// <param name="StaticShapes">load each graph for the batch shape it runs ([batch, sequence] fixed), so ORT folds the shape
/// arithmetic into constants; a batch of another shape reloads the graph. For runs whose batches all have one shape
/// (packing, or padding to --max-seq-length).</param>
/// <param name="StateInSessionMemory">keep parameters, moments and accumulators in memory from the session's allocator even
/// when that is host memory: the GPU's code path (allocate, copy in and out through DeviceCopy), testable on a CPU.
/// Without it the state moves to the device only when the sessions want their inputs outside host memory.</param>
/// <param name="GradientCheckpointing">the backward recomputes the forward segment by segment (about one layer each)
/// instead of keeping every activation: far less activation memory for about a third more compute</param>
/// <param name="RecomputeAttention">the backward recomputes attention's probabilities instead of keeping them
/// (<see cref="Autodiff.Checkpoints.Attention"/>; with GradientCheckpointing they are recomputed anyway)</param>
/// <param name="LossChunks">the loss and its gradient taken in this many chunks of the sequence through the lm_head, so
/// that no [batch, sequence, vocabulary] tensor is built whole (default: 8 from a vocabulary of 8192, else 1)</param>
/// <param name="CudaGraphs">CUDA graphs (ORT's enable_cuda_graph): each session captures its kernels once (see
/// CopyStateBack) and replays them, with no per-node launch cost on the host. Implies static shapes and state in session memory; every
/// input and output is bound at a fixed address (<see cref="FixedAddresses"/>). Not with dropout (a replay repeats the
/// captured random numbers).</param>
/// <param name="NeftuneNoiseAlpha">NEFTune: uniform noise of magnitude α/√(S·d) on the token embeddings while training
/// (<see cref="NeftuneNoise"/>); 0: none</param>
/// <param name="Seed">seeds that noise, drawn anew for each optimizer step and micro-batch</param>
/// <param name="LabelSmoothing">the Trainer's label_smoothing_factor (<see cref="CausalLmLoss.Smoothing"/>)</param>
/// <param name="Preference">DPO (TRL's DPOConfig options): the batches are preference pairs and the loss is <see cref="PreferenceLoss"/>,
/// with the model as it was when the session started as the reference; null: the causal-LM loss</param>
/// <param name="TokenWeighted">the loss is Σ w·nll with each batch's <see cref="Batch.TokenWeights"/> (GRPO's policy
/// gradient) instead of the mean cross-entropy</param>
/// <param name="LogitsTemperature">the loss reads the logits divided by this (GRPO's sampling temperature, as TRL scores completions)</param>
/// <param name="Classification">sequence classification: the model's logits are [batch, num_labels] and the loss is
/// <see cref="ClassificationLoss"/>'s</param>
/// <param name="TokenClassification">token classification: the logits are [batch, sequence, num_labels] and the loss
/// the unshifted cross-entropy at the labelled tokens (<see cref="TrainingGraph.TokenClassification"/>)</param>
/// <param name="ClassifierDropout">token classification: dropout on the classification head's input while training
/// (transformers' classifier_dropout; off with DisableDropout)</param>
/// <param name="MultiLabel">with Classification: multi-label classification, the BCE loss against each row's
/// multi-hot classes (<see cref="ClassificationLoss.MultiLabelTargetsInput"/>)</param>
/// <param name="CopyStateBack">a run writes the next state into the second buffer and it is copied back into the first
/// (<see cref="PingPong.CopyBackOnHost"/>, <see cref="DeviceCopy.CopyAll"/>), so every run reads and writes the same buffers and a session captures one CUDA graph
/// (id 0) instead of one per state parity. Null: with CUDA graphs, since the CUDA plugin replayed the first captured
/// graph whatever the graph id asked (graphs/tiny trained to eval loss 6.59 against the CPU's 2.93 with one graph per
/// parity, to 2.9284 copying back; docs/gpu.md). Costs one device copy of the state per update.
/// Env ORTLORA_COPY_STATE_BACK=1 or 0 decides instead.</param>
/// <param name="MemoryPattern">ONNX Runtime's memory pattern (one planned block per input shape, allocated each run):
/// off by default. On the CPU (SmolLM2-135M shape, float32, B=4, S=256, 3 steps) it raised the peak working set from
/// 4,070–4,083 MiB to 5,667–6,103 MiB, arena on or off, static shapes or dynamic, at the same step time: the step's values
/// planned at 1,987 MiB took about twice that with the pattern. Env ORTLORA_MEMORY_PATTERN=1 or 0 decides instead.</param>
/// <param name="HostUpdateFrom">parameters of this many elements or more (modules_to_save weights) are updated by
/// <see cref="HostAdamW"/> in place when the state is in host memory, instead of by the graph</param>
public sealed record TrainingSessionOptions(AdamWOptions AdamW, int IntraOpThreads = 0,
    GraphOptimizationLevel Optimization = GraphOptimizationLevel.ORT_ENABLE_ALL, string Device = "cpu", string? EpLibrary = null,
    bool CpuMemArena = true, string? ProfilePrefix = null, bool StateInSessionMemory = false, ComputeType Compute = ComputeType.Float32,
    bool StaticShapes = false, bool GradientCheckpointing = false, int? LossChunks = null, bool CudaGraphs = false,
    double NeftuneNoiseAlpha = 0, int Seed = 42, double LabelSmoothing = 0, long HostUpdateFrom = ParameterBundle.AloneFrom,
    PreferenceOptions? Preference = null, bool TokenWeighted = false, double LogitsTemperature = 1, double? DistillationBeta = null,
    bool DisableDropout = false, bool Classification = false, bool TokenClassification = false, double ClassifierDropout = 0, bool MultiLabel = false,
    bool? PluginRewrites = null, bool StateOnHost = false, bool? CopyStateBack = null, bool RecomputeAttention = false, bool MemoryPattern = false)
{
    /// <summary>Whether each graph loads without the ops the CUDA plugin crashes on (<see cref="OrtLora.Onnx.PluginRewrites"/>,
    /// docs/gpu.md). By default with a plugin execution provider (--ep-library), or as ORTLORA_PLUGIN_REWRITES says
    /// (<see cref="OrtLora.Onnx.PluginRewrites.Wanted"/>).</summary>
    public bool RewritesForPlugin => PluginRewrites ?? OrtLora.Onnx.PluginRewrites.Wanted(EpLibrary);
}

/// <summary>Trains the LoRA parameters of an injected model with graphs from <see cref="TrainingGraph"/>, run by plain
/// InferenceSessions. Parameters, AdamW moments and gradient accumulators live in <see cref="PingPong"/> buffers bound
/// with IOBinding; the frozen weights, held once for all sessions (<see cref="TrainingGraph.Frozen"/>), are bound the
/// same way. Each graph is built and loaded the first time it is needed.</summary>
public sealed partial class TrainingSession : IDisposable
{
    readonly TrainingGraph _graph;
    readonly TrainingSessionOptions _options;
    readonly Dictionary<string, PingPong> _params = new(), _expAvg = new(), _expAvgSq = new();
    Dictionary<string, PingPong>? _accumulators;
    /// <summary>The parameters <see cref="HostAdamW"/> updates in place (one buffer each), and their gradients' buffers.</summary>
    readonly HashSet<string> _hostUpdated;
    /// <summary>The other parameters, which the graphs update.</summary>
    readonly List<string> _graphUpdated;
    readonly Dictionary<string, PingPong> _hostGradients = new();
    readonly HostScalar _lr = new(), _step = new(), _maxGradNorm = new(), _gradScale = new(), _loss = new(), _correct = new(), _gradNorm = new(), _lossScale = new(),
        _clipCoefficient = new();
    LossScaler? _scaler;
    readonly RunOptions _runOptions = new(); // the defaults, for every Run: made once, not per step
    InferenceSession? _stepSession, _evalSession, _gradSession, _accumulateSession, _applySession;
    readonly Dictionary<InferenceSession, (int BatchSize, int SequenceLength)> _loadedShapes = new();
    OrtAllocator? _stateAllocator;
    InferenceSession? _allocatorSession;
    DeviceCopy? _deviceCopy;
    FixedAddresses? _fixed;
    bool _statePlaced;
    int _microBatches; // accumulated since the last update

    /// <summary>Whether the graphs load with the CUDA plugin's rewrites (<see cref="TrainingSessionOptions.RewritesForPlugin"/>).</summary>
    public bool RewritesForPlugin => _options.RewritesForPlugin;

    /// <summary>Whether the sessions load with ONNX Runtime's memory pattern (<see cref="TrainingSessionOptions.MemoryPattern"/>).</summary>
    public bool MemoryPattern => _options.MemoryPattern;

    public TrainingSession(OnnxModel model, TrainingSessionOptions options, IReadOnlyList<string>? parameters = null)
    {
        // CUDA graphs need fixed shapes and every buffer where the session allocates: the two options that give them.
        _options = options.CudaGraphs ? options with { StaticShapes = true, StateInSessionMemory = true } : options;
        // A diagnostic for a device provider that misbehaves (docs/gpu.md): parameters and state stay in host memory
        // and ORT copies them to the device each run, so the device allocator and bound device buffers are out of play.
        if (Environment.GetEnvironmentVariable("ORTLORA_STATE_ON_HOST") == "1" && !_options.CudaGraphs) _options = _options with { StateOnHost = true };
        // One captured graph per session (the state copied back) instead of one per state parity: by default with CUDA graphs.
        var copyBack = Environment.GetEnvironmentVariable("ORTLORA_COPY_STATE_BACK") switch { "1" => true, "0" => false, _ => _options.CopyStateBack };
        _options = _options with
        {
            CopyStateBack = copyBack ?? _options.CudaGraphs,
            MemoryPattern = OrtRun.MemoryPattern(Environment.GetEnvironmentVariable("ORTLORA_MEMORY_PATTERN")) ?? _options.MemoryPattern,
        };
        if (options.Compute == ComputeType.BFloat16 && options.Device == "cpu")
            throw new OrtLoraException("bfloat16 compute needs an execution provider with bfloat16 kernels (--device cuda): ONNX Runtime's CPU " +
                "provider has none for MatMul, Add, Softmax and most other ops. On CPU use --fp16 (ONNX Runtime runs float16 through float32 kernels there)");
        _graph = TrainingGraph.Build(model, parameters, compute: options.Compute, gradientCheckpointing: options.GradientCheckpointing,
            recomputeAttention: options.RecomputeAttention,
            lossChunks: options.LossChunks, neftuneNoise: options.NeftuneNoiseAlpha > 0, labelSmoothing: options.LabelSmoothing,
            preference: options.Preference, tokenWeights: options.TokenWeighted, logitsTemperature: options.LogitsTemperature,
            distillationBeta: options.DistillationBeta, loraDropout: options.DisableDropout ? 0 : null, classification: options.Classification,
            tokenClassification: options.TokenClassification, classifierDropout: options.DisableDropout ? 0 : options.ClassifierDropout, multiLabel: options.MultiLabel);
        if (_graph.ScalesLoss) _scaler = new LossScaler();
        // State in host memory (the CPU, where PlaceState leaves it): large parameters are updated in place by the host.
        bool hostState = _options.Device == "cpu" && !_options.StateInSessionMemory;
        _hostUpdated = hostState ? _graph.Parameters.Where(p => _graph.ParameterShapes[p].Aggregate(1L, (a, b) => a * b) >= _options.HostUpdateFrom).ToHashSet() : [];
        _graphUpdated = _graph.Parameters.Where(p => !_hostUpdated.Contains(p)).ToList();
        foreach (var p in _graph.Parameters)
        {
            var shape = _graph.ParameterShapes[p];
            bool single = _hostUpdated.Contains(p);
            // a copy: the first parameter buffer adopts the starting values' array, which training then overwrites
            if (_options.Preference is { UsesReference: true }) _reference[p] = new PingPong(shape, (float[])_graph.InitialValues[p].Clone(), adopt: true, single: true);
            _params[p] = new PingPong(shape, _graph.InitialValues[p], adopt: true, single); // the graph's starting values become the first buffer
            _expAvg[p] = new PingPong(shape, single: single);
            _expAvgSq[p] = new PingPong(shape, single: single);
            if (single) _hostGradients[p] = new PingPong(shape, single: true);
        }
    }

    public IReadOnlyList<string> ParameterNames => _graph.Parameters;
    /// <summary>The profiler's trace files, filled on Dispose when <see cref="TrainingSessionOptions.ProfilePrefix"/> is set.</summary>
    public List<string> ProfileFiles { get; } = [];
    public TrainingGraph Graph => _graph;
    /// <summary>Optimizer steps taken (AdamW's t).</summary>
    public int OptimizerStep { get; private set; }
    /// <summary>float16 compute's loss scaling (null otherwise).</summary>
    public LossScaler? Scaler => _scaler;
    /// <summary>The global gradient norm before clipping, of the last update.</summary>
    public float LastGradNorm { get; private set; }
    /// <summary>How many counted tokens of the last <see cref="Step"/> or <see cref="Accumulate"/> batch the model predicted
    /// (arg-max) right, before the update: TRL's training mean_token_accuracy over the counted tokens.</summary>
    public float LastCorrectTokens { get; private set; }

    /// <summary>Forward, backward and AdamW on one batch in a single Run; returns the loss (before the update).</summary>
    public float Step(Batch batch, float learningRate, float maxGradNorm = 0)
    {
        batch = WithReference(batch);
        var session = ForBatch(ref _stepSession, () => _graph.BuildStep(_options.AdamW, _hostUpdated), batch);
        using var run = new RunBinding(session, _fixed);
        BindBatch(run, batch);
        BindNoise(run, batch, microBatch: 0);
        BindOptimizer(run, learningRate, maxGradNorm);
        foreach (var (p, gradient) in _hostGradients) run.Output(TrainingGraph.GradOf(p), gradient.Current);
        BindLossScale(run);
        BindModel(run, session);
        run.HostOutput(TrainingGraph.Loss, _loss.Value);
        run.HostOutput(TrainingGraph.CorrectTokens, _correct.Value);
        BindSequenceLogps(run, batch);
        Run(run, graphId: StateParity);
        FinishUpdate(p => _hostGradients[p].HostArray);
        LastCorrectTokens = _correct.Get();
        return _loss.Get();
    }

    /// <summary>Gradient accumulation: adds <paramref name="gradScale"/> · d loss/d P into the accumulators (one Run);
    /// returns the micro-batch loss. <see cref="ApplyAccumulated"/> then updates and clears them.</summary>
    public float Accumulate(Batch batch, float gradScale)
    {
        batch = WithReference(batch);
        var session = ForBatch(ref _accumulateSession, () => _graph.BuildAccumulate(_hostUpdated), batch);
        _accumulators ??= _graph.Parameters.ToDictionary(p => p, p => Placed(new PingPong(_graph.ParameterShapes[p], single: _hostUpdated.Contains(p))));
        using var run = new RunBinding(session, _fixed);
        BindBatch(run, batch);
        BindNoise(run, batch, _microBatches++);
        _gradScale.Set(gradScale);
        run.HostInput(TrainingGraph.GradScale, _gradScale.Value);
        BindLossScale(run);
        BindModel(run, session);
        BindAccumulators(run, output: true);
        foreach (var (p, gradient) in _hostGradients) run.Output(TrainingGraph.GradOf(p), gradient.Current);
        run.HostOutput(TrainingGraph.Loss, _loss.Value);
        run.HostOutput(TrainingGraph.CorrectTokens, _correct.Value);
        BindSequenceLogps(run, batch);
        Run(run, graphId: 2 * StateParity + AccumulatorParity);
        LastCorrectTokens = _correct.Get();
        Advance(_accumulators.Values);
        foreach (var (p, gradient) in _hostGradients) HostAdamW.Accumulate(_accumulators[p].HostArray, gradient.HostArray, gradScale);
        return _loss.Get();
    }

    /// <summary>Clipping and AdamW on the accumulated gradients (a small graph, no forward); clears the accumulators.</summary>
    public void ApplyAccumulated(float learningRate, float maxGradNorm = 0)
    {
        if (_accumulators is null) throw new InvalidOperationException("ApplyAccumulated before any Accumulate");
        _applySession ??= Load(_graph.BuildApply(_options.AdamW, _hostUpdated));
        using var run = new RunBinding(_applySession, _fixed);
        BindOptimizer(run, learningRate, maxGradNorm);
        foreach (var p in _graphUpdated) run.Input(p, _params[p].Current);
        BindAccumulators(run, output: false);
        Run(run, graphId: 2 * StateParity + AccumulatorParity);
        FinishUpdate(p => _accumulators[p].HostArray);
        foreach (var a in _accumulators.Values) a.Clear();
        _microBatches = 0;
    }

    /// <summary>The loss on a batch with the current parameters (forward only).</summary>
    public float EvalLoss(Batch batch) => Evaluate(batch).Loss;

    /// <summary>The loss on a batch and how many of its counted tokens the model predicts (arg-max) right.</summary>
    public (float Loss, float CorrectTokens) Evaluate(Batch batch)
    {
        batch = WithReference(batch);
        var session = ForBatch(ref _evalSession, () => _graph.Eval, batch);
        using var run = new RunBinding(session, _fixed);
        BindBatch(run, batch);
        BindModel(run, session);
        run.HostOutput(TrainingGraph.Loss, _loss.Value);
        run.HostOutput(TrainingGraph.CorrectTokens, _correct.Value);
        BindSequenceLogps(run, batch);
        Run(run, graphId: StateParity);
        return (_loss.Get(), _correct.Get());
    }

    /// <summary>Loss and d loss / d P at the current parameters, without updating anything (for verification).</summary>
    public (float Loss, Dictionary<string, float[]> Gradients) ComputeGradients(Batch batch)
    {
        batch = WithReference(batch);
        var session = ForBatch(ref _gradSession, () => _graph.Gradients, batch);
        using var run = new RunBinding(session, _fixed);
        BindBatch(run, batch);
        BindNoise(run, batch, microBatch: 0);
        BindModel(run, session);
        BindLossScale(run);
        // Outputs in host memory, allocated by the Run: not fixed, so never captured.
        foreach (var name in session.OutputNames) run.Binding.BindOutputToDevice(name, OrtMemoryInfo.DefaultInstance);
        Run(run, graphId: -1);
        using var outputs = run.Binding.GetOutputValues();
        var values = session.OutputNames.Zip(outputs).ToDictionary(o => o.First, o => o.Second.GetTensorDataAsSpan<float>().ToArray());
        return (values[TrainingGraph.Loss][0], _graph.Parameters.ToDictionary(p => p, p => values[TrainingGraph.GradOf(p)]));
    }

    /// <summary>Which of their two buffers parameters and moments are in (they swap together): the captured graph to replay.</summary>
    int StateParity => _params.Values.First().Parity;
    int AccumulatorParity => _accumulators!.Values.First().Parity;

    /// <summary>Called with each Run's bindings (graph id, what was bound), for checking that a captured graph always
    /// finds its buffers where it left them.</summary>
    public Action<InferenceSession, int, IReadOnlyList<(string Name, OrtValue Value)>>? RunObserver { get; set; }

    public Dictionary<string, float[]> GetParameters() => _graph.Parameters.ToDictionary(p => p, p => _params[p].Read());

    public void SetParameters(IReadOnlyDictionary<string, float[]> values)
    {
        foreach (var (name, v) in values)
        {
            if (!_params.TryGetValue(name, out var slot)) throw new OrtLoraException($"'{name}' is not a trainable parameter of this model");
            slot.Write(v);
        }
    }

    /// <summary>AdamW state for checkpoints: exp_avg.P, exp_avg_sq.P and step.</summary>
    public Dictionary<string, SafeTensor> GetOptimizerState()
    {
        var state = new Dictionary<string, SafeTensor> { ["step"] = SafeTensor.FromInt64s([1], [OptimizerStep]) };
        if (_scaler is not null)
        {
            state["loss_scale"] = SafeTensor.FromFloats([1], [_scaler.Scale]);
            state["loss_scale_good_steps"] = SafeTensor.FromInt64s([1], [_scaler.GoodSteps]);
        }
        foreach (var p in _graph.Parameters)
        {
            state[TrainingGraph.ExpAvgOf(p)] = SafeTensor.FromFloats(_graph.ParameterShapes[p], _expAvg[p].Read());
            state[TrainingGraph.ExpAvgSqOf(p)] = SafeTensor.FromFloats(_graph.ParameterShapes[p], _expAvgSq[p].Read());
        }
        return state;
    }

    public void SetOptimizerState(IReadOnlyDictionary<string, SafeTensor> state)
    {
        if (!state.TryGetValue("step", out var step)) throw new OrtLoraException("optimizer state has no 'step'");
        foreach (var p in _graph.Parameters)
        {
            if (!state.TryGetValue(TrainingGraph.ExpAvgOf(p), out var m) || !state.TryGetValue(TrainingGraph.ExpAvgSqOf(p), out var v))
                throw new OrtLoraException($"optimizer state has no moments for '{p}' (a checkpoint of another adapter?)");
            _expAvg[p].Write(m.AsFloats());
            _expAvgSq[p].Write(v.AsFloats());
        }
        OptimizerStep = (int)step.AsInt64s()[0];
        if (_scaler is not null && state.TryGetValue("loss_scale", out var scale) && state.TryGetValue("loss_scale_good_steps", out var good))
            _scaler = new LossScaler(scale.AsFloats()[0], (int)good.AsInt64s()[0]);
    }

    /// <summary>Binds the model itself: the trainable parameters' current values and the shared frozen weights.</summary>
    void BindModel(RunBinding run, InferenceSession session, Dictionary<string, PingPong>? parameters = null)
    {
        foreach (var p in _graph.Parameters) run.Input(p, (parameters ?? _params)[p].Current);
        foreach (var (name, value) in _graph.Frozen.InputsOf(session)) run.Input(name, value);
    }

    void Run(RunBinding run, int graphId)
    {
        run.Run(_runOptions, graphId);
        RunObserver?.Invoke(run.Session, graphId, run.Bound);
    }

    void BindOptimizer(RunBinding run, float learningRate, float maxGradNorm)
    {
        _lr.Set(learningRate);
        _step.Set(OptimizerStep + 1);
        _maxGradNorm.Set(maxGradNorm);
        run.HostInput(TrainingGraph.LearningRate, _lr.Value);
        run.HostInput(TrainingGraph.Step, _step.Value);
        run.HostInput(TrainingGraph.MaxGradNorm, _maxGradNorm.Value);
        run.HostOutput(TrainingGraph.GradNorm, _gradNorm.Value);
        if (_hostUpdated.Count > 0) run.HostOutput(TrainingGraph.ClipCoefficient, _clipCoefficient.Value);
        foreach (var p in _graphUpdated)
        {
            run.Input(TrainingGraph.ExpAvgOf(p), _expAvg[p].Current);
            run.Input(TrainingGraph.ExpAvgSqOf(p), _expAvgSq[p].Current);
            run.Output(TrainingGraph.Updated(p), _params[p].Next);
            run.Output(TrainingGraph.Updated(TrainingGraph.ExpAvgOf(p)), _expAvg[p].Next);
            run.Output(TrainingGraph.Updated(TrainingGraph.ExpAvgSqOf(p)), _expAvgSq[p].Next);
        }
    }

    void BindAccumulators(RunBinding run, bool output)
    {
        foreach (var p in _graph.Parameters)
        {
            if (output && _hostUpdated.Contains(p)) continue; // the host adds its gradient
            run.Input(TrainingGraph.AccumulatorOf(p), _accumulators![p].Current);
            if (output) run.Output(TrainingGraph.Updated(TrainingGraph.AccumulatorOf(p)), _accumulators[p].Next);
        }
    }

    void BindLossScale(RunBinding run)
    {
        if (_scaler is null) return;
        _lossScale.Set(_scaler.Scale);
        run.HostInput(TrainingGraph.LossScale, _lossScale.Value);
    }

    /// <summary>What the last run wrote into the state's Next buffers becomes current: the buffers swap, or with
    /// <see cref="TrainingSessionOptions.CopyStateBack"/> Next is copied into Current (device buffers in one Run).</summary>
    void Advance(IEnumerable<PingPong> state)
    {
        if (_options.CopyStateBack != true) { foreach (var s in state) s.Swap(); return; }
        var onDevice = state.Where(s => !s.CopyBackOnHost()).Select(s => (s.Next, s.Current)).ToList();
        if (onDevice.Count > 0) _deviceCopy!.CopyAll(onDevice);
    }

    /// <summary>Takes the update the Run wrote to the Next buffers and makes the host's (from <paramref name="hostGradient"/>
    /// times the clip coefficient), unless loss scaling found that the gradients overflowed: then parameters and moments
    /// stay as they were (GradScaler skips optimizer.step).</summary>
    void FinishUpdate(Func<string, float[]> hostGradient)
    {
        LastGradNorm = _gradNorm.Get();
        if (_scaler is not null && !_scaler.Update(LastGradNorm)) return;
        foreach (var p in _hostUpdated)
            HostAdamW.Update(_params[p].HostArray, _expAvg[p].HostArray, _expAvgSq[p].HostArray, hostGradient(p), _clipCoefficient.Get(),
                _options.AdamW, _lr.Get(), _options.AdamW.LrMultiplier?.Invoke(p) ?? 1.0, _options.AdamW.WeightDecayOf(p), OptimizerStep + 1);
        Advance(_graph.Parameters.SelectMany(p => new[] { _params[p], _expAvg[p], _expAvgSq[p] }));
        OptimizerStep++;
    }

    void BindBatch(RunBinding run, Batch batch)
    {
        foreach (var (name, tensor) in batch.Feeds(_graph.BatchInputs)) run.HostInput(name, tensor);
    }

    /// <summary>NEFTune's noise for this optimizer step and micro-batch (<see cref="NeftuneNoise.Draw"/>).</summary>
    void BindNoise(RunBinding run, Batch batch, int microBatch)
    {
        if (_graph.NeftuneWidth is not { } width) return;
        var noise = NeftuneNoise.Draw(_options.NeftuneNoiseAlpha, _options.Seed, OptimizerStep, microBatch, batch.BatchSize, batch.SequenceLength, width);
        run.HostInput(NeftuneNoise.Input, HostTensor.Of(noise, [batch.BatchSize, batch.SequenceLength, width]));
    }

    public void Dispose()
    {
        // State and weights first: device buffers come from an allocator of one of the sessions, which must outlive them.
        foreach (var b in StateBuffers()) b.Dispose();
        _graph.Dispose();
        _fixed?.Dispose();
        _stateAllocator?.Dispose();
        _deviceCopy?.Dispose();
        foreach (var s in new[] { _stepSession, _evalSession, _gradSession, _accumulateSession, _applySession, _allocatorSession }
                     .OfType<InferenceSession>().Distinct())
            Unload(s);
        foreach (var s in new[] { _lr, _step, _maxGradNorm, _gradScale, _loss, _correct, _gradNorm, _lossScale, _clipCoefficient }) s.Dispose();
        _runOptions.Dispose();
    }
}
