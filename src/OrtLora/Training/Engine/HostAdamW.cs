using System.Numerics;
using OrtLora.Autodiff;

namespace OrtLora.Training.Engine;

/// <summary>AdamW for a large parameter in host memory, in place: the same arithmetic as <see cref="AdamWGraph"/>, op for
/// op in float32 with the bias corrections in float64, on the parameter's, its moments' and its gradient's own arrays.
/// Why: an ONNX Runtime output cannot alias an input, so the graph's update keeps two buffers of the parameter and of
/// each moment and allocates a temporary per elementwise op. For a modules_to_save weight (a 32,000 × 768 head: 94 MiB)
/// that is most of the memory training adds; here it is the parameter, two moments and the gradient, as in PyTorch.</summary>
public static class HostAdamW
{
    /// <param name="gradFactor">what the gradient is multiplied by first: the clip coefficient the step graph computed
    /// over every gradient</param>
    /// <param name="lrMultiplier">the parameter's learning-rate multiplier (<see cref="AdamWOptions.LrMultiplier"/>)</param>
    /// <param name="weightDecay">the parameter's weight decay (<see cref="AdamWOptions.WeightDecayOf"/>)</param>
    /// <param name="step">AdamW's t, from 1</param>
    public static void Update(float[] param, float[] expAvg, float[] expAvgSq, float[] grad, float gradFactor,
        AdamWOptions o, float learningRate, double lrMultiplier, double weightDecay, int step)
    {
        // The graph's constants, in the types it computes them in.
        double lr = (double)learningRate * lrMultiplier;
        double correction1 = 1 - Math.Pow(o.Beta1, step);
        float sqrtCorrection2 = (float)Math.Sqrt(1 - Math.Pow(o.Beta2, step));
        float decay = (float)(1 - lr * weightDecay), stepSize = (float)(lr / correction1);
        float oneMinusBeta1 = (float)(1 - o.Beta1), beta2 = (float)o.Beta2, oneMinusBeta2 = (float)(1 - o.Beta2), epsilon = (float)o.Epsilon;
        bool decays = weightDecay != 0;
        const int Block = 1 << 16;
        Parallel.For(0, (param.Length + Block - 1) / Block, b =>
        {
            int start = b * Block, end = Math.Min(param.Length, start + Block), i = start;
            if (Vector.IsHardwareAccelerated)
            {
                var (vFactor, vDecay, vStep, vB1, vB2, vOneMinusB2, vCorrection, vEps) = (new Vector<float>(gradFactor), new Vector<float>(decay),
                    new Vector<float>(stepSize), new Vector<float>(oneMinusBeta1), new Vector<float>(beta2), new Vector<float>(oneMinusBeta2),
                    new Vector<float>(sqrtCorrection2), new Vector<float>(epsilon));
                for (; i <= end - Vector<float>.Count; i += Vector<float>.Count)
                {
                    var g = new Vector<float>(grad, i) * vFactor;
                    var p = new Vector<float>(param, i);
                    if (decays) p *= vDecay;
                    var m = new Vector<float>(expAvg, i);
                    m += (g - m) * vB1;
                    var v = new Vector<float>(expAvgSq, i) * vB2 + g * g * vOneMinusB2;
                    var denom = Vector.SquareRoot(v) / vCorrection + vEps;
                    (p - vStep * (m / denom)).CopyTo(param, i);
                    m.CopyTo(expAvg, i);
                    v.CopyTo(expAvgSq, i);
                }
            }
            for (; i < end; i++)
            {
                float g = grad[i] * gradFactor;
                float p = decays ? param[i] * decay : param[i];
                float m = expAvg[i] + (g - expAvg[i]) * oneMinusBeta1;
                float v = expAvgSq[i] * beta2 + g * g * oneMinusBeta2;
                float denom = MathF.Sqrt(v) / sqrtCorrection2 + epsilon;
                (param[i], expAvg[i], expAvgSq[i]) = (p - stepSize * (m / denom), m, v);
            }
        });
    }

    /// <summary>Gradient accumulation in place: <paramref name="accumulator"/> += <paramref name="scale"/> · <paramref name="grad"/>.</summary>
    public static void Accumulate(float[] accumulator, float[] grad, float scale)
    {
        const int Block = 1 << 16;
        Parallel.For(0, (grad.Length + Block - 1) / Block, b =>
        {
            int start = b * Block, end = Math.Min(grad.Length, start + Block), i = start;
            var vScale = new Vector<float>(scale);
            for (; i <= end - Vector<float>.Count; i += Vector<float>.Count)
                (new Vector<float>(accumulator, i) + new Vector<float>(grad, i) * vScale).CopyTo(accumulator, i);
            for (; i < end; i++) accumulator[i] += grad[i] * scale;
        });
    }
}
