using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora inspect MODEL: the linear layers LoRA can target (with the parameter count for a rank), the
/// adapters of an injected model, and the op histogram. Plain aligned text, so it reads the same piped to a file.</summary>
public static class InspectCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model to inspect" };
        var r = new Option<int>("--r") { Description = "rank to count LoRA parameters for", DefaultValueFactory = _ => 8 };
        var cmd = new Command("inspect", "List targetable linear layers, LoRA adapters and the op histogram") { model, r };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            int rank = parse.GetValue(r);
            if (rank < 1) throw new OrtLoraException($"--r must be at least 1 (got {rank})");
            var layers = LinearLayers.Find(new GraphEditor(m.Graph));
            var prefix = ModuleNames.WrapperPrefix(layers.Select(l => l.Module).ToList());
            Console.WriteLine($"{m.Source}: {layers.Count} linear layers{(prefix != "" ? $" (module paths under the wrapper '{prefix}')" : "")}");
            var rows = layers.Select(l => new[]
            {
                ModuleNames.Strip(l.Module, prefix), l.Node.OpType, l.In.ToString(), l.Out.ToString(),
                l.Layout == WeightLayout.InOut ? "[in,out]" : "[out,in]", l.Parts is { } p ? string.Join("+", p) : "-",
                (rank * (l.In + l.Out)).ToString("N0"), l.IsOutputHead ? "output head" : l.Tied ? "tied weight" : "",
            });
            WriteTable(["module", "op", "in", "out", "W", "fused parts", $"params r={rank}", ""], rows);
            long allLinear = layers.Where(l => !l.IsOutputHead && !l.Tied).Sum(l => rank * (l.In + l.Out));
            var defaults = ModuleNames.DefaultTargets(layers.Select(l => ModuleNames.Strip(l.Module, prefix)));
            long byDefault = defaults is null ? 0 : layers.Where(l => ModuleNames.IsTarget(defaults, ModuleNames.Strip(l.Module, prefix), l.IsOutputHead || l.Tied)).Sum(l => rank * (l.In + l.Out));
            Console.WriteLine($"LoRA parameters at r={rank}: all-linear {allLinear:N0}" +
                (defaults is null ? "; no layer has a name PEFT targets by default" : $"; default targets ({string.Join(",", defaults)}) {byDefault:N0}"));
            if (LoraModel.Read(m) is { } lora) WriteAdapters(lora);
            Console.WriteLine();
            Console.WriteLine("op histogram: " + string.Join(", ", GraphEditor.OpHistogram(m.Graph).Select(p => $"{p.Key} {p.Value}")));
        }));
        return cmd;
    }

    static void WriteAdapters(LoraModel lora)
    {
        var c = lora.Config;
        long parameters = lora.Adapters.Sum(a => (long)a.R * (a.In + (a.Part?.Size ?? a.Out)));
        Console.WriteLine();
        Console.WriteLine($"LoRA adapters: {lora.Adapters.Count}, {parameters:N0} parameters (lora_alpha={c.LoraAlpha}, variant={c.Variant}{(c.UseRslora ? ", rsLoRA" : "")})");
        WriteTable(["module", "part", "r", "scale", "base weight"], lora.Adapters.Select(a => new[]
        {
            a.Module, a.Part is { } p ? $"{p.Index + 1}/{p.Count} [{p.Offset}:{p.Offset + p.Size}]" : "-",
            a.R.ToString(), a.Scale.ToString("G4"), a.BaseWeight,
        }));
    }

    static void WriteTable(string[] header, IEnumerable<string[]> rows)
    {
        var all = rows.Prepend(header).ToList();
        var widths = header.Select((_, i) => all.Max(r => r[i].Length)).ToArray();
        foreach (var row in all)
            Console.WriteLine("  " + string.Join("  ", row.Select((cell, i) => cell.PadRight(widths[i]))).TrimEnd());
    }
}
