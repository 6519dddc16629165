using InferenceSession = Microsoft.ML.OnnxRuntime.InferenceSession;
using OrtValue = Microsoft.ML.OnnxRuntime.OrtValue;
using OrtLora.Autodiff;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;

namespace OrtLora.Tests;

/// <summary>The DPO loss of the training graphs (<see cref="PreferenceLoss"/>) against TRL's formula computed here from
/// the logits of plain ONNX Runtime runs of the policy and the reference model; its gradients against central
/// differences.</summary>
public partial class EnginePreferenceLossTests
{
    const int Rows = 4, Length = 20, PromptLength = 7;
    const double Beta = 0.5;

    /// <summary>Two preference pairs (rows chosen, rejected, chosen, rejected): a shared prompt per pair, labelled -100,
    /// completions of different lengths, the last row padded.</summary>
    static Batch PairBatch(int rows = Rows)
    {
        var rng = new Random(11);
        int vocab = Graphs.LlamaShape.Tiny.VocabSize;
        var ids = new long[rows * Length];
        var mask = new long[rows * Length];
        var labels = new long[rows * Length];
        int[] lengths = [20, 16, 18, 12, 19, 14, 17, 15];
        for (int row = 0; row < rows; row++)
            for (int t = 0; t < Length; t++)
            {
                int i = row * Length + t;
                // the prompt is the pair's: the rejected row repeats the chosen row's first tokens
                ids[i] = row % 2 == 1 && t < PromptLength ? ids[(row - 1) * Length + t] : rng.Next(vocab);
                mask[i] = t < lengths[row] ? 1 : 0;
                labels[i] = t < PromptLength || t >= lengths[row] ? -100 : ids[i];
            }
        return new Batch(ids, mask, labels, rows, Length);
    }

    /// <summary>Each row's Σ log p(label) over its labelled positions, from plain logits (position t predicts t + 1).</summary>
    static double[] RowLogps(OnnxModel model, Batch batch) => RowSums(model, batch).Sums;

    static (double[] Sums, int[] Lengths) RowSums(OnnxModel model, Batch batch)
    {
        var feeds = new Dictionary<string, HostTensor> { ["input_ids"] = HostTensor.Of(batch.InputIds, batch.Shape), ["attention_mask"] = HostTensor.Of(batch.AttentionMask, batch.Shape) };
        var logits = OrtRun.Run(model, feeds, ["logits"])["logits"].Floats;
        int rows = batch.BatchSize, vocab = logits.Length / (rows * Length);
        var result = new double[rows];
        var lengths = new int[rows];
        for (int row = 0; row < rows; row++)
            for (int t = 0; t + 1 < Length; t++)
            {
                long label = batch.Labels[row * Length + t + 1];
                if (label == -100) continue;
                lengths[row]++;
                var z = logits.AsSpan((row * Length + t) * vocab, vocab);
                double max = double.NegativeInfinity, sum = 0;
                foreach (var v in z) max = Math.Max(max, v);
                foreach (var v in z) sum += Math.Exp(v - max);
                result[row] += z[(int)label] - max - Math.Log(sum);
            }
        return (result, lengths);
    }

    static double LogSigmoid(double x) => -Math.Log(1 + Math.Exp(-x));
    static double Sigmoid(double x) => 1 / (1 + Math.Exp(-x));

    /// <summary>TRL's DPOTrainer.dpo_loss written out, over the rows' sums (IPO: means) and lengths, for each loss type of
    /// a list weighted by loss_weights; RPO (and DPO's sft loss) add their weight times the chosen tokens' mean cross-entropy.</summary>
    static double TrlLoss(PreferenceOptions o, (double[] Sums, int[] Lengths) policy, (double[] Sums, int[] Lengths) reference)
    {
        // DPOTrainer's IPO, ORPO and SimPO average over the completion's tokens; online DPO's IPO sums (SumLogps)
        double Logp((double[] Sums, int[] Lengths) rows, int row) => o.LossType is "ipo" && !o.SumLogps || o.LossType is "orpo" or "simpo" ? rows.Sums[row] / rows.Lengths[row] : rows.Sums[row];
        double LogOdds(int row) => Logp(policy, row) - Math.Log(1 - Math.Exp(Logp(policy, row))); // ORPO: π − log1p(−e^π)
        double e = o.LabelSmoothing, beta = o.Beta;
        int pairs = policy.Sums.Length / 2;
        double Chosen((double[] Sums, int[] Lengths) rows, int pair) => Logp(rows, 2 * pair);
        double Rejected((double[] Sums, int[] Lengths) rows, int pair) => Logp(rows, 2 * pair + 1);
        double SigmoidLoss(double z) => -LogSigmoid(z) * (1 - e) - LogSigmoid(-z) * e;
        // AOT: torch.sort of each side, then the sigmoid loss of β·(u sorted − v sorted), position by position
        double[] Sorted(Func<int, double> value) => [.. Enumerable.Range(0, pairs).Select(value).Order()];
        double[] PairLosses(string type)
        {
            if (type is "aot" or "aot_unpaired")
            {
                var (u, v) = type == "aot"
                    ? (Sorted(p => Chosen(policy, p) - Rejected(policy, p)), Sorted(p => Chosen(reference, p) - Rejected(reference, p)))
                    : (Sorted(p => Chosen(policy, p) - Chosen(reference, p)), Sorted(p => Rejected(policy, p) - Rejected(reference, p)));
                return [.. u.Zip(v, (x, y) => SigmoidLoss(beta * (x - y)))];
            }
            // f-DPO's scores of the log-ratios (TRL's f_divergence_type), which L compares
            double Score(double ratio) => o.FDivergenceType switch
            {
                "forward_kl" => -Math.Exp(-ratio),
                "js_divergence" => LogSigmoid(ratio),
                "alpha_divergence" => Math.Exp(Math.Min((o.FAlphaDivergenceCoef - 1) * ratio, 80)) / (o.FAlphaDivergenceCoef - 1),
                _ => ratio,
            };
            return [.. Enumerable.Range(0, pairs).Select(pair =>
            {
                double a = Chosen(policy, pair) - Chosen(reference, pair), b = Rejected(policy, pair) - Rejected(reference, pair);
                double logits = Score(a) - Score(b);
                return type switch
                {
                    "sigmoid" => SigmoidLoss(beta * logits),
                    "robust" => (-LogSigmoid(beta * logits) * (1 - e) + LogSigmoid(-beta * logits) * e) / (1 - 2 * e),
                    "hinge" => Math.Max(0, 1 - beta * logits),
                    "orpo" => -beta * LogSigmoid(LogOdds(2 * pair) - LogOdds(2 * pair + 1)),
                    // CPOTrainer's simpo: logits = π_c − π_r − γ/β, then the sigmoid loss of β·logits
                    "simpo" => SigmoidLoss(beta * (Chosen(policy, pair) - Rejected(policy, pair) - o.SimpoGamma / beta)),
                    // CPOTrainer's default loss: the sigmoid loss of β·(π_c − π_r) on sums, no reference
                    "cpo" => SigmoidLoss(beta * (Chosen(policy, pair) - Rejected(policy, pair))),
                    "nca_pair" => -LogSigmoid(beta * a) - 0.5 * LogSigmoid(-beta * a) - 0.5 * LogSigmoid(-beta * b),
                    "bco_pair" => -LogSigmoid(beta * a) - LogSigmoid(-beta * b),
                    "sppo_hard" => Math.Pow(a - 0.5 / beta, 2) + Math.Pow(b + 0.5 / beta, 2),
                    "apo_zero" => 1 - Sigmoid(beta * a) + Sigmoid(beta * b),
                    "apo_down" => Sigmoid(beta * a) + 1 - Sigmoid(beta * logits),
                    "exo_pair" => Sigmoid(beta * logits) * (LogSigmoid(beta * logits) - Math.Log(1 - e)) + Sigmoid(-beta * logits) * (LogSigmoid(-beta * logits) - Math.Log(e)),
                    "discopop" => -LogSigmoid(beta * logits) * (1 - Sigmoid(beta * logits / o.DiscopopTau)) + Math.Exp(-beta * logits) * Sigmoid(beta * logits / o.DiscopopTau),
                    "sft" => 0, // the cross-entropy below
                    "sigmoid_norm" => -LogSigmoid(beta * (a / policy.Lengths[2 * pair] - b / policy.Lengths[2 * pair + 1])),
                    _ => Math.Pow(logits - 1 / (2 * beta), 2),
                };
            })];
        }
        var types = o.LossType.Split(',');
        double total = types.Select((type, k) => (o.LossWeights?[k] ?? 1) * PairLosses(type).Average()).Sum();
        double chosenNll = -Enumerable.Range(0, pairs).Sum(p => policy.Sums[2 * p]), chosenTokens = Enumerable.Range(0, pairs).Sum(p => policy.Lengths[2 * p]);
        double sft = types.Select((type, k) => type == "sft" ? o.LossWeights?[k] ?? 1 : 0).Sum();
        return total + (o.LossType switch { "orpo" => 1, "simpo" or "cpo" => o.CpoAlpha, _ => o.RpoAlpha + sft }) * chosenNll / chosenTokens;
    }

    /// <summary>XPO's row term: α / pairs on the rows holding the reference's completion (here one of each pair, and
    /// a negative weight to test the sign).</summary>
    static readonly float[] RowWeights = [0, 0.3f, -0.2f, 0];

    static Batch Batch(PreferenceOptions options) => options.RowTerms ? PairBatch() with { RowWeights = RowWeights } : PairBatch();

    static readonly PreferenceOptions[] LossTypes =
    [
        new(Beta), new(Beta, LabelSmoothing: 0.1), new(Beta, "robust", LabelSmoothing: 0.1), new(0.02, "hinge"), new(0.05, "ipo"), new(0.05, "ipo", SumLogps: true), new(Beta, RowTerms: true), new(0.05, "ipo", SumLogps: true, RowTerms: true), new(0.05, "ipo", RowTerms: true),
        new(Beta, RpoAlpha: 0.5), new(Beta, "orpo"), new(2.0, "simpo", LabelSmoothing: 0.1), new(2.0, "simpo", SimpoGamma: 1, CpoAlpha: 0),
        new(Beta, "cpo"), new(Beta, "cpo", LabelSmoothing: 0.1, CpoAlpha: 0.5),
        new(Beta, "nca_pair"), new(Beta, "bco_pair", RpoAlpha: 0.5), new(Beta, "sppo_hard"), new(Beta, "apo_zero"), new(Beta, "apo_down"),
        new(Beta, "discopop"), new(Beta, "discopop", DiscopopTau: 1), new(Beta, "exo_pair", LabelSmoothing: 0.05), new(Beta, "exo_pair", LabelSmoothing: 0.2),
        new(Beta, "aot"), new(Beta, "aot_unpaired", LabelSmoothing: 0.1), new(Beta, "sft"), new(2.0, "sigmoid_norm"),
        // MPO (TRL's loss_type list with loss_weights), and a list of every other kind
        new(Beta, "sigmoid,bco_pair,sft", LossWeights: [0.8, 0.2, 1.0]),
        new(Beta, "hinge,nca_pair,aot_unpaired,exo_pair,discopop", LabelSmoothing: 0.1, LossWeights: [0.3, 1, 0.5, 2, 0.7], RpoAlpha: 0.2),
        new(Beta, "sppo_hard,apo_zero,apo_down,robust,aot,sigmoid_norm", LabelSmoothing: 0.1),
        // f-DPO: the scores of the log-ratios remapped by f' (TRL's f_divergence_type)
        new(Beta, FDivergenceType: "forward_kl"), new(Beta, "hinge", FDivergenceType: "js_divergence"),
        new(Beta, "robust", LabelSmoothing: 0.1, FDivergenceType: "alpha_divergence", FAlphaDivergenceCoef: 0.5),
        new(Beta, "exo_pair,discopop", LabelSmoothing: 0.1, FDivergenceType: "js_divergence", RpoAlpha: 0.3),
    ];

    /// <summary>How far B moves the policy: less for f-DPO, whose scores grow as e^(−ρ) (forward KL) or saturate
    /// (JS) at the log-ratios a larger move gives.</summary>
    static float Moved(PreferenceOptions options) => options.RemapsRatios ? 0.05f : 0.3f;

    static OnnxModel Injected()
    {
        var model = OnnxModel.Load(LoraTestKit.Tiny("model.onnx"));
        LoraInjector.Inject(model, new LoraConfig { TargetModules = ["q_proj", "v_proj", "down_proj"], R = 4 });
        return model;
    }

    static Dictionary<string, float[]> LoraValues(OnnxModel model, TrainingSession session) =>
        session.ParameterNames.ToDictionary(p => p, p => model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == p)));

    [Test]
    public void StartsAtLogTwoWithThePolicyAsItsOwnReference()
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: new PreferenceOptions(Beta)));
        var batch = PairBatch();
        var (loss, _) = session.Evaluate(batch);
        Assert.That(loss, Is.EqualTo(Math.Log(2)).Within(1e-6));
        var plain = RowLogps(model, batch);
        Assert.That(session.LastSequenceLogps, Is.EqualTo(session.LastReferenceLogps));
        for (int row = 0; row < Rows; row++)
            Assert.That(session.LastSequenceLogps[row], Is.EqualTo(plain[row]).Within(1e-4 * Math.Abs(plain[row])), $"row {row}");
        Assert.That(plain.Min(), Is.LessThan(-10), "rows score many tokens");
    }

    /// <summary>Each of TRL's loss types (and label smoothing, RPO, ORPO) against TRL's formula on the logits of plain runs of
    /// the moved and the starting model; the rows' π and r (IPO: means over the completion's tokens) likewise.</summary>
    [TestCaseSource(nameof(LossTypes))]
    public void LossAndRowsEqualTrlsFormulaOnPlainLogits(PreferenceOptions options)
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var batch = Batch(options);
        var reference = RowSums(model, batch);
        var unmoved = TrlLoss(options, reference, reference);
        LoraTestKit.RandomizeB(model, std: Moved(options));
        session.SetParameters(LoraValues(model, session));
        var policy = RowSums(model, batch);

        var (loss, _) = session.Evaluate(batch);
        var expected = TrlLoss(options, policy, reference)
            + (options.RowTerms ? Enumerable.Range(0, Rows).Sum(r => RowWeights[r] * policy.Sums[r] / (options.Averages ? policy.Lengths[r] : 1)) : 0);
        Assert.That(Math.Abs(expected - unmoved), Is.GreaterThan(1e-3), "the policy has moved away from the reference");
        Assert.That(loss, Is.EqualTo(expected).Within(2e-5 * Math.Max(1, Math.Abs(expected))));
        for (int row = 0; row < Rows; row++)
        {
            double divisor = options.Averages ? policy.Lengths[row] : 1;
            double expectedReference = options.UsesReference ? reference.Sums[row] / divisor : 0; // ORPO has none
            Assert.That(session.LastReferenceLogps[row], Is.EqualTo(expectedReference).Within(1e-4 * Math.Abs(expectedReference)), $"reference row {row}");
            Assert.That(session.LastSequenceLogps[row], Is.EqualTo(policy.Sums[row] / divisor).Within(1e-4 * Math.Abs(policy.Sums[row] / divisor)), $"policy row {row}");
        }
    }

    /// <summary>AOT compares quantiles, not pairs: on this batch of four pairs the sorts reorder them, so the loss is not
    /// what the pairs' own sigmoid losses give; it is what the sorted formula gives, and its gradients match central
    /// differences.</summary>
    [TestCase("aot")]
    [TestCase("aot_unpaired")]
    public void AotComparesTheSortedRatios(string lossType)
    {
        using var model = Injected();
        var options = new PreferenceOptions(Beta, lossType);
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var batch = PairBatch(rows: 8);
        var reference = RowSums(model, batch);
        LoraTestKit.RandomizeB(model, std: 0.3f);
        session.SetParameters(LoraValues(model, session));
        var policy = RowSums(model, batch);
        double sorted = TrlLoss(options, policy, reference);
        // unsorted: aot is then the sigmoid loss itself; aot_unpaired likewise (u − v = L pair by pair)
        double unsorted = TrlLoss(new PreferenceOptions(Beta), policy, reference);
        Assert.That(Math.Abs(sorted - unsorted), Is.GreaterThan(1e-3), "the sort changes the comparison on this batch");
        Assert.That(session.Evaluate(batch).Loss, Is.EqualTo(sorted).Within(2e-5 * Math.Max(1, Math.Abs(sorted))));
        // the gradient goes back through the sorts' permutations
        var values = LoraValues(model, session);
        var (_, gradients) = session.ComputeGradients(batch);
        MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch with { ReferenceLogps = null }).Loss);
    }

    /// <summary>The closed-form gradient through the rows' log-probabilities, against central differences of the loss
    /// the eval graph computes, on the entries with the largest gradients of A and B.</summary>
    [TestCaseSource(nameof(LossTypes))]
    public void GradientsMatchCentralDifferences(PreferenceOptions options)
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options));
        var batch = Batch(options);
        LoraTestKit.RandomizeB(model, std: Moved(options));
        var values = LoraValues(model, session);
        session.SetParameters(values);
        var (_, gradients) = session.ComputeGradients(batch);
        Assert.That(gradients.Values.Sum(g => g.Sum(x => (double)x * x)), Is.GreaterThan(1e-8));
        MatchCentralDifferences(session, values, gradients, () => session.Evaluate(batch with { ReferenceLogps = null }).Loss);
    }

    /// <summary>Each of the two largest gradient entries of every first-layer parameter against the central difference
    /// of <paramref name="loss"/> (read at the session's parameters) around <paramref name="values"/>.</summary>
    /// <param name="checkedParameter">which parameters to check (default: the first layer's)</param>
    /// <param name="step">the central difference's step</param>
    internal static void MatchCentralDifferences(TrainingSession session, Dictionary<string, float[]> values, Dictionary<string, float[]> gradients, Func<double> loss,
        Func<string, bool>? checkedParameter = null, float step = 2e-2f)
    {
        int checkedEntries = 0;
        foreach (var name in session.ParameterNames.Where(checkedParameter ?? (p => p.Contains("layers.0."))))
        {
            var grad = gradients[name];
            foreach (int index in Enumerable.Range(0, grad.Length).OrderByDescending(i => Math.Abs(grad[i])).Take(2))
            {
                float h = step;
                double LossAt(float delta)
                {
                    var moved = values.ToDictionary(kv => kv.Key, kv => (float[])kv.Value.Clone());
                    moved[name][index] += delta;
                    session.SetParameters(moved);
                    return loss();
                }
                double numeric = (LossAt(h) - LossAt(-h)) / (2 * h);
                Assert.That(grad[index], Is.EqualTo(numeric).Within(0.03 * Math.Abs(numeric) + 2e-5), $"{name}[{index}]");
                checkedEntries++;
            }
        }
        Assert.That(checkedEntries, Is.GreaterThanOrEqualTo(8));
        session.SetParameters(values);
    }

    /// <summary>A batch padded to a fixed shape (--pad-to-max-length) ends in empty pairs: the loss is the mean over the
    /// pairs that count tokens, and the gradients are those of the unpadded batch (AOT: the empty pairs sort last).</summary>
    [TestCase("sigmoid")]
    [TestCase("aot")]
    [TestCase("aot_unpaired")]
    public void EmptyPaddingPairsCountForNothing(string lossType)
    {
        using var model = Injected();
        using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: new PreferenceOptions(Beta, lossType)));
        LoraTestKit.RandomizeB(model, std: 0.3f);
        session.SetParameters(LoraValues(model, session));
        var batch = PairBatch();
        // two more rows: each attends to one pad token and scores nothing, as Batching.Pad fills a fixed shape
        var padded = new Batch([.. batch.InputIds, .. new long[2 * Length]],
            [.. batch.AttentionMask, .. Enumerable.Range(0, 2 * Length).Select(i => i % Length == 0 ? 1L : 0L)],
            [.. batch.Labels, .. Enumerable.Repeat(-100L, 2 * Length)], Rows + 2, Length);
        var (loss, gradients) = session.ComputeGradients(batch);
        var (paddedLoss, paddedGradients) = session.ComputeGradients(padded);
        Assert.That(Math.Abs(loss - Math.Log(2)), Is.GreaterThan(0.01));
        Assert.That(paddedLoss, Is.EqualTo(loss).Within(1e-6));
        foreach (var (name, grad) in gradients)
        {
            double scale = grad.Max(x => Math.Abs(x));
            Assert.That(scale, Is.GreaterThan(0), name);
            for (int i = 0; i < grad.Length; i++)
                Assert.That(paddedGradients[name][i], Is.EqualTo(grad[i]).Within(1e-4 * scale), $"{name}[{i}]");
        }
    }

    /// <summary>CUDA graphs' host half (<see cref="FixedAddresses"/>): the reference forward runs as its own captured
    /// graph of the eval session, bound to the starting parameters' buffers; every replay finds its buffers, and training
    /// through them is training as before, bit for bit.</summary>
    [Test]
    public void FixedAddressesTrainBitForBitWithTheReferenceAsItsOwnGraph()
    {
        using var model = Injected();
        var options = new TrainingSessionOptions(new AdamWOptions(), StaticShapes: true, StateInSessionMemory: true, Preference: new PreferenceOptions(Beta));
        using var plain = new TrainingSession(model, options);
        using var graphs = new TrainingSession(model, options with { CudaGraphs = true });
        var first = new Dictionary<(InferenceSession, int), List<(string Name, OrtValue Value)>>();
        var ids = new HashSet<int>();
        graphs.RunObserver = (session, id, bound) =>
        {
            ids.Add(id);
            if (id < 0) return;
            if (!first.TryGetValue((session, id), out var captured)) { first[(session, id)] = [.. bound]; return; }
            Assert.That(bound.Select(b => b.Name), Is.EqualTo(captured.Select(b => b.Name)), $"graph {id}");
            for (int i = 0; i < bound.Count; i++)
                Assert.That(ReferenceEquals(bound[i].Value, captured[i].Value), $"graph {id}: '{bound[i].Name}' moved");
        };
        var batch = PairBatch();
        var losses = new List<(float, float)>();
        for (int i = 0; i < 3; i++) losses.Add((plain.Step(batch, 1e-2f, 1f), graphs.Step(batch, 1e-2f, 1f)));
        for (int i = 0; i < 2; i++) losses.Add((plain.Evaluate(batch).Loss, graphs.Evaluate(batch).Loss));
        foreach (var (expected, actual) in losses) Assert.That(actual, Is.EqualTo(expected));
        Assert.That(losses[0].Item1, Is.EqualTo(Math.Log(2)).Within(1e-6));
        Assert.That(losses[^1].Item1, Is.LessThan(losses[0].Item1 - 0.05), "the steps lower the loss");
        Assert.That(ids, Does.Contain(2), "the reference forward's own graph");
        Assert.That(graphs.LastReferenceLogps, Is.EqualTo(plain.LastReferenceLogps));
    }

    /// <summary>fp16 compute: the half model starts as its own reference too, and the loss of moved parameters is float32's
    /// within half precision's error.</summary>
    [Test]
    public void HalfPrecisionComputesTheSameLoss()
    {
        using var model = Injected();
        using var single = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: new PreferenceOptions(Beta)));
        using var half = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Compute: ComputeType.Float16, Preference: new PreferenceOptions(Beta)));
        var batch = PairBatch();
        Assert.That(half.Evaluate(batch).Loss, Is.EqualTo(Math.Log(2)).Within(1e-6));
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var values = LoraValues(model, single);
        single.SetParameters(values);
        half.SetParameters(values);
        var expected = single.Evaluate(batch).Loss;
        Assert.That(Math.Abs(expected - Math.Log(2)), Is.GreaterThan(0.05));
        // The loss is near 0 here (-log σ(z) ≈ e^-z), so compare what it is a function of: the rewards' margin z = β·Δ, in
        // nats, within twice float16's epsilon (measured 9e-4 of z = 6.84; the rotary tables in float16, as Hugging Face
        // casts them, account for 4e-4 of it).
        static double Margin(double loss) => -Math.Log(double.ExpM1(loss));
        Assert.That(Margin(half.Evaluate(batch).Loss), Is.EqualTo(Margin(expected)).Within(2e-3 * Margin(expected)));
        var (_, halfGradients) = half.ComputeGradients(batch);
        var (_, singleGradients) = single.ComputeGradients(batch);
        foreach (var (name, grad) in singleGradients)
            Assert.That(Shared.MaxAbsDiff(halfGradients[name], grad), Is.LessThan(2e-2 * grad.Max(x => Math.Abs(x)) + 1e-7), name);
    }

    /// <summary>The loss taken in chunks through the lm_head (two passes: the rows' sums, then each chunk's gradient with
    /// the rows' scales) equals the whole loss: loss, rows and gradients, for each loss type.</summary>
    [TestCaseSource(nameof(LossTypes))]
    public void ChunkedLossEqualsTheWholeLoss(PreferenceOptions options)
    {
        using var model = Injected();
        LoraTestKit.RandomizeB(model, std: Moved(options));
        using var whole = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options, LossChunks: 1));
        using var chunked = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), Preference: options, LossChunks: 3));
        Assert.That(chunked.Graph.Gradients.Graph.Node.Count(n => n.Name.Contains("/chunk2/grad")), Is.GreaterThan(0), "the second pass's last chunk");
        Assert.That(chunked.Graph.Eval.Graph.Node.Count(n => n.Name.Contains("/chunk2")), Is.GreaterThan(0), "eval in chunks too");
        // a moved policy, with the starting model as the reference
        var moved = whole.GetParameters().ToDictionary(kv => kv.Key, kv => kv.Value.Select((v, i) => v + 0.02f * MathF.Sin(i)).ToArray());
        whole.SetParameters(moved);
        chunked.SetParameters(moved);
        var batch = Batch(options);
        var (wholeLoss, wholeGradients) = whole.ComputeGradients(batch);
        var (chunkedLoss, chunkedGradients) = chunked.ComputeGradients(batch);
        Assert.That(chunkedLoss, Is.EqualTo(wholeLoss).Within(1e-5 * Math.Max(1, Math.Abs(wholeLoss))));
        Assert.That(chunked.Evaluate(batch).Loss, Is.EqualTo(whole.Evaluate(batch).Loss).Within(1e-5 * Math.Max(1, Math.Abs(wholeLoss))));
        for (int row = 0; row < Rows; row++)
            Assert.That(chunked.LastSequenceLogps[row], Is.EqualTo(whole.LastSequenceLogps[row]).Within(1e-5 * Math.Abs(whole.LastSequenceLogps[row])));
        foreach (var (name, grad) in wholeGradients)
            Assert.That(Shared.MaxAbsDiff(chunkedGradients[name], grad), Is.LessThan(1e-4 * grad.Max(x => Math.Abs(x)) + 1e-9), name);
    }

    /// <summary>Gradient checkpointing recomputes the forward in the backward; the DPO gradients stay those of the graph
    /// that stores every activation.</summary>
    [Test]
    public void CheckpointedGradientsEqualStoredOnes()
    {
        using var model = Injected();
        LoraTestKit.RandomizeB(model, std: 0.3f);
        var batch = PairBatch();
        (float Loss, Dictionary<string, float[]> Gradients) Run(bool checkpointing)
        {
            using var session = new TrainingSession(model, new TrainingSessionOptions(new AdamWOptions(), GradientCheckpointing: checkpointing,
                Preference: new PreferenceOptions(Beta)));
            session.SetParameters(session.GetParameters().ToDictionary(kv => kv.Key, kv => kv.Value.Select((v, i) => v + 0.02f * MathF.Cos(i)).ToArray()));
            Assert.That(Checkpoints.CountSegments(session.Graph.Gradients.Graph), checkpointing ? Is.GreaterThan(0) : Is.EqualTo(0));
            return session.ComputeGradients(batch);
        }
        var stored = Run(false);
        var recomputed = Run(true);
        Assert.That(Math.Abs(stored.Loss - Math.Log(2)), Is.GreaterThan(1e-3));
        Assert.That(recomputed.Loss, Is.EqualTo(stored.Loss).Within(1e-6));
        foreach (var (name, grad) in stored.Gradients)
            Assert.That(Shared.MaxAbsDiff(recomputed.Gradients[name], grad), Is.LessThanOrEqualTo(1e-5f * grad.Max(Math.Abs) + 1e-9f), name);
    }
}
