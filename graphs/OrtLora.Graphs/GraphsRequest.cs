using System.Globalization;

namespace OrtLora.Graphs;

/// <summary>What the command line asked for: which shape, where, and how.</summary>
public sealed record GraphsRequest(LlamaShape Shape, string? OutputDirectory, int Seed, bool WithKvCache, bool WithPositionIds, bool? ExternalData,
    double? InitializerRange = null, double? EmbeddingInitializerRange = null)
{
    public const int DefaultSeed = 42;

    public static string Usage =>
        "usage: OrtLora.Graphs SHAPE [-o DIR] [--seed N] [--kv-cache] [--position-ids] [--external-data] [--init-std X] [--embedding-std X]\n" +
        $"  SHAPE: {string.Join(", ", LlamaShape.All.Select(s => s.Name))} (or ~100m)\n" +
        "  tiny without -o regenerates graphs/tiny (model, tokenizer, demo dataset); the others need -o DIR.";

    public static GraphsRequest? Parse(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help") return null;
        var shape = LlamaShape.Find(args[0]) ?? throw new OrtLoraException($"unknown shape '{args[0]}'\n{Usage}");
        string? output = null;
        int seed = DefaultSeed;
        bool kv = false, positionIds = false;
        bool? external = null;
        double? initStd = null, embeddingStd = null;
        for (int i = 1; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "-o" or "--output" when i + 1 < args.Length: output = args[++i]; break;
                case "--seed" when i + 1 < args.Length && int.TryParse(args[i + 1], out var s): seed = s; i++; break;
                case "--kv-cache": kv = true; break;
                case "--position-ids": positionIds = true; break;
                case "--external-data": external = true; break;
                case "--init-std" when i + 1 < args.Length && double.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var std): initStd = std; i++; break;
                case "--embedding-std" when i + 1 < args.Length && double.TryParse(args[i + 1], CultureInfo.InvariantCulture, out var std): embeddingStd = std; i++; break;
                default: throw new OrtLoraException($"unexpected argument '{args[i]}'\n{Usage}");
            }
        }
        if (output is null && shape != LlamaShape.Tiny)
            throw new OrtLoraException($"shape '{shape.Name}' is large and never committed: give an output directory with -o DIR");
        if (output is null && (seed != DefaultSeed || kv || positionIds || external == true || initStd is not null || embeddingStd is not null))
            throw new OrtLoraException("graphs/tiny is always the default build: give -o DIR for a variant");
        return new GraphsRequest(shape, output, seed, kv, positionIds, external, initStd, embeddingStd);
    }

    public void Run()
    {
        if (Shape == LlamaShape.Tiny && OutputDirectory is null)
        {
            var dir = TinyAssets.DefaultDirectory();
            Console.WriteLine($"wrote {dir}: {TinyAssets.Write(dir)}");
            return;
        }
        var shape = Shape with
        {
            InitializerRange = InitializerRange ?? Shape.InitializerRange,
            EmbeddingInitializerRange = EmbeddingInitializerRange ?? Shape.EmbeddingInitializerRange,
        };
        var options = new LlamaOptions(WithKvCache, LazyWeights: Shape != LlamaShape.Tiny, WithPositionIds: WithPositionIds);
        var path = ModelFiles.WriteModel(shape, Seed, OutputDirectory!, options, ExternalData);
        Console.WriteLine($"wrote {path} ({Shape.ParameterCount / 1e6:F1}M parameters)");
    }
}
