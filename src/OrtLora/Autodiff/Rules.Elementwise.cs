namespace OrtLora.Autodiff;

/// <summary>Elementwise ops. Broadcast inputs get their gradient summed back by <see cref="GradContext.Unbroadcast"/>.</summary>
public static partial class GradientRules
{
    static void AddElementwise(Dictionary<string, GradientRule> t)
    {
        t["Add"] = c => [Bcast(c, 0, c.GO(0)!), Bcast(c, 1, c.GO(0)!)];
        t["Sub"] = c => [Bcast(c, 0, c.GO(0)!), c.Needs(1) ? Bcast(c, 1, c.Neg(c.GO(0)!)) : null];
        t["Mul"] = c => [
            c.Needs(0) ? Bcast(c, 0, c.Mul(c.GO(0)!, c.I(1))) : null,
            c.Needs(1) ? Bcast(c, 1, c.Mul(c.GO(0)!, c.I(0))) : null];
        // d(a/b)/db = -a/b² = -out/b
        t["Div"] = c => [
            c.Needs(0) ? Bcast(c, 0, c.Div(c.GO(0)!, c.I(1))) : null,
            c.Needs(1) ? Bcast(c, 1, c.Neg(c.Div(c.Mul(c.GO(0)!, c.O(0)), c.I(1)))) : null];
        t["Sum"] = c => Enumerable.Range(0, c.InputCount).Select(i => c.Needs(i) ? Bcast(c, i, c.GO(0)!) : null).ToArray();
        t["Pow"] = Pow;
        t["Neg"] = c => [c.Neg(c.GO(0)!)];
        t["Identity"] = c => [c.GO(0)];
        t["Dropout"] = Dropout;
        t["Cast"] = c => [c.Types.IsFloat(c.I(0)) ? c.CastLike(c.GO(0)!, c.I(0)) : null];
        t["Sqrt"] = c => [c.Div(c.Mul(c.GO(0)!, c.Scalar(0.5, c.O(0))), c.O(0))];
        t["Reciprocal"] = c => [c.Neg(c.Mul(c.GO(0)!, c.Mul(c.O(0), c.O(0))))];
        t["Exp"] = c => [c.Mul(c.GO(0)!, c.O(0))];
        t["Log"] = c => [c.Div(c.GO(0)!, c.I(0))];
        t["Sigmoid"] = c => [c.Mul(c.GO(0)!, c.Mul(c.O(0), c.Sub(c.Scalar(1, c.O(0)), c.O(0))))];
        t["Tanh"] = c => [c.Mul(c.GO(0)!, c.Sub(c.Scalar(1, c.O(0)), c.Mul(c.O(0), c.O(0))))];
        t["Sin"] = c => [c.Mul(c.GO(0)!, c.Op("Cos", [c.I(0)]))];
        t["Cos"] = c => [c.Neg(c.Mul(c.GO(0)!, c.Op("Sin", [c.I(0)])))];
        t["Abs"] = c => [c.Mul(c.GO(0)!, c.Op("Sign", [c.I(0)]))];
        t["Relu"] = c => [c.Where(c.Op("Greater", [c.I(0), c.Scalar(0, c.I(0))]), c.GO(0)!, c.Scalar(0, c.I(0)))];
        // d erf(x)/dx = 2/sqrt(pi) · exp(-x²)
        t["Erf"] = c => [c.Mul(c.GO(0)!, c.Mul(c.Scalar(2 / Math.Sqrt(Math.PI), c.I(0)),
            c.Op("Exp", [c.Neg(c.Mul(c.I(0), c.I(0)))])))];
        t["Gelu"] = Gelu;
        t["Where"] = c => [null,
            c.Needs(1) ? Bcast(c, 1, c.Where(c.I(0), c.GO(0)!, c.Scalar(0, c.O(0)))) : null,
            c.Needs(2) ? Bcast(c, 2, c.Where(c.I(0), c.Scalar(0, c.O(0)), c.GO(0)!)) : null];
        t["Max"] = MinMax;
        t["Min"] = MinMax;
        t["Clip"] = c =>
        {
            var pass = c.Op("Equal", [c.I(0), c.O(0)]); // inside [min, max]: the output is the input
            return [c.Where(pass, c.GO(0)!, c.Scalar(0, c.O(0)))];
        };
    }

    /// <summary>Gradient for input i of an elementwise op, summed over broadcast axes.</summary>
    static string? Bcast(GradContext c, int i, string grad) => c.Needs(i) ? c.Unbroadcast(grad, c.O(0), c.I(i)) : null;

    // d a^b/da = b·a^(b-1);  d a^b/db = a^b·ln a. The common a² (RMSNorm, LayerNorm variance) becomes 2·a: the same
    // numbers without a Pow kernel, which costs as much as a MatMul on the CPU.
    static string?[] Pow(GradContext c)
    {
        string? ga = null, gb = null;
        if (c.Needs(0) && c.ConstFloats(c.I(1)) is [2f])
            ga = Bcast(c, 0, c.Mul(c.GO(0)!, c.Mul(c.I(0), c.Scalar(2, c.I(0)))));
        else if (c.Needs(0))
        {
            var b = c.Types.ElemType(c.I(1)) == c.Types.ElemType(c.I(0)) ? c.I(1) : c.CastLike(c.I(1), c.I(0));
            var power = c.Mul(b, c.Op("Pow", [c.I(0), c.Sub(b, c.Scalar(1, c.I(0)))]));
            ga = Bcast(c, 0, c.Mul(c.GO(0)!, power));
        }
        if (c.Needs(1)) gb = Bcast(c, 1, c.Mul(c.GO(0)!, c.Mul(c.O(0), c.Op("Log", [c.I(0)]))));
        return [ga, gb];
    }

    static string?[] Gelu(GradContext c)
    {
        var x = c.I(0);
        string derivative;
        if (c.Attr("approximate", "none") == "tanh")
        {
            // y = ½x(1+t), t = tanh(k(x + 0.044715x³)), k = √(2/π):  y' = ½(1+t) + ½x(1−t²)·k(1 + 3·0.044715x²)
            var x2 = c.Mul(x, x);
            var inner = c.Mul(c.Scalar(Math.Sqrt(2 / Math.PI), x), c.Add(x, c.Mul(c.Scalar(0.044715, x), c.Mul(x2, x))));
            var t = c.Op("Tanh", [inner]);
            var half = c.Scalar(0.5, x);
            var dInner = c.Mul(c.Scalar(Math.Sqrt(2 / Math.PI), x), c.Add(c.Scalar(1, x), c.Mul(c.Scalar(3 * 0.044715, x), x2)));
            var left = c.Mul(half, c.Add(c.Scalar(1, x), t));
            var right = c.Mul(c.Mul(half, x), c.Mul(c.Sub(c.Scalar(1, x), c.Mul(t, t)), dInner));
            derivative = c.Add(left, right);
        }
        else
        {
            // y = x·Φ(x):  y' = Φ(x) + x·φ(x),  Φ(x) = ½(1 + erf(x/√2)),  φ(x) = exp(−x²/2)/√(2π)
            var cdf = c.Mul(c.Scalar(0.5, x), c.Add(c.Scalar(1, x), c.Op("Erf", [c.Mul(x, c.Scalar(1 / Math.Sqrt(2), x))])));
            var pdf = c.Mul(c.Scalar(1 / Math.Sqrt(2 * Math.PI), x), c.Op("Exp", [c.Mul(c.Mul(x, x), c.Scalar(-0.5, x))]));
            derivative = c.Add(cdf, c.Mul(x, pdf));
        }
        return [c.Mul(c.GO(0)!, derivative)];
    }

    /// <summary>Dropout: identity in inference mode; in training mode the gradient takes the same mask and the
    /// same 1/(1 − ratio) scale. The mask output is added to the node if it had none.</summary>
    static string?[] Dropout(GradContext c)
    {
        if (!c.HasInput(2) || c.ConstBool(c.I(2)) == false) return [c.GO(0)];
        if (!c.HasInput(1)) throw c.Unsupported("training-mode Dropout without a ratio input");
        if (c.Node.Output.Count < 2 || c.Node.Output[1] == "") c.AddMaskOutput();
        var kept = c.Mul(c.GO(0)!, c.CastLike(c.O(1), c.O(0)));
        var keepProbability = c.Sub(c.Scalar(1, c.O(0)), c.CastLike(c.I(1), c.O(0)));
        return [c.Div(kept, keepProbability)];
    }

    /// <summary>Max/Min: the gradient goes to the inputs equal to the output, split evenly on ties (as torch.maximum).</summary>
    static string?[] MinMax(GradContext c)
    {
        var masks = Enumerable.Range(0, c.InputCount)
            .Select(i => c.CastLike(c.Op("Equal", [c.I(i), c.O(0)]), c.O(0))).ToArray();
        var count = masks.Length == 1 ? masks[0] : c.Op("Sum", masks);
        var share = c.Div(c.GO(0)!, count);
        return Enumerable.Range(0, c.InputCount).Select(i => c.Needs(i) ? Bcast(c, i, c.Mul(share, masks[i])) : null).ToArray();
    }
}
