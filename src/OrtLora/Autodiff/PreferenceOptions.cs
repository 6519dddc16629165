namespace OrtLora.Autodiff;

/// <summary>TRL's DPOConfig options that shape the loss.</summary>
/// <param name="Beta">how far the policy may move from the reference (higher: closer)</param>
/// <param name="LossType">sigmoid (DPO), robust (robust DPO), hinge (SLiC), ipo (IPO: log-probabilities averaged over
/// the completion's tokens), orpo (TRL's ORPOTrainer: no reference; Beta is its λ), simpo (TRL's CPOTrainer with
/// loss_type simpo: no reference, token means, a target margin) or cpo (TRL's CPOTrainer with its default loss_type
/// sigmoid: no reference, sums, plus cpo_alpha times the chosen completions' cross-entropy)</param>
/// <param name="LabelSmoothing">ε, the assumed share of flipped labels (conservative DPO; sigmoid and robust)</param>
/// <param name="RpoAlpha">α: adds α times the chosen completions' token-mean cross-entropy (RPO); 0: none</param>
/// <param name="SimpoGamma">SimPO's target margin γ (CPOConfig.simpo_gamma)</param>
/// <param name="CpoAlpha">SimPO: the weight of the chosen completions' cross-entropy (CPOConfig.cpo_alpha; 0: pure SimPO)</param>
/// <param name="DesirableWeight">KTO: the weight of desirable examples' losses (KTOConfig.desirable_weight)</param>
/// <param name="UndesirableWeight">KTO: the weight of undesirable examples' losses (KTOConfig.undesirable_weight)</param>
/// <param name="DiscopopTau">discopop's temperature τ of the mix between its logistic and exponential parts (DPOConfig.discopop_tau)</param>
/// <param name="CenterRewardsCoefficient">reward modelling (<see cref="RewardModelLoss"/>): RewardConfig.center_rewards_coefficient (0: none)</param>
/// <param name="SumLogps">IPO on summed log-probabilities, as TRL's OnlineDPOTrainer computes it (DPOTrainer's IPO averages them)</param>
/// <param name="RowTerms">the loss also adds Σ w·π over the rows, w a <see cref="PreferenceLoss.RowWeightsInput"/> input
/// (XPO's exploration term α·log π of the reference model's completion)</param>
public sealed record PreferenceOptions(double Beta = 0.1, string LossType = "sigmoid", double LabelSmoothing = 0, double RpoAlpha = 0,
    double SimpoGamma = 0.5, double CpoAlpha = 1, double DesirableWeight = 1, double UndesirableWeight = 1, double DiscopopTau = 0.05,
    double CenterRewardsCoefficient = 0, bool SumLogps = false, bool RowTerms = false, IReadOnlyList<double>? LossWeights = null,
    string FDivergenceType = "reverse_kl", double FAlphaDivergenceCoef = 1.0)
{
    /// <summary>DPOConfig.f_divergence_type: the f-divergence whose f' maps each log-ratio ρ = π − r to the score the loss
    /// compares (f-DPO): reverse_kl ρ (DPO), forward_kl −e^(−ρ), js_divergence log σ(ρ), alpha_divergence
    /// e^((α−1)ρ)/(α−1) with α the f_alpha_divergence_coef (the exponent capped at 80, as TRL caps it).</summary>
    public static readonly string[] FDivergenceTypes = ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"];

    /// <summary>The scores are not the log-ratios themselves (alpha_divergence at α = 1 is reverse_kl, as TRL takes it).</summary>
    public bool RemapsRatios => FDivergenceType is not "reverse_kl" && !(FDivergenceType == "alpha_divergence" && Math.Abs(FAlphaDivergenceCoef - 1) < 1e-6);

    /// <summary>The loss type of reward modelling: TRL's RewardTrainer trains a sequence classifier on the pairs
    /// (<see cref="RewardLoss"/>), not a causal LM against a reference.</summary>
    public const string RewardModelLoss = "reward";

    /// <summary>The pairs train a reward model (`ortlora reward`).</summary>
    public bool IsRewardModel => LossType == RewardModelLoss;

    /// <summary>The losses of paired data (chosen, rejected); KTO's takes unpaired data.</summary>
    public static readonly string[] LossTypes = ["sigmoid", "robust", "hinge", "ipo", "orpo", "simpo", "cpo", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "exo_pair", "aot", "aot_unpaired", "sft", "sigmoid_norm"];

    /// <summary>DPOTrainer's own loss types, the ones a list may combine (TRL's loss_type list with loss_weights, e.g. MPO's
    /// sigmoid + bco_pair + sft).</summary>
    public static readonly string[] DpoLossTypes = ["sigmoid", "robust", "hinge", "ipo", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "discopop", "exo_pair", "aot", "aot_unpaired", "sft", "sigmoid_norm"];

    /// <summary>The loss types combined, in order: <see cref="LossType"/> is one name or several joined by commas.</summary>
    public IReadOnlyList<string> Losses => LossType.Split(',');
    /// <summary>The k-th loss's weight in the sum (DPOConfig.loss_weights; default 1 each).</summary>
    public double WeightOf(int k) => LossWeights?[k] ?? 1;

    /// <summary>A loss that weighs the chosen and the rejected log-ratio each in its own way, not only their difference.</summary>
    public static bool SeparateRatios(string lossType) => lossType is "nca_pair" or "bco_pair" or "sppo_hard" or "apo_zero" or "apo_down";
    /// <summary>AOT's losses compare the batch's sorted ratios, quantile by quantile.</summary>
    public static bool Sorts(string lossType) => lossType is "aot" or "aot_unpaired";

    /// <summary>KTO (TRL's KTOTrainer): unpaired examples with a desirable/undesirable label, and KL rows.</summary>
    public bool Unpaired => LossType == "kto";

    /// <summary>Whether the loss compares with a reference model (all but ORPO and SimPO).</summary>
    public bool UsesReference => LossType is not ("orpo" or "simpo" or "cpo" or RewardModelLoss);
    /// <summary>Whether a row's π is the mean of its tokens' log-probabilities (IPO, ORPO, SimPO) rather than their sum.</summary>
    public bool Averages => LossType is "orpo" or "simpo" || LossType == "ipo" && !SumLogps;
    /// <summary>The weight of the chosen completions' token-mean cross-entropy in the loss: rpo_alpha, ORPO's 1, or
    /// SimPO's cpo_alpha.</summary>
    public double ChosenNllWeight => LossType switch
    {
        "orpo" => 1,
        "simpo" or "cpo" => CpoAlpha,
        _ => RpoAlpha + Losses.Select((type, k) => type == "sft" ? WeightOf(k) : 0).Sum(), // DPO's sft loss is that cross-entropy
    };

    public void Validate()
    {
        if (CenterRewardsCoefficient < 0) throw new OrtLoraException($"center_rewards_coefficient must not be negative, got {CenterRewardsCoefficient}");
        if (CenterRewardsCoefficient > 0 && !IsRewardModel) throw new OrtLoraException("center_rewards_coefficient is for reward modelling (ortlora reward)");
        if (RowTerms && (Unpaired || Losses.Any(t => SeparateRatios(t) || Sorts(t) || t == "sft") || IsRewardModel))
            throw new OrtLoraException($"a per-row term (XPO's) goes with the losses of the pair's difference, not {LossType}");
        if (IsRewardModel)
        {
            if (RpoAlpha > 0 || LabelSmoothing > 0) throw new OrtLoraException("reward modelling takes neither rpo_alpha nor label smoothing (DPO's options)");
            return;
        }
        var losses = Losses;
        if (losses.Count > 1)
        {
            if (losses.FirstOrDefault(t => !DpoLossTypes.Contains(t)) is { } other)
                throw new OrtLoraException($"a list of loss types combines DPOTrainer's losses ({string.Join(", ", DpoLossTypes)}), not '{other}'");
            // IPO's π is a token mean, the others' a sum: one forward cannot give both
            if (losses.Contains("ipo")) throw new OrtLoraException("ipo averages the log-probabilities over the tokens and the other losses sum them: ipo cannot be combined");
        }
        else if (!LossTypes.Contains(LossType) && !Unpaired) throw new OrtLoraException($"unknown DPO loss type '{LossType}'; expected {string.Join(", ", LossTypes)}");
        if (LossWeights is { } weights && (weights.Count != losses.Count || weights.Any(w => w < 0 || !double.IsFinite(w))))
            throw new OrtLoraException($"loss_weights needs one weight (not negative) for each of the {losses.Count} loss types, got {weights.Count}");
        if (Beta <= 0) throw new OrtLoraException($"DPO's beta must be positive, got {Beta}");
        if (!FDivergenceTypes.Contains(FDivergenceType))
            throw new OrtLoraException($"unknown f_divergence_type '{FDivergenceType}'; expected {string.Join(", ", FDivergenceTypes)}");
        // the remap goes into L = score_c − score_r, which these losses compare; the others read π or each ratio apart
        if (RemapsRatios && (!UsesReference || Unpaired || RowTerms || losses.Any(t => t is not ("sigmoid" or "robust" or "hinge" or "exo_pair" or "discopop"))))
            throw new OrtLoraException($"f_divergence_type {FDivergenceType} remaps the log-ratios that DPO's sigmoid, robust, hinge, exo_pair and discopop losses compare, not {LossType}'s");
        if (LabelSmoothing is < 0 or >= 0.5) throw new OrtLoraException($"DPO's label smoothing must be in [0, 0.5), got {LabelSmoothing}");
        if (LabelSmoothing > 0 && !losses.Any(t => t is "sigmoid" or "robust" or "simpo" or "cpo" or "exo_pair" or "aot" or "aot_unpaired"))
            throw new OrtLoraException($"DPO's label smoothing applies to the sigmoid, robust, simpo, exo_pair and aot losses, not {LossType}");
        // EXO's target distribution is (1 − ε, ε): its KL takes log ε, infinite at ε = 0
        if (losses.Contains("exo_pair") && LabelSmoothing <= 0)
            throw new OrtLoraException("--loss-type exo_pair needs --label-smoothing above 0 (EXO's target puts ε on the rejected completion; TRL's value at 0 is infinite)");
        if (CpoAlpha < 0) throw new OrtLoraException($"cpo_alpha must not be negative, got {CpoAlpha}");
        if (DiscopopTau <= 0) throw new OrtLoraException($"discopop_tau must be positive, got {DiscopopTau}");
        if (DesirableWeight < 0 || UndesirableWeight < 0) throw new OrtLoraException("KTO's desirable and undesirable weights must not be negative");
        if (Unpaired && RpoAlpha > 0) throw new OrtLoraException("rpo_alpha is for the DPO losses of paired data, not KTO");
        if (RpoAlpha < 0) throw new OrtLoraException($"rpo_alpha must not be negative, got {RpoAlpha}");
        if (RpoAlpha > 0 && !UsesReference)
            throw new OrtLoraException($"{LossType}'s loss weighs the chosen completions' cross-entropy itself (ORPO: 1, SimPO: cpo_alpha); rpo_alpha is for the DPO losses");
    }
}
