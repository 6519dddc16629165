using Microsoft.ML.OnnxRuntime;
using Onnx;
using OrtLora.Deploy;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>ORT's runtime adapter format: files written by ortlora are read by ONNX Runtime's own loader and
/// applied through RunOptions.AddActiveLoraAdapter; results are compared with hand-computed products.</summary>
public class OnnxAdapterTests
{
    const int In = 8, Out = 6, Rank = 2, Batch = 3;
    const float Scale = 2f;
    const string AName = "base_model.model.proj.lora_A.weight", BName = "base_model.model.proj.lora_B.weight";

    static float[] Random(int n, int seed)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
    }

    /// <summary>y = x·W + scale·(x·Aᵀ)·Bᵀ with W [In,Out], A [Rank,In], B [Out,Rank] as initializers (B zero).</summary>
    static OnnxModel TinyLoraModel(float[] w)
    {
        var graph = new GraphProto { Name = "tiny_lora" };
        var editor = new GraphEditor(graph);
        graph.Input.Add(FloatInput("x", Batch, In));
        editor.AddInitializer(Tensors.FromFloats("W", [In, Out], w));
        editor.AddInitializer(Tensors.FromFloats(AName, [Rank, In], Random(Rank * In, 1)));
        editor.AddInitializer(Tensors.FromFloats(BName, [Out, Rank], new float[Out * Rank]));
        editor.AddInitializer(Tensors.Scalar("scale", Scale, (int)TensorProto.Types.DataType.Float));
        var xw = editor.Add("MatMul", ["x", "W"]);
        var xa = editor.Add("MatMul", ["x", editor.Add("Transpose", [AName], attributes: ("perm", new long[] { 1, 0 }))]);
        var xab = editor.Add("MatMul", [xa, editor.Add("Transpose", [BName], attributes: ("perm", new long[] { 1, 0 }))]);
        editor.Add("Add", [xw, editor.Add("Mul", [xab, "scale"])], outputs: ["y"]);
        graph.Output.Add(FloatInput("y", Batch, Out));
        var proto = new ModelProto { IrVersion = 8, Graph = graph, ProducerName = "ortlora-tests" };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = 18 });
        return new OnnxModel(proto);
    }

    static ValueInfoProto FloatInput(string name, params long[] dims)
    {
        var shape = new TensorShapeProto();
        foreach (var d in dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto { Name = name, Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = 1, Shape = shape } } };
    }

    /// <summary>The same formula in plain loops: the peer for ORT's results.</summary>
    static float[] Expected(float[] x, float[] w, float[] a, float[] b)
    {
        var y = new float[Batch * Out];
        for (int n = 0; n < Batch; n++)
        {
            var xa = new double[Rank];
            for (int r = 0; r < Rank; r++) for (int i = 0; i < In; i++) xa[r] += x[n * In + i] * a[r * In + i];
            for (int o = 0; o < Out; o++)
            {
                double s = 0;
                for (int i = 0; i < In; i++) s += x[n * In + i] * w[i * Out + o];
                for (int r = 0; r < Rank; r++) s += Scale * xa[r] * b[o * Rank + r];
                y[n * Out + o] = (float)s;
            }
        }
        return y;
    }

    static float[] RunWith(InferenceSession session, float[] x, OrtLoraAdapter? adapter)
    {
        using var runOptions = new RunOptions();
        if (adapter is not null) runOptions.AddActiveLoraAdapter(adapter);
        using var input = OrtValue.CreateTensorValueFromMemory(x, [Batch, In]);
        using var outputs = session.Run(runOptions, ["x"], [input], ["y"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }

    [Test]
    public void WrittenFileReadsBackExactly()
    {
        var path = Path.Combine(Shared.TempDir(), "a.onnx_adapter");
        var parameters = new Dictionary<string, (float[], long[])>
        {
            [AName] = (Random(Rank * In, 3), [Rank, In]),
            [BName] = (Random(Out * Rank, 4), [Out, Rank]),
            ["odd.lora_B.weight"] = (Random(3, 5), [3]), // 12 bytes: the next tensor must still be 8-aligned
        };
        OnnxAdapterFile.Write(path, parameters, adapterVersion: 7, modelVersion: 2);
        var bytes = File.ReadAllBytes(path);
        Assert.That(System.Text.Encoding.ASCII.GetString(bytes, 4, 4), Is.EqualTo("TORT"), "file identifier");
        var back = OnnxAdapterFile.Read(path);
        Assert.That(back.Keys, Is.EquivalentTo(parameters.Keys));
        foreach (var (name, (values, shape)) in parameters)
        {
            Assert.That(back[name].Values, Is.EqualTo(values), name);
            Assert.That(back[name].Shape, Is.EqualTo(shape), name);
        }
    }

    [Test]
    public void OrtAppliesTheAdapterAndFallsBackToDefaultsWithoutIt()
    {
        var w = Random(In * Out, 2);
        var x = Random(Batch * In, 9);
        using var model = TinyLoraModel(w);
        var defaultA = model.ReadFloats(model.Graph.Initializer.First(t => t.Name == AName));
        var names = LoraRuntimeForm.MakeOverridable(model);
        Assert.That(names, Is.EquivalentTo(new[] { AName, BName }));

        var (a1, b1) = (Random(Rank * In, 11), Random(Out * Rank, 12));
        var (a2, b2) = (Random(Rank * In, 21), Random(Out * Rank, 22));
        var dir = Shared.TempDir();
        OnnxAdapterFile.Write(Path.Combine(dir, "one.onnx_adapter"), new Dictionary<string, (float[], long[])> { [AName] = (a1, [Rank, In]), [BName] = (b1, [Out, Rank]) });
        OnnxAdapterFile.Write(Path.Combine(dir, "two.onnx_adapter"), new Dictionary<string, (float[], long[])> { [AName] = (a2, [Rank, In]), [BName] = (b2, [Out, Rank]) });

        using var session = new InferenceSession(model.ToBytes(), OrtRun.DefaultOptions());
        using var one = OrtLoraAdapter.Create(Path.Combine(dir, "one.onnx_adapter"), null);
        using var two = OrtLoraAdapter.Create(Path.Combine(dir, "two.onnx_adapter"), null);
        // Alternate adapters on one session, as a server would per request.
        for (int round = 0; round < 2; round++)
        {
            Assert.That(Shared.MaxAbsDiff(RunWith(session, x, one), Expected(x, w, a1, b1)), Is.LessThan(1e-5f), "adapter one");
            Assert.That(Shared.MaxAbsDiff(RunWith(session, x, two), Expected(x, w, a2, b2)), Is.LessThan(1e-5f), "adapter two");
            Assert.That(Shared.MaxAbsDiff(RunWith(session, x, null), Expected(x, w, defaultA, new float[Out * Rank])), Is.LessThan(1e-5f), "no adapter: B zero");
        }
    }

    [Test]
    public void ForeignFileGivesOneClearMessage()
    {
        var path = Path.Combine(Shared.TempDir(), "not.onnx_adapter");
        File.WriteAllBytes(path, new byte[64]);
        var e = Assert.Throws<OrtLoraException>(() => OnnxAdapterFile.Read(path))!;
        Assert.That(e.Message, Does.Contain(path).And.Contain("TORT"));
    }

    [Test]
    public void ModelWithoutLoraParametersIsRefused()
    {
        using var model = TinyLoraModel(Random(In * Out, 2));
        foreach (var t in model.Graph.Initializer.Where(t => LoraRuntimeForm.IsLoraParameter(t.Name))) t.Name += ".renamed";
        Assert.Throws<OrtLoraException>(() => LoraRuntimeForm.MakeOverridable(model));
    }
}
