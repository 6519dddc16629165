using System.CommandLine;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>ortlora online-dpo MODEL --data PROMPTS --reward-funcs ... -o DIR: TRL's OnlineDPOTrainer (OnlineDPOConfig's
/// names and defaults) on the LoRA parameters: two completions a prompt, ranked by the reward functions, the DPO loss.
/// And `ortlora xpo`: TRL's XPOTrainer, one completion of the policy and one of the reference a prompt, plus XPO's
/// exploration term.</summary>
public static class OnlineDpoCommand
{
    public static Command Create() => Build("online-dpo",
        "Online DPO (TRL's OnlineDPOTrainer): two completions of each prompt from the policy, the reward functions (or a reward model) pick the chosen one, DPO trains on the pair",
        xpo: false);

    public static Command CreateXpo() => Build("xpo",
        "XPO (TRL's XPOTrainer): online DPO on a completion of the policy against one of the model as training started, plus alpha times the policy's log-probability of the latter (exploration)",
        xpo: true);

    static Command Build(string name, string description, bool xpo)
    {
        var shared = new RewardTrainingOptions(numGenerations: 2, beta: 0.1,
            "DPO's beta: how far the policy may move from the model as training started (OnlineDPOConfig's default 0.1)", onlineDpo: true);
        var lossType = new Option<string>("--loss-type") { Description = "sigmoid (DPO) or ipo", DefaultValueFactory = _ => "sigmoid" };
        lossType.AcceptOnlyFromAmong("sigmoid", "ipo");
        var missingEos = new Option<double?>("--missing-eos-penalty") { Description = "subtract this from the reward of a completion that did not end within --max-new-tokens" };
        var maxLength = new Option<int>("--max-length") { Description = "the most tokens of prompt + completion scored; a longer pair loses its first tokens, keeping the completion (OnlineDPOConfig.max_length)", DefaultValueFactory = _ => 512 };
        var alpha = new Option<double>("--alpha") { Description = "XPO's alpha: the weight of the policy's log-probability of the reference's completion (XPOConfig's 1e-5)", DefaultValueFactory = _ => 1e-5 };

        var cmd = new Command(name, description);
        shared.AddTo(cmd, xpo ? [lossType, missingEos, maxLength, alpha] : [lossType, missingEos, maxLength]);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var dpo = new OnlineDpoOptions(shared.Beta(parse), parse.GetValue(lossType)!, parse.GetValue(missingEos), xpo ? parse.GetValue(alpha) : null,
                parse.GetValue(maxLength));
            dpo.Validate();
            shared.Run(parse, new GrpoOptions { NumGenerations = 2 }, (job, reporter) => OnlineDpoTrainer.Run(job, dpo, reporter));
        }));
        return cmd;
    }
}
