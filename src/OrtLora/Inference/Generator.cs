using Microsoft.ML.OnnxRuntime;

namespace OrtLora.Inference;

/// <summary>Autoregressive generation with an ONNX causal LM on ONNX Runtime: the prompt in one step, then one token
/// per step through the key/value cache when the model has one (or a full recompute when it has none), stopping at
/// EOS or after max_new_tokens. Optionally with an ORT runtime adapter (.onnx_adapter) active.</summary>
public sealed partial class Generator : IDisposable
{
    readonly CausalLmSession _model;

    public Generator(string modelPath, SessionOptions? options = null) => _model = CausalLmSession.Load(modelPath, options);
    public Generator(InferenceSession session) => _model = new CausalLmSession(session);

    public bool HasKvCache => _model.HasKvCache;
    public CausalLmSession Model => _model;
    /// <summary>Tokens produced by the latest (or running) generation, for throughput reports.</summary>
    public int TokensGenerated { get; private set; }

    /// <summary>Generated token ids, yielded as they are produced (the prompt is not repeated).</summary>
    public IEnumerable<int> GenerateIds(IReadOnlyList<int> promptIds, GenerationOptions options, OrtLoraAdapter? adapter = null)
    {
        if (promptIds.Count == 0) throw new OrtLoraException("the prompt is empty (no tokens to start from)");
        TokensGenerated = 0;
        var sampler = new Sampler(options);
        var stop = options.StopTokenIds.ToHashSet();
        using var state = _model.Start(options.UseKvCache);
        using var runOptions = new RunOptions();
        if (adapter is not null) runOptions.AddActiveLoraAdapter(adapter);
        var logits = _model.Step(state, promptIds, runOptions);
        var seen = options.RepetitionPenalty == 1.0 ? null : promptIds.ToHashSet();
        for (int produced = 0; produced < options.MaxNewTokens; produced++)
        {
            int next = sampler.Next(logits, seen);
            seen?.Add(next);
            TokensGenerated++;
            yield return next;
            if (stop.Contains(next) || produced + 1 == options.MaxNewTokens) yield break;
            logits = _model.Step(state, [next], runOptions);
        }
    }

    /// <summary>Generated text in printable pieces (multi-byte characters complete), stopping at the tokenizer's EOS.
    /// The EOS token itself is not printed.</summary>
    public IEnumerable<string> GenerateText(ITextTokenizer tokenizer, string prompt, GenerationOptions options, OrtLoraAdapter? adapter = null) =>
        GenerateText(tokenizer, tokenizer.Encode(prompt), options, adapter);

    /// <summary>The same from prompt ids (a prompt rendered by <see cref="PromptFormat"/>).</summary>
    public IEnumerable<string> GenerateText(ITextTokenizer tokenizer, IReadOnlyList<int> promptIds, GenerationOptions options, OrtLoraAdapter? adapter = null)
    {
        var stops = options.StopTokenIds.ToHashSet();
        if (tokenizer.EosId is { } eos) stops.Add(eos);
        var streamer = new TextStreamer(tokenizer);
        foreach (var id in GenerateIds(promptIds, options with { StopTokenIds = stops }, adapter))
        {
            if (stops.Contains(id)) break;
            var piece = streamer.Push(id);
            if (piece.Length > 0) yield return piece;
        }
        var rest = streamer.Flush();
        if (rest.Length > 0) yield return rest;
    }

    public void Dispose() => _model.Dispose();
}
