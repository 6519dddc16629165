using System.CommandLine;
using OrtLora.Autodiff;

namespace OrtLora.Cli;

/// <summary>TRL's DPOConfig options for preference data, shared by `train` and `eval`.</summary>
public sealed class PreferenceCliOptions
{
    public Option<double> Beta { get; } = new("--beta") { Description = "preference data: DPO's beta (TRL's DPOConfig.beta); higher keeps the model closer to the reference", DefaultValueFactory = _ => 0.1 };
    public Option<string[]> LossType { get; } = new("--loss-type")
    {
        Description = "preference data: TRL's DPO loss_type (sigmoid: DPO, robust, hinge: SLiC, ipo: IPO, nca_pair, bco_pair, sppo_hard, apo_zero, apo_down, discopop, exo_pair, aot, aot_unpaired, sft, sigmoid_norm), " +
            "or several of them summed (e.g. MPO: sigmoid bco_pair sft with --loss-weights 0.8 0.2 1); orpo (TRL's ORPOTrainer, no reference; --beta is its lambda), simpo and cpo (TRL's CPOTrainer, no reference), or kto for unpaired data (TRL's KTOTrainer)",
        DefaultValueFactory = _ => ["sigmoid"],
        AllowMultipleArgumentsPerToken = true,
    };
    public Option<double[]> LossWeights { get; } = new("--loss-weights")
    {
        Description = "preference data with several --loss-type values: each one's weight in the sum (DPOConfig.loss_weights; default 1 each)",
        AllowMultipleArgumentsPerToken = true,
    };
    public Option<string> FDivergenceType { get; } = new("--f-divergence-type") { Description = "preference data: DPOConfig.f_divergence_type, the f-divergence whose f' maps each log-ratio to the score DPO compares: reverse_kl (DPO), forward_kl, js_divergence or alpha_divergence", DefaultValueFactory = _ => "reverse_kl" };
    public Option<double> FAlphaDivergenceCoef { get; } = new("--f-alpha-divergence-coef") { Description = "--f-divergence-type alpha_divergence: its alpha (DPOConfig.f_alpha_divergence_coef; 1 is reverse_kl)", DefaultValueFactory = _ => 1.0 };
    public Option<double> LabelSmoothing { get; } = new("--label-smoothing") { Description = "preference data: DPOConfig.label_smoothing, the assumed share of flipped pairs (sigmoid and robust losses)" };
    public Option<double> RpoAlpha { get; } = new("--rpo-alpha") { Description = "preference data: add alpha times the chosen completions' cross-entropy (RPO)" };
    public Option<double> SimpoGamma { get; } = new("--simpo-gamma") { Description = "--loss-type simpo: the target reward margin gamma (CPOConfig.simpo_gamma)", DefaultValueFactory = _ => 0.5 };
    public Option<double> CpoAlpha { get; } = new("--cpo-alpha") { Description = "--loss-type simpo and cpo: the weight of the chosen completions' cross-entropy (CPOConfig.cpo_alpha; 0: pure SimPO)", DefaultValueFactory = _ => 1.0 };

    public Option<double> DiscopopTau { get; } = new("--discopop-tau") { Description = "--loss-type discopop: the temperature of its logistic/exponential mix (DPOConfig.discopop_tau)", DefaultValueFactory = _ => 0.05 };

    public Option<double> DesirableWeight { get; } = new("--desirable-weight") { Description = "--loss-type kto: the weight of desirable examples' losses", DefaultValueFactory = _ => 1.0 };
    public Option<double> UndesirableWeight { get; } = new("--undesirable-weight") { Description = "--loss-type kto: the weight of undesirable examples' losses", DefaultValueFactory = _ => 1.0 };

    public PreferenceCliOptions()
    {
        LossType.AcceptOnlyFromAmong([.. PreferenceOptions.LossTypes, "kto"]);
        FDivergenceType.AcceptOnlyFromAmong(PreferenceOptions.FDivergenceTypes);
    }

    public IEnumerable<Option> All => [Beta, LossType, LossWeights, FDivergenceType, FAlphaDivergenceCoef, LabelSmoothing, RpoAlpha, SimpoGamma, CpoAlpha, DiscopopTau, DesirableWeight, UndesirableWeight];

    public PreferenceOptions Read(ParseResult parse)
    {
        var lossTypes = parse.GetValue(LossType)!;
        var weights = parse.GetValue(LossWeights) is { Length: > 0 } given ? given : null;
        if (weights is not null && weights.Length != lossTypes.Length)
            throw new OrtLoraException($"--loss-weights: {weights.Length} weights for {lossTypes.Length} loss types (give one for each --loss-type)");
        var options = new PreferenceOptions(parse.GetValue(Beta), string.Join(",", lossTypes), parse.GetValue(LabelSmoothing), parse.GetValue(RpoAlpha),
            parse.GetValue(SimpoGamma), parse.GetValue(CpoAlpha), parse.GetValue(DesirableWeight), parse.GetValue(UndesirableWeight), parse.GetValue(DiscopopTau),
            LossWeights: weights, FDivergenceType: parse.GetValue(FDivergenceType)!, FAlphaDivergenceCoef: parse.GetValue(FAlphaDivergenceCoef));
        // the option names, not PreferenceOptions' own words
        if (options.Beta <= 0) throw new OrtLoraException("--beta must be positive");
        if (options.LabelSmoothing is < 0 or >= 0.5) throw new OrtLoraException("--label-smoothing must be in [0, 0.5)");
        if (options.RpoAlpha < 0 || options.CpoAlpha < 0) throw new OrtLoraException("--rpo-alpha and --cpo-alpha must not be negative");
        options.Validate();
        return options;
    }
}
