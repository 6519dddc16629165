using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Autodiff;

/// <summary>TRL's GKDTrainer loss (generalized_jsd_loss, Agarwal et al. 2024, "On-Policy Distillation of Language
/// Models") as graph nodes: at every position whose next label counts, the student's distribution s = softmax(z) is
/// compared with the teacher's t = softmax(teacher logits), fed as <see cref="TeacherInput"/>. With m = (1 − β)·s + β·t,
/// each position's divergence is β·KL(t‖m) + (1 − β)·KL(s‖m); β = 0 is KL(t‖s), β = 1 KL(s‖t), as TRL special-cases
/// them. The loss is their sum over the counted positions divided by their number (TRL's batchmean over the label
/// mask). Like TRL's compute_loss, it takes no temperature. The gradient at the student's logits is written in closed
/// form: β = 0 gives s − t; otherwise dL/ds = g with g = (1 − β)·log(s / m) (β = 1: log(s / t)), through the softmax
/// s ⊙ (g − Σ s·g); each times the position's weight over the count.</summary>
/// <param name="Loss">the scalar loss</param>
/// <param name="Logits">the student's logits the loss reads, [B, S, V]</param>
/// <param name="StudentLogProbs">LogSoftmax of the student's logits</param>
/// <param name="TeacherLogProbs">LogSoftmax of the teacher's logits</param>
/// <param name="MixtureLogProbs">log m, for 0 &lt; β &lt; 1</param>
/// <param name="Weights">1 where the position's next label counts, [B, S]</param>
/// <param name="Count">the counted positions, at least 1</param>
public sealed record DistillationLoss(string Loss, string Logits, string StudentLogProbs, string TeacherLogProbs, string? MixtureLogProbs,
    string Weights, string Count, double Beta)
{
    /// <summary>The graph input of the teacher's logits for the batch, float32 [batch, sequence, vocabulary].</summary>
    public const string TeacherInput = "teacher_logits";

    /// <param name="logits">the student's float32 logits [B, S, V]</param>
    /// <param name="targets">the causal-LM targets (shifted labels): which positions count, and their number</param>
    public static DistillationLoss Append(GraphEditor g, string logits, CausalLmLoss.Targets targets, double beta)
    {
        if (beta is < 0 or > 1) throw new OrtLoraException($"the distillation's beta must be in [0, 1], got {beta}");
        string Scalar(double v) => GraphConstants.Scalar(g, "distill/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "distill/" + op, attributes: attrs);
        string Sum(string value) => Op("ReduceSum", [value, GraphConstants.Int64s(g, "distill/ints", -1)], ("keepdims", 0L));

        var student = Op("LogSoftmax", [logits], ("axis", -1L));
        var teacher = Op("LogSoftmax", [TeacherInput], ("axis", -1L));
        // Σ_v p·(log p − log q), per position [B, S]
        string Kl(string logP, string logQ) => Sum(Op("Mul", [Op("Exp", [logP]), Op("Sub", [logP, logQ])]));
        string? mixture = null;
        string perPosition;
        if (beta == 0) perPosition = Kl(teacher, student);
        else if (beta == 1) perPosition = Kl(student, teacher);
        else
        {
            // log((1 − β)·s + β·t) as a log-sum-exp of the two shifted log-probabilities, stable where both are tiny
            var a = Op("Add", [student, Scalar(Math.Log(1 - beta))]);
            var b = Op("Add", [teacher, Scalar(Math.Log(beta))]);
            var top = Op("Max", [a, b]);
            mixture = Op("Add", [top, Op("Log", [Op("Add", [Op("Exp", [Op("Sub", [a, top])]), Op("Exp", [Op("Sub", [b, top])])])])]);
            perPosition = Op("Add", [Op("Mul", [Kl(teacher, mixture), Scalar(beta)]), Op("Mul", [Kl(student, mixture), Scalar(1 - beta)])]);
        }
        var loss = Op("Div", [Op("ReduceSum", [Op("Mul", [perPosition, targets.Weights])], ("keepdims", 0L)), targets.Count]);
        return new DistillationLoss(loss, logits, student, teacher, mixture, targets.Weights, targets.Count, beta);
    }

    /// <summary>d loss / d (student logits), [B, S, V].</summary>
    public string AppendLogitsGradient(GraphEditor g)
    {
        string Scalar(double v) => GraphConstants.Scalar(g, "grad/distill/const", v, (int)DT.Float);
        string Op(string op, string[] inputs, params (string, object)[] attrs) => g.Add(op, inputs, name: "grad/distill/" + op, attributes: attrs);

        var scale = Op("Unsqueeze", [Op("Div", [Weights, Count]), GraphConstants.Int64s(g, "grad/distill/ints", -1)]);
        var s = Op("Exp", [StudentLogProbs]);
        string perLogit;
        if (Beta == 0) perLogit = Op("Sub", [s, Op("Exp", [TeacherLogProbs])]); // s − t
        else
        {
            var slope = Beta == 1 ? Op("Sub", [StudentLogProbs, TeacherLogProbs]) : Op("Mul", [Op("Sub", [StudentLogProbs, MixtureLogProbs!]), Scalar(1 - Beta)]);
            var mean = Op("ReduceSum", [Op("Mul", [s, slope]), GraphConstants.Int64s(g, "grad/distill/ints", -1)], ("keepdims", 1L));
            perLogit = Op("Mul", [s, Op("Sub", [slope, mean])]);
        }
        return Op("Mul", [perLogit, scale]);
    }
}
