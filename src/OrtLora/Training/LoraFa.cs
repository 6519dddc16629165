using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Training;

/// <summary>PEFT's LoRA-FA (peft.optimizers.create_lorafa_optimizer, `--optim lorafa`): every lora_A is frozen where
/// injection drew it, and each B's gradient is projected to the one closest to the full weight's gradient,
/// g·(A·Aᵀ + δI)⁻¹/s² with s = lora_alpha/r (√r with rsLoRA) and δ = 1e-8, before LoraFAOptimizer's AdamW
/// (<see cref="LoraFaProjection"/>). As create_lorafa_optimizer builds it: betas (0.9, 0.999), eps 1e-6, one learning
/// rate and weight decay for every trained parameter. A is constant, so each projection is computed once, here.</summary>
public static class LoraFa
{
    public const string Optim = "lorafa";
    const double Delta = 1e-8;

    /// <summary>What LoRA-FA cannot train as PEFT's optimizer pairs A with B.</summary>
    public static void Require(LoraModel lora, TrainingArguments args, string source)
    {
        if (lora.Config.UseDora || lora.Adapters.Any(a => a.Magnitude is not null))
            throw new OrtLoraException($"{source}: --optim lorafa pairs each lora_A with its lora_B; DoRA's magnitudes would break the pairs (PEFT's LoraFAOptimizer takes plain LoRA)");
        if (lora.Adapters.FirstOrDefault(a => a.LoraBias is not null || a.Embedding) is { } odd)
            throw new OrtLoraException($"{source}: --optim lorafa pairs each lora_A with its lora_B; '{odd.Module}' has {(odd.Embedding ? "an embedding adapter" : "a lora_bias")}, which PEFT's LoraFAOptimizer does not pair");
        if (args.LoraplusLrRatio != 1)
            throw new OrtLoraException("--optim lorafa gives every parameter one learning rate (create_lorafa_optimizer); not with --loraplus-lr-ratio");
    }

    /// <summary>The trained parameters: the model's trainable ones but A.</summary>
    public static IReadOnlyList<string> Parameters(OnnxModel model) =>
        [.. model.Graph.Initializer.Select(t => t.Name).Where(name => Engine.TrainingGraph.IsTrainable(name) && !ModuleNames.IsLoraA(name))];

    /// <summary>LoraFAOptimizer's hyper-parameters, and each B's projection from its A's values in the model.</summary>
    public static AdamWOptions Options(OnnxModel model, LoraModel lora, double weightDecay)
    {
        double scale = lora.Config.Scale;
        var projections = new Dictionary<string, float[]>();
        foreach (var adapter in lora.Adapters)
        {
            var a = model.Graph.Initializer.First(t => t.Name == adapter.LoraA);
            projections[adapter.LoraB] = Projection(model.ReadFloats(a), (int)a.Dims[0], (int)a.Dims[1], scale);
        }
        return new AdamWOptions(0.9, 0.999, 1e-6, weightDecay, LoraFa: new LoraFaProjection(p => projections.GetValueOrDefault(p)));
    }

    /// <summary>(A·Aᵀ + δI)⁻¹/s² for A [r, n], row-major [r, r]; Gauss-Jordan in float64 (the matrix is symmetric
    /// positive definite, so torch's pinv is its inverse).</summary>
    public static float[] Projection(float[] a, int r, int n, double scale)
    {
        var m = new double[r, 2 * r];
        for (int i = 0; i < r; i++)
        {
            for (int j = 0; j < r; j++)
            {
                double sum = 0;
                for (int k = 0; k < n; k++) sum += (double)a[i * n + k] * a[j * n + k];
                m[i, j] = sum + (i == j ? Delta : 0);
            }
            m[i, r + i] = 1;
        }
        for (int col = 0; col < r; col++)
        {
            int pivot = col;
            for (int row = col + 1; row < r; row++) if (Math.Abs(m[row, col]) > Math.Abs(m[pivot, col])) pivot = row;
            if (m[pivot, col] == 0) throw new OrtLoraException("--optim lorafa: A·Aᵀ is singular (an A of zeros?); LoRA-FA needs A drawn at random");
            for (int j = 0; j < 2 * r; j++) (m[col, j], m[pivot, j]) = (m[pivot, j], m[col, j]);
            double inv = 1 / m[col, col];
            for (int j = 0; j < 2 * r; j++) m[col, j] *= inv;
            for (int row = 0; row < r; row++)
            {
                if (row == col || m[row, col] == 0) continue;
                double f = m[row, col];
                for (int j = 0; j < 2 * r; j++) m[row, j] -= f * m[col, j];
            }
        }
        var result = new float[r * r];
        for (int i = 0; i < r; i++) for (int j = 0; j < r; j++) result[i * r + j] = (float)(m[i, r + j] / (scale * scale));
        return result;
    }
}
