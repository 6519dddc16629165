using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>A tiny graph under construction for gradient checks: inputs of the checked element type, constants,
/// nodes. The element type is double where ORT's CPU EP has double kernels, else float.</summary>
public sealed class TinyGraph
{
    public GraphEditor Editor { get; }
    public int ElemType { get; }
    public TinyGraph(GraphEditor editor, int elemType) { Editor = editor; ElemType = elemType; }

    public string Node(string op, string[] inputs, params (string, object)[] attributes) =>
        Editor.Add(op, inputs, name: op, attributes: attributes);

    public string[] NodeN(string op, string[] inputs, int outputs, params (string, object)[] attributes)
    {
        var outs = Enumerable.Range(0, outputs).Select(i => Editor.Unique($"{op}_y{i}")).ToArray();
        Editor.Add(op, inputs, name: op, outputs: outs, attributes: attributes);
        return outs;
    }

    public string Floats(long[] shape, params double[] values)
    {
        var name = Editor.Unique("const");
        Editor.AddInitializer(ElemType == (int)DT.Double ? Tensors.FromDoubles(name, shape, values)
            : Tensors.FromFloats(name, shape, values.Select(v => (float)v).ToArray()));
        return name;
    }

    public string Ints(params long[] values)
    {
        var name = Editor.Unique("ints");
        Editor.AddInitializer(Tensors.FromInt64(name, [values.Length], values));
        return name;
    }
}

/// <summary>Checks the gradient builder against central finite differences of a scalar loss L = Σ y·(y + 0.3) over
/// the checked graph's output y.</summary>
public static class GradCheck
{
    public sealed record Input(string Name, long[] Shape, double[]? Values = null, long[]? Indices = null, bool Differentiable = true);

    public static Input X(string name, params long[] shape) => new(name, shape, Random(name, shape, 0));
    public static Input Positive(string name, params long[] shape) => new(name, shape, Random(name, shape, 0).Select(v => 0.5 + Math.Abs(v)).ToArray());
    public static Input Idx(string name, long[] shape, params long[] values) => new(name, shape, null, values, false);

    static double[] Random(string seed, long[] shape, int salt)
    {
        // string.GetHashCode differs per process: a stable hash keeps every run on the same values.
        int hash = seed.Aggregate(17, (h, c) => h * 31 + c);
        var rng = new Random(hash ^ (int)Tensors.ElementCount(shape) ^ salt);
        return Enumerable.Range(0, (int)Tensors.ElementCount(shape)).Select(_ => rng.NextDouble() * 2 - 1).ToArray();
    }

    /// <summary>Builds and checks; returns the element type used (double, or float where double kernels are missing).</summary>
    public static int Check(Func<TinyGraph, string[], string> build, Input[] inputs, int opset = 18, bool floatOnly = false)
    {
        if (floatOnly) { Run(build, inputs, opset, (int)DT.Float); return (int)DT.Float; }
        try { Run(build, inputs, opset, (int)DT.Double); return (int)DT.Double; }
        catch (OnnxRuntimeException e) when (e.Message.Contains("NOT_IMPLEMENTED") || e.Message.Contains("Could not find an implementation"))
        {
            Run(build, inputs, opset, (int)DT.Float);
            return (int)DT.Float;
        }
    }

    sealed record Built(ModelProto Forward, ModelProto WithGradients, string Output, string Loss,
        Dictionary<string, string> Grads, Dictionary<string, HostTensor> Feeds);

    static Built Build(Func<TinyGraph, string[], string> build, Input[] inputs, int opset, int elemType)
    {
        var model = new ModelProto { IrVersion = 10, Graph = new GraphProto { Name = "check" } };
        model.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = opset });
        foreach (var input in inputs)
            model.Graph.Input.Add(ValueInfo(input.Name, input.Indices is null ? elemType : (int)DT.Int64, input.Shape));
        var editor = new GraphEditor(model.Graph);
        var y = build(new TinyGraph(editor, elemType), inputs.Select(i => i.Name).ToArray());
        var shift = new TinyGraph(editor, elemType).Floats([], 0.3);
        var loss = editor.Add("ReduceSum", [editor.Add("Mul", [y, editor.Add("Add", [y, shift])])], name: "loss",
            attributes: ("keepdims", 0L));
        model.Graph.Output.Add(new ValueInfoProto { Name = loss });

        var feeds = inputs.ToDictionary(i => i.Name, i => Feed(i, i.Values, elemType));
        var wrt = inputs.Where(i => i.Differentiable).Select(i => i.Name).ToList();
        var gradModel = model.Clone();
        var gradEditor = new GraphEditor(gradModel.Graph);
        var types = ValueTable.Probe(model, feeds, feeds);
        var grads = GradientBuilder.Build(gradEditor, loss, wrt, types, opset);
        gradModel.Graph.Output.Add(new ValueInfoProto { Name = y });
        foreach (var g in grads.Values) gradModel.Graph.Output.Add(new ValueInfoProto { Name = g });
        return new Built(model, gradModel, y, loss, grads, feeds);
    }

    /// <summary>One run of the gradient graph: the output y and the gradients, for checks that cannot use finite
    /// differences (random ops). <paramref name="grad"/> names the first input's gradient.</summary>
    public static Dictionary<string, HostTensor> RunOnce(Func<TinyGraph, string[], string> build, Input[] inputs, int elemType,
        out string grad, int opset = 18)
    {
        var built = Build(build, inputs, opset, elemType);
        grad = built.Grads[inputs[0].Name];
        return OrtRun.Run(new OnnxModel(built.WithGradients), built.Feeds, null, GraphOptimizationLevel.ORT_DISABLE_ALL);
    }

    static void Run(Func<TinyGraph, string[], string> build, Input[] inputs, int opset, int elemType)
    {
        var (model, gradModel, _, loss, grads, feeds) = Build(build, inputs, opset, elemType);
        var analytic = OrtRun.Run(new OnnxModel(gradModel), feeds, grads.Values, GraphOptimizationLevel.ORT_DISABLE_ALL);

        using var options = OrtRun.DefaultOptions(GraphOptimizationLevel.ORT_DISABLE_ALL);
        using var session = new InferenceSession(model.ToByteArray(), options);
        bool isDouble = elemType == (int)DT.Double;
        double h = isDouble ? 1e-6 : 1e-2, absTol = isDouble ? 1e-6 : 3e-3, relTol = isDouble ? 1e-5 : 2e-2;
        foreach (var input in inputs.Where(i => i.Differentiable))
        {
            var got = ToDoubles(analytic[grads[input.Name]]);
            Assert.That(got.Length, Is.EqualTo(input.Values!.Length), $"gradient of {input.Name} has the input's size");
            for (int k = 0; k < input.Values.Length; k++)
            {
                double LossAt(double delta)
                {
                    var values = (double[])input.Values.Clone();
                    values[k] += delta;
                    var perturbed = new Dictionary<string, HostTensor>(feeds) { [input.Name] = Feed(input, values, elemType) };
                    return ToDoubles(OrtRun.Run(session, perturbed, [loss])[loss])[0];
                }
                double numeric = (LossAt(h) - LossAt(-h)) / (2 * h);
                Assert.That(got[k], Is.EqualTo(numeric).Within(absTol + relTol * Math.Abs(numeric)),
                    $"d loss / d {input.Name}[{k}] ({(DT)elemType})");
            }
        }
    }

    static HostTensor Feed(Input i, double[]? values, int elemType) =>
        i.Indices is not null ? HostTensor.Of(i.Indices, i.Shape)
        : elemType == (int)DT.Double ? HostTensor.Of(values!, i.Shape) : HostTensor.Of(values!.Select(v => (float)v).ToArray(), i.Shape);

    static double[] ToDoubles(HostTensor t) => t.Data switch
    {
        double[] d => d,
        float[] f => f.Select(v => (double)v).ToArray(),
        _ => throw new InvalidOperationException("not a float tensor"),
    };

    static ValueInfoProto ValueInfo(string name, int elemType, long[] shape)
    {
        var tensor = new TypeProto.Types.Tensor { ElemType = elemType, Shape = new TensorShapeProto() };
        foreach (var d in shape) tensor.Shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = tensor } };
    }
}
