using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace OrtLora.Inference;

/// <summary>A causal LM's ONNX interface as exporters write it: input_ids, optional attention_mask and position_ids,
/// optional key/value cache (Optimum and ORT GenAI both name it past_key_values.N.key/value in, present.N.key/value
/// out; older exports use past.N / present.N), logits out. Runs one decoding step at a time for batch size 1.</summary>
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

    /// <summary>Starts <paramref name="rows"/> sequences decoded side by side, one run for all of them per step (batch =
    /// rows). The rows always have equal lengths (a shared prompt, then one token each per step), so nothing is padded.</summary>
    public DecodeState StartGroup(int rows, bool useCache = true) => new(useCache && HasKvCache, rows);

    /// <summary>Appends each row's tokens (equal counts) and returns each row's logits for its next token.</summary>
    public float[][] StepGroup(DecodeState state, IReadOnlyList<IReadOnlyList<int>> newTokens, RunOptions? runOptions = null) =>
        Advance(state, newTokens, runOptions, logits => LastRows(logits, newTokens.Count));

    /// <summary>The logits at every position of <paramref name="ids"/> in one run without the cache, [ids.Count × vocabulary]
    /// row-major: row t predicts token t + 1 (scoring a sequence).</summary>
    public float[] AllLogits(IReadOnlyList<int> ids, RunOptions? runOptions = null)
    {
        using var state = Start(useCache: false);
        return Advance(state, [ids], runOptions, AllRows);
    }

    T Advance<T>(DecodeState state, IReadOnlyList<IReadOnlyList<int>> newTokens, RunOptions? runOptions, Func<OrtValue, T> read)
    {
        int rows = state.Rows.Length;
        if (newTokens.Count != rows || newTokens.Any(t => t.Count != newTokens[0].Count))
            throw new ArgumentException($"a step of {rows} rows needs as many token lists, all of one length");
        if (newTokens[0].Count == 0) throw new ArgumentException("a step needs at least one token");
        foreach (var tokens in newTokens)
            if (VocabSize is { } vocab && tokens.FirstOrDefault(t => t < 0 || t >= vocab, -1) is var bad && bad != -1)
                throw new OrtLoraException($"token id {bad} is outside the model's vocabulary of {vocab} (wrong tokenizer for this model?)");
        for (int r = 0; r < rows; r++) state.Rows[r].AddRange(newTokens[r]);
        int total = state.Rows[0].Count;
        int pastLength = state.UseCache ? state.PastLength : 0;
        var fed = state.Rows.SelectMany(row => row.Skip(pastLength)).ToList();
        int fedLength = total - pastLength;
        var names = new List<string>();
        var values = new List<OrtValue>();
        var owned = new List<OrtValue>();
        void Feed(string name, OrtValue value, bool own = true) { names.Add(name); values.Add(value); if (own) owned.Add(value); }
        try
        {
            Feed(_idsName, IntTensor(_idsName, [.. fed.Select(i => (long)i)], rows));
            if (_maskName is not null) Feed(_maskName, IntTensor(_maskName, Enumerable.Repeat(1L, rows * total).ToArray(), rows));
            if (_positionName is not null)
                Feed(_positionName, IntTensor(_positionName, [.. Enumerable.Range(0, rows * fedLength).Select(i => (long)(pastLength + i % fedLength))], rows));
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

/// <summary>Sequences being decoded (one, or a group side by side): their tokens so far and, with a cache, the previous
/// step's present tensors.</summary>
public sealed class DecodeState : IDisposable
{
    internal List<int>[] Rows { get; }
    internal List<int> Ids => Rows[0];
    internal bool UseCache { get; }
    internal int PastLength { get; private set; }
    internal OrtValue[]? Past { get; private set; }
    internal RunOptions DefaultRunOptions { get; } = new();
    IDisposableReadOnlyCollection<OrtValue>? _lastOutputs;

    public IReadOnlyList<int> Tokens => Ids;
    public bool UsesCache => UseCache;

    internal DecodeState(bool useCache, int rows = 1)
    {
        UseCache = useCache;
        Rows = [.. Enumerable.Range(0, rows).Select(_ => new List<int>())];
    }

    /// <summary>The presents become the next step's pasts; the previous outputs (the pasts just consumed) are freed.</summary>
    internal void KeepCache(IDisposableReadOnlyCollection<OrtValue> outputs, int length)
    {
        _lastOutputs?.Dispose();
        _lastOutputs = outputs;
        Past = outputs.Skip(1).ToArray();
        PastLength = length;
    }

    public void Dispose()
    {
        _lastOutputs?.Dispose();
        DefaultRunOptions.Dispose();
    }
}
