using System.CommandLine;

namespace OrtLora.Cli;

/// <summary>The verbs, one file each; add a verb by adding its factory here.</summary>
public static class Commands
{
    public static IEnumerable<Command> All() =>
    [
        InspectCommand.Create(),
        InjectCommand.Create(),
        MergeCommand.Create(),
        QuantizeCommand.Create(),
        ExportAdapterCommand.Create(),
        GenerateCommand.Create(),
        ChatCommand.Create(),
        AdaptersCommand.Create(),
        VerifyCommand.Create(),
        EvalCommand.Create(),
        ShowDataCommand.Create(),
        TrainCommand.Create(),
        TrainCommand.CreateReward(),
        TrainCommand.CreateDistill(),
        TrainCommand.CreateClassify(),
        GrpoCommand.Create(),
        RlooCommand.Create(),
        OnlineDpoCommand.Create(),
        OnlineDpoCommand.CreateXpo(),
        DemoCommand.Create(),
    ];
}
