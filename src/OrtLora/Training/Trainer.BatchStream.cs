using OrtLora.Training.Data;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training;

public static partial class Trainer
{
    /// <summary>Batches across epochs: when one epoch's batches end, the next epoch starts from its first row.</summary>
    sealed class BatchStream(TrainingData data, DataPosition start) : IDisposable
    {
        IEnumerator<DataBatch> _current = data.Batches(start).GetEnumerator();
        int _epoch = start.Epoch;
        bool? _hasNext; // one batch of lookahead, so that the step ending an epoch knows it

        bool MoveNext()
        {
            bool has = _hasNext ?? _current.MoveNext();
            _hasNext = null;
            return has;
        }

        /// <summary>Whether the batches taken so far end the current epoch.</summary>
        public bool EpochEnded => !(_hasNext ??= _current.MoveNext());

        /// <summary>Up to <paramref name="count"/> batches, fewer at the end of an epoch (as the Trainer does).</summary>
        public List<DataBatch> Take(int count)
        {
            var window = new List<DataBatch>(count);
            while (window.Count < count)
            {
                if (MoveNext()) { window.Add(_current.Current); continue; }
                if (window.Count > 0) break;
                _current.Dispose();
                _current = data.Batches(new DataPosition(++_epoch, 0)).GetEnumerator();
                if (!MoveNext()) throw new OrtLoraException($"{data.Train.Path}: no training examples ({data.Summary})");
                window.Add(_current.Current);
            }
            return window;
        }

        public void Dispose() => _current.Dispose();
    }
}
