using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Parameters whose shapes differ in at most one dim, <see cref="Axis"/>: concatenated along it they make one
/// tensor, with no reshape in or out (LoRA's A matrices [r, in] side by side, its B matrices [out, r] stacked). The
/// optimizer and gradient accumulation update a bundle with a dozen nodes, or two, instead of as many per parameter:
/// on a GPU, where each node costs a launch, a few hundred LoRA parameters made thousands.</summary>
public sealed record ParameterBundle(IReadOnlyList<string> Members, int Axis, long[] Extents)
{
    /// <summary>A parameter this large (a modules_to_save embedding or LM head) stays alone: joining it would copy it
    /// and its gradient each step to save one launch.</summary>
    public const long AloneFrom = 1 << 20;

    /// <summary>Greedy: the (axis, other dims) pattern most parameters share becomes a bundle, then the next among those
    /// left, in the parameters' order. Scalars and parameters of <see cref="AloneFrom"/> elements or more stay alone.</summary>
    public static List<ParameterBundle> Form(IEnumerable<string> parameters, IReadOnlyDictionary<string, long[]> shapes)
    {
        var bundles = new List<ParameterBundle>();
        var left = parameters.ToList();
        foreach (var large in left.Where(p => shapes[p].Aggregate(1L, (a, b) => a * b) >= AloneFrom).ToList())
        {
            bundles.Add(new ParameterBundle([large], 0, [shapes[large] is [] ? 1 : shapes[large][0]]));
            left.Remove(large);
        }
        while (left.Count > 0)
        {
            var best = left.SelectMany(p => Patterns(shapes[p]).Select(key => (key, p)))
                .GroupBy(x => x.key).OrderByDescending(grp => grp.Count()).ThenBy(grp => grp.Key.Axis).FirstOrDefault();
            var members = best is null ? [left[0]] : best.Select(x => x.p).ToList();
            int axis = best?.Key.Axis ?? 0;
            bundles.Add(new ParameterBundle(members, axis, members.Select(p => shapes[p] is [] ? 1 : shapes[p][axis]).ToArray()));
            left.RemoveAll(members.Contains);
        }
        return bundles;
    }

    static IEnumerable<(int Axis, string Others)> Patterns(long[] shape) =>
        Enumerable.Range(0, shape.Length).Select(a => (a, string.Join(",", shape.Select((d, i) => i == a ? "*" : d.ToString()))));

    /// <summary>The members' values (<paramref name="value"/> of each member) as one tensor.</summary>
    public string Join(GraphEditor g, Func<string, string> value, string scope) => Members.Count == 1 ? value(Members[0])
        : g.Add("Concat", Members.Select(value), name: scope + "/Concat", attributes: ("axis", (long)Axis));

    /// <summary>A joined tensor split back into one value per member, named <paramref name="name"/>(member) when given.</summary>
    public string[] Unjoin(GraphEditor g, string joined, string scope, Func<string, string>? name = null)
    {
        if (Members.Count == 1)
            return [name is null ? joined : g.Add("Identity", [joined], name: scope + "/Identity", outputs: [name(Members[0])])];
        var outputs = Members.Select(m => name?.Invoke(m) ?? g.Unique(scope + "/Split_out")).ToArray();
        g.Add("Split", [joined, GraphConstants.Int64s(g, scope + "/sizes", Extents)], name: scope + "/Split", outputs: outputs,
            attributes: ("axis", (long)Axis));
        return outputs;
    }
}
