using System.Reflection;

namespace OrtLora.Onnx;

/// <summary>The kernels an execution provider registers, read from a table in the format of cuda_kernels.tsv (op,
/// domain, opset range, each input's and output's type constraint, the types each constraint allows). An op placed on
/// an EP that has no kernel for its opset and types runs on the CPU EP instead, with copies to and from the device.</summary>
public sealed class KernelTable
{
    /// <param name="Inputs">per input: a constraint name or a fixed type; null when not recorded (likewise Outputs)</param>
    /// <param name="VariadicInputs">the last input entry repeats (likewise VariadicOutputs)</param>
    public sealed record Kernel(string Op, string Domain, int From, int To, string[]? Inputs, bool VariadicInputs,
        string[]? Outputs, bool VariadicOutputs, IReadOnlyDictionary<string, HashSet<string>> Types)
    {
        public bool Covers(int opset) => opset >= From && opset <= To;
        public string Opsets => To == int.MaxValue ? $"{From}+" : From == To ? $"{From}" : $"{From}-{To}";

        /// <summary>The types allowed for input (or output) <paramref name="index"/>, or null when unconstrained.</summary>
        public IReadOnlySet<string>? Allowed(bool input, int index)
        {
            var signature = input ? Inputs : Outputs;
            if (signature is null || signature.Length == 0) return null;
            if (index >= signature.Length && !(input ? VariadicInputs : VariadicOutputs)) return null;
            var entry = signature[Math.Min(index, signature.Length - 1)];
            if (Types.TryGetValue(entry, out var allowed)) return allowed;
            return entry.Length > 0 && char.IsLower(entry[0]) ? new HashSet<string> { entry } : null;
        }
    }

    readonly Dictionary<(string Op, string Domain), List<Kernel>> _kernels = new();

    public string Name { get; }

    KernelTable(string name) => Name = name;

    /// <summary>ONNX Runtime's CUDA execution provider (the embedded cuda_kernels.tsv says which ORT commit).</summary>
    public static KernelTable Cuda { get; } = FromResource("CUDAExecutionProvider", "OrtLora.Onnx.cuda_kernels.tsv");

    /// <summary>Kernels registered for an op in a domain ("" is ai.onnx), all opset ranges.</summary>
    public IReadOnlyList<Kernel> Find(string op, string domain) =>
        _kernels.TryGetValue((op, NormalizeDomain(domain)), out var list) ? list : [];

    public static string NormalizeDomain(string domain) => domain is "" or "ai.onnx" ? "ai.onnx" : domain;

    static KernelTable FromResource(string name, string resource)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"embedded resource {resource} is missing");
        using var reader = new StreamReader(stream);
        return Parse(name, reader.ReadToEnd());
    }

    public static KernelTable Parse(string name, string text)
    {
        var table = new KernelTable(name);
        var shorthands = new Dictionary<string, string>();
        int lineNumber = 0;
        foreach (var raw in text.Split('\n'))
        {
            lineNumber++;
            var line = raw.Trim();
            if (line == "" || line.StartsWith('#')) continue;
            var fields = line.Split((char[])[' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
            if (line.StartsWith('@'))
            {
                shorthands[fields[0]] = fields[1];
                continue;
            }
            if (fields.Length != 6) throw new FormatException($"{name} kernel table, line {lineNumber}: expected 6 fields, got {fields.Length}");
            var (from, to) = ParseOpsets(fields[2]);
            var (inputs, variadicIn) = ParseSignature(fields[3]);
            var (outputs, variadicOut) = ParseSignature(fields[4]);
            var kernel = new Kernel(fields[0], NormalizeDomain(fields[1]), from, to, inputs, variadicIn, outputs, variadicOut,
                ParseTypes(fields[5], shorthands));
            var key = (kernel.Op, kernel.Domain);
            (table._kernels.TryGetValue(key, out var list) ? list : table._kernels[key] = []).Add(kernel);
        }
        return table;
    }

    static (int, int) ParseOpsets(string s)
    {
        if (s.EndsWith('+')) return (int.Parse(s[..^1]), int.MaxValue);
        var dash = s.IndexOf('-');
        return dash < 0 ? (int.Parse(s), int.Parse(s)) : (int.Parse(s[..dash]), int.Parse(s[(dash + 1)..]));
    }

    static (string[]?, bool) ParseSignature(string s)
    {
        if (s == "-") return (null, false);
        bool variadic = s.EndsWith('*');
        return (s.TrimEnd('*').Split(','), variadic);
    }

    static Dictionary<string, HashSet<string>> ParseTypes(string s, Dictionary<string, string> shorthands)
    {
        var result = new Dictionary<string, HashSet<string>>();
        if (s == "-") return result;
        foreach (var constraint in s.Split(';'))
        {
            var eq = constraint.IndexOf('=');
            var types = constraint[(eq + 1)..].Split(',')
                .SelectMany(t => t.StartsWith('@') ? shorthands[t].Split(',') : [t]);
            result[constraint[..eq]] = new HashSet<string>(types);
        }
        return result;
    }
}
