using System.Text.Json.Nodes;
using Google.Protobuf;
using Onnx;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>Models quantized to ONNX Runtime's MatMulNBits (com.microsoft, what its int4 quantizer writes by default):
/// read as DequantizeLinear + MatMul, which inject, train and merge take.</summary>
public class LoraMatMulNBitsTests
{
    const int Block = 32;

    /// <summary>graphs/' tiny LLaMA with every linear layer (weights [out, in] behind a Transpose) replaced by
    /// MatMulNBits as the operator's spec lays it out: B [N, blocks, block/2] with two 4-bit values a byte (low nibble
    /// first), scales [N·blocks], zero points [N, ⌈blocks/2⌉] packed the same way. Asymmetric, per block of 32 along K.
    /// K = 352 (down_proj) has 11 blocks: an odd count, so zero-point rows end in half a byte.</summary>
    static OnnxModel TinyInMatMulNBits()
    {
        var model = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        var g = new GraphEditor(model.Graph);
        model.Proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "com.microsoft", Version = 1 });
        foreach (var layer in LinearLayers.Find(g).Where(l => !l.Tied).ToList())
        {
            var transpose = g.Producer(layer.Node.Input[1])!;
            Assert.That(transpose.OpType, Is.EqualTo("Transpose"));
            var w = model.ReadFloats(g.Initializer(layer.Weight)!); // [N, K]
            long n = layer.Out, k = layer.In, blocks = k / Block;
            var packed = new byte[n * blocks * Block / 2];
            var scales = new float[n * blocks];
            long zeroRow = (blocks + 1) / 2;
            var zeros = new byte[n * zeroRow];
            for (long row = 0; row < n; row++)
                for (long b = 0; b < blocks; b++)
                {
                    float min = 0, max = 0;
                    for (long j = 0; j < Block; j++) { float v = w[row * k + b * Block + j]; min = Math.Min(min, v); max = Math.Max(max, v); }
                    float scale = (max - min) / 15;
                    int zero = (int)Math.Clamp(Math.Round(-min / scale), 0, 15);
                    scales[row * blocks + b] = scale;
                    zeros[row * zeroRow + b / 2] |= (byte)(zero << (int)(4 * (b % 2)));
                    for (long j = 0; j < Block; j++)
                    {
                        int q = (int)Math.Clamp(Math.Round(w[row * k + b * Block + j] / scale) + zero, 0, 15);
                        long at = row * blocks * Block + b * Block + j;
                        packed[at / 2] |= (byte)(q << (int)(4 * (at % 2)));
                    }
                }
            string Add(string name, int type, long[] dims, byte[] bytes)
            {
                var t = new TensorProto { Name = name, DataType = type, RawData = ByteString.CopyFrom(bytes) };
                t.Dims.AddRange(dims);
                return g.AddInitializer(t);
            }
            var node = new NodeProto { OpType = "MatMulNBits", Domain = "com.microsoft", Name = layer.Node.Name + "_Q4" };
            node.Input.AddRange([layer.Node.Input[0], Add(layer.Weight + "_Q4", (int)DT.Uint8, [n, blocks, Block / 2], packed),
                g.AddInitializer(Tensors.FromFloats(layer.Weight + "_scales", [n * blocks], scales)), Add(layer.Weight + "_zp", (int)DT.Uint8, [n * zeroRow], zeros)]);
            node.Output.Add(layer.Node.Output[0]);
            foreach (var (name, value) in new (string, long)[] { ("K", k), ("N", n), ("bits", 4), ("block_size", Block), ("accuracy_level", 0) })
                node.Attribute.Add(Attrs.Make(name, value));
            g.RemoveNode(layer.Node);
            g.RemoveNode(transpose);
            g.AddNode(node);
        }
        g.TopologicalSort();
        g.Cleanup();
        Assert.That(model.Graph.Node.Count(n => n.OpType == "MatMulNBits"), Is.EqualTo(28));
        return model;
    }

    /// <summary>The rewritten model computes what ONNX Runtime's MatMulNBits kernel computes (in float32), and its layers
    /// are found under the same PEFT names as the float model's.</summary>
    [Test]
    public void TheStandardFormComputesWhatMatMulNBitsDoes()
    {
        using var nbits = TinyInMatMulNBits();
        var expected = OrtRun.Run(nbits, TinyFeeds(), ["logits"])["logits"].Floats;
        Assert.That(MatMulNBitsForm.ToQdq(nbits), Is.EqualTo(28));
        Assert.That(nbits.Graph.Node.Any(n => n.OpType == "MatMulNBits"), Is.False);
        Assert.That(nbits.Opset(), Is.EqualTo(21));
        var logits = OrtRun.Run(nbits, TinyFeeds(), ["logits"])["logits"].Floats;
        Assert.That(Shared.MaxAbsDiff(logits, expected), Is.LessThan(1e-4f * expected.Max(Math.Abs)));
        using var floats = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        var layers = LinearLayers.Find(new GraphEditor(nbits.Graph));
        Assert.That(layers.Where(l => l.Dequantize is not null).Select(l => l.Module),
            Is.EquivalentTo(LinearLayers.Find(new GraphEditor(floats.Graph)).Where(l => !l.Tied).Select(l => l.Module)));
    }

    /// <summary>As a user runs it on a MatMulNBits file: train (inject included), merge, eval. The merged model (float
    /// weights: dequantized plus the deltas) scores what the adapter on the MatMulNBits model scores.</summary>
    [Test]
    public void TrainMergeEvalOnAMatMulNBitsModel()
    {
        string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);
        var dir = Shared.TempDir();
        var path = Path.Combine(dir, "model.onnx");
        using (var nbits = TinyInMatMulNBits()) nbits.Save(path);
        var tokenizer = Path.GetDirectoryName(Tiny("vocab.json"))!;
        var inspect = OrtloraOk("inspect", path);
        Assert.That(inspect.Out, Does.Contain("28 MatMulNBits layers"));
        var output = Path.Combine(dir, "out");
        OrtloraOk("train", path, "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"), "--tokenizer", tokenizer,
            "--target-modules", "all-linear", "--r", "8", "--learning-rate", "5e-3", "--max-steps", "20", "--plain-log", "--merge", "-o", output);
        var evals = EvalLosses(output);
        Assert.That(evals[^1], Is.LessThan(evals[0] - 4));
        string Eval(params string[] args) => OrtloraOk(["eval", .. args, "--data", Tiny("demo_eval.parquet"), "--tokenizer", tokenizer]).Out.Split("  ")[0];
        var merged = Path.Combine(output, "merged", "model.onnx");
        Assert.That(Eval(merged), Is.EqualTo(Eval(path, "--adapter", output)).And.EqualTo($"eval_loss {evals[^1]:F4}"));
    }
}
