using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>TRL's DPO losses (DPOTrainer.dpo_loss) as graph nodes. The batch holds preference pairs as row pairs, chosen
/// then rejected (2i, 2i + 1); each row's log-probability π is the sum of its counted tokens' log-probabilities (the
/// completion's: the prompt is labelled -100), as TRL's concatenated_forward sums them (IPO: their mean). With the
/// reference model's log-probabilities r fed as an input (<see cref="ReferenceInput"/>, one per row) and
/// L = (π_c − r_c) − (π_r − r_r), z = β·L, each pair's loss is
/// <list type="bullet">
/// <item>sigmoid: −log σ(z)·(1 − ε) − log σ(−z)·ε</item>
/// <item>robust: (−log σ(z)·(1 − ε) + log σ(−z)·ε) / (1 − 2ε)</item>
/// <item>hinge: relu(1 − z)</item>
/// <item>ipo: (L − 1/(2β))²</item>
/// <item>orpo (ORPOTrainer, no reference): −β·log σ(log odds(π_c) − log odds(π_r)), log odds(π) = π − log(1 − e^π)</item>
/// <item>simpo (CPOTrainer, no reference): the sigmoid loss with z = β·(π_c − π_r) − γ</item>
/// <item>cpo (CPOTrainer's own loss_type sigmoid, no reference): the sigmoid loss with z = β·(π_c − π_r), π summed</item>
/// <item>with a = π_c − r_c and b = π_r − r_r (L = a − b): nca_pair −log σ(βa) − ½ log σ(−βa) − ½ log σ(−βb); bco_pair
/// −log σ(βa) − log σ(−βb) (TRL's current form, without a running mean); sppo_hard (a − 1/(2β))² + (b + 1/(2β))²; apo_zero
/// 1 − σ(βa) + σ(βb); apo_down σ(βa) + 1 − σ(z)</item>
/// <item>discopop: with m = σ(z/τ), softplus(−z)·(1 − m) + e^(−z)·m</item>
/// <item>exo_pair (EXO): KL((σ(z), σ(−z)) ‖ (1 − ε, ε)) = σ(z)·(log σ(z) − log(1 − ε)) + σ(−z)·(log σ(−z) − log ε)</item>
/// </list>
/// and the loss is their mean, plus α·(the chosen tokens' mean cross-entropy) with rpo_alpha (ORPO: α = 1; SimPO: cpo_alpha). Its gradient with respect
/// to the logits is written in closed form, as <see cref="CausalLmLoss"/>'s is: each row's summed log-probability has
/// the gradient w·(onehot − softmax), scaled by d loss / d (that sum).</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="SequenceLogProbs">each row's π, [rows]</param>
/// <param name="Tokens">the token-level pieces (log-probabilities, targets, weights) the rows are summed from; null when
/// the rows were summed chunk by chunk (<see cref="ChunkedLoss.AppendPreference"/>)</param>
/// <param name="Difference">L per pair (ORPO: the log odds ratio), [pairs]</param>
/// <param name="PairWeight">1 for a pair whose chosen row counts tokens, 0 for a padding pair, divided by the number of
/// counted pairs (at least 1), [pairs]</param>
/// <param name="RowLengths">each row's counted tokens (IPO's divisor), [rows]; null for the summing losses</param>
/// <param name="ChosenTokens">with rpo_alpha: the chosen rows' counted tokens, at least 1, scalar</param>
/// <param name="Pairs">the compared values (a, b) per pair, [pairs, 2]; null for KTO</param>
public sealed record PreferenceLoss(string Loss, string SequenceLogProbs, CausalLmLoss? Tokens, string Difference, string PairWeight,
    string? RowLengths, string? ChosenTokens, PreferenceOptions Options, string? Pairs = null, string? PairLengths = null)
{
    /// <summary>With an f-divergence other than reverse KL: each row's log-ratio π − r before the remap, [rows].</summary>
    public string? Ratios { get; init; }

    /// <summary>The graph input of the reference model's per-row log-probabilities (float32, [rows]).</summary>
    public const string ReferenceInput = "reference_logps";
    /// <summary>KTO's graph input of each row's role: 1 desirable, -1 undesirable, 0 a KL row or padding (float32, [rows]).</summary>
    public const string RolesInput = "preference_roles";
    /// <summary>With <see cref="PreferenceOptions.RowTerms"/>: each row's weight w in the loss's Σ w·π (float32, [rows]).</summary>
    public const string RowWeightsInput = "row_weights";

    /// <summary>Appends the loss on top of <paramref name="tokens"/> (a plain cross-entropy: no label smoothing).</summary>
    public static PreferenceLoss Append(GraphEditor g, CausalLmLoss tokens, PreferenceOptions options)
    {
        if (tokens.Smoothing > 0) throw new OrtLoraException("the DPO loss takes the completions' log-probabilities; label smoothing does not apply to it");
        return FromRows(g, SumRows(g, tokens.TargetLogProb, tokens.Weights), CountRows(g, tokens.Weights), tokens.ElemType, options) with { Tokens = tokens };
    }

    /// <summary>Each row's Σ w·log p(target) of <paramref name="targetLogProb"/> [R, S, 1] and <paramref name="weights"/> [R, S], [R].</summary>
    public static string SumRows(GraphEditor g, string targetLogProb, string weights)
    {
        var ints = GraphConstants.Int64s(g, "dpo/ints", -1);
        var picked = g.Add("Squeeze", [targetLogProb, ints], name: "dpo/Squeeze");
        return g.Add("ReduceSum", [g.Add("Mul", [picked, weights], name: "dpo/Mul"), GraphConstants.Int64s(g, "dpo/ints", 1)], name: "dpo/ReduceSum", attributes: ("keepdims", 0L));
    }

    /// <summary>Each row's counted tokens, [R].</summary>
    public static string CountRows(GraphEditor g, string weights) =>
        g.Add("ReduceSum", [weights, GraphConstants.Int64s(g, "dpo/ints", 1)], name: "dpo/ReduceSum", attributes: ("keepdims", 0L));

    /// <summary>The loss from the rows' summed log-probabilities and counted tokens ([R] each, of type
    /// <paramref name="elemType"/>).</summary>
    public static PreferenceLoss FromRows(GraphEditor g, string rowSums, string rowLengths, int elemType, PreferenceOptions options)
    {
        options.Validate();
        string Ints(params long[] v) => GraphConstants.Int64s(g, "dpo/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "dpo/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "dpo/" + op, attributes: attrs);
        string Float(string value) => elemType == (int)DT.Float ? value : Op("Cast", [value], ("to", (long)DT.Float));
        string Column(string pairs, long index) => Op("Gather", [pairs, GraphConstants.Scalar(g, "dpo/index", index, (int)DT.Int64)], ("axis", 1L));

        var sums = Float(rowSums);
        var lengths = Float(rowLengths);
        if (options.Unpaired) return Kto(g, sums, lengths, options);
        var logProbs = options.Averages ? Op("Div", [sums, Op("Max", [lengths, Scalar(1)])]) : sums;
        // ORPO compares log odds, π − log(1 − e^π), SimPO π itself, the others π − r
        var compared = options.UsesReference ? Op("Sub", [logProbs, ReferenceInput])
            : options.LossType is "simpo" or "cpo" ? logProbs
            : Op("Sub", [logProbs, Op("Log", [Op("Sub", [Scalar(1), Op("Exp", [logProbs])])])]);
        var ratios = compared;
        if (options.RemapsRatios) compared = FDivergenceScore(g, compared, options, "dpo/f_divergence");
        var pairs = Op("Reshape", [compared, Ints(-1, 2)]); // [P, 2]: chosen, rejected
        var difference = Op("Sub", [Column(pairs, 0), Column(pairs, 1)]); // L, [P]
        var z = Margin(g, difference, options, "dpo");

        // The mean over pairs, leaving out the empty pairs that pad a batch to a fixed shape (--pad-to-max-length).
        var counted = Column(Op("Reshape", [Op("Min", [lengths, Scalar(1)]), Ints(-1, 2)]), 0);
        var pairWeight = Op("Div", [counted, Op("Max", [Op("ReduceSum", [counted], ("keepdims", 0L)), Scalar(1)])]);
        // −log σ(z) = softplus(−z), which ORT computes without overflow for large |z|
        double e = options.LabelSmoothing, beta = options.Beta;
        var (a, b) = (Column(pairs, 0), Column(pairs, 1));
        var pairLengths = Op("Reshape", [Op("Max", [lengths, Scalar(1)]), Ints(-1, 2)]); // each completion's tokens, at least 1
        string LogSigmoidLoss(string x) => Op("Softplus", [Op("Neg", [x])]); // −log σ(x)
        string Scaled(string x) => Op("Mul", [x, Scalar(beta)]);
        string PerPair(string type) => type switch
        {
            "nca_pair" => Op("Add", [LogSigmoidLoss(Scaled(a)), Op("Mul", [Op("Add", [Op("Softplus", [Scaled(a)]), Op("Softplus", [Scaled(b)])]), Scalar(0.5)])]),
            "bco_pair" => Op("Add", [LogSigmoidLoss(Scaled(a)), Op("Softplus", [Scaled(b)])]),
            "sppo_hard" => Op("Add", [Op("Pow", [Op("Sub", [a, Scalar(0.5 / beta)]), Scalar(2)]), Op("Pow", [Op("Add", [b, Scalar(0.5 / beta)]), Scalar(2)])]),
            "apo_zero" => Op("Add", [Op("Sub", [Scalar(1), Op("Sigmoid", [Scaled(a)])]), Op("Sigmoid", [Scaled(b)])]),
            "apo_down" => Op("Add", [Op("Sigmoid", [Scaled(a)]), Op("Sub", [Scalar(1), Op("Sigmoid", [z])])]),
            "discopop" => Op("Add", [Op("Mul", [LogSigmoidLoss(z), Op("Sub", [Scalar(1), Modulation(z)])]), Op("Mul", [Op("Exp", [Op("Neg", [z])]), Modulation(z)])]),
            // log σ(±z) = −softplus(∓z)
            "exo_pair" => Op("Add", [
                Op("Mul", [Op("Sigmoid", [z]), Op("Sub", [Op("Neg", [Op("Softplus", [Op("Neg", [z])])]), Scalar(Math.Log(1 - e))])]),
                Op("Mul", [Op("Sigmoid", [Op("Neg", [z])]), Op("Sub", [Op("Neg", [Op("Softplus", [z])]), Scalar(Math.Log(e))])])]),
            "hinge" => Op("Relu", [Op("Sub", [Scalar(1), z])]),
            "ipo" => Op("Pow", [Op("Sub", [difference, Scalar(1 / (2 * options.Beta))]), Scalar(2)]),
            "orpo" => Op("Mul", [Op("Softplus", [Op("Neg", [difference])]), Scalar(options.Beta)]),
            "robust" => Op("Div", [Op("Sub", [Op("Mul", [Op("Softplus", [Op("Neg", [z])]), Scalar(1 - e)]), Op("Mul", [Op("Softplus", [z]), Scalar(e)])]), Scalar(1 - 2 * e)]),
            // the ratios per completion token: −log σ(β·(a/n_c − b/n_r))
            "sigmoid_norm" => LogSigmoidLoss(Scaled(Op("Sub", [Op("Div", [a, Column(pairLengths, 0)]), Op("Div", [b, Column(pairLengths, 1)])]))),
            _ => SmoothedSigmoidLoss(z),
        };
        string SmoothedSigmoidLoss(string x) => e == 0 ? Op("Softplus", [Op("Neg", [x])])
            : Op("Add", [Op("Mul", [Op("Softplus", [Op("Neg", [x])]), Scalar(1 - e)]), Op("Mul", [Op("Softplus", [x]), Scalar(e)])]);
        // Σ_k weight_k · (pair losses of type k, averaged); TRL's sft is the chosen cross-entropy, added below
        string? loss = null;
        var lossTypes = options.Losses;
        for (int k = 0; k < lossTypes.Count; k++)
        {
            var type = lossTypes[k];
            if (type == "sft") continue;
            string term;
            if (PreferenceOptions.Sorts(type))
            {
                var sorted = SortedDelta(g, type, pairs, logProbs, pairWeight, "dpo/aot");
                term = Op("ReduceSum", [Op("Mul", [SmoothedSigmoidLoss(Scaled(sorted.Delta)), sorted.Weight])], ("keepdims", 0L));
            }
            else term = Op("ReduceSum", [Op("Mul", [PerPair(type), pairWeight])], ("keepdims", 0L));
            if (options.WeightOf(k) != 1) term = Op("Mul", [term, Scalar(options.WeightOf(k))]);
            loss = loss is null ? term : Op("Add", [loss, term]);
        }
        loss ??= Op("Mul", [Op("ReduceSum", [pairWeight], ("keepdims", 0L)), Scalar(0)]); // sft alone: no pair term
        string? chosenTokens = null;
        if (options.ChosenNllWeight > 0)
        {
            // RPO's and ORPO's α · the chosen completions' cross-entropy, averaged over their tokens (TRL's policy_nll_loss)
            string ChosenTotal(string rows) => Op("ReduceSum", [Column(Op("Reshape", [rows, Ints(-1, 2)]), 0)], ("keepdims", 0L));
            chosenTokens = Op("Max", [ChosenTotal(lengths), Scalar(1)]);
            var nll = Op("Div", [Op("Neg", [ChosenTotal(sums)]), chosenTokens]);
            loss = Op("Add", [loss, Op("Mul", [nll, Scalar(options.ChosenNllWeight)])]);
        }
        // XPO: + Σ w·π, w = α / pairs on the rows that hold the reference model's completion
        if (options.RowTerms) loss = Op("Add", [loss, Op("ReduceSum", [Op("Mul", [RowWeightsInput, logProbs])], ("keepdims", 0L))]);
        return new PreferenceLoss(loss, logProbs, null, difference, pairWeight, options.Averages ? lengths : null, chosenTokens, options, pairs, pairLengths)
            { Ratios = options.RemapsRatios ? ratios : null };

        // discopop's mix, σ(z / τ)
        string Modulation(string x) => Op("Sigmoid", [Op("Div", [x, Scalar(options.DiscopopTau)])]);
    }

    /// <summary>d loss / d logits: for each row, d loss / d (its summed log-probability) times w·(onehot − softmax), i.e.
    /// the causal-LM gradient's form with −(d loss / d sum)·w as each token's scale.</summary>
    public string AppendLogitsGradient(GraphEditor g)
    {
        var tokens = Tokens ?? throw new InvalidOperationException("the rows were summed chunk by chunk: their gradient is ChunkedLoss's");
        var rowScale = AppendRowScale(g, tokens.ElemType);
        var tokenScale = g.Add("Mul", [g.Add("Unsqueeze", [rowScale, GraphConstants.Int64s(g, "grad/dpo/ints", 1)], name: "grad/dpo/Unsqueeze"), tokens.Weights],
            name: "grad/dpo/Mul");
        return tokens.AppendLogitsGradient(g, tokenScale);
    }

    /// <summary>TRL's kto_loss over rows of roles ±1 (examples) and 0 (KL rows): with each row's ratio π − r and the KL
    /// estimate kl = max(0, mean ratio of the KL rows), treated as a constant as TRL detaches it, an example's loss is
    /// w·(1 − σ(β·role·(ratio − kl))), w the desirable or undesirable weight, averaged over the examples.</summary>
    static PreferenceLoss Kto(GraphEditor g, string logProbs, string lengths, PreferenceOptions options)
    {
        string Scalar(double v) => GraphConstants.Scalar(g, "kto/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "kto/" + op, attributes: attrs);
        string Sum(string value) => Op("ReduceSum", [value], ("keepdims", 0L));

        var ratio = Op("Sub", [logProbs, ReferenceInput]);
        var klRows = Op("Mul", [Op("Cast", [Op("Equal", [RolesInput, Scalar(0)])], ("to", (long)DT.Float)), Op("Min", [lengths, Scalar(1)])]);
        var kl = Op("Max", [Op("Div", [Sum(Op("Mul", [ratio, klRows])), Op("Max", [Sum(klRows), Scalar(1)])]), Scalar(0)]);
        var signed = Op("Mul", [RolesInput, Op("Sub", [ratio, kl])]); // role·(ratio − kl)
        var weight = Op("Add", [Op("Mul", [Op("Relu", [RolesInput]), Scalar(options.DesirableWeight)]),
            Op("Mul", [Op("Relu", [Op("Neg", [RolesInput])]), Scalar(options.UndesirableWeight)])]);
        var rowWeight = Op("Div", [weight, Op("Max", [Sum(Op("Abs", [RolesInput])), Scalar(1)])]);
        var perRow = Op("Sub", [Scalar(1), Op("Sigmoid", [Op("Mul", [signed, Scalar(options.Beta)])])]);
        var loss = Sum(Op("Mul", [perRow, rowWeight]));
        return new PreferenceLoss(loss, logProbs, null, signed, rowWeight, null, null, options);
    }

    /// <summary>AOT (TRL's aot and aot_unpaired): δ_i = u_(i) − v_(i), the i-th smallest of u less the i-th smallest of v,
    /// with u = π_c − π_r and v = r_c − r_r (aot), or u = π_c − r_c and v = π_r − r_r (aot_unpaired). Padding pairs
    /// (weight 0) are moved past every real one, in both sorts, so the real pairs' quantiles are compared with each
    /// other; each position's weight is then 1/N for the N real pairs and 0 after them.</summary>
    static (string Delta, string Weight, string OrderU, string OrderV) SortedDelta(GraphEditor g, string type, string pairs, string logProbs,
        string pairWeight, string scope)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: scope + "/" + op, attributes: attrs);
        string Ints(params long[] v) => GraphConstants.Int64s(g, scope + "/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, scope + "/const", v, (int)DT.Float);
        string Column(string m, long index) => Op("Gather", [m, GraphConstants.Scalar(g, scope + "/index", index, (int)DT.Int64)], ("axis", 1L));
        string u, v;
        if (type == "aot")
        {
            var (policy, reference) = (Op("Reshape", [logProbs, Ints(-1, 2)]), Op("Reshape", [ReferenceInput, Ints(-1, 2)]));
            (u, v) = (Op("Sub", [Column(policy, 0), Column(policy, 1)]), Op("Sub", [Column(reference, 0), Column(reference, 1)]));
        }
        else (u, v) = (Column(pairs, 0), Column(pairs, 1));
        var count = Op("Shape", [pairWeight]);
        var padding = Op("Mul", [Op("Cast", [Op("Equal", [pairWeight, Scalar(0)])], ("to", (long)DT.Float)), Scalar(1e30)]);
        (string Values, string Indices) Sort(string x, bool largest)
        {
            var outputs = new[] { g.Unique(scope + "/TopK_values"), g.Unique(scope + "/TopK_indices") };
            g.Add("TopK", [x, count], name: scope + "/TopK", outputs: outputs, attributes: [("axis", 0L), ("largest", largest ? 1L : 0L), ("sorted", 1L)]);
            return (outputs[0], outputs[1]);
        }
        var sortedU = Sort(Op("Add", [u, padding]), largest: false);
        var sortedV = Sort(Op("Add", [v, padding]), largest: false);
        return (Op("Sub", [sortedU.Values, sortedV.Values]), Sort(pairWeight, largest: true).Values, sortedU.Indices, sortedV.Indices);
    }

    /// <summary>The f-divergence's score of each log-ratio ρ (<see cref="PreferenceOptions.FDivergenceType"/>).</summary>
    static string FDivergenceScore(GraphEditor g, string ratio, PreferenceOptions options, string scope)
    {
        string Op(string op, string[] inputs) => g.Add(op, inputs, name: scope + "/" + op);
        string Scalar(double v) => GraphConstants.Scalar(g, scope + "/const", v, (int)DT.Float);
        return options.FDivergenceType switch
        {
            "forward_kl" => Op("Neg", [Op("Exp", [Op("Neg", [ratio])])]),
            "js_divergence" => Op("Neg", [Op("Softplus", [Op("Neg", [ratio])])]), // log σ(ρ)
            _ => Op("Div", [Op("Exp", [Op("Min", [Op("Mul", [ratio, Scalar(options.FAlphaDivergenceCoef - 1)]), Scalar(80)])]), Scalar(options.FAlphaDivergenceCoef - 1)]),
        };
    }

    /// <summary>d score / d ρ: e^(−ρ), σ(−ρ), or e^((α−1)ρ) below the cap (0 above it, where the score is constant).</summary>
    static string FDivergenceSlope(GraphEditor g, string ratio, PreferenceOptions options, string scope)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: scope + "/" + op, attributes: attrs);
        string Scalar(double v) => GraphConstants.Scalar(g, scope + "/const", v, (int)DT.Float);
        if (options.FDivergenceType == "forward_kl") return Op("Exp", [Op("Neg", [ratio])]);
        if (options.FDivergenceType == "js_divergence") return Op("Sigmoid", [Op("Neg", [ratio])]);
        var exponent = Op("Mul", [ratio, Scalar(options.FAlphaDivergenceCoef - 1)]);
        return Op("Mul", [Op("Exp", [Op("Min", [exponent, Scalar(80)])]), Op("Cast", [Op("Less", [exponent, Scalar(80)])], ("to", (long)DT.Float))]);
    }

    /// <summary>z = β·L, less SimPO's target margin γ.</summary>
    static string Margin(GraphEditor g, string difference, PreferenceOptions options, string scope)
    {
        var z = g.Add("Mul", [difference, GraphConstants.Scalar(g, scope + "/const", options.Beta, (int)DT.Float)], name: scope + "/Mul");
        return options.LossType != "simpo" ? z
            : g.Add("Sub", [z, GraphConstants.Scalar(g, scope + "/const", options.SimpoGamma, (int)DT.Float)], name: scope + "/Sub");
    }

    /// <summary>−d loss / d (each row's summed log-probability), [R], of type <paramref name="elemType"/>: each token's
    /// scale in the causal-LM gradient's form is this times its weight.</summary>
    public string AppendRowScale(GraphEditor g, int elemType)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "grad/dpo/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "grad/dpo/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/dpo/" + op, attributes: attrs);

        double beta = Options.Beta, e = Options.LabelSmoothing;
        if (Options.Unpaired)
        {
            // KTO: d loss / d ratio = −w·β·σ(z)·σ(−z)·role per example row (z = β·role·(ratio − kl)); the scale is its negative
            var zk = Op("Mul", [Difference, Scalar(beta)]);
            var kto = Op("Mul", [Op("Mul", [Op("Mul", [Op("Sigmoid", [zk]), Op("Sigmoid", [Op("Neg", [zk])])]), Scalar(beta)]),
                Op("Mul", [PairWeight, RolesInput])]);
            return elemType == (int)DT.Float ? kto : Op("Cast", [kto], ("to", (long)elemType));
        }
        // Per loss type, d (its weighted mean over pairs) / d π_c and / d π_r, per pair: from d / d L (±), or, where the loss
        // weighs a and b apart, from d / d a and d / d b; summed with the types' weights.
        var z = Margin(g, Difference, Options, "grad/dpo");
        string Sig(string x) => Op("Sigmoid", [x]);
        string SigSlope(string x) => Op("Mul", [Sig(x), Sig(Op("Neg", [x]))]); // σ'(x) = σ(x)·σ(−x)
        string Scaled(string x) => Op("Mul", [x, Scalar(beta)]);
        // d/dx of the (smoothed) sigmoid loss −log σ(x)·(1 − ε) − log σ(−x)·ε
        string SigmoidSlope(string x) => Op("Sub", [Op("Mul", [Sig(x), Scalar(e)]), Op("Mul", [Sig(Op("Neg", [x])), Scalar(1 - e)])]);
        string Column(long index) => Op("Gather", [Pairs!, GraphConstants.Scalar(g, "grad/dpo/index", index, (int)DT.Int64)], ("axis", 1L));
        (string Chosen, string Rejected) Slopes(string type)
        {
            if (PreferenceOptions.SeparateRatios(type))
            {
                var (a, b) = (Scaled(Column(0)), Scaled(Column(1)));
                var (da, db) = type switch
                {
                    // d/dx −log σ(x) = σ(x) − 1, d/dx −log σ(−x) = σ(x)
                    "nca_pair" => (Op("Sub", [Op("Mul", [Sig(a), Scalar(1.5)]), Scalar(1)]), Op("Mul", [Sig(b), Scalar(0.5)])),
                    "bco_pair" => (Op("Sub", [Sig(a), Scalar(1)]), Sig(b)),
                    // the squares' slopes, already per unit of a and b: divided by β here, as β multiplies below
                    "sppo_hard" => (Op("Mul", [Op("Sub", [Column(0), Scalar(0.5 / beta)]), Scalar(2 / beta)]), Op("Mul", [Op("Add", [Column(1), Scalar(0.5 / beta)]), Scalar(2 / beta)])),
                    "apo_zero" => (Op("Neg", [SigSlope(a)]), SigSlope(b)),
                    _ => (Op("Sub", [SigSlope(a), SigSlope(z)]), SigSlope(z)), // apo_down
                };
                return (Op("Mul", [Scaled(da), PairWeight]), Op("Mul", [Scaled(db), PairWeight]));
            }
            if (PreferenceOptions.Sorts(type))
            {
                // each sorted position's slope goes back to the pair that sorted there (the sort's indices permute the pairs)
                var sorted = SortedDelta(g, type, Pairs!, SequenceLogProbs, PairWeight, "grad/dpo/aot");
                var atPositions = Op("Mul", [Scaled(SigmoidSlope(Scaled(sorted.Delta))), sorted.Weight]);
                var zeros = Op("ConstantOfShape", [Op("Shape", [PairWeight])], ("value", Tensors.FromFloats("value", [1], [0f], (int)DT.Float)));
                var first = Op("ScatterElements", [zeros, sorted.OrderU, atPositions], ("axis", 0L));
                // aot: u = π_c − π_r; aot_unpaired: u = π_c − r_c and v = π_r − r_r, with δ = u − v
                return type == "aot" ? (first, Op("Neg", [first]))
                    : (first, Op("ScatterElements", [zeros, sorted.OrderV, Op("Neg", [atPositions])], ("axis", 0L)));
            }
            if (type == "sigmoid_norm")
            {
                string Lengths(long index) => Op("Gather", [PairLengths!, GraphConstants.Scalar(g, "grad/dpo/index", index, (int)DT.Int64)], ("axis", 1L));
                var zn = Scaled(Op("Sub", [Op("Div", [Column(0), Lengths(0)]), Op("Div", [Column(1), Lengths(1)])]));
                var perUnit = Op("Mul", [Scaled(Op("Neg", [Sig(Op("Neg", [zn]))])), PairWeight]); // d/dx −log σ(x) = −σ(−x), times β
                return (Op("Div", [perUnit, Lengths(0)]), Op("Neg", [Op("Div", [perUnit, Lengths(1)])]));
            }
            var slope = type switch
            {
                "hinge" => Op("Mul", [Op("Cast", [Op("Less", [z, Scalar(1)])], ("to", (long)DT.Float)), Scalar(-beta)]),
                "ipo" => Op("Mul", [Op("Sub", [Difference, Scalar(1 / (2 * beta))]), Scalar(2)]),
                "orpo" => Op("Mul", [Op("Sigmoid", [Op("Neg", [Difference])]), Scalar(-beta)]),
                "robust" => Op("Mul", [Op("Add", [Op("Mul", [Op("Sigmoid", [Op("Neg", [z])]), Scalar(1 - e)]), Op("Mul", [Op("Sigmoid", [z]), Scalar(e)])]),
                    Scalar(-beta / (1 - 2 * e))]),
                "discopop" => Scaled(DiscopopSlope(z)),
                // d/dz = σ(z)·σ(−z)·(z − log(1 − ε) + log ε), since log σ(z) − log σ(−z) = z
                "exo_pair" => Scaled(Op("Mul", [SigSlope(z), Op("Add", [z, Scalar(Math.Log(e) - Math.Log(1 - e))])])),
                _ => Scaled(SigmoidSlope(z)),
            };
            // d loss / d π: +slope for the chosen row, −slope for the rejected, weighted by the pair's share
            var weighted = Op("Mul", [slope, PairWeight]);
            return (weighted, Op("Neg", [weighted]));
        }
        string? chosen = null, rejected = null;
        var lossTypes = Options.Losses;
        for (int k = 0; k < lossTypes.Count; k++)
        {
            if (lossTypes[k] == "sft") continue; // in ChosenNllScale
            var (c, r) = Slopes(lossTypes[k]);
            if (Options.WeightOf(k) != 1) (c, r) = (Op("Mul", [c, Scalar(Options.WeightOf(k))]), Op("Mul", [r, Scalar(Options.WeightOf(k))]));
            (chosen, rejected) = chosen is null ? (c, r) : (Op("Add", [chosen, c]), Op("Add", [rejected!, r]));
        }
        // the scale is −d loss / d π, rows interleaved chosen, rejected (sft alone: none from the pairs)
        var rowScale = chosen is null ? Op("Mul", [SequenceLogProbs, Scalar(0)])
            : Op("Reshape", [Op("Neg", [Op("Concat", [Op("Unsqueeze", [chosen, Ints(1)]), Op("Unsqueeze", [rejected!, Ints(1)])], ("axis", 1L))]), Ints(-1)]);
        // f-DPO: the losses read scores f(ρ), so d / d π = d / d score · f'(ρ)
        if (Ratios is not null) rowScale = Op("Mul", [rowScale, FDivergenceSlope(g, Ratios, Options, "grad/dpo/f_divergence")]);
        // ORPO: d (log odds) / d π = 1 / (1 − e^π)
        if (Options.LossType == "orpo") rowScale = Op("Div", [rowScale, Op("Sub", [Scalar(1), Op("Exp", [SequenceLogProbs])])]);
        if (Options.RowTerms) rowScale = Op("Sub", [rowScale, RowWeightsInput]); // −d(Σ w·π)/dπ, before a mean's division below
        if (RowLengths is not null) rowScale = Op("Div", [rowScale, Op("Max", [RowLengths, Scalar(1)])]); // IPO's and ORPO's π is a mean
        if (ChosenTokens is not null) rowScale = Op("Add", [rowScale, ChosenNllScale()]);
        return elemType == (int)DT.Float ? rowScale : Op("Cast", [rowScale], ("to", (long)elemType));

        // RPO, ORPO: + α / (chosen tokens) on each chosen row (d loss / d sum is −α / N there)
        string ChosenNllScale()
        {
            // shaped like the pairs by the pair weights, which every loss uses (L is not computed where the loss takes a and b)
            string Filled(float value) => Op("Unsqueeze", [Op("ConstantOfShape", [Op("Shape", [PairWeight])],
                ("value", Tensors.FromFloats("value", [1], [value], (int)DT.Float))), Ints(1)]);
            var chosenRows = Op("Reshape", [Op("Concat", [Filled(1), Filled(0)], ("axis", 1L)), Ints(-1)]); // 1, 0, 1, 0, ...
            return Op("Mul", [chosenRows, Op("Div", [Scalar(Options.ChosenNllWeight), ChosenTokens!])]);
        }

        // d/dz of discopop's softplus(−z)·(1 − m) + e^(−z)·m, m = σ(z/τ): (σ(z) − 1)(1 − m) − e^(−z)·m + (e^(−z) − softplus(−z))·m(1 − m)/τ
        string DiscopopSlope(string x)
        {
            var m = Sig(Op("Div", [x, Scalar(Options.DiscopopTau)]));
            var oneMinusM = Op("Sub", [Scalar(1), m]);
            var exp = Op("Exp", [Op("Neg", [x])]);
            var logistic = Op("Mul", [Op("Sub", [Sig(x), Scalar(1)]), oneMinusM]);
            var mix = Op("Mul", [Op("Sub", [exp, Op("Softplus", [Op("Neg", [x])])]), Op("Div", [Op("Mul", [m, oneMinusM]), Scalar(Options.DiscopopTau)])]);
            return Op("Add", [Op("Sub", [logistic, Op("Mul", [exp, m])]), mix]);
        }
    }
}
