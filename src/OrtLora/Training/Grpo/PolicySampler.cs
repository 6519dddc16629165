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
    /// <summary>Set when a left-padded batch gave non-finite logits (<see cref="PaddingFailedException"/>): no more padding.</summary>
    bool _paddingFailed;

    sealed class PaddingFailedException : Exception;
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

    /// <summary>Completions of several prompts, each prompt's group in its own list in order. Through the KV cache the
    /// groups' rows are decoded side by side in batches of whole groups, at most <paramref name="maxRows"/> rows unless
    /// one group alone has more, one run per step for a batch; groups of prompts of equal length go together first (fewer
    /// pads). Shorter prompts are left-padded to the batch's longest where the model allows it
    /// (<see cref="CausalLmSession.CanLeftPad"/>); otherwise a batch holds prompts of one length only. Without the cache
    /// each group is decoded alone: every step recomputes every position, so a larger batch saves no work and each pad
    /// costs a token's (measured on the tiny shape: slower batched). A row that has stopped is fed its stop token again
    /// until every row has stopped or reached its <see cref="GenerationOptions.MaxNewTokens"/>; what it produces then is
    /// dropped. Each row draws from its own sampler exactly as <see cref="Sample"/> would.</summary>
    public List<List<(List<int> Ids, bool Truncated)>> SampleGroups(
        IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, int maxRows = 64)
    {
        foreach (var (prompt, options) in groups)
        {
            if (prompt.Count == 0) throw new OrtLoraException("the prompt is empty (no tokens to start from)");
            if (options.Count == 0) throw new ArgumentException("a group needs at least one completion's options");
        }
        var results = new List<(List<int> Ids, bool Truncated)>[groups.Count];
        bool Cached(int g) => groups[g].Options[0].UseKvCache && _generator.Model.HasKvCache;
        bool pads = _generator.Model.CanLeftPad && !_paddingFailed;
        var order = Enumerable.Range(0, groups.Count).OrderBy(g => groups[g].Prompt.Count).ToList();
        var batch = new List<int>();
        void Decode()
        {
            List<(List<int> Ids, bool Truncated)> rows;
            try { rows = DecodeBatch([.. batch.Select(g => groups[g])]); }
            catch (PaddingFailedException)
            {
                // an export whose attention mask adds −inf gives a pad's own query nothing to attend to: NaN, which
                // reaches the real rows through the pad's keys and values (weighted 0, but 0·NaN is NaN). Its groups
                // are decoded one at a time, unpadded, from now on.
                _paddingFailed = true;
                rows = [.. batch.SelectMany(g => DecodeBatch([groups[g]]))];
            }
            int at = 0;
            foreach (var g in batch) { results[g] = rows.GetRange(at, groups[g].Options.Count); at += groups[g].Options.Count; }
            batch.Clear();
        }
        foreach (var g in order)
        {
            if (batch.Count > 0)
            {
                int last = batch[^1];
                bool joins = Cached(g) && Cached(last) && batch.Sum(b => groups[b].Options.Count) + groups[g].Options.Count <= maxRows
                    && (pads || groups[last].Prompt.Count == groups[g].Prompt.Count);
                if (!joins) Decode();
            }
            batch.Add(g);
        }
        if (batch.Count > 0) Decode();
        return [.. results];
    }

    /// <summary>Groups decoded side by side (one run per generated token).</summary>
    List<(List<int> Ids, bool Truncated)> DecodeBatch(IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups)
    {
        using var run = new RunOptions();
        if (_adapter is not null) run.AddActiveLoraAdapter(_adapter);
        var started = RunPrompts(groups, run);
        using var state = started.State;
        var logits = started.Logits;
        if (groups.Any(g => g.Prompt.Count != groups[0].Prompt.Count) && logits.Any(row => row.Any(v => !float.IsFinite(v))))
            throw new PaddingFailedException();
        var rows = groups.SelectMany(g => g.Options.Select(o => (g.Prompt, Options: o))).ToList();
        var samplers = rows.Select(r => new Sampler(r.Options)).ToArray();
        var seen = rows.Select(r => r.Options.RepetitionPenalty == 1.0 ? null : r.Prompt.ToHashSet()).ToArray();
        var ids = rows.Select(_ => new List<int>()).ToArray();
        var stopped = new bool[rows.Count];
        var done = rows.Select(r => r.Options.MaxNewTokens <= 0).ToArray();
        while (!done.All(d => d))
        {
            for (int r = 0; r < rows.Count; r++)
            {
                if (done[r]) continue;
                int next = samplers[r].Next(logits[r], seen[r]);
                seen[r]?.Add(next);
                ids[r].Add(next);
                stopped[r] = rows[r].Options.StopTokenIds.Contains(next);
                done[r] = stopped[r] || ids[r].Count >= rows[r].Options.MaxNewTokens;
            }
            if (done.All(d => d)) break;
            logits = _generator.Model.StepGroup(state, [.. ids.Select((row, r) => (IReadOnlyList<int>)[row.Count > 0 ? row[^1] : rows[r].Prompt[^1]])], run);
        }
        return [.. ids.Select((row, r) => (row, !stopped[r] && row.Count >= rows[r].Options.MaxNewTokens))];
    }

    /// <summary>Each group's prompt run once, for one row, left-padded to the longest; then its cache and logits copied
    /// to each of the group's rows (60 tokens run for 8 rows took 6.4 ms on the tiny shape, for one 1.05 ms).</summary>
    (DecodeState State, float[][] Logits) RunPrompts(IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, RunOptions run)
    {
        var model = _generator.Model;
        int longest = groups.Max(g => g.Prompt.Count);
        var padding = groups.Select(g => longest - g.Prompt.Count).ToArray();
        using var prompts = model.StartGroup(groups.Count, groups[0].Options[0].UseKvCache, padding.Any(p => p > 0) ? padding : null);
        var logits = model.StepGroup(prompts, [.. groups.Select(g => g.Prompt)], run);
        return (model.RepeatRows(prompts, [.. groups.Select(g => g.Options.Count)]),
            [.. groups.SelectMany((g, i) => Enumerable.Repeat(logits[i], g.Options.Count))]);
    }

    /// <summary>log p of each completion token after the prompt, from the logits divided by <paramref name="temperature"/>
    /// (as TRL scores completions), under the policy or the reference; with the entropy of each of those distributions.</summary>
    public (float[] Logps, float[] Entropies) CompletionLogps(IReadOnlyList<int> prompt, IReadOnlyList<int> completion, double temperature, bool reference)
    {
        var ids = prompt.Concat(completion).ToList();
        using var options = new RunOptions();
        if (!reference && _adapter is not null) options.AddActiveLoraAdapter(_adapter);
        var logits = _generator.Model.AllLogits(ids, options);
        int vocab = logits.Length / ids.Count;
        var logps = new float[completion.Count];
        var entropies = new float[completion.Count];
        for (int t = 0; t < completion.Count; t++)
        {
            var row = logits.AsSpan((prompt.Count - 1 + t) * vocab, vocab);
            double max = double.NegativeInfinity, sum = 0, weighted = 0;
            foreach (var v in row) max = Math.Max(max, v / temperature);
            foreach (var v in row)
            {
                double e = Math.Exp(v / temperature - max);
                sum += e;
                weighted += e * (v / temperature - max);
            }
            // log Z = max + log Σ e^(z − max); H = log Z − Σ p·z = log Σ e^(z − max) − Σ p·(z − max)
            logps[t] = (float)(row[completion[t]] / temperature - max - Math.Log(sum));
            entropies[t] = (float)(Math.Log(sum) - weighted / sum);
        }
        return (logps, entropies);
    }

    public void Dispose()
    {
        _adapter?.Dispose();
        _generator.Dispose();
        _session.Dispose();
    }
}
