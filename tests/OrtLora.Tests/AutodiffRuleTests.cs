using static OrtLora.Tests.GradCheck;

namespace OrtLora.Tests;

/// <summary>Every gradient rule against central finite differences (float64 where ORT has double kernels).</summary>
public class AutodiffRuleTests
{
    static string Op(TinyGraph g, string op, string[] x, params (string, object)[] attrs) => g.Node(op, x, attrs);

    [TestCase("Add")] [TestCase("Sub")] [TestCase("Mul")] [TestCase("Div")] [TestCase("Max")] [TestCase("Min")]
    public void BinaryWithBroadcasting(string op)
    {
        Check((g, x) => Op(g, op, x), [X("a", 2, 3, 4), Positive("b", 3, 1)]);
        Check((g, x) => Op(g, op, x), [Positive("a", 1, 4), X("b", 2, 3, 1)]);
        Check((g, x) => Op(g, op, x), [X("a", 2, 3), X("b")]);
    }

    [TestCase("Neg")] [TestCase("Sigmoid")] [TestCase("Tanh")] [TestCase("Exp")] [TestCase("Sin")] [TestCase("Cos")]
    [TestCase("Erf")] [TestCase("Relu")] [TestCase("Abs")] [TestCase("Identity")]
    public void Unary(string op) => Check((g, x) => Op(g, op, x), [X("x", 2, 5)]);

    [TestCase("Sqrt")] [TestCase("Reciprocal")] [TestCase("Log")]
    public void UnaryOnPositive(string op) => Check((g, x) => Op(g, op, x), [Positive("x", 2, 5)]);

    [TestCase("none")] [TestCase("tanh")]
    public void Gelu(string approximate) => Check((g, x) => Op(g, "Gelu", x, ("approximate", approximate)), [X("x", 3, 4)], opset: 20);

    [Test]
    public void Pow()
    {
        Check((g, x) => Op(g, "Pow", [x[0], g.Floats([], 2.0)]), [X("x", 2, 3)]);
        Check((g, x) => Op(g, "Pow", [x[0], g.Floats([], 3.0)]), [X("x", 2, 3)]);
        Check((g, x) => Op(g, "Pow", x), [Positive("x", 2, 3), X("e", 3)]);
    }

    [Test]
    public void SquareNeedsNoPowInItsGradient()
    {
        // RMSNorm's x² appears once per norm; its gradient is 2·x, so the backward adds no Pow node. (The norms as
        // exported: by default they become SimplifiedLayerNormalization, RmsNormAsOp.)
        using var model = OrtLora.Graphs.LlamaGraph.Build(OrtLora.Graphs.LlamaShape.Tiny, seed: 1);
        OrtLora.Lora.LoraInjector.Inject(model, new OrtLora.Lora.LoraConfig { R = 2, LoraAlpha = 4, TargetModules = ["all-linear"] });
        OrtLora.Training.Engine.TrainingGraph graph;
        using (Shared.EnvironmentVariable("ORTLORA_RMSNORM_OP", "0")) graph = OrtLora.Training.Engine.TrainingGraph.Build(model);
        using var _ = graph;
        int Pows(global::Onnx.GraphProto g) => g.Node.Count(n => n.OpType == "Pow");
        Assert.That(Pows(graph.Eval.Graph), Is.GreaterThan(0));
        Assert.That(Pows(graph.Gradients.Graph), Is.EqualTo(Pows(graph.Eval.Graph)));
    }

    [Test]
    public void WhereSumCastClip()
    {
        Check((g, x) => Op(g, "Where", [Op(g, "Greater", [x[0], x[1]]), x[0], x[1]]), [X("a", 2, 3), X("b", 3)]);
        Check((g, x) => Op(g, "Sum", x), [X("a", 2, 3), X("b", 3), X("c", 2, 1)]);
        Check((g, x) => Op(g, "Cast", [Op(g, "Cast", x, ("to", 11L))], ("to", 1L)), [X("x", 4)], floatOnly: true);
        Check((g, x) => Op(g, "Clip", [x[0], g.Floats([], -0.3), g.Floats([], 0.4)]), [X("x", 3, 4)]);
    }

    [TestCase(new long[] { 3, 4 }, new long[] { 4, 5 })]
    [TestCase(new long[] { 2, 3, 4 }, new long[] { 4, 5 })]
    [TestCase(new long[] { 3, 4 }, new long[] { 2, 4, 5 })]
    [TestCase(new long[] { 2, 1, 3, 4 }, new long[] { 3, 4, 2 })]
    [TestCase(new long[] { 4 }, new long[] { 4, 5 })]
    [TestCase(new long[] { 2, 3, 4 }, new long[] { 4 })]
    [TestCase(new long[] { 4 }, new long[] { 2, 4, 3 })]
    [TestCase(new long[] { 4 }, new long[] { 4 })]
    public void MatMul(long[] a, long[] b) => Check((g, x) => Op(g, "MatMul", x), [X("a", a), X("b", b)]);

    /// <summary>The weight gradient of x[batch, rows, K]·W[K, N] is Σ xᵀ·dY in either of its forms: batched products
    /// and a ReduceSum when K or N is at most 256 (LoRA's r), one Gemm over rows when both are larger (an LM head),
    /// too large to check by finite differences: checked against the sum on the host.</summary>
    [TestCase(4, 5)]
    [TestCase(257, 258)]
    public void WeightGradientOfABatchedMatMulInBothForms(int k, int n)
    {
        var outputs = RunOnce((g, x) => Op(g, "MatMul", [x[1], x[0]]), [X("w", k, n), X("x", 2, 3, k)], (int)global::Onnx.TensorProto.Types.DataType.Double, out var grad);
        var w = X("w", k, n).Values!; var x = X("x", 2, 3, k).Values!;
        var expected = new double[k * n];
        for (int row = 0; row < 6; row++)
            for (int j = 0; j < n; j++)
            {
                double y = 0;
                for (int i = 0; i < k; i++) y += x[row * k + i] * w[i * n + j];
                double dy = 2 * y + 0.3; // L = Σ y·(y + 0.3)
                for (int i = 0; i < k; i++) expected[i * n + j] += x[row * k + i] * dy;
            }
        Assert.That(outputs[grad].Doubles, Is.EqualTo(expected).Within(1e-9));
    }

    [TestCase(0, 0, 1f, 1f)] [TestCase(1, 0, 0.5f, 2f)] [TestCase(0, 1, 2f, 0.5f)] [TestCase(1, 1, 1.5f, 1f)]
    public void Gemm(int transA, int transB, float alpha, float beta)
    {
        long[] a = transA == 1 ? [4, 3] : [3, 4], b = transB == 1 ? [5, 4] : [4, 5];
        Check((g, x) => Op(g, "Gemm", x, ("transA", (long)transA), ("transB", (long)transB), ("alpha", alpha), ("beta", beta)),
            [X("a", a), X("b", b), X("c", 5)]);
        Check((g, x) => Op(g, "Gemm", x, ("transA", (long)transA), ("transB", (long)transB)), [X("a", a), X("b", b)]);
    }

    [Test]
    public void SoftmaxAndLogSoftmax()
    {
        Check((g, x) => Op(g, "Softmax", x), [X("x", 2, 3, 4)]);
        Check((g, x) => Op(g, "Softmax", x, ("axis", 1L)), [X("x", 2, 3, 4)]);
        Check((g, x) => Op(g, "LogSoftmax", x, ("axis", -1L)), [X("x", 2, 5)]);
        Check((g, x) => Op(g, "Softmax", x, ("axis", 1L)), [X("x", 2, 3, 4)], opset: 11); // coerced to 2-D
    }

    [Test]
    public void Reductions()
    {
        Check((g, x) => Op(g, "ReduceMean", [x[0], g.Ints(-1)]), [X("x", 2, 3, 4)]);
        Check((g, x) => Op(g, "ReduceMean", [x[0], g.Ints(0, 2)], ("keepdims", 0L)), [X("x", 2, 3, 4)]);
        Check((g, x) => Op(g, "ReduceMean", x, ("axes", new long[] { 1 }), ("keepdims", 0L)), [X("x", 2, 3, 4)], opset: 17);
        Check((g, x) => Op(g, "ReduceSum", [x[0], g.Ints(1)], ("keepdims", 0L)), [X("x", 2, 3, 4)], opset: 13);
        Check((g, x) => Op(g, "ReduceSum", x, ("keepdims", 0L)), [X("x", 2, 3)], opset: 13);
    }

    [Test]
    public void LayerNormalization()
    {
        Check((g, x) => Op(g, "LayerNormalization", x, ("epsilon", 1e-5f)), [X("x", 2, 3, 4), X("s", 4), X("b", 4)], opset: 17);
        Check((g, x) => Op(g, "LayerNormalization", x, ("axis", 1L)), [X("x", 2, 3, 4), X("s", 3, 4)], opset: 17);
    }

    [Test]
    public void RmsNormalization() =>
        Check((g, x) => Op(g, "RMSNormalization", x, ("epsilon", 1e-6f)), [X("x", 2, 3, 4), X("s", 4)], opset: 23);

    [Test]
    public void ReshapesAndTranspose()
    {
        Check((g, x) => Op(g, "Reshape", [x[0], g.Ints(3, -1)]), [X("x", 2, 3, 2)]);
        Check((g, x) => Op(g, "Flatten", x, ("axis", 2L)), [X("x", 2, 3, 2)]);
        Check((g, x) => Op(g, "Unsqueeze", [x[0], g.Ints(0, -1)]), [X("x", 2, 3)]);
        Check((g, x) => Op(g, "Squeeze", [x[0], g.Ints(1)]), [X("x", 2, 1, 3)]);
        Check((g, x) => Op(g, "Unsqueeze", x, ("axes", new long[] { 1 })), [X("x", 2, 3)], opset: 11);
        Check((g, x) => Op(g, "Transpose", x, ("perm", new long[] { 2, 0, 1 })), [X("x", 2, 3, 4)]);
        Check((g, x) => Op(g, "Transpose", x), [X("x", 2, 3)]);
        Check((g, x) => Op(g, "Expand", [x[0], g.Ints(2, 3, 4)]), [X("x", 3, 1)]);
        Check((g, x) => Op(g, "Tile", [x[0], g.Ints(2, 3)]), [X("x", 2, 3)]);
    }

    [Test]
    public void ConcatAndSplit()
    {
        Check((g, x) => Op(g, "Concat", x, ("axis", -1L)), [X("a", 2, 3), X("b", 2, 1), X("c", 2, 2)]);
        Check((g, x) => Op(g, "Concat", x, ("axis", 0L)), [X("a", 2, 3), X("b", 1, 3)]);
        Check((g, x) => g.NodeN("Split", [x[0], g.Ints(1, 3)], 2, ("axis", 1L))[1], [X("x", 2, 4)]);
        Check((g, x) => { var p = g.NodeN("Split", x, 2, ("axis", 0L), ("num_outputs", 2L)); return Op(g, "Mul", p); }, [X("x", 4, 3)]);
    }

    [Test]
    public void Slice()
    {
        Check((g, x) => Op(g, "Slice", [x[0], g.Ints(1), g.Ints(long.MaxValue), g.Ints(1)]), [X("x", 2, 5)]);
        Check((g, x) => Op(g, "Slice", [x[0], g.Ints(0, -3), g.Ints(1, -1)]), [X("x", 2, 5)]);
        Check((g, x) => Op(g, "Slice", [x[0], g.Ints(-100), g.Ints(100), g.Ints(-1)]), [X("x", 2, 5)]);
        Check((g, x) => Op(g, "Slice", [x[0], g.Ints(0, 4), g.Ints(5, 0), g.Ints(1, 2), g.Ints(2, -2)]), [X("x", 2, 5, 6)]);
    }

    [Test]
    public void Gathers()
    {
        Check((g, x) => Op(g, "Gather", x), [X("x", 4, 3), Idx("i", [2, 3], 0, 2, 2, 3, -1, 0)]);
        Check((g, x) => Op(g, "Gather", x, ("axis", 1L)), [X("x", 2, 4, 3), Idx("i", [2], 3, 3)]);
        Check((g, x) => Op(g, "GatherElements", x, ("axis", 1L)), [X("x", 2, 4), Idx("i", [2, 3], 0, 0, 3, 1, 2, 1)]);
        Check((g, x) => Op(g, "GatherND", x), [X("x", 3, 4), Idx("i", [3, 2], 0, 1, 2, 3, 0, 1)]);
    }
}

/// <summary>What the probe runs cannot settle (a dim that is 1 in one probe and not in the other, a reduced dim whose
/// extent differs) is computed by shape computations in the graph, so the gradient graph is right for any runtime shape.</summary>
public class AutodiffDynamicBroadcastTests
{
    /// <summary>A float64 graph whose inputs are [rows, 3], rows dynamic.</summary>
    static (global::Onnx.ModelProto, OrtLora.Onnx.GraphEditor) Model(params string[] inputs)
    {
        var model = new global::Onnx.ModelProto { IrVersion = 10, Graph = new global::Onnx.GraphProto { Name = "dyn" } };
        model.OpsetImport.Add(new global::Onnx.OperatorSetIdProto { Domain = "", Version = 18 });
        foreach (var name in inputs)
        {
            var tensor = new global::Onnx.TypeProto.Types.Tensor { ElemType = 11, Shape = new global::Onnx.TensorShapeProto() };
            tensor.Shape.Dim.Add(new global::Onnx.TensorShapeProto.Types.Dimension { DimParam = name + "0" });
            tensor.Shape.Dim.Add(new global::Onnx.TensorShapeProto.Types.Dimension { DimValue = 3 });
            model.Graph.Input.Add(new global::Onnx.ValueInfoProto { Name = name, Type = new global::Onnx.TypeProto { TensorType = tensor } });
        }
        return (model, new OrtLora.Onnx.GraphEditor(model.Graph));
    }

    static OrtLora.Onnx.HostTensor Feed(int rows, double start) =>
        OrtLora.Onnx.HostTensor.Of(Enumerable.Range(0, rows * 3).Select(i => start + 0.1 * i).ToArray(), rows, 3);

    [Test]
    public void BroadcastAxesAreComputedInTheGraphWhenProbesDisagree()
    {
        var (model, g) = Model("x", "b");
        var y = g.Add("Mul", ["x", "b"]);
        var loss = g.Add("ReduceSum", [g.Add("Mul", [y, y])], attributes: ("keepdims", 0L));
        // probe A: x [1,3], b [1,3] (no broadcast seen); probe B: x [2,3], b [1,3] (broadcast on axis 0)
        var types = OrtLora.Autodiff.ValueTable.Probe(model,
            new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(1, 0), ["b"] = Feed(1, 1) },
            new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(2, 0), ["b"] = Feed(1, 1) });
        var grads = OrtLora.Autodiff.GradientBuilder.Build(g, loss, ["x", "b"], types, 18);
        model.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = grads["b"] });
        model.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = grads["x"] });
        foreach (var (rows, bRows) in new[] { (5, 1), (4, 4), (1, 1) })
        {
            var x = Feed(rows, 0.5); var b = Feed(bRows, -0.7);
            var outputs = OrtLora.Onnx.OrtRun.Run(new OrtLora.Onnx.OnnxModel(model), new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = x, ["b"] = b });
            var gb = outputs[grads["b"]];
            Assert.That(gb.Shape, Is.EqualTo(new long[] { bRows, 3 }), $"x [{rows},3], b [{bRows},3]");
            for (int j = 0; j < gb.Doubles.Length; j++)
            {
                // d/db Σ (x·b)² = Σ over broadcast rows of 2·x²·b
                double expected = Enumerable.Range(0, rows).Where(r => bRows == 1 || r == j / 3)
                    .Sum(r => 2 * x.Doubles[r * 3 + j % 3] * x.Doubles[r * 3 + j % 3] * b.Doubles[j]);
                Assert.That(gb.Doubles[j], Is.EqualTo(expected).Within(1e-9));
            }
        }
    }

    /// <summary>ReduceMean's gradient divides by the count averaged: a constant for the fixed axis (no Size node), computed
    /// in the graph for the axis whose extent the probes saw change.</summary>
    [Test]
    public void AveragedCountIsConstantOnlyForAxesTheProbesAgreeOn()
    {
        var (model, g) = Model("x");
        var overRows = g.Add("ReduceMean", ["x", g.AddInitializer(OrtLora.Onnx.Tensors.FromInt64("axis0", [1], [0L]))]);
        var overColumns = g.Add("ReduceMean", ["x", g.AddInitializer(OrtLora.Onnx.Tensors.FromInt64("axis1", [1], [1L]))]);
        var loss = g.Add("Add", [g.Add("ReduceSum", [g.Add("Mul", [overRows, overRows])], attributes: ("keepdims", 0L)),
            g.Add("ReduceSum", [g.Add("Mul", [overColumns, overColumns])], attributes: ("keepdims", 0L))]);
        var types = OrtLora.Autodiff.ValueTable.Probe(model,
            new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(2, 0) }, new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(3, 0) });
        int before = model.Graph.Node.Count;
        var grads = OrtLora.Autodiff.GradientBuilder.Build(g, loss, ["x"], types, 18);
        Assert.That(model.Graph.Node.Skip(before).Count(n => n.OpType == "Size"), Is.EqualTo(2), "|input| and |output| of the mean over rows only");
        model.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = grads["x"] });
        foreach (var rows in new[] { 1, 4, 6 })
        {
            var x = Feed(rows, 0.5);
            var gx = OrtLora.Onnx.OrtRun.Run(new OrtLora.Onnx.OnnxModel(model), new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = x })[grads["x"]];
            for (int j = 0; j < gx.Doubles.Length; j++)
            {
                // d/dx Σ_c mean_r(x)² + Σ_r mean_c(x)² = 2·mean over its column / rows + 2·mean over its row / 3
                int r = j / 3, col = j % 3;
                double columnMean = Enumerable.Range(0, rows).Average(k => x.Doubles[k * 3 + col]);
                double rowMean = Enumerable.Range(0, 3).Average(k => x.Doubles[r * 3 + k]);
                Assert.That(gx.Doubles[j], Is.EqualTo(2 * columnMean / rows + 2 * rowMean / 3).Within(1e-9), $"rows {rows}, x[{r},{col}]");
            }
        }
    }

    /// <summary>A reshape's gradient reshapes back to a constant shape when at most one dim varies: 0 copies a dim the
    /// gradient has at the same index, -1 infers one it has elsewhere. No Shape node, right for any runtime shape.</summary>
    [Test]
    public void ReshapeBackNeedsNoShapeNodeForOneVaryingDim()
    {
        var (model, g) = Model("x");
        var column = g.Add("Reshape", ["x", g.Add("Concat", [g.Add("Shape", ["x"]), g.AddInitializer(OrtLora.Onnx.Tensors.FromInt64("one", [1], [1L]))],
            attributes: ("axis", 0L))]); // [rows, 3, 1]: the varying dim at the same index
        var front = g.Add("Unsqueeze", ["x", g.AddInitializer(OrtLora.Onnx.Tensors.FromInt64("zero", [1], [0L]))]); // [1, rows, 3]: moved
        var loss = g.Add("Add", [g.Add("ReduceSum", [g.Add("Mul", [column, column])], attributes: ("keepdims", 0L)),
            g.Add("ReduceSum", [g.Add("Mul", [g.Add("Mul", [front, front]), front])], attributes: ("keepdims", 0L))]);
        var types = OrtLora.Autodiff.ValueTable.Probe(model,
            new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(2, 0) }, new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = Feed(3, 0) });
        int before = model.Graph.Node.Count;
        var grads = OrtLora.Autodiff.GradientBuilder.Build(g, loss, ["x"], types, 18);
        Assert.That(model.Graph.Node.Skip(before).Where(n => n.OpType == "Shape").Select(n => n.Input[0]), Has.No.Member("x"),
            "both gradients reshape back to x's shape without reading it");
        model.Graph.Output.Add(new global::Onnx.ValueInfoProto { Name = grads["x"] });
        foreach (var rows in new[] { 1, 4, 6 })
        {
            var x = Feed(rows, -0.3);
            var gx = OrtLora.Onnx.OrtRun.Run(new OrtLora.Onnx.OnnxModel(model), new Dictionary<string, OrtLora.Onnx.HostTensor> { ["x"] = x })[grads["x"]];
            Assert.That(gx.Shape, Is.EqualTo(new long[] { rows, 3 }));
            for (int j = 0; j < gx.Doubles.Length; j++)
                Assert.That(gx.Doubles[j], Is.EqualTo(2 * x.Doubles[j] + 3 * x.Doubles[j] * x.Doubles[j]).Within(1e-9), $"rows {rows}, x[{j}]");
        }
    }
}
