using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora merge MODEL -o OUT: folds the adapters into the base weights; the result has the original topology.</summary>
public static class MergeCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model with LoRA adapters (from ortlora inject or train)" };
        var output = new Option<string>("--output", "-o") { Description = "where to write the merged model", Required = true };
        var cmd = new Command("merge", "Merge LoRA adapters into the base weights (W += scale·B·A) and remove them") { model, output };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            int adapters = LoraModel.Read(m)?.Adapters.Count ?? 0;
            LoraMerger.Merge(m);
            var path = parse.GetValue(output)!;
            m.Save(path);
            Console.WriteLine($"{path}: merged {adapters} adapters");
        }));
        return cmd;
    }
}
