using OrtLora.Lora;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>Paths to ../shared (fixtures, data, tokenizers) and to the repository. When CI=true a missing
/// fixture fails the test; elsewhere it is reported as inconclusive.</summary>
public static class Shared
{
    public static string RepoRoot { get; } = FindRepoRoot();
    public static string Root => Environment.GetEnvironmentVariable("ORTLORA_SHARED") ?? Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared"));

    static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "OrtLora.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("OrtLora.sln not found above the test assembly");
    }

    /// <summary>A path under ../shared that must exist.</summary>
    public static string Require(params string[] parts)
    {
        var path = Path.Combine([Root, .. parts]);
        if (File.Exists(path) || Directory.Exists(path)) return path;
        var message = $"shared fixture missing: {path}";
        if (Environment.GetEnvironmentVariable("CI") == "true") Assert.Fail(message);
        Assert.Inconclusive(message);
        return path;
    }

    /// <summary>Sets an environment variable (ortlora's ORTLORA_* switches) until the returned scope is disposed, then
    /// restores what it was: <c>using (Shared.EnvironmentVariable("ORTLORA_RMSNORM_OP", "0")) ...</c>.</summary>
    public static IDisposable EnvironmentVariable(string name, string? value)
    {
        var before = Environment.GetEnvironmentVariable(name);
        Environment.SetEnvironmentVariable(name, value);
        return new Restore(() => Environment.SetEnvironmentVariable(name, before));
    }

    sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }

    public static string Peft(string arch, string file) => Require("fixtures", "peft", arch, file);

    /// <summary>The fixture batch (input_ids, attention_mask) as ORT feeds.</summary>
    public static Dictionary<string, HostTensor> Feeds(Dictionary<string, SafeTensor> reference, string prefix = "")
    {
        var ids = reference[prefix + "input_ids"];
        var mask = reference[prefix + "attention_mask"];
        return new()
        {
            ["input_ids"] = HostTensor.Of(ids.AsInt64s(), ids.Shape),
            ["attention_mask"] = HostTensor.Of(mask.AsInt64s(), mask.Shape),
        };
    }

    public static float MaxAbsDiff(float[] a, float[] b)
    {
        Assert.That(a.Length, Is.EqualTo(b.Length), "lengths differ");
        float m = 0;
        for (int i = 0; i < a.Length; i++) m = Math.Max(m, Math.Abs(a[i] - b[i]));
        return m;
    }

    /// <summary>Rows written with Parquet.Net's serializer to a fresh temp file NAME (property names are the columns).</summary>
    public static string WriteParquet<T>(IEnumerable<T> rows, string name)
    {
        var path = Path.Combine(TempDir(), name);
        Parquet.Serialization.ParquetSerializer.SerializeAsync(rows, path).GetAwaiter().GetResult();
        return path;
    }

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "ortlora-tests", Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }
}
