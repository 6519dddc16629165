namespace OrtLora.Graphs;

/// <summary>graphs/tiny: the committed demo model and everything beside it.</summary>
public static class TinyAssets
{
    /// <summary>graphs/tiny under the repository root (found by walking up to OrtLora.sln).</summary>
    public static string DefaultDirectory()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "OrtLora.sln"))) return Path.Combine(dir.FullName, "graphs", "tiny");
        throw new OrtLoraException("OrtLora.sln not found above the current directory: give -o DIR");
    }

    public static void Write(string directory)
    {
        ModelFiles.WriteModel(LlamaShape.Tiny, GraphsRequest.DefaultSeed, directory, new LlamaOptions(), externalData: false);
    }
}
