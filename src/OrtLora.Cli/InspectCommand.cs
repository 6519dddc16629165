using System.CommandLine;
using OrtLora.Onnx;
using Spectre.Console;

namespace OrtLora.Cli;

public static class InspectCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model to inspect" };
        var cmd = new Command("inspect", "List the model's inputs, outputs and op histogram") { model };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            var table = new Table().AddColumn("op").AddColumn("count");
            foreach (var (op, n) in GraphEditor.OpHistogram(m.Graph)) table.AddRow(op, n.ToString());
            AnsiConsole.Write(table);
        }));
        return cmd;
    }
}
