using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>TRL's RewardTrainer loss (Bradley–Terry) as graph nodes. A sequence classifier's logits [R, 1] hold one
/// score per row; rows come in pairs, chosen then rejected (2i, 2i + 1). With c and r a pair's scores, its loss is
/// −log σ(c − r − m), m the pair's margin (TRL's optional margin column, fed as <see cref="MarginsInput"/>; 0 without
/// one), plus center_rewards_coefficient·(c + r)² (Eisenstein et al., 2023: rewards centred on zero); the
/// loss is the mean over the pairs. Pairs whose rows have no token (filler rows of a batch padded to a fixed shape)
/// are left out of the mean. The gradient with respect to the logits is written in closed form:
/// d/dc = (−σ(r + m − c) + 2k·(c + r)) / P, d/dr = (σ(r + m − c) + 2k·(c + r)) / P.</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="Rewards">each row's score, [R] (float32)</param>
/// <param name="Logits">the logits the loss reads, [R, 1]</param>
/// <param name="PairWeight">1 / P for a counted pair, 0 for a filler pair, [P]</param>
/// <param name="Pairs">the scores as [P, 2]: chosen, rejected</param>
/// <param name="Beyond">r + m − c per pair, [P]</param>
public sealed record RewardLoss(string Loss, string Rewards, string Logits, string PairWeight, string Pairs, string Beyond, double CenterCoefficient)
{
    /// <summary>The graph input of each row's margin (float32, [rows]): the pair's on its chosen row, 0 on the rejected.</summary>
    public const string MarginsInput = "reward_margins";

    /// <param name="logits">float32 [R, 1]</param>
    /// <param name="labels">the batch's labels [R, S]: a row with no label other than -100 is a filler row</param>
    public static RewardLoss Append(GraphEditor g, string logits, string labels, double centerCoefficient)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "reward/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "reward/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "reward/" + op, attributes: attrs);
        string Column(string pairs, long index) => Op("Gather", [pairs, GraphConstants.Scalar(g, "reward/index", index, (int)DT.Int64)], ("axis", 1L));

        var rewards = Op("Reshape", [logits, Ints(-1)]);
        var pairs = Op("Reshape", [rewards, Ints(-1, 2)]);
        var (chosen, rejected) = (Column(pairs, 0), Column(pairs, 1));
        var hasTokens = Op("Cast", [Op("Not", [Op("Equal", [labels, GraphConstants.Scalar(g, "reward/ignore", CausalLmLoss.IgnoreIndex, (int)DT.Int64)])])], ("to", (long)DT.Float));
        // 1 for a row with a label (ReduceSum, not ReduceMax: its axes are an input from opset 13, ReduceMax's from 18)
        var rowCounted = Op("Min", [Op("ReduceSum", [hasTokens, Ints(1)], ("keepdims", 0L)), Scalar(1)]);
        var counted = Column(Op("Reshape", [rowCounted, Ints(-1, 2)]), 0);
        var pairWeight = Op("Div", [counted, Op("Max", [Op("ReduceSum", [counted], ("keepdims", 0L)), Scalar(1)])]);
        var margin = Column(Op("Reshape", [MarginsInput, Ints(-1, 2)]), 0);
        var beyond = Op("Sub", [Op("Add", [rejected, margin]), chosen]);
        var perPair = Op("Softplus", [beyond]); // −log σ(c − r − m)
        if (centerCoefficient > 0)
            perPair = Op("Add", [perPair, Op("Mul", [Op("Pow", [Op("Add", [chosen, rejected]), Scalar(2)]), Scalar(centerCoefficient)])]);
        var loss = Op("ReduceSum", [Op("Mul", [perPair, pairWeight])], ("keepdims", 0L));
        return new RewardLoss(loss, rewards, logits, pairWeight, pairs, beyond, centerCoefficient);
    }

    /// <summary>Appends the number of counted pairs whose chosen row scores higher (TRL's accuracy times the pairs), a
    /// float32 scalar.</summary>
    public string AppendAccurate(GraphEditor g)
    {
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "reward/accuracy/" + op, attributes: attrs);
        string Column(long index) => Op("Gather", [Pairs, GraphConstants.Scalar(g, "reward/index", index, (int)DT.Int64)], ("axis", 1L));
        string Float(string value) => Op("Cast", [value], ("to", (long)DT.Float));
        var counted = Float(Op("Greater", [PairWeight, GraphConstants.Scalar(g, "reward/const", 0, (int)DT.Float)]));
        return Op("ReduceSum", [Op("Mul", [Float(Op("Greater", [Column(0), Column(1)])), counted])], ("keepdims", 0L));
    }

    /// <summary>d loss / d logits, [R, 1], float32.</summary>
    public string AppendLogitsGradient(GraphEditor g)
    {
        string Ints(params long[] v) => GraphConstants.Int64s(g, "grad/reward/ints", v);
        string Scalar(double v) => GraphConstants.Scalar(g, "grad/reward/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/reward/" + op, attributes: attrs);
        string Column(long index) => Op("Gather", [Pairs, GraphConstants.Scalar(g, "grad/reward/index", index, (int)DT.Int64)], ("axis", 1L));

        var (chosen, rejected) = (Column(0), Column(1));
        var slope = Op("Sigmoid", [Beyond]); // −d/dc of −log σ(c − r − m)
        string dChosen = Op("Neg", [slope]), dRejected = slope;
        if (CenterCoefficient > 0)
        {
            var center = Op("Mul", [Op("Add", [chosen, rejected]), Scalar(2 * CenterCoefficient)]);
            (dChosen, dRejected) = (Op("Add", [dChosen, center]), Op("Add", [dRejected, center]));
        }
        string Weighted(string d) => Op("Unsqueeze", [Op("Mul", [d, PairWeight]), Ints(1)]);
        var rows = Op("Concat", [Weighted(dChosen), Weighted(dRejected)], ("axis", 1L)); // [P, 2]
        return Op("Reshape", [rows, Op("Shape", [Logits])]);
    }
}
