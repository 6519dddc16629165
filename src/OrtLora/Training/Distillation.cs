using OrtLora.Inference;
using OrtLora.Onnx;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using OrtLora.Training.Grpo;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>TRL's GKDConfig: knowledge distillation from a teacher model (`ortlora distill`).</summary>
/// <param name="TeacherModel">an ONNX causal LM with the student's vocabulary</param>
/// <param name="Beta">the generalized JSD's interpolation (0: KL(teacher‖student), 1: KL(student‖teacher))</param>
/// <param name="Lmbda">the share of micro-batches whose completions the student samples itself (on-policy), drawn per micro-batch</param>
/// <param name="Temperature">sampling temperature of those completions (the loss takes none, as TRL's compute_loss)</param>
/// <param name="MaxNewTokens">the longest sampled completion</param>
/// <param name="SeqKd">sequence-level KD: every micro-batch's completions are first sampled by the teacher (the student's
/// own, drawn with lmbda, then take their place)</param>
public sealed record DistillationOptions(string TeacherModel, double Beta = 0.5, double Lmbda = 0.5, double Temperature = 0.9, int MaxNewTokens = 128,
    bool SeqKd = false)
{
    public void Validate()
    {
        if (Beta is < 0 or > 1) throw new OrtLoraException($"--beta must be in [0, 1], got {Beta}");
        if (Lmbda is < 0 or > 1) throw new OrtLoraException($"--lmbda must be in [0, 1], got {Lmbda}");
        if (Temperature <= 0) throw new OrtLoraException($"--temperature must be positive, got {Temperature}");
        if (MaxNewTokens < 1) throw new OrtLoraException($"--max-new-tokens must be at least 1, got {MaxNewTokens}");
    }
}

/// <summary>What a distillation run adds to each batch, as GKDTrainer's training_step and compute_loss do:
/// <list type="number">
/// <item>with seq_kd, the completions become the teacher's own, sampled from each row's prompt (its tokens before the
/// first labelled one; a row with no prompt keeps its completion);</item>
/// <item>with probability lmbda (drawn from the seed, the step and the micro-batch, so a resumed run draws the same),
/// they become the student's own, sampled the same way;</item>
/// <item>the teacher's logits for every row, which the loss compares with the student's.</item>
/// </list></summary>
public sealed class Distillation : IDisposable
{
    readonly DistillationOptions _options;
    readonly Generator _teacher;
    readonly PolicySampler? _sampler;
    readonly Microsoft.ML.OnnxRuntime.SessionOptions? _samplerOptions;
    readonly TrainingSession _session;
    readonly TextTokenizer _tokenizer;
    readonly IReadOnlyCollection<int> _stops;
    readonly int _seed;
    int _step, _micro;

    /// <summary>Micro-batches whose completions the student sampled, of those prepared for training.</summary>
    public int OnPolicy { get; private set; }
    /// <summary>Micro-batches whose completions the teacher sampled (seq_kd).</summary>
    public int TeacherSampled { get; private set; }
    public int Prepared { get; private set; }

    public Distillation(DistillationOptions options, OnnxModel student, TrainingSession session, TrainingData data, int seed)
    {
        options.Validate();
        _options = options;
        _session = session;
        _tokenizer = data.Tokenizer;
        _seed = seed;
        var stops = new HashSet<int>(data.Train.IsConversational ? PromptFormat.StopIds("chat", data.Tokenizer, data.ChatTemplate) : []);
        if (data.Tokenizer.EosId is int eos) stops.Add(eos);
        _stops = stops;
        if (!File.Exists(options.TeacherModel)) throw new OrtLoraException($"{options.TeacherModel}: no such teacher model");
        _teacher = new Generator(options.TeacherModel);
        try
        {
            long studentVocabulary = VocabularyCheck.EmbeddingRows(student) ?? -1;
            if (_teacher.Model.VocabSize is { } teacherVocabulary && studentVocabulary > 0 && teacherVocabulary != studentVocabulary)
                throw new OrtLoraException($"{options.TeacherModel}: the teacher's vocabulary has {teacherVocabulary} tokens, the student's {studentVocabulary}: " +
                                           "distillation compares their distributions token by token, so they must share a tokenizer");
            if (options.Lmbda > 0)
            {
                _samplerOptions = OrtRun.DefaultOptions();
                _sampler = new PolicySampler(student, _samplerOptions);
            }
        }
        catch
        {
            _teacher.Dispose();
            throw;
        }
    }

    /// <summary>Before an optimizer step: the student samples with the parameters the step starts from.</summary>
    public void BeginStep(int globalStep)
    {
        _step = globalStep;
        _micro = 0;
        _sampler?.SetParameters(_session.GetParameters(), _session.Graph.ParameterShapes);
    }

    /// <summary>A training micro-batch: on-policy with probability lmbda, then with the teacher's logits.</summary>
    public Engine.Batch ForTraining(DataBatch b)
    {
        var batch = Trainer.ToEngine(b);
        int micro = _micro++;
        Prepared++;
        if (_options.SeqKd)
        {
            batch = SampledCompletions(batch, micro, (groups, maxRows) => _teacher.GenerateGroups(groups, maxRows: maxRows), salt: 1);
            TeacherSampled++;
        }
        if (_sampler is not null && new Random(SplitMix64.Seed((ulong)_seed, (ulong)_step, (ulong)micro)).NextDouble() < _options.Lmbda)
        {
            batch = SampledCompletions(batch, micro, (groups, maxRows) => _sampler.SampleGroups(groups, maxRows), salt: 0);
            OnPolicy++;
        }
        return WithTeacher(batch);
    }

    /// <summary>The batch with the teacher's logits at every position (padding positions 0).</summary>
    public Engine.Batch WithTeacher(Engine.Batch batch)
    {
        // every row attends to at least one token (a filler row to one pad)
        var rows = Enumerable.Range(0, batch.BatchSize).Select(r => (IReadOnlyList<int>)[.. Row(batch, r)]).ToList();
        var logits = _teacher.Model.AllLogits(rows);
        int vocab = logits[0].Length / rows[0].Count;
        var teacher = new float[(long)batch.BatchSize * batch.SequenceLength * vocab];
        for (int r = 0; r < rows.Count; r++) logits[r].CopyTo(teacher.AsSpan(r * batch.SequenceLength * vocab));
        return batch with { TeacherLogits = teacher };
    }

    /// <summary>A row's attended tokens (right padding dropped).</summary>
    static IEnumerable<int> Row(Engine.Batch batch, int r) =>
        Enumerable.Range(0, batch.SequenceLength).Where(t => batch.AttentionMask[r * batch.SequenceLength + t] != 0)
            .Select(t => (int)batch.InputIds[r * batch.SequenceLength + t]);

    /// <summary>GKD's generate_on_policy_outputs: each row's prompt (before its first label) with a completion the
    /// student (or with seq_kd the teacher) samples at the temperature, the completion labelled; rows without a prompt
    /// keep theirs.</summary>
    /// <param name="sample">the prompts' completions, decoded side by side</param>
    /// <param name="salt">keeps the teacher's draws apart from the student's</param>
    Engine.Batch SampledCompletions(Engine.Batch batch, int micro,
        Func<IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)>, int, List<List<(List<int> Ids, bool Truncated)>>> sample, int salt)
    {
        int s = batch.SequenceLength;
        var rows = new List<(int[] Ids, int[] Labels)>();
        var prompts = new List<(int Row, IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)>();
        for (int r = 0; r < batch.BatchSize; r++)
        {
            int[] ids = [.. Row(batch, r)];
            rows.Add((ids, [.. Enumerable.Range(0, ids.Length).Select(t => (int)batch.Labels[r * s + t])]));
            int first = Enumerable.Range(0, ids.Length).FirstOrDefault(t => batch.Labels[r * s + t] != ExampleEncoder.IgnoreIndex, -1);
            if (first > 0)
                prompts.Add((r, ids[..first], [new GenerationOptions
                {
                    MaxNewTokens = _options.MaxNewTokens, Temperature = _options.Temperature, StopTokenIds = _stops,
                    Seed = SplitMix64.Seed((ulong)_seed, (ulong)_step, ((ulong)micro << 32) | ((ulong)salt << 31) | (uint)r),
                }]));
        }
        // the rows' prompts decoded side by side, one completion each
        var sampled = sample([.. prompts.Select(p => (p.Prompt, p.Options))], 64);
        for (int i = 0; i < prompts.Count; i++)
        {
            var (prompt, completion) = (prompts[i].Prompt, sampled[i][0].Ids);
            rows[prompts[i].Row] = ([.. prompt, .. completion], [.. Enumerable.Repeat(ExampleEncoder.IgnoreIndex, prompt.Count), .. completion]);
        }
        return Trainer.ToEngine(Batching.Pad([.. rows.Select(r => new Sequence(r.Ids, r.Labels, 0, []))], _tokenizer.PadId, epoch: 0));
    }

    public void Dispose()
    {
        _teacher.Dispose();
        _sampler?.Dispose();
        _samplerOptions?.Dispose();
    }
}
