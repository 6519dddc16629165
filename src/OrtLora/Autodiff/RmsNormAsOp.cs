using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>LLaMA's RMSNorm as the exporters write it, w·(x·1/√(mean(x²)+ε)) in seven primitive nodes (Pow or x·x,
/// ReduceMean over the last axis, Add ε, Sqrt, Reciprocal or 1/·, Mul, Mul by the weight; TorchScript adds a no-op Cast),
/// becomes one SimplifiedLayerNormalization before the backward is built: ONNX Runtime's own op (ONNX domain; CPU and
/// CUDA kernels), the one its RMSNorm fusion makes for inference, which the stored backward had kept it from making.
/// The node also outputs 1/σ, which the gradient rule (<see cref="GradientRules"/>' Normalization) reads instead of
/// recomputing it. Each norm then runs 8 nodes a step instead of 20 (two a layer); same values up to float rounding.</summary>
public static class RmsNormAsOp
{
    /// <summary>A matched norm: its nodes, input, weight, output and ε.</summary>
    sealed record Norm(NodeProto[] Nodes, string X, string Weight, string Y, float Epsilon);

    /// <summary>Rewrites the graph in place; probed <paramref name="types"/> give the shapes and learn the new 1/σ
    /// values. Returns how many norms it replaced.</summary>
    public static int Apply(GraphEditor g, ValueTable types)
    {
        // the producer of a value that one node reads and the graph does not output: a part of the norm alone
        NodeProto? Single(string value, string op) =>
            g.Producer(value) is { } p && p.OpType == op && p.Domain is "" or "ai.onnx" && g.Consumers(value).Count == 1 && !g.IsGraphOutput(value) ? p : null;

        var norms = g.Graph.Node.Where(n => n.OpType == "Mul" && n.Domain is "" or "ai.onnx").Select(Match).OfType<Norm>().ToList();

        // scaled = Mul(weight, [no-op Cast] Mul(x, 1/σ)), either operand order at each Mul
        Norm? Match(NodeProto scaled)
        {
            for (int side = 0; side < 2; side++)
            {
                string weight = scaled.Input[side], normalized = scaled.Input[1 - side];
                var chain = new List<NodeProto> { scaled };
                if (Single(normalized, "Cast") is { } cast && types.Find(cast.Input[0])?.ElemType == types.Find(normalized)?.ElemType)
                {
                    chain.Add(cast);
                    normalized = cast.Input[0];
                }
                if (Single(normalized, "Mul") is not { } product) continue;
                chain.Add(product);
                for (int xSide = 0; xSide < 2; xSide++)
                {
                    string x = product.Input[xSide];
                    if (Rstd(product.Input[1 - xSide], x) is not var (rstdNodes, epsilon)) continue;
                    // float32 only: the op normalizes in float32 whatever its input, and the gradient rule would
                    // recompute 1/σ in x's type (a float16 export's norm stays as exported, forward and backward)
                    if (types.Find(x) is not { } xInfo || types.Find(weight) is not { } wInfo || xInfo.ElemType != (int)DT.Float || xInfo.ElemType != wInfo.ElemType
                        || wInfo.Rank != 1 || xInfo.Rank < 1 || wInfo.ShapeA[0] != xInfo.ShapeA[^1] || xInfo.ShapeA[^1] != xInfo.ShapeB[^1]) continue;
                    return new Norm([.. chain, .. rstdNodes], x, weight, scaled.Output[0], epsilon);
                }
            }
            return null;
        }

        (List<NodeProto>, float)? Rstd(string rstd, string x)
        {
            string? root = Single(rstd, "Reciprocal")?.Input[0]
                ?? (Single(rstd, "Div") is { } div && g.ConstantFloats(div.Input[0]) is [1f] ? div.Input[1] : null);
            if (root is null || Single(root, "Sqrt") is not { } sqrt || Single(sqrt.Input[0], "Add") is not { } add) return null;
            int epsAt = g.ConstantFloats(add.Input[1]) is [_] ? 1 : g.ConstantFloats(add.Input[0]) is [_] ? 0 : -1;
            if (epsAt < 0 || Single(add.Input[1 - epsAt], "ReduceMean") is not { } mean || Onnx.Attrs.Int(mean, "keepdims", 1) != 1) return null;
            int rank = types.Find(x)?.Rank ?? 0;
            long[]? axes = Onnx.Attrs.Ints(mean, "axes") ?? (mean.Input.Count > 1 ? g.ConstantInts(mean.Input[1]) : null);
            if (axes is not [var axis] || (axis < 0 ? axis + rank : axis) != rank - 1) return null;
            var square = Single(mean.Input[0], "Pow") is { } pow && pow.Input[0] == x && g.ConstantFloats(pow.Input[1]) is [2f] ? pow
                : Single(mean.Input[0], "Mul") is { } mul && mul.Input[0] == x && mul.Input[1] == x ? mul : null;
            if (square is null) return null;
            var nodes = new List<NodeProto> { g.Producer(rstd)!, sqrt, add, mean, square };
            return (nodes, g.ConstantFloats(add.Input[epsAt])![0]);
        }

        foreach (var (nodes, x, weight, y, epsilon) in norms)
        {
            int at = nodes.Max(n => g.Graph.Node.IndexOf(n));
            var name = nodes[0].Name == "" ? "rms_norm" : nodes[0].Name;
            var invStd = g.Unique(name + "/inv_std_var");
            var x0 = types[x];
            types.Set(invStd, new ValueTable.Info((int)DT.Float, [.. x0.ShapeA[..^1], 1], [.. x0.ShapeB[..^1], 1]));
            var norm = new NodeProto { OpType = "SimplifiedLayerNormalization", Name = g.Unique(name + "/as_op"), Input = { x, weight }, Output = { y, invStd } };
            norm.Attribute.Add(Onnx.Attrs.Make("axis", -1L));
            norm.Attribute.Add(Onnx.Attrs.Make("epsilon", epsilon));
            foreach (var n in nodes) g.RemoveNode(n);
            g.InsertNode(at - nodes.Length + 1, norm);
        }
        return norms.Count;
    }
}
