using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>A product by a scalar constant whose readers are matrix products takes the scalar into them, after the
/// backward is built. In LoRA's backward the output gradient of <c>(x·Aᵀ)·Bᵀ · scaling</c> is <c>g · scaling</c>, a
/// full [batch, sequence, out] pass in float32, read by B's gradient (a Gemm over rows, through a Reshape) and by the
/// gradient that flows on to A (a MatMul): the Gemm takes the scaling as its alpha, and the MatMul's [batch, sequence, r]
/// result is scaled instead of its input (ONNX Runtime fuses that Mul into the product at level all). One node and one
/// pass over the largest LoRA values fewer per adapted layer (210 of a SmolLM2 step's nodes).
/// <para>Only where at least one reader is a Gemm and at most one a MatMul: a Mul read by two MatMuls (attention's
/// scale) would become two.</para></summary>
public static class ScaleIntoMatMul
{
    /// <summary>Rewrites the graph in place; returns how many Muls went.</summary>
    public static int Apply(GraphEditor g)
    {
        int removed = 0;
        foreach (var mul in g.Graph.Node.Where(n => n.OpType == "Mul" && n.Domain is "" or "ai.onnx").ToList())
        {
            if (Scalar(g, mul) is not var (scaled, scale)) continue;
            var product = mul.Output[0];
            if (g.IsGraphOutput(product)) continue;
            var readers = g.Consumers(product);
            var gemms = new List<NodeProto>();
            var reshapes = new List<NodeProto>();
            var matMuls = new List<NodeProto>();
            bool ok = readers.Count > 0;
            foreach (var r in readers)
            {
                if (r.OpType == "MatMul" && r.Domain is "" or "ai.onnx") matMuls.Add(r);
                else if (r.OpType == "Gemm" && ReadsAsFactor(r, product)) gemms.Add(r);
                else if (r.OpType == "Reshape" && r.Input[0] == product && !g.IsGraphOutput(r.Output[0])
                         && g.Consumers(r.Output[0]) is { Count: > 0 } after && after.All(a => a.OpType == "Gemm" && ReadsAsFactor(a, r.Output[0])))
                {
                    reshapes.Add(r);
                    gemms.AddRange(after);
                }
                else ok = false;
            }
            if (!ok || gemms.Count == 0 || matMuls.Count > 1) continue;
            // A Gemm of the product by itself (through two Reshapes) would need the scale squared: left alone.
            var factors = reshapes.Select(r => r.Output[0]).Append(product).ToHashSet();
            if (gemms.Any(gemm => factors.Contains(gemm.Input[0]) && factors.Contains(gemm.Input[1]))) continue;

            foreach (var gemm in gemms.Distinct())
            {
                SetAlpha(gemm, Alpha(gemm) * scale);
                for (int i = 0; i < 2; i++) if (gemm.Input[i] == product) gemm.Input[i] = scaled; // read directly, not through a Reshape
            }
            foreach (var reshape in reshapes) reshape.Input[0] = scaled;
            foreach (var matMul in matMuls)
            {
                for (int i = 0; i < matMul.Input.Count; i++) if (matMul.Input[i] == product) matMul.Input[i] = scaled;
                var result = matMul.Output[0];
                var unscaled = g.Unique(result + "/unscaled");
                matMul.Output[0] = unscaled;
                g.InsertNode(g.Graph.Node.IndexOf(matMul) + 1, new NodeProto
                {
                    OpType = "Mul", Name = g.Unique(mul.Name + "/after_matmul"), Input = { unscaled, mul.Input[mul.Input[0] == scaled ? 1 : 0] }, Output = { result },
                });
            }
            g.RemoveNode(mul);
            removed++;
        }
        return removed;
    }

    /// <summary>The Mul's other input and the value of its scalar float32 constant, when it has one.</summary>
    static (string Scaled, float Scale)? Scalar(GraphEditor g, NodeProto mul)
    {
        if (mul.Input.Count != 2) return null;
        for (int i = 0; i < 2; i++)
            if (g.Constant(mul.Input[i]) is { DataType: (int)DT.Float } t && Tensors.ElementCount(t.Dims) == 1 && g.Constant(mul.Input[1 - i]) is null)
                return (mul.Input[1 - i], Tensors.BytesToFloats(Tensors.InlineBytes(t), t.DataType)[0]);
        return null;
    }

    /// <summary>Gemm computes alpha·A·B + beta·C: a factor of A or B (not C) can go into alpha.</summary>
    static bool ReadsAsFactor(NodeProto gemm, string value) =>
        gemm.Input.Count >= 2 && (gemm.Input[0] == value || gemm.Input[1] == value) && (gemm.Input.Count < 3 || gemm.Input[2] != value);

    static float Alpha(NodeProto gemm) => gemm.Attribute.FirstOrDefault(a => a.Name == "alpha")?.F ?? 1f;

    static void SetAlpha(NodeProto gemm, float alpha)
    {
        var attribute = gemm.Attribute.FirstOrDefault(a => a.Name == "alpha");
        if (attribute is null) gemm.Attribute.Add(attribute = new AttributeProto { Name = "alpha", Type = AttributeProto.Types.AttributeType.Float });
        attribute.F = alpha;
    }
}
