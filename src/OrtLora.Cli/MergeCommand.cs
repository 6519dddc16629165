using System.CommandLine;
using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Cli;

/// <summary>ortlora merge MODEL -o OUT: folds the adapters into the base weights; the result has the original topology.
/// With --adapter DIR, MODEL is a plain model and DIR a PEFT adapter (trained anywhere), injected in memory first.</summary>
public static class MergeCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX model with LoRA adapters (from ortlora inject or train), or a plain one with --adapter" };
        var adapter = new Option<string?>("--adapter") { Description = "a PEFT adapter directory to merge into the plain MODEL (PEFT's merge_and_unload of a saved adapter)" };
        var output = new Option<string>("--output", "-o") { Description = "where to write the merged model", Required = true };
        var genai = new Option<bool>("--genai-config") { Description = "also write genai_config.json (ONNX Runtime GenAI) and the tokenizer files beside the merged model" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file or directory for --genai-config, or for a reward model's pad id (default: beside the input model)" };
        var safe = new Option<bool>("--safe-merge") { Description = "check every merged weight for NaNs and infinities first, and refuse a broken adapter naming its module (PEFT's safe_merge)" };
        var cmd = new Command("merge", "Merge LoRA adapters into the base weights (W += scale·B·A) and remove them") { model, output, adapter, genai, tokenizer, safe };
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            using var m = OnnxModel.Load(parse.GetValue(model)!);
            if (parse.GetValue(adapter) is { } adapterDir)
            {
                if (LoraModel.Read(m) is not null)
                    throw new OrtLoraException($"{m.Source}: the model already has LoRA adapters; --adapter merges a PEFT adapter into a plain model");
                var peft = PeftAdapter.Load(adapterDir);
                // a reward model's adapter: the causal LM export becomes the classifier it was trained on
                Training.Reward.RewardModeling.ConvertForAdapter(m, peft, parse.GetValue(model)!, parse.GetValue(tokenizer));
                LoraInjector.Inject(m, peft);
            }
            int adapters = LoraModel.Read(m)?.Adapters.Count ?? 0;
            LoraMerger.Merge(m, safe: parse.GetValue(safe));
            var path = parse.GetValue(output)!;
            InjectCommand.WriteModel(m, path);
            Console.WriteLine($"{path}: merged {adapters} adapters");
            if (parse.GetValue(genai))
            {
                var source = parse.GetValue(tokenizer) ?? Path.GetDirectoryName(Path.GetFullPath(parse.GetValue(model)!))!;
                foreach (var warning in Deploy.GenAiConfig.WriteBeside(path, source)) Console.Error.WriteLine($"warning: {warning}");
                Console.WriteLine($"{Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "genai_config.json")}: written");
            }
        }));
        return cmd;
    }
}
