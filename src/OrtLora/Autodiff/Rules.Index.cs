using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>Gathers: their gradient scatters the output gradient back into zeros, adding where indices repeat. ScatterND
/// (trainable tokens' rows written into a table): its gradient gathers.</summary>
public static partial class GradientRules
{
    static void AddIndex(Dictionary<string, GradientRule> t)
    {
        t["Gather"] = Gather;
        t["ScatterND"] = ScatterND;
        t["GatherElements"] = c =>
        {
            RequireScatterAdd(c);
            return [c.Op("ScatterElements", [c.ZerosLike(c.I(0)), c.I(1), c.GO(0)!], ("axis", c.Attr("axis", 0L)), ("reduction", "add"))];
        };
        t["GatherND"] = c =>
        {
            RequireScatterAdd(c);
            if (c.Attr("batch_dims", 0L) != 0) throw c.Unsupported("batch_dims > 0 is not supported");
            return [c.Op("ScatterND", [c.ZerosLike(c.I(0)), c.I(1), c.GO(0)!], ("reduction", "add"))];
        };
    }

    // Y = data with the indexed slices replaced by updates (reduction none; added with 'add'): the replaced slices get
    // no gradient through data, each update the gradient at its slice.
    static string?[] ScatterND(GradContext c)
    {
        var reduction = c.Attr("reduction", "none");
        if (reduction is not ("none" or "add")) throw c.Unsupported($"reduction '{reduction}' is not supported");
        string indices = c.I(1), gy = c.GO(0)!;
        string? gData = !c.Needs(0) ? null : reduction == "add" ? gy : c.Op("ScatterND", [gy, indices, c.ZerosLike(c.I(2))]);
        string? gUpdates = c.Needs(2) ? c.Op("GatherND", [gy, indices]) : null;
        return [gData, null, gUpdates];
    }

    static void RequireScatterAdd(GradContext c)
    {
        if (c.Opset < 16) throw c.Unsupported("needs opset 16 or later (scatter with reduction='add')");
    }

    // Gather along axis a: move a (in the data) and the index dims (in the gradient) to the front, ScatterND-add, move back.
    static string?[] Gather(GradContext c)
    {
        RequireScatterAdd(c);
        string data = c.I(0), indices = c.I(1), gy = c.GO(0)!;
        int rank = c.Rank(data), indexRank = c.Rank(indices);
        long axis = GradContext.Normalize([c.Attr("axis", 0L)], rank)[0];
        var zerosShape = c.ShapeOf(data);
        long[]? dataPerm = null;
        if (axis != 0)
        {
            dataPerm = [axis, .. Enumerable.Range(0, rank).Where(i => i != axis).Select(i => (long)i)];
            var gradPerm = Enumerable.Range((int)axis, indexRank).Concat(Enumerable.Range(0, (int)axis))
                .Concat(Enumerable.Range((int)axis + indexRank, rank - 1 - (int)axis)).Select(i => (long)i).ToArray();
            gy = c.Transpose(gy, gradPerm);
            zerosShape = c.Op("Gather", [zerosShape, c.Ints(dataPerm)], ("axis", 0L));
        }
        // Rows gathered many times (a token embedding) add up many small half values: the scatter adds in float32, as
        // ORT's CPU ScatterND has no float16 'add' anyway, and the sum is cast back once.
        int type = c.Types.ElemType(data);
        bool half = type is Float16 or Bfloat16;
        if (half) gy = c.Cast(gy, Float);
        var zeros = c.Op("ConstantOfShape", [zerosShape], ("value", Tensors.FromFloats("zero", [1], [0f], half ? Float : type)));
        var index64 = c.Types.ElemType(indices) == Int64 ? indices : c.Cast(indices, Int64);
        // Gather allows negative indices; ScatterND is given them made non-negative
        var dim = c.Op("Gather", [c.ShapeOf(data), c.ScalarOfType(axis, Int64)], ("axis", 0L));
        index64 = c.Where(c.Op("Less", [index64, c.ScalarOfType(0, Int64)]), c.Add(index64, dim), index64);
        var scattered = c.Op("ScatterND", [zeros, c.Unsqueeze(index64, [-1]), gy], ("reduction", "add"));
        if (half) scattered = c.Cast(scattered, type);
        if (dataPerm is null) return [scattered, null];
        var inverse = new long[rank];
        for (int i = 0; i < rank; i++) inverse[dataPerm[i]] = i;
        return [c.Transpose(scattered, inverse), null];
    }
}
