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
        var r = new Option<int>("--r") { Description = "rank of the update B·A", DefaultValueFactory = _ => 8 };
        var alpha = new Option<double>("--lora-alpha") { Description = "the update is scaled by lora_alpha / r", DefaultValueFactory = _ => 16 };
        var targets = new Option<string>("--target-modules")
        {
            Description = "comma-separated module names (matched like PEFT: the module path ends with .NAME), all-linear, or one regex (full match); default: PEFT's default for the architecture (q_proj,v_proj; c_attn for GPT-2; query_key_value ...)",
            DefaultValueFactory = _ => "",
        };
        var variant = new Option<string>("--variant") { Description = "fused projections (GPT-2 c_attn, Phi-3 qkv_proj): performant = one adapter, canonical = one per part", DefaultValueFactory = _ => "performant" };
        variant.AcceptOnlyFromAmong("performant", "canonical");
        var dropout = new Option<double>("--lora-dropout") { Description = "dropout on the LoRA input during training" };
        var rslora = new Option<bool>("--use-rslora") { Description = "scale by lora_alpha / sqrt(r)" };
        var init = new Option<string>("--init") { Description = "initialization of A (B starts at zero)", DefaultValueFactory = _ => "kaiming" };
        init.AcceptOnlyFromAmong("kaiming", "gaussian");
        var seed = new Option<int>("--seed") { Description = "random seed for A", DefaultValueFactory = _ => 42 };
        var initFrom = new Option<string?>("--init-from") { Description = "PEFT adapter directory (adapter_config.json + adapter_model.safetensors) to inject exactly" };
        var cmd = new Command("inject", "Add LoRA adapters to an ONNX model") { model, output, r, alpha, targets, variant, dropout, rslora, init, seed, initFrom };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            LoraModel lora;
            if (parse.GetValue(initFrom) is { } dir)
            {
                // The adapter fixes these; silently ignoring a value the user typed would be worse than refusing it.
                var given = new Option[] { r, alpha, targets, variant, rslora, init, seed }.Where(o => parse.GetResult(o) is { Implicit: false }).ToList();
                if (given.Count > 0)
                    throw new OrtLoraException($"{string.Join(", ", given.Select(o => o.Name))}: not allowed with --init-from (the adapter in {dir} sets them)");
                lora = LoraInjector.Inject(m, PeftAdapter.Load(dir));
            }
            else
            {
                var config = new LoraConfig
                {
                    R = parse.GetValue(r), LoraAlpha = parse.GetValue(alpha), TargetModules = ParseTargets(parse.GetValue(targets)!),
                    Variant = parse.GetValue(variant)!, LoraDropout = parse.GetValue(dropout), UseRslora = parse.GetValue(rslora),
                    Init = parse.GetValue(init)!, Seed = parse.GetValue(seed),
                };
                if (config.R < 1) throw new OrtLoraException($"--r must be at least 1 (got {config.R})");
                if (config.LoraDropout is < 0 or >= 1) throw new OrtLoraException($"--lora-dropout must be in [0, 1) (got {config.LoraDropout})");
                lora = LoraInjector.Inject(m, config);
            }
            var path = parse.GetValue(output)!;
            m.Save(path);
            long parameters = lora.Adapters.Sum(a => (long)a.R * (a.In + (a.Part?.Size ?? a.Out)));
            Console.WriteLine($"{path}: {lora.Adapters.Count} adapters, {parameters:N0} trainable parameters (r={lora.Adapters.Max(a => a.R)}, scale={lora.Adapters[0].Scale:G4})");
        }));
        return cmd;
    }

    /// <summary>"q_proj,v_proj" → names; "all-linear" and a regex stay one string, as PEFT takes them.</summary>
    public static List<string> ParseTargets(string text)
    {
        text = text.Trim();
        if (text == "") return []; // PEFT's default for the architecture
        if (text == "all-linear" || LoraConfig.IsRegex(text)) return [text];
        var names = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
        return names;
    }
}
