namespace OrtLora.Autodiff;

/// <summary>The gradient table: op type → rule. Each op family lives in its own file (Rules.*.cs); a rule reads like
/// its formula, in the vocabulary of <see cref="GradContext"/>. Ops without an entry stop the build with an error
/// naming the op and node when they lie on a path from a parameter to the loss.</summary>
public static partial class GradientRules
{
    public static IReadOnlyDictionary<string, GradientRule> Table { get; } = Build();

    static Dictionary<string, GradientRule> Build()
    {
        var t = new Dictionary<string, GradientRule>();
        AddElementwise(t);
        AddMatMul(t);
        AddShape(t);
        AddNormalization(t);
        AddIndex(t);
        return t;
    }
}
