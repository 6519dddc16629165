using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora export-adapter MODEL -o DIR: the adapters in PEFT's format (adapter_config.json + adapter_model.safetensors).</summary>
public static class ExportAdapterCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model with LoRA adapters" };
        var output = new Option<string>("--output", "-o") { Description = "directory to write the PEFT adapter to (a .onnx_adapter file with --format onnx-adapter)", Required = true };
        var format = new Option<string>("--format") { Description = "peft (adapter directory) or onnx-adapter (ONNX Runtime's .onnx_adapter for RunOptions.AddActiveLoraAdapter)", DefaultValueFactory = _ => "peft" };
        format.AcceptOnlyFromAmong("peft", "onnx-adapter");
        var cmd = new Command("export-adapter", "Write the model's LoRA adapters as a PEFT adapter directory or an ONNX Runtime adapter file") { model, output, format };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            var adapter = AdapterExporter.Export(m);
            var dir = parse.GetValue(output)!;
            if (parse.GetValue(format) == "onnx-adapter")
            {
                // The injected model's own parameter names and values, so the file fits its overridable inputs as is.
                var parameters = m.Graph.Initializer.Where(t => Deploy.LoraRuntimeForm.IsLoraParameter(t.Name))
                    .ToDictionary(t => t.Name, t => (m.ReadFloats(t), t.Dims.ToArray()));
                Deploy.OnnxAdapterFile.Write(dir, parameters);
                Console.WriteLine($"{dir}: {parameters.Count} LoRA parameters (ONNX Runtime adapter)");
                return;
            }
            adapter.Save(dir);
            Console.WriteLine($"{dir}: {adapter.Tensors.Count / 2} LoRA modules (r={adapter.Config.R}, lora_alpha={adapter.Config.LoraAlpha})");
        }));
        return cmd;
    }
}
