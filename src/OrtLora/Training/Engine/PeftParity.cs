using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Training.Engine;

/// <summary>What `ortlora verify` computes on a PEFT reference batch: the loss, every gradient, one AdamW step
/// (lr 1e-2, wd 0.01) and a 20-step trajectory (lr 5e-3, wd 0, batch step % 4), under the reference's key names,
/// and how each compares with the reference at the fixtures' tolerances.</summary>
public static class PeftParity
{
    public sealed record Row(string Quantity, int Tensors, double MaxDiff, double Tolerance, bool Passed, string Note = "");

    /// <summary>PyTorch's name for a parameter: PEFT's module holds its adapter under the name "default".</summary>
    public static string TorchName(string parameter) =>
        parameter.EndsWith(".lora_embedding_A") || parameter.EndsWith(".lora_embedding_B") ? parameter + ".default"
            : parameter.Replace(".lora_A.weight", ".lora_A.default.weight").Replace(".lora_B.weight", ".lora_B.default.weight");

    public static Batch ReadBatch(IReadOnlyDictionary<string, SafeTensor> reference, string prefix = "", int index = -1)
    {
        foreach (var key in new[] { "input_ids", "attention_mask", "labels" })
            if (!reference.ContainsKey(prefix + key)) throw new OrtLoraException($"reference has no '{prefix + key}'");
        var shape = reference[prefix + "input_ids"].Shape;
        long[] Take(string key)
        {
            var all = reference[prefix + key].AsInt64s();
            if (index < 0) return all;
            long n = shape[^2] * shape[^1];
            return all.AsSpan((int)(index * n), (int)n).ToArray();
        }
        return new Batch(Take("input_ids"), Take("attention_mask"), Take("labels"), (int)shape[^2], (int)shape[^1]);
    }

    /// <summary>Computes loss, grad.*, step1.* and (when the reference has trajectory batches) traj.loss.</summary>
    /// <param name="options">device and session settings (the AdamW settings are the reference's); default: CPU</param>
    public static Dictionary<string, SafeTensor> Compute(OnnxModel injected, IReadOnlyDictionary<string, SafeTensor> reference,
        int trajectorySteps = 20, TrainingSessionOptions? options = null)
    {
        options ??= new TrainingSessionOptions(new AdamWOptions());
        var results = new Dictionary<string, SafeTensor>();
        var batch = ReadBatch(reference);
        using (var session = new TrainingSession(injected, options with { AdamW = new AdamWOptions(WeightDecay: 0.01) }))
        {
            var (loss, grads) = session.ComputeGradients(batch);
            results["loss"] = SafeTensor.FromFloats([1], [loss]);
            foreach (var (p, g) in grads) results["grad." + TorchName(p)] = SafeTensor.FromFloats(session.Graph.ParameterShapes[p], g);
            session.Step(batch, learningRate: 1e-2f);
            foreach (var (p, v) in session.GetParameters()) results["step1." + TorchName(p)] = SafeTensor.FromFloats(session.Graph.ParameterShapes[p], v);
        }
        if (!reference.TryGetValue("traj.input_ids", out var trajectory)) return results;
        int batches = (int)trajectory.Shape[0];
        using (var session = new TrainingSession(injected, options with { AdamW = new AdamWOptions(WeightDecay: 0) }))
        {
            var losses = new float[trajectorySteps];
            for (int step = 0; step < trajectorySteps; step++)
                losses[step] = session.Step(ReadBatch(reference, "traj.", step % batches), learningRate: 5e-3f);
            results["traj.loss"] = SafeTensor.FromFloats([trajectorySteps], losses);
        }
        return results;
    }

    /// <summary>Compares with the tolerances of the fixtures' README: loss 1e-4; each gradient 1e-4·max|ref| + 1e-7;
    /// the step 1e-5; the trajectory 1e-3 at every step. For the step, elements where Adam's first step is
    /// ill-conditioned (|g| near ε, where float32 rounding of the gradient at 2e-7·max|g| moves lr·g/(|g| + ε) by
    /// more than the tolerance) get that much more, and are counted in the note.</summary>
    public static List<Row> Compare(IReadOnlyDictionary<string, SafeTensor> ours, IReadOnlyDictionary<string, SafeTensor> reference)
    {
        var rows = new List<Row>();
        Row Scalarwise(string quantity, string key, double tolerance)
        {
            var diff = MaxDiff(ours[key].AsFloats(), reference[key].AsFloats());
            return new Row(quantity, 1, diff, tolerance, diff <= tolerance);
        }
        if (reference.ContainsKey("loss")) rows.Add(Scalarwise("loss", "loss", 1e-4));

        var gradKeys = ours.Keys.Where(k => k.StartsWith("grad.")).ToList();
        double worstGrad = 0, worstGradRatio = 0, gradTolerance = 0;
        foreach (var key in gradKeys)
        {
            var expected = Require(reference, key).AsFloats();
            double tolerance = 1e-4 * expected.Max(Math.Abs) + 1e-7, diff = MaxDiff(ours[key].AsFloats(), expected);
            if (diff / tolerance >= worstGradRatio) (worstGradRatio, worstGrad, gradTolerance) = (diff / tolerance, diff, tolerance);
        }
        if (gradKeys.Count > 0)
            rows.Add(new Row("gradients", gradKeys.Count, worstGrad, gradTolerance, worstGradRatio <= 1, "worst tensor vs its tolerance"));

        var stepKeys = ours.Keys.Where(k => k.StartsWith("step1.")).ToList();
        double worstStep = 0; int illConditioned = 0; bool stepPassed = true;
        foreach (var key in stepKeys)
        {
            var got = ours[key].AsFloats();
            var expected = Require(reference, key).AsFloats();
            var grad = Require(reference, "grad." + key["step1.".Length..]).AsFloats();
            double noiseScale = 2e-7 * grad.Max(Math.Abs);
            for (int i = 0; i < got.Length; i++)
            {
                double diff = Math.Abs(got[i] - expected[i]);
                worstStep = Math.Max(worstStep, diff);
                if (diff <= 1e-5) continue;
                double allowance = 1e-2 * 1e-8 * noiseScale / Math.Pow(Math.Abs(grad[i]) + 1e-8, 2);
                if (diff <= 1e-5 + allowance) illConditioned++;
                else stepPassed = false;
            }
        }
        if (stepKeys.Count > 0)
            rows.Add(new Row("AdamW step", stepKeys.Count, worstStep, 1e-5, stepPassed,
                illConditioned == 0 ? "" : $"{illConditioned} element(s) with |grad|≈eps within float32 noise"));

        if (ours.ContainsKey("traj.loss") && reference.ContainsKey("traj.loss"))
        {
            var row = Scalarwise("20-step trajectory", "traj.loss", 1e-3);
            rows.Add(row with { Tensors = ours["traj.loss"].AsFloats().Length, Note = "loss at every step" });
        }
        return rows;
    }

    static SafeTensor Require(IReadOnlyDictionary<string, SafeTensor> reference, string key) =>
        reference.TryGetValue(key, out var t) ? t
            : throw new OrtLoraException($"reference has no '{key}': is it the reference for this model and adapter?");

    static double MaxDiff(float[] a, float[] b)
    {
        if (a.Length != b.Length) throw new OrtLoraException($"shape mismatch with the reference ({a.Length} vs {b.Length} values)");
        double m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }
}
