using Microsoft.ML.OnnxRuntime;

namespace OrtLora.Inference;

/// <summary>Many completions at once: groups of completions of prompts (a prompt and one options per completion),
/// decoded side by side. GRPO samples its groups this way, and `generate --data` its dataset's prompts.</summary>
public sealed partial class Generator
{
    /// <summary>Set when a left-padded batch did not give the rows' own logits (<see cref="PaddingFailedException"/>): no
    /// more padding. <see cref="_paddingChecked"/>: the first padded batch's check passed.</summary>
    bool _paddingFailed, _paddingChecked;

    sealed class PaddingFailedException : Exception;

    /// <summary>Completions of several prompts, each prompt's group in its own list in order. Through the KV cache the
    /// groups' rows are decoded side by side in batches of whole groups, at most <paramref name="maxRows"/> rows unless
    /// one group alone has more, one run per step for a batch; groups of prompts of equal length go together first (fewer
    /// pads). Shorter prompts are left-padded to the batch's longest where the model allows it
    /// (<see cref="CausalLmSession.CanLeftPad"/>); otherwise a batch holds prompts of one length only. Without the cache
    /// each group is decoded alone: every step recomputes every position, so a larger batch saves no work and each pad
    /// costs a token's (measured on the tiny shape: slower batched). A row that has stopped is fed its stop token again
    /// until every row has stopped or reached its <see cref="GenerationOptions.MaxNewTokens"/>; what it produces then is
    /// dropped. Each row draws from its own sampler exactly as <see cref="GenerateIds"/> would.</summary>
    public List<List<(List<int> Ids, bool Truncated)>> GenerateGroups(
        IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, OrtLoraAdapter? adapter = null, int maxRows = 64)
    {
        foreach (var (prompt, options) in groups)
        {
            if (prompt.Count == 0) throw new OrtLoraException("the prompt is empty (no tokens to start from)");
            if (options.Count == 0) throw new ArgumentException("a group needs at least one completion's options");
        }
        var results = new List<(List<int> Ids, bool Truncated)>[groups.Count];
        bool Cached(int g) => groups[g].Options[0].UseKvCache && _model.HasKvCache;
        var order = Enumerable.Range(0, groups.Count).OrderBy(g => groups[g].Prompt.Count).ToList();
        var batch = new List<int>();
        void Decode()
        {
            List<(List<int> Ids, bool Truncated)> rows;
            try { rows = DecodeBatch(adapter, [.. batch.Select(g => groups[g])]); }
            catch (PaddingFailedException)
            {
                // padding this model does not give the rows' own logits (see DecodeBatch): its groups are decoded one at
                // a time, unpadded, from now on
                _paddingFailed = true;
                rows = [.. batch.SelectMany(g => DecodeBatch(adapter, [groups[g]]))];
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
                    && (_model.CanLeftPad && !_paddingFailed || groups[last].Prompt.Count == groups[g].Prompt.Count);
                if (!joins) Decode();
            }
            batch.Add(g);
        }
        if (batch.Count > 0) Decode();
        return [.. results];
    }

    /// <summary>Groups decoded side by side (one run per generated token).</summary>
    List<(List<int> Ids, bool Truncated)> DecodeBatch(OrtLoraAdapter? adapter, IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups)
    {
        using var run = new RunOptions();
        if (adapter is not null) run.AddActiveLoraAdapter(adapter);
        var (state, promptLogits) = RunPrompts(groups, run);
        using var _ = state;
        if (groups.Any(g => g.Prompt.Count != groups[0].Prompt.Count) && !PaddingKeepsLogits(groups, promptLogits, run))
            throw new PaddingFailedException();
        // each group's rows start from its prompt's logits (read only by the samplers)
        float[][] logits = [.. groups.SelectMany((g, i) => Enumerable.Repeat(promptLogits[i], g.Options.Count))];
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
            logits = _model.StepGroup(state, [.. ids.Select((row, r) => (IReadOnlyList<int>)[row.Count > 0 ? row[^1] : rows[r].Prompt[^1]])], run);
        }
        return [.. ids.Select((row, r) => (row, !stopped[r] && row.Count >= rows[r].Options.MaxNewTokens))];
    }

    /// <summary>Each group's prompt run once, for one row, left-padded to the longest; then its cache copied to each of
    /// the group's rows (60 tokens run for 8 rows took 6.4 ms on the tiny shape, for one 1.05 ms). Returns the rows'
    /// state and each prompt's logits.</summary>
    (DecodeState State, float[][] PromptLogits) RunPrompts(IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, RunOptions run)
    {
        int longest = groups.Max(g => g.Prompt.Count);
        var padding = groups.Select(g => longest - g.Prompt.Count).ToArray();
        using var prompts = _model.StartGroup(groups.Count, groups[0].Options[0].UseKvCache, padding.Any(p => p > 0) ? padding : null);
        var logits = _model.StepGroup(prompts, [.. groups.Select(g => g.Prompt)], run);
        return (_model.RepeatRows(prompts, [.. groups.Select(g => g.Options.Count)]), logits);
    }

    /// <summary>Whether a padded prompt step's logits are the rows' own. Two ways a model accepted as paddable
    /// (<see cref="CausalLmSession.CanLeftPad"/>) can break it: an export whose mask adds −inf gives a pad's own query
    /// nothing to attend to, and its NaN reaches the real rows through the pad's values (weighted 0, but 0·NaN is NaN);
    /// a model that takes attention_mask but ignores it lets the real rows attend to the pads. So every padded batch's
    /// logits must be finite, and in the first one each padded prompt's must match the prompt run alone (to 1e-3 of the
    /// logits' scale: equal to the bit on ONNX Runtime's CPU kernels). Run once per generator, for one row each.</summary>
    bool PaddingKeepsLogits(IReadOnlyList<(IReadOnlyList<int> Prompt, IReadOnlyList<GenerationOptions> Options)> groups, float[][] promptLogits, RunOptions run)
    {
        if (promptLogits.Any(row => row.Any(v => !float.IsFinite(v)))) return false;
        if (_paddingChecked) return true;
        int longest = groups.Max(g => g.Prompt.Count);
        for (int g = 0; g < groups.Count; g++)
        {
            if (groups[g].Prompt.Count == longest) continue;
            using var alone = _model.Start(groups[g].Options[0].UseKvCache);
            var own = _model.Step(alone, groups[g].Prompt, run);
            float scale = Math.Max(1f, own.Max(Math.Abs));
            if (own.Zip(promptLogits[g]).Any(p => Math.Abs(p.First - p.Second) > 1e-3f * scale)) return false;
        }
        _paddingChecked = true;
        return true;
    }
}
