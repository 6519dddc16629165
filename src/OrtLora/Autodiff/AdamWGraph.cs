using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>AdamW hyper-parameters fixed when the graph is built; learning rate, step and max_grad_norm are graph
/// inputs so schedules need no rebuild. <see cref="LrMultiplier"/> scales a parameter's learning rate (LoRA+: B × ratio);
/// <see cref="Decays"/> says which parameters weight decay applies to (default: all; the Trainer leaves biases out).</summary>
/// <see cref="LoraFa"/>: PEFT's LoraFAOptimizer (create_lorafa_optimizer) instead of torch's AdamW.</summary>
public sealed record AdamWOptions(double Beta1 = 0.9, double Beta2 = 0.999, double Epsilon = 1e-8, double WeightDecay = 0.0,
    Func<string, double>? LrMultiplier = null, Func<string, bool>? Decays = null, LoraFaProjection? LoraFa = null)
{
    /// <summary>The weight decay of <paramref name="parameter"/>: <see cref="WeightDecay"/>, or 0 where it does not decay.</summary>
    public double WeightDecayOf(string parameter) => Decays?.Invoke(parameter) ?? true ? WeightDecay : 0;
}

/// <summary>PEFT's LoRA-FA optimizer (peft.optimizers.create_lorafa_optimizer): A is frozen, and each B's gradient,
/// clipped, is projected as g·(A·Aᵀ + δI)⁻¹/s² before the update (<see cref="Of"/>: B's name → that [r, r] matrix,
/// row-major; null for a parameter that is no B). Every parameter is then updated as LoraFAOptimizer writes AdamW
/// (transformers' old AdamW): p ← p − lr·√(1 − β2ᵗ)/(1 − β1ᵗ) · m/(√v + ε), then p ← p − lr·wd·p.</summary>
public sealed record LoraFaProjection(Func<string, float[]?> Of);

/// <summary>One parameter's slot in the optimizer: its value, gradient and moment values (names in the graph).</summary>
public sealed record AdamWSlot(string Param, string Grad, string ExpAvg, string ExpAvgSq);

/// <summary>Global-norm gradient clipping and the AdamW update as graph nodes, with PyTorch's semantics
/// (torch.nn.utils.clip_grad_norm_, torch.optim.AdamW single-tensor path):
/// p ← p·(1 − lr·wd); m ← m + (1 − β1)(g − m); v ← β2·v + (1 − β2)·g²;
/// p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + ε). Bias corrections are computed in float64, as PyTorch does.</summary>
public static class AdamWGraph
{
    /// <param name="ClipCoefficient">what the gradients are multiplied by before the update (1 when not clipped)</param>
    public sealed record Result(string GradNorm, string ClipCoefficient, Dictionary<string, (string Param, string ExpAvg, string ExpAvgSq)> Updated);

    /// <param name="lr">float scalar input: the learning rate</param>
    /// <param name="step">float scalar input: the step number t, from 1</param>
    /// <param name="maxGradNorm">float scalar input: clip to this global norm; 0 or less disables clipping</param>
    /// <param name="shapes">each parameter's shape: parameters sharing a learning rate and all dims but one are updated
    /// as one tensor (<see cref="ParameterBundle"/>), then split back</param>
    /// <param name="gradDivisor">float scalar the gradients are divided by first (a loss scale), a bundle at a time</param>
    /// <param name="normOnly">gradients (already divided) that count in the global norm but are updated elsewhere
    /// (<see cref="HostAdamW"/>): their sum of squares is taken without a squared copy</param>
    public static Result Append(GraphEditor g, IReadOnlyList<AdamWSlot> slots, IReadOnlyDictionary<string, long[]> shapes,
        string lr, string step, string maxGradNorm, AdamWOptions o, string? gradDivisor = null, IReadOnlyList<string>? normOnly = null)
    {
        const int F = (int)DT.Float, D = (int)DT.Double;
        var scalars = new Dictionary<(double, int), string>();
        string Scalar(double v, int type) => scalars.TryGetValue((v, type), out var n) ? n
            : scalars[(v, type)] = GraphConstants.Scalar(g, "adamw/const", v, type);
        string Op(string op, params string[] inputs) => g.Add(op, inputs, name: "adamw/" + op);
        string Cast(string x, int to) => g.Add("Cast", [x], name: "adamw/Cast", attributes: ("to", (long)to));

        var slotOf = slots.ToDictionary(s => s.Param);
        // a LoRA-FA projection is a parameter's own: such parameters stay bundles of one
        float[]? Projection(string p) => o.LoraFa?.Of(p);
        var bundles = slots.GroupBy(s => (Multiplier: o.LrMultiplier?.Invoke(s.Param) ?? 1.0, WeightDecay: o.WeightDecayOf(s.Param), Own: Projection(s.Param) is null ? "" : s.Param))
            .SelectMany(grp => ParameterBundle.Form(grp.Select(s => s.Param), shapes).Select(b => (grp.Key.Multiplier, grp.Key.WeightDecay, Bundle: b))).ToList();
        var bundleGrads = bundles.Select(b => b.Bundle.Join(g, p => slotOf[p].Grad, "adamw"))
            .Select(joined => gradDivisor is null ? joined : Op("Div", joined, gradDivisor)).ToList();

        // clip_grad_norm_: coef = min(1, max_norm / (‖g‖ + 1e-6)), applied when max_norm > 0
        var squares = bundleGrads.Select(bg => g.Add("ReduceSum", [Op("Mul", bg, bg)], name: "adamw/ReduceSum", attributes: ("keepdims", 0L)))
            .Concat((normOnly ?? []).Select(grad => g.Add("ReduceSumSquare", [grad], name: "adamw/ReduceSumSquare", attributes: ("keepdims", 0L)))).ToArray();
        var norm = Op("Sqrt", squares.Length == 1 ? squares[0] : Op("Sum", squares));
        var coef = Op("Min", Scalar(1, F), Op("Div", maxGradNorm, Op("Add", norm, Scalar(1e-6, F))));
        coef = Op("Where", Op("Greater", maxGradNorm, Scalar(0, F)), coef, Scalar(1, F));

        // bias corrections in float64: 1 − βᵗ
        var t = Cast(step, D);
        var correction1 = Op("Sub", Scalar(1, D), Op("Pow", Scalar(o.Beta1, D), t));
        var sqrtCorrection2Double = Op("Sqrt", Op("Sub", Scalar(1, D), Op("Pow", Scalar(o.Beta2, D), t)));
        var sqrtCorrection2 = Cast(sqrtCorrection2Double, F);
        var lr64 = Cast(lr, D);
        var perGroup = new Dictionary<(double, double), (string Decay, string StepSize)>();
        (string Decay, string StepSize) Rates(double multiplier, double weightDecay)
        {
            if (perGroup.TryGetValue((multiplier, weightDecay), out var known)) return known;
            var lrP = multiplier == 1 ? lr64 : Op("Mul", lr64, Scalar(multiplier, D));
            var decay = Cast(Op("Sub", Scalar(1, D), Op("Mul", lrP, Scalar(weightDecay, D))), F);
            // LoRA-FA's AdamW folds √(1 − β2ᵗ) into the step size instead of dividing v by it
            var stepSize = o.LoraFa is null ? Op("Div", lrP, correction1) : Op("Div", Op("Mul", lrP, sqrtCorrection2Double), correction1);
            return perGroup[(multiplier, weightDecay)] = (decay, Cast(stepSize, F));
        }

        var updated = new Dictionary<string, (string, string, string)>();
        for (int k = 0; k < bundles.Count; k++)
        {
            var (multiplier, weightDecay, bundle) = bundles[k];
            var (decay, stepSize) = Rates(multiplier, weightDecay);
            var param = bundle.Join(g, name => name, "adamw");
            var expAvg = bundle.Join(g, name => slotOf[name].ExpAvg, "adamw");
            var expAvgSq = bundle.Join(g, name => slotOf[name].ExpAvgSq, "adamw");
            var grad = Op("Mul", bundleGrads[k], coef);
            if (bundle.Members.Count == 1 && Projection(bundle.Members[0]) is { } projection)
            {
                long r = shapes[bundle.Members[0]][^1];
                grad = Op("MatMul", grad, GraphConstants.Add(g, "adamw/lorafa", n => Tensors.FromFloats(n, [r, r], projection)));
            }
            var decayed = weightDecay == 0 || o.LoraFa is not null ? param : Op("Mul", param, decay);
            var m = Op("Add", expAvg, Op("Mul", Op("Sub", grad, expAvg), Scalar(1 - o.Beta1, F)));
            var v = Op("Add", Op("Mul", expAvgSq, Scalar(o.Beta2, F)), Op("Mul", Op("Mul", grad, grad), Scalar(1 - o.Beta2, F)));
            var denom = o.LoraFa is null ? Op("Add", Op("Div", Op("Sqrt", v), sqrtCorrection2), Scalar(o.Epsilon, F)) : Op("Add", Op("Sqrt", v), Scalar(o.Epsilon, F));
            var p = Op("Sub", decayed, Op("Mul", stepSize, Op("Div", m, denom)));
            if (o.LoraFa is not null && weightDecay != 0) p = Op("Mul", p, decay); // LoraFAOptimizer decays after the update

            var (ps, ms, vs) = (bundle.Unjoin(g, p, "adamw"), bundle.Unjoin(g, m, "adamw"), bundle.Unjoin(g, v, "adamw"));
            for (int i = 0; i < bundle.Members.Count; i++) updated[bundle.Members[i]] = (ps[i], ms[i], vs[i]);
        }
        return new Result(norm, coef, updated);
    }
}
