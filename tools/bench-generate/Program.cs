using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtLora.Deploy;
using OrtLora.Graphs;
using OrtLora.Inference;
using OrtLora.Lora;
using OrtLora.Onnx;

// Benchmarks for the deploy side, on a generated LLaMA-style model (graphs' builder, same weights every run):
//   1. generate: tokens/s with the KV cache vs recomputing the whole sequence every step;
//   2. runtime adapters: latency of one forward pass (and of cached decoding) with the LoRA branch kept and an ORT
//      adapter active, vs the same model merged;
//   3. a GRPO/RLOO rollout: groups of completions sampled at temperature 1, side by side (Generator.GenerateGroups),
//      the share of that time spent drawing tokens from the logits (Sampler), and scoring the completions (every
//      position's logits) one run each vs in right-padded batches.
// Usage: dotnet run -c Release --project tools/bench-generate -- [--shape tiny|smollm2-135m|llama-100m] [--new-tokens N]
//        [--prompt-tokens N] [--repeats N] [--threads N] [--groups N] [--group-size N] [--sample-tokens N]
var shapeName = Arg("--shape", "tiny");
int newTokens = int.Parse(Arg("--new-tokens", "128"));
int promptTokens = int.Parse(Arg("--prompt-tokens", "32"));
int repeats = int.Parse(Arg("--repeats", "3"));
int threads = int.Parse(Arg("--threads", "0"));
int groups = int.Parse(Arg("--groups", "4"));
int groupSize = int.Parse(Arg("--group-size", "8"));
int sampleTokens = int.Parse(Arg("--sample-tokens", "24"));
var shape = LlamaShape.Find(shapeName) ?? throw new ArgumentException($"unknown shape {shapeName}");
Console.WriteLine($"shape {shape.Name}: {shape.ParameterCount / 1e6:F1}M parameters, {Environment.ProcessorCount} cores, " +
                  $"prompt {promptTokens} tokens, {newTokens} new tokens, best of {repeats}");

SessionOptions Options()
{
    var o = OrtRun.DefaultOptions();
    if (threads > 0) o.IntraOpNumThreads = threads;
    return o;
}

var prompt = Enumerable.Range(0, promptTokens).Select(i => (i * 37 + 11) % (shape.VocabSize - 1)).ToArray();
var cachedPath = Save(LlamaGraph.Build(shape, 42, new LlamaOptions(WithKvCache: true, WithPositionIds: true, LazyWeights: shape != LlamaShape.Tiny)), "cached.onnx");

// 1. KV cache vs full recompute, same model file.
using (var session = new InferenceSession(cachedPath, Options()))
using (var generator = new Generator(session))
{
    var options = new GenerationOptions { MaxNewTokens = newTokens };
    var withCache = Best(() => generator.GenerateIds(prompt, options).Count());
    var without = Best(() => generator.GenerateIds(prompt, options with { UseKvCache = false }).Count());
    Console.WriteLine($"generate, kv cache:      {newTokens / withCache:F1} tokens/s ({withCache * 1000 / newTokens:F2} ms/token)");
    Console.WriteLine($"generate, full recompute: {newTokens / without:F1} tokens/s ({without * 1000 / newTokens:F2} ms/token)");
    Console.WriteLine($"  speed-up {without / withCache:F1}x");
}

// 2. Runtime adapter (LoRA branch in the graph, parameters fed by ORT's adapter API) vs merged weights.
var config = new LoraConfig { R = 16, LoraAlpha = 32, TargetModules = ["all-linear"], Seed = 1 };
using var injected = OnnxModel.Load(cachedPath);
LoraInjector.Inject(injected, config);
var adapterPath = Path.Combine(Path.GetTempPath(), $"ortlora-bench-{Environment.ProcessId}.onnx_adapter");
var rng = new Random(3);
var parameters = injected.Graph.Initializer.Where(t => LoraRuntimeForm.IsLoraParameter(t.Name)).ToDictionary(t => t.Name,
    t => (t.Name.EndsWith(".lora_B.weight") ? Enumerable.Range(0, (int)Tensors.ElementCount(t.Dims)).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.02f).ToArray() : injected.ReadFloats(t), t.Dims.ToArray()));
OnnxAdapterFile.Write(adapterPath, parameters);
foreach (var (name, (values, _)) in parameters) Tensors.SetRaw(injected.Graph.Initializer.First(t => t.Name == name), Tensors.FloatsToBytes(values, 1));
LoraRuntimeForm.MakeOverridable(injected);
var overridablePath = Save(injected, "overridable.onnx");
using var mergedModel = OnnxModel.Load(overridablePath);
foreach (var input in mergedModel.Graph.Input.Where(i => LoraRuntimeForm.IsLoraParameter(i.Name)).ToList()) mergedModel.Graph.Input.Remove(input);
LoraMerger.Merge(mergedModel);
var mergedPath = Save(mergedModel, "merged.onnx");

using (var adapterSession = new InferenceSession(overridablePath, Options()))
using (var mergedSession = new InferenceSession(mergedPath, Options()))
using (var adapter = OrtLoraAdapter.Create(adapterPath, null))
{
    var options = new GenerationOptions { MaxNewTokens = newTokens };
    using var adapterGen = new Generator(adapterSession);
    using var mergedGen = new Generator(mergedSession);
    var same = adapterGen.GenerateIds(prompt, options, adapter).SequenceEqual(mergedGen.GenerateIds(prompt, options));
    double Forward(InferenceSession s, OrtLoraAdapter? a)
    {
        using var lm = new CausalLmSession(s);
        using var runOptions = new RunOptions();
        if (a is not null) runOptions.AddActiveLoraAdapter(a);
        return Best(() => { using var st = lm.Start(); lm.Step(st, prompt, runOptions); return 1; });
    }
    double adapterForward = Forward(adapterSession, adapter), mergedForward = Forward(mergedSession, null);
    double adapterDecode = Best(() => adapterGen.GenerateIds(prompt, options, adapter).Count());
    double mergedDecode = Best(() => mergedGen.GenerateIds(prompt, options).Count());
    Console.WriteLine($"runtime adapter (r={config.R}, all-linear) vs merged, same greedy tokens: {same}");
    Console.WriteLine($"  prompt forward ({promptTokens} tokens): adapter {adapterForward * 1000:F2} ms, merged {mergedForward * 1000:F2} ms ({adapterForward / mergedForward:F2}x)");
    Console.WriteLine($"  cached decoding: adapter {newTokens / adapterDecode:F1} tokens/s, merged {newTokens / mergedDecode:F1} tokens/s ({adapterDecode / mergedDecode:F2}x time)");
}
// 3. A rollout: `groups` prompts (of different lengths) × `groupSize` completions of `sampleTokens` tokens, no stop token.
using (var session = new InferenceSession(cachedPath, Options()))
using (var generator = new Generator(session))
{
    var rollout = Enumerable.Range(0, groups).Select(g => ((IReadOnlyList<int>)prompt.Take(promptTokens - g).ToArray(), (IReadOnlyList<GenerationOptions>)
        [.. Enumerable.Range(0, groupSize).Select(k => new GenerationOptions { MaxNewTokens = sampleTokens, Temperature = 1.0, Seed = g * groupSize + k })])).ToList();
    List<List<(List<int> Ids, bool Truncated)>> completions = [];
    double seconds = Best(() => (completions = generator.GenerateGroups(rollout)).Count);
    // scoring the completions (what GRPO's KL and off-policy ratios need): one run per completion vs right-padded batches
    var sequences = completions.SelectMany((group, g) => group.Select(c => (IReadOnlyList<int>)[.. rollout[g].Item1, .. c.Ids])).ToList();
    using var lm = new CausalLmSession(session);
    double one = Best(() => sequences.Sum(q => lm.AllLogits(q).Length));
    int perBatch = (int)Math.Max(1, (32L << 20) / ((long)sequences.Max(q => q.Count) * shape.VocabSize));
    double batched = Best(() => sequences.Chunk(perBatch).Sum(b => lm.AllLogits(b).Length));
    // the draws alone: as many as the rollout makes, from logits of the model's vocabulary
    var logits = new float[shape.VocabSize];
    var draw = new Random(5);
    for (int i = 0; i < logits.Length; i++) logits[i] = (float)(draw.NextDouble() * 8 - 4);
    var sampler = new Sampler(new GenerationOptions { Temperature = 1.0, Seed = 1 });
    int draws = groups * groupSize * sampleTokens;
    double sampling = Best(() => { for (int i = 0; i < draws; i++) sampler.Next(logits); return draws; });
    Console.WriteLine($"rollout, {groups} prompts x {groupSize} completions x {sampleTokens} tokens (temperature 1): {seconds:F2} s, " +
        $"{draws / seconds:F0} tokens/s; drawing the tokens alone: {sampling * 1000:F0} ms ({sampling * 1e6 / draws:F0} us/token, vocabulary {shape.VocabSize})");
    Console.WriteLine($"scoring its {sequences.Count} sequences: one run each {one:F2} s, batches of up to {perBatch} rows {batched:F2} s ({one / batched:F1}x)");
}
File.Delete(adapterPath);
Directory.Delete(Path.Combine(Path.GetTempPath(), $"ortlora-bench-{Environment.ProcessId}"), recursive: true);

double Best(Func<int> run)
{
    run(); // warm-up: first run allocates and plans
    double best = double.MaxValue;
    for (int i = 0; i < repeats; i++)
    {
        var clock = Stopwatch.StartNew();
        run();
        best = Math.Min(best, clock.Elapsed.TotalSeconds);
    }
    return best;
}

string Save(OnnxModel model, string name)
{
    var dir = Path.Combine(Path.GetTempPath(), $"ortlora-bench-{Environment.ProcessId}");
    var path = Path.Combine(dir, name);
    model.Save(path);
    return path;
}

string Arg(string name, string fallback)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
