using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora inject MODEL -o OUT: adds LoRA adapters (fresh, or a PEFT adapter with --init-from).</summary>
public static class InjectCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model exported from PyTorch (dynamo or TorchScript exporter)" };
        var output = new Option<string>("--output", "-o") { Description = "where to write the injected model", Required = true };
        var lora = new LoraOptions();
        var runtime = new Option<bool>("--runtime-adapters")
        {
            Description = "also list the LoRA parameters as graph inputs (their values stay the defaults), so one ONNX Runtime session serves many adapters switched per request (OrtLoraAdapter, RunOptions.AddActiveLoraAdapter)",
        };
        var cmd = new Command("inject", "Add LoRA adapters to an ONNX model") { model, output, runtime };
        lora.AddTo(cmd);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            LoraModel injected;
            if (parse.GetValue(lora.InitFrom) is { } dir)
            {
                // The adapter fixes these; silently ignoring a value the user typed would be worse than refusing it.
                var given = new Option[] { lora.R, lora.Alpha, lora.Targets, lora.Variant, lora.Rslora, lora.Init, lora.Seed, lora.ModulesToSave, lora.TrainableTokens, lora.RankPattern, lora.AlphaPattern, lora.Bias, lora.EnsureWeightTying, lora.EvaRho, lora.EvaTau, lora.EvaWhiten, lora.EvaAdjustScaling, lora.EvaUseLabelMask, lora.CordaMethod, lora.CordaSamples }.Where(o => parse.GetResult(o) is { Implicit: false }).ToList();
                if (given.Count > 0)
                    throw new OrtLoraException($"{string.Join(", ", given.Select(o => o.Name))}: not allowed with --init-from (the adapter in {dir} sets them)");
                injected = LoraInjector.Inject(m, PeftAdapter.Load(dir));
            }
            else
            {
                var config = lora.Read(parse);
                injected = LoraInjector.Inject(m, config);
            }
            if (parse.GetValue(runtime)) Deploy.LoraRuntimeForm.MakeOverridable(m);
            var path = parse.GetValue(output)!;
            WriteModel(m, path);
            long parameters = m.Graph.Initializer.Where(t => Training.Engine.TrainingGraph.IsTrainable(t.Name)).Sum(t => Tensors.ElementCount(t.Dims));
            var extra = (injected.SavedModules.Count > 0 ? $", modules_to_save {string.Join(", ", injected.SavedModules.Select(s => s.Module))}" : "")
                + (injected.TrainableTokens.Count > 0 ? $", {injected.TrainableTokens.Sum(t => t.TokenIds.Count)} trainable token rows" : "");
            Console.WriteLine($"{path}: {injected.Adapters.Count} {(injected.Config.UseDora ? "DoRA" : "LoRA")} adapters{extra}, {parameters:N0} trainable parameters " +
                $"(r={injected.Adapters.Max(a => a.R)}, scale={injected.Adapters[0].Scale:G4})");
            if (injected.Config.Init == "eva")
                Console.WriteLine("EVA: `ortlora train` draws A from the training data's activations before its first step and redistributes the ranks");
            if (injected.Config.Init == "corda")
                Console.WriteLine("CorDA: `ortlora train` draws A and B from the training data's covariance before its first step; the weights then keep the residual");
        }));
        return cmd;
    }

    /// <summary>Saves atomically; a path that cannot be written is the user's error, not a crash.</summary>
    public static void WriteModel(OnnxModel model, string path)
    {
        try { model.Save(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new OrtLoraException($"{path}: cannot write the model ({e.Message})", e);
        }
    }
}
