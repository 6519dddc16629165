using System.Globalization;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using OrtLora.Lora;
using OrtLora.Onnx;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>LoRA on the token embedding (--target-modules embed_tokens, PEFT's lora.Embedding) as a user runs it on
/// graphs/tiny, whose LM head is tied to the embedding.</summary>
public class EmbeddingLoraCliTests
{
    static string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    static double EvalLoss(params string[] args)
    {
        var result = OrtloraOk(["eval", .. args]);
        var match = Regex.Match(result.Out, @"eval_loss (\d+\.\d+)");
        Assert.That(match.Success, result.Out);
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }

    /// <summary>The adapter directory holds PEFT's lora_embedding_A [r, vocabulary] and lora_embedding_B [hidden, r]; A's
    /// columns move only for tokens the training data has. Merged, the embedding's Gather reads the table plus
    /// scale·(B·A)ᵀ (computed here from the saved tensors) while the tied head still reads the original table, byte for
    /// byte, as in the unmerged model; the graph has the original's ops; and eval of the merged model, of the plain model
    /// with --adapter, and train's last eval agree.</summary>
    [Test]
    public void TrainingTheEmbeddingsAdapterMergesIntoTheGatherOnly()
    {
        var dir = Shared.TempDir();
        var result = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-data", Tiny("demo_eval.parquet"),
            "--target-modules", "embed_tokens,q_proj,v_proj", "--r", "4", "--lora-alpha", "8", "--learning-rate", "1e-2", "--max-steps", "8",
            "--eval-steps", "8", "--plain-log", "--merge", "-o", dir);
        Assert.That(result.Out, Does.Contain("9 adapters"));

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        Assert.That(config["target_modules"]!.AsArray().Select(n => n!.GetValue<string>()), Is.EquivalentTo(new[] { "embed_tokens", "q_proj", "v_proj" }));
        var tensors = SafeTensors.Read(Path.Combine(dir, "adapter_model.safetensors"));
        var a = tensors["base_model.model.model.embed_tokens.lora_embedding_A"];
        var b = tensors["base_model.model.model.embed_tokens.lora_embedding_B"];
        Assert.That((a.Shape, b.Shape), Is.EqualTo((new long[] { 4, 512 }, new long[] { 128, 4 })));
        var (av, bv) = (a.AsFloats(), b.AsFloats());
        int moved = Enumerable.Range(0, 512).Count(t => Enumerable.Range(0, 4).Any(k => av[k * 512 + t] != 0));
        Assert.That(moved, Is.InRange(50, 511), "A starts at zero; the columns of tokens the data has move, the others stay");

        using var original = OnnxModel.Load(Tiny("model.onnx"));
        using var merged = OnnxModel.Load(Path.Combine(dir, "merged", "model.onnx"));
        Assert.That(GraphEditor.OpHistogram(merged.Graph), Is.EqualTo(GraphEditor.OpHistogram(original.Graph)));
        var table = original.ReadFloats(original.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight"));
        Assert.That(merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight")), Is.EqualTo(table), "the head's table");
        var gather = merged.Graph.Node.Single(n => n.OpType == "Gather" && n.Input[0].StartsWith("model.embed_tokens.weight"));
        var adapted = merged.ReadFloats(merged.Graph.Initializer.Single(t => t.Name == gather.Input[0]));
        var expected = (float[])table.Clone();
        for (int t = 0; t < 512; t++)
            for (int h = 0; h < 128; h++)
                expected[t * 128 + h] += (float)(2.0 * Enumerable.Range(0, 4).Sum(k => (double)bv[h * 4 + k] * av[k * 512 + t]));
        Assert.That(Shared.MaxAbsDiff(adapted, expected), Is.LessThan(1e-5f), "the Gather's table is W + scale·(B·A)ᵀ");
        Assert.That(Shared.MaxAbsDiff(adapted, table), Is.GreaterThan(1e-3f), "the embedding trained");

        var evals = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!)
            .Where(m => m["eval_loss"] is not null).Select(m => m["eval_loss"]!.GetValue<double>()).ToList();
        double mergedLoss = EvalLoss(Path.Combine(dir, "merged", "model.onnx"), "--data", Tiny("demo_eval.parquet"));
        Assert.That(mergedLoss, Is.EqualTo(evals[^1]).Within(1e-4));
        Assert.That(mergedLoss, Is.LessThan(evals[0] - 0.3));
        Assert.That(EvalLoss(Tiny("model.onnx"), "--data", Tiny("demo_eval.parquet"), "--adapter", dir), Is.EqualTo(mergedLoss).Within(1e-4));
    }
}
