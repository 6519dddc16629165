using OrtLora.Cli;

namespace OrtLora.Tests;

/// <summary>Runs an ortlora command line in-process and captures its exit code, stdout and stderr.</summary>
public static class DeployCliRunner
{
    public static (int Code, string Out, string Err) Run(params string[] args)
    {
        var (oldOut, oldErr) = (Console.Out, Console.Error);
        var (stdout, stderr) = (new StringWriter(), new StringWriter());
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try
        {
            var root = new System.CommandLine.RootCommand();
            foreach (var c in Commands.All()) root.Subcommands.Add(c);
            return (CliRunner.Invoke(root, args), stdout.ToString(), stderr.ToString());
        }
        finally { Console.SetOut(oldOut); Console.SetError(oldErr); }
    }
}
