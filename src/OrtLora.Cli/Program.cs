using System.CommandLine;
using OrtLora.Cli;

var root = new RootCommand("ortlora: LoRA fine-tuning on ONNX Runtime (inject, train, merge, generate)");
foreach (var command in Commands.All()) root.Subcommands.Add(command);
return CliRunner.Invoke(root, args);
