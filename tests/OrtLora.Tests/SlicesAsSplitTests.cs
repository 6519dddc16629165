using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Tests.Unseen;
using OrtLora.Training.Engine;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>Slices that cut a value into consecutive pieces become one Split before the backward
/// (<see cref="SlicesAsSplit"/>) with the same values; slices that do not partition their input stay. (rotate_half's
/// halves in the fixture exports, with PEFT's numbers: RmsNormAsOpTests checks both forward rewrites there.)</summary>
public class SlicesAsSplitTests
{
    /// <summary>x [batch, 12] cut at 4 and 9 (the last bound past the end, as `x[:, 9:]` exports); y [batch, 12] in
    /// two overlapping pieces; z [batch, 12] in two pieces with a gap; x also cut along the batch axis, whose size varies.</summary>
    static (Net Net, string[] Pieces) Toy()
    {
        var n = new Net(18);
        foreach (var input in new[] { "x", "y", "z" }) n.Input(input, (int)DT.Float, "batch", 12);
        string[] pieces = [n.Slice("x", 4, 9, 1), n.Slice("x", 0, 4, 1), n.Slice("x", -3, long.MaxValue, 1),
            n.Slice("y", 0, 6, 1), n.Slice("y", 5, 12, 1), n.Slice("z", 0, 5, 1), n.Slice("z", 6, 12, 1), n.Slice("x", 0, 1, 0)];
        for (int i = 0; i < pieces.Length; i++) n.Output(pieces[i], $"piece{i}");
        return (n, pieces);
    }

    static Dictionary<string, HostTensor> Feeds(int batch)
    {
        var rng = new Random(batch);
        return new[] { "x", "y", "z" }.ToDictionary(i => i, _ => HostTensor.Of(Enumerable.Range(0, batch * 12).Select(_ => rng.NextSingle()).ToArray(), batch, 12));
    }

    [Test]
    public void APartitionBecomesOneSplitWithTheSameValuesAndOtherSlicesStay()
    {
        var (net, _) = Toy();
        using var before = net.Model();
        var types = ValueTable.Probe(before.Proto, Feeds(2), Feeds(3));
        using var after = net.Model();
        var g = new GraphEditor(after.Graph);
        Assert.That(SlicesAsSplit.Apply(g, types, 18), Is.EqualTo(1));
        var split = after.Graph.Node.Single(n => n.OpType == "Split");
        Assert.That(split.Input[0], Is.EqualTo("x"));
        Assert.That(g.Initializer(split.Input[1]) is { } sizes ? Tensors.ReadInt64s(Tensors.InlineBytes(sizes), sizes.DataType) : null, Is.EqualTo(new long[] { 4, 5, 3 }));
        Assert.That(after.Graph.Node.Count(n => n.OpType == "Slice"), Is.EqualTo(5), "y's overlap, z's gap and x's batch slice stay");

        var outputs = Enumerable.Range(0, 8).Select(i => $"piece{i}").ToArray();
        var expected = OrtRun.Run(before, Feeds(4), outputs);
        var actual = OrtRun.Run(after, Feeds(4), outputs);
        foreach (var o in outputs) Assert.That(actual[o].Floats, Is.EqualTo(expected[o].Floats), o);
    }
}
