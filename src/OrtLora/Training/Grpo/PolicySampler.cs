using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Inference;
using OrtLora.Onnx;

namespace OrtLora.Training.Grpo;

/// <summary>Completions sampled from the policy as training has left it. One inference session over the injected model
/// with its LoRA parameters as overridable inputs (<see cref="LoraRuntimeForm"/>); each step's parameters reach it as an
/// ONNX Runtime adapter, so nothing is reloaded and the KV cache of the export is used. The inputs' defaults are the
/// parameters as training started: running without the adapter is the reference model (TRL's PEFT reference, the
/// adapter disabled, when B starts at zero).</summary>
public sealed class PolicySampler : IDisposable
{
    readonly InferenceSession _session;
    readonly Generator _generator;
    OrtLoraAdapter? _adapter;

    public PolicySampler(OnnxModel injected, SessionOptions options)
    {
        using var copy = new OnnxModel(injected.Proto.Clone(), injected.BaseDirectory, injected.Source);
        LoraRuntimeForm.MakeOverridable(copy);
        if (copy.Graph.Initializer.Sum(Tensors.ByteSize) > 1_800_000_000L)
            throw new OrtLoraException($"{injected.Source}: too large to sample from in memory (over 1.8 GB of weights)");
        _session = new InferenceSession(copy.ToBytes(), options);
        _generator = new Generator(_session);
    }

    /// <summary>The policy's parameters from now on (the training session's current values).</summary>
    public void SetParameters(IReadOnlyDictionary<string, float[]> values, IReadOnlyDictionary<string, long[]> shapes)
    {
        var adapter = OrtLoraAdapter.Create(OnnxAdapterFile.Serialize(values.ToDictionary(kv => kv.Key, kv => (kv.Value, shapes[kv.Key]))), null);
        _adapter?.Dispose();
        _adapter = adapter;
    }

    /// <summary>One completion of <paramref name="prompt"/> through `generate`'s own path (the reference a group's rows are
    /// checked against): its ids (ending with a stop id unless truncated) and whether it
    /// was cut at <see cref="GenerationOptions.MaxNewTokens"/> without one.</summary>
    public (List<int> Ids, bool Truncated) Sample(IReadOnlyList<int> prompt, GenerationOptions options)
    {
        var ids = _generator.GenerateIds(prompt, options, _adapter).ToList();
        bool stopped = ids.Count > 0 && options.StopTokenIds.Contains(ids[^1]);
        return (ids, !stopped && ids.Count >= options.MaxNewTokens);
    }

    /// <summary>Completions of one prompt side by side, one per options (their seeds differ): one run per step for the
    /// whole group (<see cref="SampleGroups"/> with one group, so nothing is padded).</summary>
    public List<(List<int> Ids, bool Truncated)> SampleGroup(IReadOnlyList<int> prompt, IReadOnlyList<GenerationOptions> options) =>
        SampleGroups([(prompt, options)])[0];

    /// <summary>Completions of several prompts under the policy, each prompt's group in its own list in order, decoded
    /// side by side (<see cref="Generator.GenerateGroups"/>).</summary>
    public List<List<(List<int> Ids, bool Truncated)>> SampleGroups(
        IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, int maxRows = 64) =>
        _generator.GenerateGroups(groups, _adapter, maxRows);

    /// <summary>log p of each completion token after the prompt, from the logits divided by <paramref name="temperature"/>
    /// (as TRL scores completions), under the policy or the reference; with the entropy of each of those distributions.</summary>
    public TokenScores CompletionLogps(IReadOnlyList<int> prompt, IReadOnlyList<int> completion, double temperature, bool reference) =>
        CompletionLogps([(prompt, completion)], temperature, reference)[0];

    /// <summary><see cref="CompletionLogps(IReadOnlyList{int}, IReadOnlyList{int}, double, bool)"/> of many completions, in
    /// batches of consecutive rows (<see cref="CausalLmSession.AllLogits(IReadOnlyList{IReadOnlyList{int}}, RunOptions?)"/>)
    /// of at most <paramref name="logitsPerBatch"/> logits: one run per batch instead of one per completion.</summary>
    public List<TokenScores> CompletionLogps(IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<int> Completion)> items, double temperature, bool reference,
        long logitsPerBatch = LogitsPerBatch)
    {
        using var options = new RunOptions();
        if (!reference && _adapter is not null) options.AddActiveLoraAdapter(_adapter);
        long vocab = _generator.Model.VocabSize ?? 32_000;
        var scores = new List<TokenScores>(items.Count);
        for (int start = 0; start < items.Count;)
        {
            // the longest row sets the batch's length: grow the batch while rows × length × vocabulary stays in budget
            int end = start + 1, longest = Length(items[start]);
            while (end < items.Count && (end - start + 1L) * Math.Max(longest, Length(items[end])) * vocab <= logitsPerBatch)
                longest = Math.Max(longest, Length(items[end++]));
            var batch = Enumerable.Range(start, end - start).Select(i => (IReadOnlyList<int>)[.. items[i].Prompt, .. items[i].Completion]).ToList();
            var logits = _generator.Model.AllLogits(batch, options);
            for (int i = start; i < end; i++) scores.Add(Score(logits[i - start], items[i].Prompt.Count, items[i].Completion, temperature));
            start = end;
        }
        return scores;

        static int Length((IReadOnlyList<int> Prompt, IReadOnlyList<int> Completion) item) => item.Prompt.Count + item.Completion.Count;
    }

    /// <summary>By default at most this many logits (floats) in one scoring run: 128 MB.</summary>
    public const long LogitsPerBatch = 32L << 20;

    static TokenScores Score(float[] logits, int promptLength, IReadOnlyList<int> completion, double temperature)
    {
        int vocab = logits.Length / (promptLength + completion.Count);
        var logps = new float[completion.Count];
        var entropies = new float[completion.Count];
        for (int t = 0; t < completion.Count; t++)
        {
            var row = logits.AsSpan((promptLength - 1 + t) * vocab, vocab);
            double max = double.NegativeInfinity, sum = 0, weighted = 0;
            foreach (var v in row) max = Math.Max(max, v);
            max /= temperature;
            foreach (var v in row)
            {
                double shifted = v / temperature - max;
                double e = Math.Exp(shifted);
                sum += e;
                weighted += e * shifted;
            }
            // log Z = max + log Σ e^(z − max); H = log Z − Σ p·z = log Σ e^(z − max) − Σ p·(z − max)
            logps[t] = (float)(row[completion[t]] / temperature - max - Math.Log(sum));
            entropies[t] = (float)(Math.Log(sum) - weighted / sum);
        }
        return new TokenScores(logps, entropies);
    }

    public void Dispose()
    {
        _adapter?.Dispose();
        _generator.Dispose();
        _session.Dispose();
    }
}

/// <summary>A completion's log p per token and the entropy of each token's distribution.</summary>
public sealed record TokenScores(float[] Logps, float[] Entropies);
