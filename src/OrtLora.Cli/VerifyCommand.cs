using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;
using OrtLora.Training.Engine;
using Spectre.Console;

namespace OrtLora.Cli;

/// <summary>ortlora verify MODEL --init-from ADAPTER --reference REF.safetensors -o OUT.safetensors: recomputes what
/// PEFT computed (loss, gradients, one AdamW step, a 20-step trajectory) with ortlora's training graphs, writes it
/// under the reference's key names, prints the comparison and fails if any quantity is out of tolerance.</summary>
public static class VerifyCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "base ONNX model (no LoRA)" };
        var initFrom = new Option<string>("--init-from") { Description = "PEFT adapter directory to inject", Required = true };
        var referencePath = new Option<string>("--reference") { Description = "reference.safetensors with the batch and PEFT's numbers", Required = true };
        var output = new Option<string>("--output", "-o") { Description = "where to write ortlora's numbers (safetensors)", Required = true };
        var device = new Option<string>("--device") { Description = "where the training graphs run", DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        var epLibrary = new Option<string?>("--ep-library") { Description = "plugin execution provider library (e.g. libonnxruntime_providers_cuda.so)" };
        var optimization = new Option<string>("--graph-optimization-level") { Description = "all, extended, basic or none", DefaultValueFactory = _ => "all" };
        optimization.AcceptOnlyFromAmong("all", "extended", "basic", "none");
        var checkpointing = new Option<bool>("--gradient-checkpointing") { Description = "verify the graphs that recompute the forward in the backward" };
        var lossChunks = new Option<int?>("--loss-chunks") { Description = "take the loss in this many sequence chunks (default: 8 from a vocabulary of 8192, else 1)" };
        var staticShapes = new Option<bool>("--static-shapes")
        {
            Description = "load the graphs for the reference batch's shape (ORT folds the shape arithmetic; the CUDA plugin of docs/gpu.md crashes on dynamic-shape graphs)",
        };
        var cmd = new Command("verify", "Check ortlora's loss, gradients and AdamW against a PEFT reference")
            { model, initFrom, referencePath, output, device, epLibrary, optimization, checkpointing, lossChunks, staticShapes };
        cmd.SetAction(parse =>
        {
            try
            {
                var reference = SafeTensors.Read(parse.GetValue(referencePath)!);
                using var m = OnnxModel.Load(parse.GetValue(model)!);
                LoraInjector.Inject(m, PeftAdapter.Load(parse.GetValue(initFrom)!));
                var level = Training.TrainingArguments.OrtLevel(parse.GetValue(optimization)!);
                var ours = PeftParity.Compute(m, reference, options: new TrainingSessionOptions(new Autodiff.AdamWOptions(), Optimization: level,
                    Device: parse.GetValue(device)!, EpLibrary: parse.GetValue(epLibrary), GradientCheckpointing: parse.GetValue(checkpointing),
                    LossChunks: parse.GetValue(lossChunks), StaticShapes: parse.GetValue(staticShapes)));
                var rows = PeftParity.Compare(ours, reference);
                SafeTensors.Write(parse.GetValue(output)!, ours);
                var table = new Table().AddColumns("quantity", "tensors", "max |diff|", "tolerance", "result", "note");
                foreach (var r in rows)
                    table.AddRow(r.Quantity, r.Tensors.ToString(), r.MaxDiff.ToString("E2"), r.Tolerance.ToString("E2"),
                        r.Passed ? "[green]ok[/]" : "[red]FAIL[/]", Markup.Escape(r.Note));
                AnsiConsole.Write(table);
                return rows.All(r => r.Passed) ? 0 : 2;
            }
            catch (OrtLoraException e) { Console.Error.WriteLine($"error: {e.Message}"); return 1; }
        });
        return cmd;
    }
}
