using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>A batch of token sequences: input_ids, attention_mask and labels, each [BatchSize, SequenceLength]
/// row-major. Labels of -100 are not counted in the loss.</summary>
public sealed record Batch(long[] InputIds, long[] AttentionMask, long[] Labels, int BatchSize, int SequenceLength)
{
    public long[] Shape => [BatchSize, SequenceLength];
    /// <summary>With the DPO loss: the reference model's log-probability of each row (<see cref="Autodiff.PreferenceLoss"/>);
    /// a training session fills it in when it is null.</summary>
    public float[]? ReferenceLogps { get; init; }
    /// <summary>With KTO: each row's role (<see cref="Autodiff.PreferenceLoss.RolesInput"/>).</summary>
    public float[]? Roles { get; init; }
    /// <summary>With a loss that reads a value a row: a reward model's margins (<see cref="Autodiff.RewardLoss.MarginsInput"/>),
    /// a regression's targets (<see cref="Autodiff.ClassificationLoss.TargetsInput"/>); null: 0. A multi-label batch's
    /// multi-hot classes, [BatchSize · classes] (<see cref="Autodiff.ClassificationLoss.MultiLabelTargetsInput"/>).</summary>
    public float[]? RowValues { get; init; }
    /// <summary>With XPO's row term: each row's weight w in Σ w·π (<see cref="Autodiff.PreferenceLoss.RowWeightsInput"/>).</summary>
    public float[]? RowWeights { get; init; }
    /// <summary>With distillation: the teacher's logits for the batch, [BatchSize, SequenceLength, vocabulary]
    /// (<see cref="Autodiff.DistillationLoss.TeacherInput"/>).</summary>
    public float[]? TeacherLogits { get; init; }
    /// <summary>With a loss of weighted tokens (<see cref="TrainingGraph.TokenWeighted"/>): each label's weight,
    /// [BatchSize, SequenceLength] like the labels.</summary>
    public float[]? TokenWeights { get; init; }

    /// <summary>The graph inputs fed from this batch (<see cref="TrainingGraph.BatchInputs"/>): input_ids,
    /// attention_mask, labels, and positions 0..S-1 for an input named like position_ids.</summary>
    public Dictionary<string, HostTensor> Feeds(IReadOnlyList<string> batchInputs)
    {
        long n = (long)BatchSize * SequenceLength;
        if (InputIds.Length != n || AttentionMask.Length != n || Labels.Length != n)
            throw new OrtLoraException($"batch arrays must each hold {BatchSize}×{SequenceLength} values");
        var feeds = new Dictionary<string, HostTensor>();
        foreach (var name in batchInputs)
        {
            feeds[name] = name switch
            {
                "input_ids" => HostTensor.Of(InputIds, Shape),
                "attention_mask" => HostTensor.Of(AttentionMask, Shape),
                TrainingGraph.Labels => HostTensor.Of(Labels, Shape),
                TrainingGraph.TokenWeights => HostTensor.Of(TokenWeights is { } w && w.Length == n ? w
                    : throw new OrtLoraException($"a batch of weighted tokens needs {BatchSize}×{SequenceLength} token weights"), Shape),
                Autodiff.DistillationLoss.TeacherInput => TeacherLogits is { } t && t.Length % n == 0 && t.Length > 0
                    ? HostTensor.Of(t, BatchSize, SequenceLength, t.Length / n)
                    : throw new OrtLoraException($"a distillation batch needs the teacher's logits for its {BatchSize}×{SequenceLength} positions"),
                Autodiff.PreferenceLoss.RowWeightsInput => HostTensor.Of(RowWeights is { } w && w.Length == BatchSize ? w
                    : throw new OrtLoraException($"a batch with XPO's term needs a weight for each of its {BatchSize} rows"), BatchSize),
                Autodiff.RewardLoss.MarginsInput or Autodiff.ClassificationLoss.TargetsInput =>
                    HostTensor.Of(RowValues is { } m && m.Length == BatchSize ? m : new float[BatchSize], BatchSize),
                Autodiff.ClassificationLoss.MultiLabelTargetsInput => RowValues is { Length: > 0 } targets && targets.Length % BatchSize == 0
                    ? HostTensor.Of(targets, BatchSize, targets.Length / BatchSize)
                    : throw new OrtLoraException($"a multi-label batch needs each of its {BatchSize} rows' classes"),
                Autodiff.PreferenceLoss.RolesInput => HostTensor.Of(Roles ?? throw new OrtLoraException("a KTO batch needs each row's role"), BatchSize),
                Autodiff.PreferenceLoss.ReferenceInput => HostTensor.Of(ReferenceLogps ?? throw new OrtLoraException("a DPO batch needs the reference model's log-probabilities"), BatchSize),
                _ when name.Contains("position") => HostTensor.Of(Enumerable.Range(0, (int)n).Select(i => (long)(i % SequenceLength)).ToArray(), Shape),
                _ => throw new OrtLoraException($"model input '{name}': ortlora feeds input_ids, attention_mask and position_ids only"),
            };
        }
        return feeds;
    }
}
