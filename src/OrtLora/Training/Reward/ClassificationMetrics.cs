using System.Text.Json.Nodes;
using OrtLora.Training.Data;
using DataBatch = OrtLora.Training.Data.Batch;

namespace OrtLora.Training.Reward;

/// <summary>What an evaluation of a classifier collects from each batch's predictions, and reports.</summary>
public interface IClassifierMetrics
{
    /// <param name="predictions">the session's predictions of the batch: one a row, or one a token for a token classifier</param>
    void Add(IReadOnlyList<float> predictions, DataBatch batch);
    /// <summary>Writes the metrics (names prefixed) and starts over.</summary>
    void Report(JsonObject record, string prefix = "");
}

/// <summary>What an evaluation of a sequence classifier reports, under the names of the GLUE metrics that run_glue.py
/// loads (evaluate's "glue"): <c>accuracy</c> for classes, <c>f1</c> of class 1 with two classes (MRPC's, QQP's),
/// <c>matthews_correlation</c> (CoLA's; the multiclass form with more); <c>pearson</c> and <c>spearmanr</c> for a
/// regression (STS-B's); micro <c>f1</c> and subset <c>accuracy</c> for multi-label classification (run_classification.py's). Each counted row's prediction (the arg-max class, or the regression's output) against its
/// label.</summary>
public sealed class ClassificationMetrics(ClassLabels classes) : IClassifierMetrics
{
    readonly List<(double Predicted, double Target)> _rows = [];
    /// <summary>Multi-label: each counted row's predicted and true classes, multi-hot.</summary>
    readonly List<(float[] Predicted, float[] Target)> _sets = [];

    public int Rows => _rows.Count + _sets.Count;

    /// <param name="predictions">each row's prediction (<see cref="Autodiff.ClassificationLoss.AppendPredictions"/>)</param>
    /// <param name="batch">the batch: each counted row's class at its one label, a regression's target in its row values</param>
    public void Add(IReadOnlyList<float> predictions, DataBatch batch)
    {
        for (int row = 0; row < batch.Sequences; row++)
        {
            int labelled = Array.FindIndex(batch.Labels, row * batch.SeqLength, batch.SeqLength, l => l != ExampleEncoder.IgnoreIndex);
            if (labelled < 0) continue; // a filler row
            if (classes.IsMultiLabel)
            {
                int n = classes.Count;
                _sets.Add(([.. Enumerable.Range(row * n, n).Select(i => predictions[i])], batch.RowValues[(row * n)..((row + 1) * n)]));
                continue;
            }
            _rows.Add((predictions[row], classes.IsRegression ? batch.RowValues[row] : batch.Labels[labelled]));
        }
    }

    public void Report(JsonObject record, string prefix = "")
    {
        if (classes.IsMultiLabel) { ReportMultiLabel(record, prefix); return; }
        if (_rows.Count == 0) return;
        if (classes.IsRegression)
        {
            record[prefix + "pearson"] = Pearson([.. _rows.Select(r => r.Predicted)], [.. _rows.Select(r => r.Target)]);
            record[prefix + "spearmanr"] = Pearson(Ranks([.. _rows.Select(r => r.Predicted)]), Ranks([.. _rows.Select(r => r.Target)]));
            _rows.Clear();
            return;
        }
        int k = classes.Count;
        var confusion = new long[k, k]; // [true, predicted]
        foreach (var (predicted, target) in _rows) confusion[(int)target, (int)predicted]++;
        long total = _rows.Count, right = Enumerable.Range(0, k).Sum(i => confusion[i, i]);
        record[prefix + "accuracy"] = (double)right / total;
        if (k == 2)
        {
            long truePositive = confusion[1, 1], falsePositive = confusion[0, 1], falseNegative = confusion[1, 0];
            record[prefix + "f1"] = truePositive == 0 ? 0 : 2.0 * truePositive / (2 * truePositive + falsePositive + falseNegative);
        }
        // sklearn's matthews_corrcoef, multiclass: (c·s − Σ p_k t_k) / √((s² − Σ p_k²)(s² − Σ t_k²))
        double sumPt = 0, sumPp = 0, sumTt = 0;
        for (int c = 0; c < k; c++)
        {
            double t = Enumerable.Range(0, k).Sum(j => (double)confusion[c, j]), p = Enumerable.Range(0, k).Sum(j => (double)confusion[j, c]);
            sumPt += p * t; sumPp += p * p; sumTt += t * t;
        }
        double s = total, denominator = Math.Sqrt((s * s - sumPp) * (s * s - sumTt));
        record[prefix + "matthews_correlation"] = denominator == 0 ? 0 : (right * s - sumPt) / denominator;
        _rows.Clear();
    }

    /// <summary>Multi-label: run_classification.py's metric, evaluate's multilabel f1 with average="micro" (over every
    /// row's every class), and sklearn's accuracy_score of multi-hot rows, the share of rows with every class right.</summary>
    void ReportMultiLabel(JsonObject record, string prefix)
    {
        if (_sets.Count == 0) return;
        long truePositive = 0, falsePositive = 0, falseNegative = 0, exact = 0;
        foreach (var (predicted, target) in _sets)
        {
            bool all = true;
            for (int c = 0; c < predicted.Length; c++)
            {
                bool p = predicted[c] > 0.5f, t = target[c] > 0.5f;
                if (p && t) truePositive++;
                else if (p) falsePositive++;
                else if (t) falseNegative++;
                all &= p == t;
            }
            if (all) exact++;
        }
        record[prefix + "f1"] = truePositive == 0 ? 0 : 2.0 * truePositive / (2 * truePositive + falsePositive + falseNegative);
        record[prefix + "accuracy"] = (double)exact / _sets.Count;
        _sets.Clear();
    }

    /// <summary>The metrics of a classifier's evaluation: a sequence classifier's (GLUE's) or a token classifier's (seqeval's).</summary>
    public static IClassifierMetrics For(ClassLabels classes, bool perToken) =>
        perToken ? new TokenClassificationMetrics(classes) : new ClassificationMetrics(classes);

    static double Pearson(double[] x, double[] y)
    {
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < x.Length; i++) { sxy += (x[i] - mx) * (y[i] - my); sxx += (x[i] - mx) * (x[i] - mx); syy += (y[i] - my) * (y[i] - my); }
        return sxx == 0 || syy == 0 ? double.NaN : sxy / Math.Sqrt(sxx * syy);
    }

    /// <summary>Ranks from 1, ties sharing their average rank (scipy's rankdata, as spearmanr ranks).</summary>
    static double[] Ranks(double[] values)
    {
        var order = Enumerable.Range(0, values.Length).OrderBy(i => values[i]).ToArray();
        var ranks = new double[values.Length];
        for (int start = 0, end; start < order.Length; start = end)
        {
            for (end = start; end < order.Length && values[order[end]] == values[order[start]]; end++) { }
            for (int i = start; i < end; i++) ranks[order[i]] = (start + end + 1) / 2.0;
        }
        return ranks;
    }
}
