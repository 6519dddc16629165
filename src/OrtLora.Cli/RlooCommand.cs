using System.CommandLine;
using OrtLora.Training.Grpo;

namespace OrtLora.Cli;

/// <summary>ortlora rloo MODEL --data PROMPTS --reward-funcs ... -o DIR: TRL's RLOOTrainer (RLOOConfig's names and
/// defaults), on the LoRA parameters. The loop is GRPO's; the advantages and the loss are <see cref="Rloo"/>'s.</summary>
public static class RlooCommand
{
    public static Command Create()
    {
        var shared = new RewardTrainingOptions(numGenerations: 2, beta: 0.05,
            "KL coefficient: each completion's reward less beta times its KL to the model as training starts (TRL's default 0.05; 0: no reference pass)");
        var normalize = new Option<bool>("--normalize-advantages") { Description = "normalize the generation batch's advantages to mean 0, std 1" };
        var clipRange = new Option<double[]>("--reward-clip-range") { Description = "MIN MAX: clamp each completion's reward before the KL penalty", AllowMultipleArgumentsPerToken = true };

        var cmd = new Command("rloo", "RLOO (TRL's RLOOTrainer): like grpo, with each completion's baseline the mean reward of the others of its prompt");
        shared.AddTo(cmd, normalize, clipRange);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var range = parse.GetValue(clipRange);
            if (range is { Length: not (0 or 2) }) throw new OrtLoraException($"--reward-clip-range takes two values, MIN MAX; got {range.Length}");
            shared.Run(parse, new GrpoOptions
            {
                Algorithm = "rloo", NormalizeAdvantages = parse.GetValue(normalize),
                RewardClipRange = range is { Length: 2 } ? (range[0], range[1]) : null,
            });
        }));
        return cmd;
    }
}
