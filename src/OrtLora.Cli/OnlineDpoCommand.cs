using System.CommandLine;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>ortlora online-dpo MODEL --data PROMPTS --reward-funcs ... -o DIR: TRL's OnlineDPOTrainer (OnlineDPOConfig's
/// names and defaults) on the LoRA parameters: two completions a prompt, ranked by the reward functions, the DPO loss.</summary>
public static class OnlineDpoCommand
{
    public static Command Create()
    {
        var shared = new RewardTrainingOptions(numGenerations: 2, beta: 0.1,
            "DPO's beta: how far the policy may move from the model as training started (OnlineDPOConfig's default 0.1)", onlineDpo: true);
        var lossType = new Option<string>("--loss-type") { Description = "sigmoid (DPO) or ipo", DefaultValueFactory = _ => "sigmoid" };
        lossType.AcceptOnlyFromAmong("sigmoid", "ipo");
        var missingEos = new Option<double?>("--missing-eos-penalty") { Description = "subtract this from the reward of a completion that did not end within --max-new-tokens" };

        var cmd = new Command("online-dpo", "Online DPO (TRL's OnlineDPOTrainer): two completions of each prompt from the policy, the reward functions (or a reward model) pick the chosen one, DPO trains on the pair");
        shared.AddTo(cmd, lossType, missingEos);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var dpo = new OnlineDpoOptions(shared.Beta(parse), parse.GetValue(lossType)!, parse.GetValue(missingEos));
            shared.Run(parse, new GrpoOptions { NumGenerations = 2 }, (job, reporter) => OnlineDpoTrainer.Run(job, dpo, reporter));
        }));
        return cmd;
    }
}
