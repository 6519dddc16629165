using System.CommandLine;
using OrtLora.Training;

namespace OrtLora.Cli;

/// <summary>ortlora eval MODEL --data FILE.parquet: eval_loss and perplexity of any causal LM (base, injected, trained
/// or merged) on Parquet data, computed as `train` computes its eval loss; on preference data the DPO loss and rewards
/// against a reference model.</summary>
public static class EvalCommand
{
    public static Command Create()
    {
        var model = new Argument<string>("model") { Description = "ONNX causal LM (input_ids, attention_mask → logits), with or without LoRA adapters" };
        var data = new Option<string>("--data") { Description = "evaluation data: a .parquet or .jsonl file, a directory of them or a pattern (data/test-*.parquet); text, instruction/input/output, prompt/completion, chat messages, preference pairs, or text and label for a classifier", Required = true };
        var batch = new Option<int>("--per-device-eval-batch-size") { DefaultValueFactory = _ => 8 };
        var device = new Option<string>("--device") { DefaultValueFactory = _ => "cpu" };
        device.AcceptOnlyFromAmong("cpu", "cuda");
        var epLibrary = new Option<string?>("--ep-library") { Description = "plugin execution provider library (e.g. libonnxruntime_providers_cuda.so)" };
        var adapter = new Option<string?>("--adapter") { Description = "PEFT adapter directory to evaluate on the model (injected in memory)" };
        var reference = new Option<string?>("--reference-model") { Description = "preference data: the DPO reference model (default with --adapter: MODEL without the adapter)" };
        var teacher = new Option<string?>("--teacher-model") { Description = "score the generalized JSD to this teacher (`distill`'s loss) instead of the cross-entropy" };
        var jsdBeta = new Option<double>("--jsd-beta") { Description = "with --teacher-model: the divergence's beta (0: KL(teacher||model), 1: KL(model||teacher))", DefaultValueFactory = _ => 0.5 };
        var predictions = new Option<string?>("--predictions") { Description = "a classifier: also write each row's predicted label and class probabilities (or a regression's value; a token classifier's tag for each word) to this JSON Lines file" };
        var labelAllTokens = new Option<bool>("--label-all-tokens") { Description = "a token classifier: score every token of a word, not only its first (run_ner's label_all_tokens)" };
        var padToMax = new Option<bool>("--pad-to-max-length")
        {
            Description = "pad every batch to --max-seq-length and load the graphs for that one shape (ORT folds the shape arithmetic; " +
                          "the GPU machine's CUDA plugin ran static shapes only, docs/gpu.md)",
        };
        var dataOptions = new DataCliOptions();
        var preference = new PreferenceCliOptions();
        var cmd = new Command("eval", "Loss, perplexity and mean token accuracy of a model on Parquet data (scored tokens as in training); DPO loss and rewards on preference data")
            { model, data, adapter, reference, teacher, jsdBeta, predictions, labelAllTokens, batch, device, epLibrary, padToMax };
        foreach (var o in dataOptions.All.Concat(preference.All)) cmd.Options.Add(o);
        cmd.SetAction(CliRunner.Guard(parse =>
        {
            int batchSize = parse.GetValue(batch);
            if (batchSize < 1) throw new OrtLoraException("--per-device-eval-batch-size must be at least 1");
            var options = dataOptions.Read(parse) with { BatchSize = batchSize, EvalBatchSize = batchSize, LabelAllTokens = parse.GetValue(labelAllTokens), PadToMaxLength = parse.GetValue(padToMax) };
            if (options.PadToMaxLength) Console.WriteLine($"every batch padded to [{batchSize}, {options.MaxSeqLength}]; graphs loaded for that shape");
            var result = Evaluator.Run(parse.GetValue(model)!, parse.GetValue(data)!, options, parse.GetValue(dataOptions.Tokenizer),
                parse.GetValue(device)!, parse.GetValue(epLibrary), parse.GetValue(adapter), parse.GetValue(reference), preference.Read(parse),
                parse.GetValue(teacher) is { } t ? new DistillationOptions(t, parse.GetValue(jsdBeta)) : null, parse.GetValue(predictions));
            if (result.Rewards is { } rewards)
            {
                Console.WriteLine($"eval_loss {result.Loss:F4}  " + string.Join("  ", rewards.Select(r => $"{r.Key} {r.Value:F4}")) +
                    $"  ({result.Pairs:N0} pairs scored in {result.Batches} batches; {result.DataSummary})");
                return;
            }
            if (result is { PredictionsOnly: true, Classes: { } predicted })
            {
                Console.WriteLine($"{result.Tokens:N0} rows predicted, without labels to score them against ({predicted}); predictions: {parse.GetValue(predictions)}");
                return;
            }
            if (result.Classes is { } classes)
            {
                Console.WriteLine($"eval_loss {result.Loss:F4}  " + string.Join("  ", result.Metrics!.Select(m => $"eval_{m.Key} {m.Value:F4}")) +
                    $"  ({result.Tokens:N0} {(result.PerToken ? "tokens" : "rows")} {(classes.IsRegression ? "scored" : "classified")} in {result.Batches} batches; {classes}; {result.DataSummary})");
                if (parse.GetValue(predictions) is { } written) Console.WriteLine($"predictions: {written}");
                return;
            }
            if (parse.GetValue(teacher) is not null)
            {
                Console.WriteLine($"eval_loss {result.Loss:F4} (generalized JSD to the teacher, beta {parse.GetValue(jsdBeta)})  mean_token_accuracy {result.MeanTokenAccuracy:F4}  " +
                    $"({result.Tokens:N0} tokens scored in {result.Batches} batches; {result.DataSummary})");
                return;
            }
            Console.WriteLine($"eval_loss {result.Loss:F4}  perplexity {result.Perplexity:F2}  mean_token_accuracy {result.MeanTokenAccuracy:F4}  ({result.Tokens:N0} tokens scored in {result.Batches} batches; {result.DataSummary})");
        }));
        return cmd;
    }
}
