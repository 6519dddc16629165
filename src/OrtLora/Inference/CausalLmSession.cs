using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace OrtLora.Inference;

/// <summary>A causal LM's ONNX interface as exporters write it: input_ids, optional attention_mask and position_ids,
/// optional key/value cache (Optimum and ORT GenAI both name it past_key_values.N.key/value in, present.N.key/value
/// out; older exports use past.N / present.N), logits out. Runs one decoding step at a time, for one sequence or a
/// batch of them.</summary>
public sealed class CausalLmSession : IDisposable
{
    public InferenceSession Session { get; }
    readonly bool _ownsSession;
    readonly string _idsName, _logitsName;
    readonly string? _maskName, _positionName, _useCacheBranchName;
    /// <summary>Cache inputs and the outputs that carry them to the next step, in input order.</summary>
    readonly (string Past, string Present)[] _cache;

    public bool HasKvCache => _cache.Length > 0;
    /// <summary>The logits' last dimension when the model declares it (null when symbolic).</summary>
    public int? VocabSize => Session.OutputMetadata[_logitsName].Dimensions is { Length: > 0 } d && d[^1] > 0 ? d[^1] : null;
    public IReadOnlyList<(string Past, string Present)> CacheNames => _cache;

    public CausalLmSession(InferenceSession session, bool ownsSession = false)
    {
        Session = session;
        _ownsSession = ownsSession;
        var inputs = session.InputMetadata.Keys.ToList();
        var outputs = session.OutputMetadata.Keys.ToList();
        _idsName = inputs.FirstOrDefault(n => n == "input_ids")
            ?? throw new OrtLoraException($"model has no 'input_ids' input (inputs: {string.Join(", ", inputs)})");
        _logitsName = outputs.FirstOrDefault(n => n == "logits") ?? outputs[0];
        if (session.OutputMetadata[_logitsName].Dimensions.Length == 2)
            throw new OrtLoraException($"the model's '{_logitsName}' are [batch, labels]: a sequence classifier (a reward model) scores sequences and does not " +
                                       "generate; use it with --reward-funcs model:DIR, or score preference pairs with `ortlora eval`");
        // a token classifier's logits have a causal LM's rank; its classes' names (metadata `classify` writes) tell it apart
        if (session.ModelMetadata.CustomMetadataMap.ContainsKey(Training.Reward.SequenceClassifier.Id2LabelKey))
            throw new OrtLoraException($"the model's '{_logitsName}' score classes at every token: a token classifier tags words and does not generate; " +
                                       "`ortlora eval MODEL --data FILE --predictions OUT` writes its tags");
        _maskName = inputs.FirstOrDefault(n => n == "attention_mask");
        _positionName = inputs.FirstOrDefault(n => n == "position_ids");
        _useCacheBranchName = inputs.FirstOrDefault(n => n == "use_cache_branch");
        _cache = inputs.Where(IsPastName).Select(p => (p, PresentFor(p, outputs))).ToArray();
        foreach (var (past, _) in _cache)
        {
            var dims = session.InputMetadata[past].Dimensions;
            if (dims.Length != 4 || dims[1] <= 0 || dims[3] <= 0)
                throw new OrtLoraException($"cache input '{past}' has shape [{string.Join(",", dims)}]; expected [batch, heads, past_len, head_dim] with fixed heads and head_dim");
        }
    }

    public static CausalLmSession Load(string modelPath, SessionOptions? options = null)
    {
        if (!File.Exists(modelPath)) throw new OrtLoraException($"{modelPath}: file not found");
        using var defaults = options is null ? Onnx.OrtRun.DefaultOptions() : null;
        try { return new CausalLmSession(new InferenceSession(modelPath, options ?? defaults!), ownsSession: true); }
        catch (OnnxRuntimeException e) { throw new OrtLoraException($"{modelPath}: ONNX Runtime cannot load the model ({e.Message})", e); }
    }

    static bool IsPastName(string name) => name.StartsWith("past_key_values.", StringComparison.Ordinal) || name.StartsWith("past.", StringComparison.Ordinal);

    static string PresentFor(string past, List<string> outputs)
    {
        var present = "present" + past[past.IndexOf('.')..];
        return outputs.Contains(present) ? present
            : throw new OrtLoraException($"model has cache input '{past}' but no output '{present}'");
    }

    /// <summary>Starts a sequence. With <paramref name="useCache"/> false every step recomputes the whole sequence
    /// (cache inputs, if any, get empty tensors).</summary>
    public DecodeState Start(bool useCache = true) => new(useCache && HasKvCache);

    /// <summary>Appends tokens and returns the logits that predict the next one.</summary>
    public float[] Step(DecodeState state, IReadOnlyList<int> newTokens, RunOptions? runOptions = null) =>
        Advance(state, [newTokens], runOptions, logits => LastRows(logits, 1)[0]);

    /// <summary>Whether rows of different lengths can be decoded in one batch, left-padded: the padding must be masked
    /// (attention_mask) and must not shift the real tokens' positions, which only position_ids can say. Without that
    /// input the model numbers every fed position, pads included, which moves learned absolute positions.</summary>
    public bool CanLeftPad => _maskName is not null && _positionName is not null;

    /// <summary>Starts <paramref name="rows"/> sequences decoded side by side, one run for all of them per step (batch =
    /// rows). In the batch the rows have equal lengths: row r is preceded by <paramref name="leftPadding"/>[r] pads
    /// (none by default), masked out and not counted in its positions, as generate pads a batch of prompts.</summary>
    public DecodeState StartGroup(int rows, bool useCache = true, IReadOnlyList<int>? leftPadding = null)
    {
        if (leftPadding is not null && (leftPadding.Count != rows || leftPadding.Any(p => p < 0)))
            throw new ArgumentException($"left padding needs one count of at least 0 for each of the {rows} rows");
        if (leftPadding is not null && leftPadding.Any(p => p > 0) && !CanLeftPad)
            throw new OrtLoraException("the model cannot decode left-padded rows (it needs attention_mask and position_ids inputs)");
        return new(useCache && HasKvCache, rows, leftPadding);
    }

    /// <summary>Appends each row's tokens and returns each row's logits for its next token. The rows must stay of equal
    /// length with their padding: a padded row's first tokens are that many fewer.</summary>
    public float[][] StepGroup(DecodeState state, IReadOnlyList<IReadOnlyList<int>> newTokens, RunOptions? runOptions = null) =>
        Advance(state, newTokens, runOptions, logits => LastRows(logits, newTokens.Count));

    /// <summary>A new state holding <paramref name="state"/>'s row i <paramref name="copies"/>[i] times, in order, with
    /// its padding and a copy of its cache: a group's shared prompt is run once, for one row, instead of once per
    /// completion. The caller repeats the rows' logits likewise; <paramref name="state"/> stays usable.</summary>
    public DecodeState RepeatRows(DecodeState state, IReadOnlyList<int> copies)
    {
        if (copies.Count != state.Rows.Length || copies.Any(c => c < 1))
            throw new ArgumentException($"repeating {state.Rows.Length} rows needs a count of at least 1 for each");
        var source = Enumerable.Range(0, copies.Count).SelectMany(r => Enumerable.Repeat(r, copies[r])).ToArray();
        var repeated = new DecodeState(state.UseCache, source.Length, [.. source.Select(r => state.Padding[r])]);
        for (int i = 0; i < source.Length; i++) repeated.Rows[i].AddRange(state.Rows[source[i]]);
        if (state.Past is null) return repeated;
        var past = new OrtValue[state.Past.Length];
        try
        {
            for (int c = 0; c < past.Length; c++)
            {
                // [batch, heads, past_len, head_dim]: a row's cache is one contiguous block
                var info = state.Past[c].GetTensorTypeAndShape();
                long[] shape = [source.Length, .. info.Shape[1..]];
                past[c] = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, info.ElementDataType, shape);
                var from = state.Past[c].GetTensorMutableRawData();
                var to = past[c].GetTensorMutableRawData();
                int block = from.Length / state.Rows.Length;
                for (int i = 0; i < source.Length; i++) from.Slice(source[i] * block, block).CopyTo(to.Slice(i * block, block));
            }
        }
        catch
        {
            foreach (var v in past) v?.Dispose();
            repeated.Dispose();
            throw;
        }
        repeated.AdoptCache(past, state.PastLength);
        return repeated;
    }

    /// <summary>The logits at every position of <paramref name="ids"/> in one run without the cache, [ids.Count × vocabulary]
    /// row-major: row t predicts token t + 1 (scoring a sequence).</summary>
    public float[] AllLogits(IReadOnlyList<int> ids, RunOptions? runOptions = null)
    {
        using var state = Start(useCache: false);
        return Advance(state, [ids], runOptions, AllRows);
    }

    /// <summary>The logits at every position of several sequences in one run without the cache: for each, [its length ×
    /// vocabulary] as <see cref="AllLogits(IReadOnlyList{int}, RunOptions?)"/> gives it alone. The rows are right-padded
    /// to the longest with their own last token. A causal model's logits at a position do not depend on later ones, so
    /// the padding changes nothing that is read. Unlike left padding it needs no mask and shifts no positions.</summary>
    public float[][] AllLogits(IReadOnlyList<IReadOnlyList<int>> sequences, RunOptions? runOptions = null)
    {
        if (sequences.Count == 0) return [];
        int length = sequences.Max(s => s.Count);
        using var state = StartGroup(sequences.Count, useCache: false);
        var padded = sequences.Select(s => (IReadOnlyList<int>)[.. s, .. Enumerable.Repeat(s[^1], length - s.Count)]).ToList();
        return Advance(state, padded, runOptions, logits =>
        {
            long perRow = length * logits.GetTensorTypeAndShape().Shape[^1], vocab = perRow / length;
            return sequences.Select((s, r) => Floats(logits, new Range((int)(r * perRow), (int)(r * perRow + s.Count * vocab)))).ToArray();
        });
    }

    T Advance<T>(DecodeState state, IReadOnlyList<IReadOnlyList<int>> newTokens, RunOptions? runOptions, Func<OrtValue, T> read)
    {
        int rows = state.Rows.Length;
        if (newTokens.Count != rows || Enumerable.Range(0, rows).Any(r => state.Length(r) + newTokens[r].Count != state.Length(0) + newTokens[0].Count))
            throw new ArgumentException($"a step of {rows} rows needs as many token lists, of lengths that keep the rows (with their padding) equal");
        if (newTokens.Any(t => t.Count == 0)) throw new ArgumentException("a step needs at least one token in each row");
        foreach (var tokens in newTokens)
            if (VocabSize is { } vocab && tokens.FirstOrDefault(t => t < 0 || t >= vocab, -1) is var bad && bad != -1)
                throw new OrtLoraException($"token id {bad} is outside the model's vocabulary of {vocab} (wrong tokenizer for this model?)");
        for (int r = 0; r < rows; r++) state.Rows[r].AddRange(newTokens[r]);
        int total = state.Length(0);
        int pastLength = state.UseCache ? state.PastLength : 0;
        int fedLength = total - pastLength;
        // Each row as the batch holds it, pads first. A pad's id only has to be a valid token (the row's first one);
        // the mask hides it, and position_ids count the row's real tokens only (generate's cumsum(mask) − 1; a pad's own
        // position, 0 here, is never attended to).
        var fed = new long[rows * fedLength];
        var positions = new long[rows * fedLength];
        var mask = new long[rows * total];
        for (int r = 0; r < rows; r++)
        {
            int pad = state.Padding[r];
            var row = state.Rows[r];
            for (int t = 0; t < total; t++) mask[r * total + t] = t < pad ? 0 : 1;
            for (int t = pastLength; t < total; t++)
            {
                fed[r * fedLength + t - pastLength] = row[Math.Max(0, t - pad)];
                positions[r * fedLength + t - pastLength] = Math.Max(0, t - pad);
            }
        }
        var names = new List<string>();
        var values = new List<OrtValue>();
        var owned = new List<OrtValue>();
        void Feed(string name, OrtValue value, bool own = true) { names.Add(name); values.Add(value); if (own) owned.Add(value); }
        try
        {
            Feed(_idsName, IntTensor(_idsName, fed, rows));
            if (_maskName is not null) Feed(_maskName, IntTensor(_maskName, mask, rows));
            if (_positionName is not null) Feed(_positionName, IntTensor(_positionName, positions, rows));
            if (_useCacheBranchName is not null) Feed(_useCacheBranchName, OrtValue.CreateTensorValueFromMemory(new[] { pastLength > 0 }, [1]));
            for (int i = 0; i < _cache.Length; i++)
            {
                if (state.UseCache && state.Past is not null) Feed(_cache[i].Past, state.Past[i], own: false);
                else Feed(_cache[i].Past, EmptyCache(_cache[i].Past, rows));
            }
            var outputNames = state.UseCache ? [_logitsName, .. _cache.Select(c => c.Present)] : new[] { _logitsName };
            IDisposableReadOnlyCollection<OrtValue> results;
            try { results = Session.Run(runOptions ?? state.DefaultRunOptions, names, values, outputNames); }
            catch (OnnxRuntimeException e) { throw new OrtLoraException($"ONNX Runtime failed on a decoding step: {e.Message}", e); }
            var logits = read(results[0]);
            if (state.UseCache) state.KeepCache(results, total);
            else results.Dispose();
            return logits;
        }
        finally { foreach (var v in owned) v.Dispose(); }
    }

    OrtValue IntTensor(string input, long[] values, int rows)
    {
        long[] shape = [rows, values.Length / rows];
        return Session.InputMetadata[input].ElementDataType == TensorElementType.Int32
            ? OrtValue.CreateTensorValueFromMemory(values.Select(v => (int)v).ToArray(), shape)
            : OrtValue.CreateTensorValueFromMemory(values, shape);
    }

    OrtValue EmptyCache(string input, int rows)
    {
        var meta = Session.InputMetadata[input];
        long[] shape = [rows, meta.Dimensions[1], 0, meta.Dimensions[3]];
        return OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, meta.ElementDataType, shape);
    }

    /// <summary>Each batch row's logits at its last position ([rows, n, V] → rows × V).</summary>
    static float[][] LastRows(OrtValue logits, int rows)
    {
        var shape = logits.GetTensorTypeAndShape().Shape;
        long vocab = shape[^1], perRow = shape.Length == 3 ? shape[1] * vocab : vocab;
        return [.. Enumerable.Range(0, rows).Select(r => Floats(logits, new Range((int)(r * perRow + perRow - vocab), (int)((r + 1) * perRow))))];
    }

    static float[] AllRows(OrtValue logits) => Floats(logits, ..);

    static float[] Floats(OrtValue logits, Range range)
    {
        var type = logits.GetTensorTypeAndShape().ElementDataType;
        return type switch
        {
            TensorElementType.Float => logits.GetTensorDataAsSpan<float>()[range].ToArray(),
            TensorElementType.Float16 => logits.GetTensorDataAsSpan<Float16>()[range].ToArray().Select(h => (float)h).ToArray(),
            TensorElementType.BFloat16 => logits.GetTensorDataAsSpan<BFloat16>()[range].ToArray().Select(h => (float)h).ToArray(),
            _ => throw new OrtLoraException($"logits of type {type} are not supported"),
        };
    }

    public void Dispose()
    {
        if (_ownsSession) Session.Dispose();
    }
}

/// <summary>Sequences being decoded (one, or a batch side by side): their tokens so far (pads not included), each
/// row's left padding and, with a cache, the previous step's present tensors.</summary>
public sealed class DecodeState : IDisposable
{
    internal List<int>[] Rows { get; }
    internal List<int> Ids => Rows[0];
    /// <summary>Each row's pads before its first token (masked, not counted in its positions).</summary>
    internal int[] Padding { get; }
    internal bool UseCache { get; }
    internal int PastLength { get; private set; }
    internal OrtValue[]? Past { get; private set; }
    internal RunOptions DefaultRunOptions { get; } = new();
    IDisposableReadOnlyCollection<OrtValue>? _lastOutputs;
    /// <summary>Pasts this state made itself (<see cref="CausalLmSession.RepeatRows"/>), not a run's outputs.</summary>
    OrtValue[]? _ownedPast;

    public IReadOnlyList<int> Tokens => Ids;
    public bool UsesCache => UseCache;

    internal DecodeState(bool useCache, int rows = 1, IReadOnlyList<int>? leftPadding = null)
    {
        UseCache = useCache;
        Rows = [.. Enumerable.Range(0, rows).Select(_ => new List<int>())];
        Padding = leftPadding?.ToArray() ?? new int[rows];
    }

    /// <summary>Row r's length in the batch: its pads and its tokens.</summary>
    internal int Length(int row) => Padding[row] + Rows[row].Count;

    /// <summary>The presents become the next step's pasts; the previous outputs (the pasts just consumed) are freed.</summary>
    internal void KeepCache(IDisposableReadOnlyCollection<OrtValue> outputs, int length)
    {
        FreePast();
        _lastOutputs = outputs;
        Past = outputs.Skip(1).ToArray();
        PastLength = length;
    }

    /// <summary>Pasts copied from another state, freed by this one.</summary>
    internal void AdoptCache(OrtValue[] past, int length)
    {
        FreePast();
        _ownedPast = past;
        Past = past;
        PastLength = length;
    }

    void FreePast()
    {
        _lastOutputs?.Dispose();
        _lastOutputs = null;
        foreach (var v in _ownedPast ?? []) v.Dispose();
        _ownedPast = null;
    }

    public void Dispose()
    {
        FreePast();
        DefaultRunOptions.Dispose();
    }
}
