using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora quantize MODEL -o OUT --bits 4: a QLoRA-style base, its linear weights stored quantized.</summary>
public static class QuantizeCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "plain ONNX model (float weights)" };
        var output = new Option<string>("--output", "-o") { Description = "where to write the quantized model", Required = true };
        var bits = new Option<int>("--bits") { Description = "4: uint4 in blocks along the input (opset 21+); 8: int8 per output channel", DefaultValueFactory = _ => 4 };
        bits.AcceptOnlyFromAmong("4", "8");
        var blockSize = new Option<int>("--block-size") { Description = "weights per 4-bit block (a power of two, 16 or more)", DefaultValueFactory = _ => 32 };
        var cmd = new Command("quantize", "Store the linear layers' weights quantized (weight-only QDQ, read through DequantizeLinear): a base to train LoRA on, QLoRA-style")
            { model, output, bits, blockSize };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            if (LoraModel.Read(m) is not null) throw new OrtLoraException($"{parse.GetValue(model)}: the model has LoRA adapters; quantize the plain model, then inject");
            long before = m.Graph.Initializer.Sum(Tensors.ByteSize);
            int opset = m.Opset();
            int layers = WeightQuantizer.Apply(m, parse.GetValue(bits), parse.GetValue(blockSize));
            if (layers == 0) throw new OrtLoraException($"{parse.GetValue(model)}: no float linear layer to quantize");
            long after = m.Graph.Initializer.Sum(Tensors.ByteSize);
            var path = parse.GetValue(output)!;
            InjectCommand.WriteModel(m, path);
            Console.WriteLine($"{path}: {layers} linear layers in {parse.GetValue(bits)} bits; weights {before / 1048576.0:F1} → {after / 1048576.0:F1} MiB" +
                (m.Opset() != opset ? $"; opset {opset} → {m.Opset()} (4-bit types)" : ""));
        }));
        return cmd;
    }
}
