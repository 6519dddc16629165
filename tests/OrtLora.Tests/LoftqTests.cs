using System.Text.Json.Nodes;
using OrtLora.Graphs;
using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>LoftQ (--init-lora-weights loftq): the targeted weights stored quantized, A and B from the SVD of the
/// quantization error, so that Q + scale·B·A is nearer W than Q alone.</summary>
public class LoftqTests
{
    static double RelativeRms(float[] a, float[] reference) =>
        Math.Sqrt(a.Zip(reference, (x, y) => (double)(x - y) * (x - y)).Average() / reference.Average(y => (double)y * y));

    /// <summary>Per layer, ‖W − (Q + scale·B·A)‖ is below ‖W − quantize(W)‖ (with one iteration Q is quantize(W) and
    /// B·A the error's best rank-r part), and the model's logits move toward the float model's; a second iteration
    /// helps no less. Merging writes Q + scale·B·A as float weights: the logits of the injected model.</summary>
    [TestCase(4)] [TestCase(8)]
    public void TheAdapterTakesUpPartOfTheQuantizationError(int bits)
    {
        using var floats = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        var floatWeights = new GraphEditor(floats.Graph);
        var reference = OrtRun.Run(floats, TinyFeeds(), ["logits"])["logits"].Floats;
        using var quantized = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
        WeightQuantizer.Apply(quantized, bits);
        double plainError = RelativeRms(OrtRun.Run(quantized, TinyFeeds(), ["logits"])["logits"].Floats, reference);

        double LoftqError(int iterations, bool checkLayers)
        {
            using var model = LlamaGraph.Build(LlamaShape.Tiny, seed: 3);
            var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 8, LoraAlpha = 16, Init = "loftq", LoftqBits = bits, LoftqIter = iterations });
            var g = new GraphEditor(model.Graph);
            var layers = LinearLayers.Find(g).Where(l => l.Dequantize is not null).ToList();
            Assert.That(layers, Has.Count.EqualTo(28), "every targeted weight is stored quantized");
            if (checkLayers)
                foreach (var a in lora.Adapters)
                {
                    var layer = layers.Single(l => l.Weight == a.BaseWeight);
                    var q = Dequantize.Run(model, g, layer.Dequantize!);
                    var w = floats.ReadFloats(floatWeights.Initializer(System.Text.RegularExpressions.Regex.Replace(a.BaseWeight, "(_DQ_Q4|_quantized)$", ""))!);
                    var A = model.ReadFloats(g.Initializer(a.LoraA)!);
                    var B = model.ReadFloats(g.Initializer(a.LoraB)!);
                    var plain = WeightQuantizer.Quantize(w, [layer.Out, layer.In], WeightLayout.OutIn, bits, 32).Dequantized();
                    double withAdapter = 0, without = 0;
                    for (long o = 0; o < a.Out; o++)
                        for (long i = 0; i < a.In; i++)
                        {
                            double ba = 0;
                            for (int r = 0; r < a.R; r++) ba += B[o * a.R + r] * A[r * a.In + i];
                            long at = o * a.In + i; // the weights are [out, in] here (dynamo layout, kept)
                            withAdapter += Math.Pow(w[at] - q[at] - a.Scale * ba, 2);
                            without += Math.Pow(w[at] - plain[at], 2);
                        }
                    Assert.That(Math.Sqrt(withAdapter), Is.LessThan(0.98 * Math.Sqrt(without)), a.Module);
                }
            var logits = OrtRun.Run(model, TinyFeeds(), ["logits"])["logits"].Floats;
            LoraMerger.Merge(model);
            Assert.That(Shared.MaxAbsDiff(OrtRun.Run(model, TinyFeeds(), ["logits"])["logits"].Floats, logits), Is.LessThan(1e-3f), "merged = injected");
            return RelativeRms(logits, reference);
        }
        double one = LoftqError(1, checkLayers: true), two = LoftqError(2, checkLayers: false);
        TestContext.Out.WriteLine($"{bits} bits: logits' relative RMS error {plainError:P2} quantized, {one:P2} LoftQ (1 iteration), {two:P2} (2)");
        Assert.That(one, Is.LessThan(0.95 * plainError));
        Assert.That(two, Is.LessThan(one * 1.02));
    }

    /// <summary>As a user runs it: inject with loftq, train, export. The adapter config says loftq (PEFT's keys).</summary>
    [Test]
    public void InjectTrainExport()
    {
        string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);
        var dir = Shared.TempDir();
        var injected = Path.Combine(dir, "model.onnx");
        OrtloraOk("inject", Tiny("model.onnx"), "-o", injected, "--target-modules", "all-linear", "--r", "8", "--init-lora-weights", "loftq", "--loftq-bits", "8", "--loftq-iter", "2");
        var model = OnnxModel.Load(injected);
        Assert.That(model.Graph.Node.Count(n => n.OpType == "DequantizeLinear"), Is.EqualTo(28));
        var output = Path.Combine(dir, "out");
        OrtloraOk("train", injected, "--data", Tiny("demo.parquet"), "--tokenizer", Path.GetDirectoryName(Tiny("vocab.json"))!, "--max-steps", "3",
            "--learning-rate", "5e-3", "--plain-log", "-o", output);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(output, "adapter_config.json")))!;
        Assert.That(config["init_lora_weights"]!.GetValue<string>(), Is.EqualTo("loftq"));
        Assert.That(config["loftq_config"]!["loftq_bits"]!.GetValue<int>(), Is.EqualTo(8));
        Assert.That(config["loftq_config"]!["loftq_iter"]!.GetValue<int>(), Is.EqualTo(2));
        var refused = Ortlora("inject", Tiny("model.onnx"), "-o", Path.Combine(dir, "x.onnx"), "--init-lora-weights", "loftq", "--use-dora");
        Assert.That(refused.Error, Does.Contain("loftq on").And.Contain("DoRA"));
    }
}
