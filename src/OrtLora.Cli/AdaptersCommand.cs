using System.CommandLine;
using System.Globalization;
using OrtLora.Deploy;

namespace OrtLora.Cli;

/// <summary>Adapter arithmetic and conversion on PEFT adapter directories.</summary>
public static class AdaptersCommand
{
    public static Command Create()
    {
        var cmd = new Command("adapters", "Combine or convert LoRA adapters");
        cmd.Subcommands.Add(Combine());
        cmd.Subcommands.Add(Convert());
        return cmd;
    }

    static Command Combine()
    {
        var inputs = new Argument<string[]>("adapters") { Description = "PEFT adapter directories, each optionally DIR:WEIGHT (default weight 1; DIR:-1 subtracts)", Arity = ArgumentArity.OneOrMore };
        var output = new Option<string>("--output", "-o") { Description = "Output adapter directory", Required = true };
        var rank = new Option<int?>("--rank", "--svd-rank") { Description = "svd types: the new rank (default: the largest input rank)" };
        var type = new Option<string?>("--combination-type") { Description = "PEFT's combination_type: " + string.Join(", ", AdapterCombiner.CombinationTypes) + " (default: svd with --rank, else cat)" };
        type.AcceptOnlyFromAmong(AdapterCombiner.CombinationTypes);
        var density = new Option<double?>("--density") { Description = "ties, dare and magnitude_prune types: the share of values each adapter keeps" };
        var signMethod = new Option<string>("--majority-sign-method") { Description = "ties types: elect each value's sign by the sum of values (total) or of signs (frequency)", DefaultValueFactory = _ => "total" };
        signMethod.AcceptOnlyFromAmong(TaskMerging.SignMethods);
        var clamp = new Option<double?>("--svd-clamp") { Description = "svd types: clamp the factors at this quantile of their values" };
        var seed = new Option<int>("--seed") { Description = "dare types: the seed of the random pruning" };
        var cmd = new Command("combine", "Weighted combination of adapters, as PEFT's add_weighted_adapter (cat, linear, svd, ties, dare, magnitude_prune)")
            { inputs, output, rank, type, density, signMethod, clamp, seed };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var parsed = parse.GetValue(inputs)!.Select(ParseWeighted).ToList();
            var options = new CombineOptions
            {
                CombinationType = parse.GetValue(type) ?? (parse.GetValue(rank) is null ? "cat" : "svd"), SvdRank = parse.GetValue(rank),
                Density = parse.GetValue(density), MajoritySignMethod = parse.GetValue(signMethod)!, SvdClamp = parse.GetValue(clamp), Seed = parse.GetValue(seed),
            };
            int r = AdapterCombiner.Combine(parsed, parse.GetValue(output)!, options);
            Console.WriteLine($"wrote {parse.GetValue(output)} (rank {r}, lora_alpha {r}, {(parsed.Count == 1 ? "linear (one adapter)" + (options.SvdRank is null ? "" : ", truncated by SVD") : options.CombinationType)})");
        }));
        return cmd;
    }

    static Command Convert()
    {
        var input = new Argument<string>("adapter") { Description = "PEFT adapter directory" };
        var output = new Option<string>("--output", "-o") { Description = "Output .onnx_adapter file", Required = true };
        var cmd = new Command("convert", "Write a PEFT adapter as ONNX Runtime's .onnx_adapter (for RunOptions.AddActiveLoraAdapter on an injected model)") { input, output };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            var parameters = RuntimeAdapters.FromPeftDirectory(parse.GetValue(input)!);
            OnnxAdapterFile.Write(parse.GetValue(output)!, parameters);
            Console.WriteLine($"wrote {parse.GetValue(output)} ({parameters.Count} parameters)");
        }));
        return cmd;
    }

    /// <summary>"DIR:0.7" → (DIR, 0.7); "DIR" → (DIR, 1). Only a number after the last colon is a weight, so paths
    /// with colons still work.</summary>
    public static (string Dir, double Weight) ParseWeighted(string spec)
    {
        int colon = spec.LastIndexOf(':');
        if (colon > 0 && double.TryParse(spec[(colon + 1)..], NumberStyles.Float, CultureInfo.InvariantCulture, out var w))
            return (spec[..colon], w);
        return (spec, 1.0);
    }
}
