using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>TRL's DPO loss (DPOTrainer, loss_type "sigmoid") as graph nodes. The batch holds preference pairs as row
/// pairs, chosen then rejected (2i, 2i + 1); each row's log-probability is the sum of its counted tokens' log-probabilities
/// (the completion's: the prompt is labelled -100), as TRL's concatenated_forward sums them. With the reference model's
/// log-probabilities r fed as an input (<see cref="ReferenceInput"/>, one per row), the loss is the mean over pairs of
/// −log σ(β·((π_c − r_c) − (π_r − r_r))). Its gradient with respect to the logits is written in closed form, as
/// <see cref="CausalLmLoss"/>'s is: each row's log-probability has the gradient w·(onehot − softmax) of the causal-LM
/// loss, scaled by d loss / d π of that row.</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="SequenceLogProbs">each row's summed log-probability, [rows]</param>
/// <param name="Tokens">the token-level pieces (log-probabilities, targets, weights) the rows are summed from</param>
/// <param name="Margin">z = β·((π_c − r_c) − (π_r − r_r)) per pair, [pairs]</param>
/// <param name="PairWeight">1 for a pair whose chosen row counts tokens, 0 for a padding pair, divided by the number of
/// counted pairs (at least 1), [pairs]</param>
/// <param name="Beta">DPOConfig.beta</param>
public sealed record PreferenceLoss(string Loss, string SequenceLogProbs, CausalLmLoss Tokens, string Margin, string PairWeight, double Beta)
{
    /// <summary>The graph input of the reference model's per-row log-probabilities (float32, [rows]).</summary>
    public const string ReferenceInput = "reference_logps";

    /// <summary>Appends the DPO loss on top of <paramref name="tokens"/> (which must be a plain cross-entropy: no label
    /// smoothing).</summary>
    /// <param name="beta">DPOConfig.beta: how far the policy may move from the reference</param>
    public static PreferenceLoss Append(GraphEditor g, CausalLmLoss tokens, double beta)
    {
        if (tokens.Smoothing > 0) throw new OrtLoraException("the DPO loss takes the completions' log-probabilities; label smoothing does not apply to it");
        string Ints(params long[] v) => GraphConstants.Int64s(g, "dpo/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "dpo/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "dpo/" + op, attributes: attrs);

        var picked = Op("Squeeze", [tokens.TargetLogProb, Ints(-1)]); // [R, S]
        var logProbs = Op("ReduceSum", [Op("Mul", [picked, tokens.Weights]), Ints(1)], ("keepdims", 0L)); // [R]
        if (tokens.ElemType != (int)DT.Float) logProbs = Op("Cast", [logProbs], ("to", (long)DT.Float));
        var pairs = Op("Reshape", [Op("Sub", [logProbs, ReferenceInput]), Ints(-1, 2)]); // [P, 2]: chosen, rejected
        var chosen = Op("Gather", [pairs, GraphConstants.Scalar(g, "dpo/index", 0, (int)DT.Int64)], ("axis", 1L));
        var rejected = Op("Gather", [pairs, GraphConstants.Scalar(g, "dpo/index", 1, (int)DT.Int64)], ("axis", 1L));
        var margin = Op("Mul", [Op("Sub", [chosen, rejected]), Scalar(beta)]); // z, [P]
        // The mean over pairs, leaving out the empty pairs that pad a batch to a fixed shape (--pad-to-max-length).
        var rowCounts = Op("Min", [Op("ReduceSum", [tokens.Weights, Ints(1)], ("keepdims", 0L)), GraphConstants.Scalar(g, "dpo/one", 1, tokens.ElemType)]);
        if (tokens.ElemType != (int)DT.Float) rowCounts = Op("Cast", [rowCounts], ("to", (long)DT.Float));
        var counted = Op("Gather", [Op("Reshape", [rowCounts, Ints(-1, 2)]), GraphConstants.Scalar(g, "dpo/index", 0, (int)DT.Int64)], ("axis", 1L));
        var pairWeight = Op("Div", [counted, Op("Max", [Op("ReduceSum", [counted], ("keepdims", 0L)), Scalar(1)])]);
        // −log σ(z) = softplus(−z), which ORT computes without overflow for large |z|
        var loss = Op("ReduceSum", [Op("Mul", [Op("Softplus", [Op("Neg", [margin])]), pairWeight])], ("keepdims", 0L));
        return new PreferenceLoss(loss, logProbs, tokens, margin, pairWeight, beta);
    }

    /// <summary>d loss / d logits: Σ over rows of d loss / d π times d π / d logits = w·(onehot − softmax), i.e. the
    /// causal-LM gradient's form with −(d loss / d π)·w as each token's scale.</summary>
    public string AppendLogitsGradient(GraphEditor g)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "grad/dpo/ints", v);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/dpo/" + op, attributes: attrs);

        // d loss / d π_c = −β·σ(−z)/P and d loss / d π_r = +β·σ(−z)/P (P the counted pairs), interleaved back into rows;
        // the scale is its negative
        var share = Op("Mul", [Op("Mul", [Op("Sigmoid", [Op("Neg", [Margin])]), GraphConstants.Scalar(g, "grad/dpo/const", Beta, (int)DT.Float)]), PairWeight]);
        var column = Op("Unsqueeze", [share, Ints(1)]);
        var rowScale = Op("Reshape", [Op("Concat", [column, Op("Neg", [column])], ("axis", 1L)), Ints(-1)]);
        if (Tokens.ElemType != (int)DT.Float) rowScale = Op("Cast", [rowScale], ("to", (long)Tokens.ElemType));
        var tokenScale = Op("Mul", [Op("Unsqueeze", [rowScale, Ints(1)]), Tokens.Weights]);
        return Tokens.AppendLogitsGradient(g, tokenScale);
    }
}
