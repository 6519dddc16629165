using System.CommandLine;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>ortlora grpo MODEL --data PROMPTS --reward-funcs ... -o DIR: TRL's GRPOTrainer (GRPOConfig's names), on
/// the LoRA parameters.</summary>
public static class GrpoCommand
{
    public static Command Create()
    {
        var shared = new RewardTrainingOptions(numGenerations: 8, beta: 0, "KL coefficient against the model as training starts (TRL's default 0: no reference pass)");
        var lossType = new Option<string>("--loss-type") { Description = "dapo, grpo, bnpo, dr_grpo; cispo (MiniMax-M1), sapo (soft gate), luspo (GSPO scaled by length)", DefaultValueFactory = _ => "dapo" };
        lossType.AcceptOnlyFromAmong(GrpoOptions.LossTypes);
        var level = new Option<string>("--importance-sampling-level") { Description = "token, or sequence (GSPO: one ratio per completion, the geometric mean of its tokens')", DefaultValueFactory = _ => "token" };
        level.AcceptOnlyFromAmong(GrpoOptions.ImportanceSamplingLevels);
        var delta = new Option<double?>("--delta") { Description = "two-sided clip (INTELLECT-2): cap the unclipped ratio at delta (more than 1 + epsilon)" };
        var sapoPos = new Option<double>("--sapo-temperature-pos") { Description = "sapo's gate temperature for positive advantages", DefaultValueFactory = _ => 1.0 };
        var sapoNeg = new Option<double>("--sapo-temperature-neg") { Description = "sapo's gate temperature for the others", DefaultValueFactory = _ => 1.05 };
        var offPolicyMask = new Option<double?>("--off-policy-mask-threshold") { Description = "drop completions with A < 0 whose mean log(pi_old / pi) exceeds this (DeepSeek-V3.2)" };
        var biasCorrection = new Option<bool>("--use-bias-correction-kl") { Description = "the KL term times the importance ratio (DeepSeek-V3.2)" };
        var topEntropy = new Option<double>("--top-entropy-quantile") { Description = "train only each micro-batch's top share of tokens by entropy (0.2 in 'Beyond the 80/20 rule'; 1: all)", DefaultValueFactory = _ => 1.0 };
        var aggregation = new Option<string>("--multi-objective-aggregation") { Description = "sum_then_normalize, or normalize_then_sum (GDPO: each reward normalized in its group first)", DefaultValueFactory = _ => "sum_then_normalize" };
        aggregation.AcceptOnlyFromAmong(GrpoOptions.Aggregations);
        var scale = new Option<string>("--scale-rewards") { Description = "divide advantages by the group's reward std, the batch's, or none", DefaultValueFactory = _ => "group" };
        scale.AcceptOnlyFromAmong(GrpoOptions.RewardScalings);

        var cmd = new Command("grpo", "GRPO (TRL's GRPOTrainer): sample completions of prompts, score them with reward functions, train the adapters toward the better ones");
        shared.AddTo(cmd, lossType, level, delta, sapoPos, sapoNeg, offPolicyMask, biasCorrection, topEntropy, aggregation, scale);
        cmd.SetAction(CliRunner.Guard(parse => shared.Run(parse, new GrpoOptions
        {
            LossType = parse.GetValue(lossType)!, ScaleRewards = parse.GetValue(scale)!, ImportanceSamplingLevel = parse.GetValue(level)!,
            Delta = parse.GetValue(delta), SapoTemperaturePos = parse.GetValue(sapoPos), SapoTemperatureNeg = parse.GetValue(sapoNeg),
            OffPolicyMaskThreshold = parse.GetValue(offPolicyMask), UseBiasCorrectionKl = parse.GetValue(biasCorrection),
            TopEntropyQuantile = parse.GetValue(topEntropy), MultiObjectiveAggregation = parse.GetValue(aggregation)!,
        })));
        return cmd;
    }
}
