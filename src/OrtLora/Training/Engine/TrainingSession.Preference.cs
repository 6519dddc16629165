namespace OrtLora.Training.Engine;

/// <summary>What a session does for the DPO loss (<see cref="TrainingSessionOptions.Preference"/>): the reference
/// model's log-probabilities of a batch, from the eval graph with the parameters' starting values, fed to the graphs
/// with the batch; and each row's log-probabilities read back with the loss.</summary>
public sealed partial class TrainingSession
{
    /// <summary>With DPO: the parameters' starting values, which make the reference model (one buffer each).</summary>
    readonly Dictionary<string, PingPong> _reference = new();

    /// <summary>With DPO: each row's log-probability under the model (before the update) and under the reference, of the
    /// last <see cref="Step"/>, <see cref="Accumulate"/> or <see cref="Evaluate"/> batch.</summary>
    public float[] LastSequenceLogps { get; private set; } = [];
    public float[] LastReferenceLogps { get; private set; } = [];

    /// <summary>With DPO: each row's log-probability under the reference model (the parameters' starting values), from
    /// the eval graph; TRL computes it with the adapter disabled, which is the same model when the adapters start at
    /// zero (B = 0, DoRA's m = ‖W‖, saved modules and token rows as they were).</summary>
    public float[] ReferenceLogps(Batch batch)
    {
        if (!_graph.Preference) throw new InvalidOperationException("reference log-probabilities are for the DPO loss");
        batch = batch with { ReferenceLogps = new float[batch.BatchSize] };
        if (_reference.Count == 0) return batch.ReferenceLogps; // ORPO: no reference
        var session = ForBatch(ref _evalSession, () => _graph.Eval, batch);
        using var run = new RunBinding(session, _fixed);
        BindBatch(run, batch);
        BindModel(run, session, _reference);
        run.HostOutput(TrainingGraph.Loss, _loss.Value);
        run.HostOutput(TrainingGraph.CorrectTokens, _correct.Value);
        var logps = new float[batch.BatchSize];
        run.HostOutput(TrainingGraph.SequenceLogProbs, logps);
        Run(run, graphId: 2); // its own captured graph: the reference buffers are not the parameters'
        return logps;
    }

    Batch WithReference(Batch batch) => !_graph.Preference || batch.ReferenceLogps is not null ? batch : batch with { ReferenceLogps = ReferenceLogps(batch) };

    /// <summary>With DPO, the rows' log-probabilities come back with the loss; with a classifier, its predictions
    /// (<see cref="ClassificationLoss.AppendPredictions"/>), a token classifier's for every token ([batch · sequence]).</summary>
    void BindSequenceLogps(RunBinding run, Batch batch)
    {
        if (!_graph.Preference && !_graph.Classification) return;
        LastReferenceLogps = batch.ReferenceLogps ?? [];
        LastSequenceLogps = new float[_graph.PredictionsOf(batch.BatchSize, batch.SequenceLength)];
        run.HostOutput(TrainingGraph.SequenceLogProbs, LastSequenceLogps);
    }
}
