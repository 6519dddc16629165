using System.CommandLine;

namespace OrtLora.Cli;

/// <summary>Runs the parsed command; user errors (OrtLoraException) print one line and exit 1.</summary>
public static class CliRunner
{
    public static int Invoke(RootCommand root, string[] args)
    {
        try
        {
            return root.Parse(args).Invoke();
        }
        catch (OrtLoraException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    /// <summary>Wraps an action so an OrtLoraException inside it becomes a message and exit code 1.</summary>
    public static Func<ParseResult, int> Guard(Action<ParseResult> action) => parse =>
    {
        try { action(parse); return 0; }
        catch (OrtLoraException e) { Console.Error.WriteLine($"error: {e.Message}"); return 1; }
    };
}
