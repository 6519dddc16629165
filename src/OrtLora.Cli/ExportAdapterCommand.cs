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
        var output = new Option<string>("--output", "-o") { Description = "directory to write the PEFT adapter to", Required = true };
        var cmd = new Command("export-adapter", "Write the model's LoRA adapters as a PEFT adapter directory") { model, output };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            var adapter = AdapterExporter.Export(m);
            var dir = parse.GetValue(output)!;
            adapter.Save(dir);
            Console.WriteLine($"{dir}: {adapter.Tensors.Count / 2} LoRA modules (r={adapter.Config.R}, lora_alpha={adapter.Config.LoraAlpha})");
        }));
        return cmd;
    }
}
