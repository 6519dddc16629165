using System.CommandLine;
using System.Reflection;
using OrtLora.Inference;
using OrtLora.Training;
using OrtLora.Training.Data;
using Spectre.Console;

namespace OrtLora.Cli;

/// <summary>ortlora demo: the whole pipeline on the embedded tiny model: answers before, inject + train, merge,
/// answers after, on held-out questions.</summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--output", "-o") { Description = "working directory", DefaultValueFactory = _ => Path.Combine("out", "demo") };
        var epochs = new Option<double>("--num-train-epochs") { Description = "passes over the demo data", DefaultValueFactory = _ => 10 };
        var plain = new Option<bool>("--plain-log") { Description = "one line per logging step instead of a progress bar" };
        var cmd = new Command("demo", "Inject, train, merge and generate on the embedded tiny model (about a minute on 2 cores)") { output, epochs, plain };
        cmd.SetAction(CliRunner.Guard(parse => Run(parse.GetValue(output)!, parse.GetValue(epochs), parse.GetValue(plain))));
        return cmd;
    }

    static void Run(string outputDir, double epochs, bool plainLog)
    {
        var baseDir = Path.Combine(outputDir, "base");
        ExtractEmbeddedModel(baseDir);
        var model = Path.Combine(baseDir, "model.onnx");
        var questions = Questions(Path.Combine(baseDir, "demo_eval.parquet"), 6);

        Console.WriteLine($"== before training: {model}");
        var before = Answer(model, questions);

        Console.WriteLine("\n== ortlora train (inject r=8 on all linear layers, train, merge)");
        var result = TrainingRunner.Run(new TrainJob
        {
            ModelPath = model,
            DataPath = Path.Combine(baseDir, "demo.parquet"),
            EvalDataPath = Path.Combine(baseDir, "demo_eval.parquet"),
            Lora = new Lora.LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["all-linear"] },
            Data = new DataOptions { MaxSeqLength = 128 },
            Args = new TrainingArguments
            {
                OutputDir = Path.Combine(outputDir, "adapter"), NumTrainEpochs = epochs, PerDeviceTrainBatchSize = 8,
                LearningRate = 5e-3, WarmupRatio = 0.03, LoggingSteps = 33, EvalSteps = 66, SaveSteps = 0,
            },
            Merge = true,
        }, plainLog);

        Console.WriteLine($"\n== after training: {result.MergedModel}");
        var after = Answer(result.MergedModel!, questions);
        int right = 0;
        var table = new Table().AddColumn("question").AddColumn("expected").AddColumn("before").AddColumn("after");
        for (int i = 0; i < questions.Count; i++)
        {
            if (after[i].Trim() == questions[i].Expected) right++;
            table.AddRow(Markup.Escape(questions[i].Shown), Markup.Escape(questions[i].Expected), Markup.Escape(Readable(before[i])), Markup.Escape(Readable(after[i])));
        }
        AnsiConsole.Write(table);
        Console.WriteLine($"eval loss {result.FirstEvalLoss:F3} -> {result.LastEvalLoss:F3}; {right}/{questions.Count} held-out answers exact. " +
                          $"Adapter (PEFT format): {result.AdapterDir}; merged model: {result.MergedModel}");
    }

    sealed record Question(string Prompt, string Shown, string Expected);

    static List<Question> Questions(string evalPath, int count)
    {
        using var data = ParquetDataset.Open(evalPath);
        // A few of each kind (the answers' first words tell the kinds apart), so the table shows every task.
        return data.ReadAll().Select(r => (InstructionRecord)r.Record)
            .GroupBy(r => string.Join(' ', r.Output.Split(' ').Take(2)))
            .SelectMany(g => g.Take(2).Select((r, i) => (r, i))).OrderBy(x => x.i).Select(x => x.r).Take(count)
            .Select(r => new Question(AlpacaTemplate.Prompt(r), r.Input == "" ? r.Instruction : $"{r.Instruction} {r.Input}", r.Output)).ToList();
    }

    static List<string> Answer(string modelPath, List<Question> questions)
    {
        var tokenizer = LoadedTokenizer.Load(Path.GetDirectoryName(Path.GetFullPath(modelPath))!);
        using var generator = new Generator(modelPath);
        var answers = new List<string>();
        foreach (var q in questions)
        {
            var text = string.Concat(generator.GenerateText(tokenizer, q.Prompt, new GenerationOptions { MaxNewTokens = 24 }));
            answers.Add(text);
            Console.WriteLine($"  {q.Shown}\n    -> {Readable(text)}");
        }
        return answers;
    }

    static string Readable(string s) => Short(s) is { Length: > 0 } t ? t : "(nothing readable)";

    static string Short(string s) => s.ReplaceLineEndings(" ").Trim() is var t && t.Length > 60 ? t[..60] + "…" : t;

    /// <summary>Writes graphs/tiny (embedded in this program) to a folder.</summary>
    public static void ExtractEmbeddedModel(string dir)
    {
        Directory.CreateDirectory(dir);
        var assembly = Assembly.GetExecutingAssembly();
        foreach (var name in assembly.GetManifestResourceNames().Where(n => n.StartsWith("tiny/")))
        {
            using var stream = assembly.GetManifestResourceStream(name)!;
            var path = Path.Combine(dir, name["tiny/".Length..]);
            var tmp = path + ".tmp";
            using (var file = File.Create(tmp)) stream.CopyTo(file);
            File.Move(tmp, path, overwrite: true);
        }
    }
}
