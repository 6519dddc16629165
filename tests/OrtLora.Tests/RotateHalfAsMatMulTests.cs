using OrtLora.Autodiff;
using OrtLora.Onnx;
using OrtLora.Tests.Unseen;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>rotate_half as SlicesAsSplit leaves it (Split into halves, Neg of the second, Concat) becomes one MatMul by
/// a signed permutation (<see cref="RotateHalfAsMatMul"/>) with the same bits; a rotation whose half is read elsewhere,
/// or halves of unequal size, stay. (PEFT parity on the llama fixture exports: RmsNormAsOpTests.)</summary>
public class RotateHalfAsMatMulTests
{
    [Test]
    public void RotateHalfBecomesOneMatMulWithTheSameBits()
    {
        var n = new Net(18);
        foreach (var input in new[] { "q", "k", "u" }) n.Input(input, (int)DT.Float, "batch", 3, 8);
        string RotateHalf(string x, long first, long second)
        {
            var halves = n.Split(x, -1, first, second);
            return n.Op("Concat", [n.Op("Neg", halves[1]), halves[0]], ("axis", -1L));
        }
        n.Output(RotateHalf("q", 4, 4), "q_rotated");
        var kHalves = n.Split("k", -1, 4, 4); // the first half also read elsewhere: stays
        n.Output(n.Op("Concat", [n.Op("Neg", kHalves[1]), kHalves[0]], ("axis", -1L)), "k_rotated");
        n.Output(kHalves[0], "k_first");
        n.Output(RotateHalf("u", 3, 5), "u_rotated"); // unequal halves: not rotate_half
        using var before = n.Model();
        Dictionary<string, HostTensor> Feeds(int batch)
        {
            var rng = new Random(batch);
            return new[] { "q", "k", "u" }.ToDictionary(i => i, _ => HostTensor.Of(Enumerable.Range(0, batch * 24).Select(_ => rng.NextSingle() * 8 - 4).ToArray(), batch, 3, 8));
        }
        var types = ValueTable.Probe(before.Proto, Feeds(2), Feeds(3));
        using var after = n.Model();
        Assert.That(RotateHalfAsMatMul.Apply(new GraphEditor(after.Graph), types), Is.EqualTo(1));
        var matMul = after.Graph.Node.Single(node => node.OpType == "MatMul");
        Assert.That(matMul.Input[0], Is.EqualTo("q"));
        Assert.That(after.Graph.Node.Count(node => node.OpType == "Split"), Is.EqualTo(2), "k's and u's stay");

        string[] outputs = ["q_rotated", "k_rotated", "k_first", "u_rotated"];
        var expected = OrtRun.Run(before, Feeds(5), outputs);
        var actual = OrtRun.Run(after, Feeds(5), outputs);
        foreach (var o in outputs) Assert.That(actual[o].Floats, Is.EqualTo(expected[o].Floats), o);
    }
}
