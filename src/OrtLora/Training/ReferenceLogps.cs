using System.Diagnostics;
using OrtLora.Training.Data;
using OrtLora.Training.Engine;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

/// <summary>Where a DPO run's reference log-probabilities come from. By default the session computes them with a
/// forward of the starting parameters before each step. The evaluations' are computed at the first evaluation and
/// kept: the eval batches and the reference never change. With TRL's precompute_ref_log_probs, every training pair's are
/// computed once, in one pass over the training rows in file order (so a resumed run computes the same numbers).</summary>
sealed class ReferenceLogps(TrainingSession session)
{
    readonly List<float[]> _eval = [];
    Dictionary<long, (float Chosen, float Rejected)>? _train;

    public void Precompute(TrainingData data, ITrainingReporter reporter)
    {
        var clock = Stopwatch.StartNew();
        _train = new();
        foreach (var b in data.TrainPairsInFileOrder())
        {
            var reference = session.ReferenceLogps(Trainer.ToEngine(b));
            for (int k = 0; k < b.Sequences; k += 2) _train[b.Rows[k]] = (reference[k], reference[k + 1]);
        }
        reporter.Info($"precomputed the reference log-probabilities of {_train.Count} pairs in {clock.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>A training batch for the engine, with its precomputed reference when there is one (else the session
    /// computes it).</summary>
    public Engine.Batch ForTraining(DataBatch b)
    {
        var batch = Trainer.ToEngine(b);
        if (_train is null) return batch;
        var reference = new float[b.BatchSize]; // rows that only pad the batch: 0
        for (int k = 0; k < b.Sequences; k += 2) (reference[k], reference[k + 1]) = _train[b.Rows[k]];
        return batch with { ReferenceLogps = reference };
    }

    /// <summary>For one evaluation: the reference of its n-th batch, computed at the first evaluation.</summary>
    public Func<Engine.Batch, float[]> ForEvaluation()
    {
        int next = 0;
        return batch =>
        {
            if (next == _eval.Count) _eval.Add(session.ReferenceLogps(batch));
            return _eval[next++];
        };
    }
}
