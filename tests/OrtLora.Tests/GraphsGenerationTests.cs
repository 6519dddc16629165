using Microsoft.ML.OnnxRuntime;
using OrtLora.Graphs;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Batched generation as a generator runs it: prompts of different lengths left-padded into one batch,
/// KV cache, position_ids from the mask. Every row's next-token logits must equal the plain model's on that row
/// alone, unpadded and recomputed from scratch.</summary>
public class GraphsGenerationTests
{
    [Test]
    public void LeftPaddedBatchWithKvCacheAndPositionIdsMatchesEachRowAlone()
    {
        var shape = LlamaShape.Tiny;
        int vocab = shape.VocabSize, pad = vocab - 1, steps = 4;
        using var plain = OnnxModel.Load(Path.Combine(Shared.RepoRoot, "graphs", "tiny", "model.onnx"));
        using var generator = LlamaGraph.Build(shape, GraphsRequest.DefaultSeed,
            new LlamaOptions(WithKvCache: true, WithPositionIds: true));
        using var plainSession = new InferenceSession(plain.ToBytes(), OrtRun.DefaultOptions());
        using var session = new InferenceSession(generator.ToBytes(), OrtRun.DefaultOptions());

        // Two prompts (7 and 4 tokens) and the tokens each will be fed next (as if sampled).
        var sequences = new List<long>[] { [5, 17, 300, 42, 8, 99, 123], [77, 3, 250, 11] };
        var next = new long[][] { [10, 20, 30, 40], [400, 401, 402, 403] };
        int width = sequences.Max(s => s.Count);
        var mask = sequences.Select(s => Enumerable.Repeat(0L, width - s.Count).Concat(Enumerable.Repeat(1L, s.Count)).ToList()).ToArray();
        var ids = sequences.Select(s => Enumerable.Repeat((long)pad, width - s.Count).Concat(s).ToArray()).ToArray();
        var past = EmptyPast(shape, sequences.Length);

        for (int step = 0; step <= steps; step++)
        {
            int newTokens = ids[0].Length;
            var feeds = new Dictionary<string, HostTensor>(past)
            {
                ["input_ids"] = HostTensor.Of(ids.SelectMany(r => r).ToArray(), sequences.Length, newTokens),
                ["attention_mask"] = HostTensor.Of(mask.SelectMany(m => m).ToArray(), sequences.Length, mask[0].Count),
                ["position_ids"] = HostTensor.Of(mask.SelectMany(m => PositionIds(m).TakeLast(newTokens)).ToArray(), sequences.Length, newTokens),
            };
            var outputs = OrtRun.Run(session, feeds);
            foreach (var name in past.Keys.ToList()) past[name] = outputs[name.Replace("past_key_values", "present")];
            var logits = outputs["logits"].Floats;

            for (int r = 0; r < sequences.Length; r++)
            {
                var got = logits.AsSpan(((r + 1) * newTokens - 1) * vocab, vocab).ToArray();
                var alone = sequences[r].ToArray();
                var full = OrtRun.Run(plainSession, new Dictionary<string, HostTensor>
                {
                    ["input_ids"] = HostTensor.Of(alone, 1, alone.Length),
                    ["attention_mask"] = HostTensor.Of(Enumerable.Repeat(1L, alone.Length).ToArray(), 1, alone.Length),
                })["logits"].Floats;
                Assert.That(Shared.MaxAbsDiff(got, full[^vocab..]), Is.LessThan(1e-4f), $"row {r}, step {step}");
            }
            if (step == steps) break;
            for (int r = 0; r < sequences.Length; r++)
            {
                sequences[r].Add(next[r][step]);
                mask[r].Add(1);
            }
            ids = next.Select(n => new[] { n[step] }).ToArray();
        }
    }

    /// <summary>Hugging Face's generate: cumsum(mask) − 1, padding positions set to 1 (they are masked anyway).</summary>
    static IEnumerable<long> PositionIds(List<long> mask)
    {
        long seen = 0;
        foreach (var m in mask) { seen += m; yield return m == 0 ? 1 : seen - 1; }
    }

    static Dictionary<string, HostTensor> EmptyPast(LlamaShape shape, int batch)
    {
        var past = new Dictionary<string, HostTensor>();
        for (int i = 0; i < shape.NumHiddenLayers; i++)
            foreach (var kind in new[] { "key", "value" })
                past[$"past_key_values.{i}.{kind}"] = HostTensor.Of(Array.Empty<float>(), batch, shape.NumKeyValueHeads, 0, shape.HeadDim);
        return past;
    }
}
