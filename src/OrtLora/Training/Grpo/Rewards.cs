using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace OrtLora.Training.Grpo;

/// <summary>One completion to score: the prompt as text (for conversational data: the rendered prompt text), the
/// completion's text (decoded, special tokens skipped), how many tokens it has, whether it was cut at
/// max_completion_length (no EOS), the row's other dataset columns (e.g. "solution") as text, null where the cell
/// is null, and a conversational prompt's messages (null for a text prompt).</summary>
public sealed record RewardInput(string Prompt, string Completion, int CompletionTokens, bool Truncated, IReadOnlyDictionary<string, string?> Columns,
    IReadOnlyList<Data.ChatMessage>? PromptMessages = null);

/// <summary>A GRPO reward function (TRL's GRPOTrainer reward_funcs entry).</summary>
public interface IRewardFunction : IDisposable
{
    /// <summary>The name in metrics: rewards/{Name}/mean.</summary>
    string Name { get; }

    /// <summary>Dataset columns this function reads (the trainer checks the data has them before training).</summary>
    IReadOnlyList<string> RequiredColumns { get; }

    /// <summary>One score per input, in order; null where the function does not apply (TRL: None → NaN, left out of
    /// the means).</summary>
    double?[] Score(IReadOnlyList<RewardInput> batch);
}

/// <summary>The --reward-funcs specs. Each spec is NAME or NAME:ARGUMENT, split at the first ':' (so a regex or a
/// command may hold more colons); the argument is taken as written, spaces included.
/// <list type="bullet">
/// <item><c>exact_match[:COLUMN]</c> (COLUMN defaults to "solution"): 1.0 when the completion equals the column's
/// value after both are trimmed and their whitespace runs collapsed to one space (ordinal, case-sensitive), else 0.0;
/// null where the value is null. Metric name "exact_match", or "exact_match:COLUMN" for another column.</item>
/// <item><c>contains[:COLUMN]</c>: 1.0 when the normalized completion contains the normalized value, ignoring case
/// (ordinal), else 0.0; null where the value is null (an empty value is contained in every completion). Metric name
/// "contains" or "contains:COLUMN".</item>
/// <item><c>think_format</c>: TRL's think_format_reward, and its metric name "think_format_reward".</item>
/// <item><c>regex:PATTERN</c>: 1.0 when .NET's Regex.IsMatch(completion, PATTERN) with default options: it searches
/// anywhere (anchor with ^…$) and '.' does not match a newline (write (?s) for that). Metric name "regex".</item>
/// <item><c>soft_overlong_punishment[:CACHE]</c>: TRL's get_soft_overlong_punishment(max_completion_length, CACHE) on
/// the completion's token count; CACHE defaults to max(1, max_completion_length / 5) and must lie in
/// [1, max_completion_length]. Metric name "soft_overlong_punishment_reward", as TRL logs it.</item>
/// <item><c>command:CMD</c> or <c>command[NAME]:CMD</c>: an external process (<see cref="CommandReward"/>); metric
/// name "command", or NAME.</item>
/// <item><c>model:PATH</c>: a reward model, an ONNX sequence-classification export (<see cref="RewardModel"/>); metric
/// name its folder's name.</item>
/// </list></summary>
public static class RewardFunctions
{
    public const string DefaultColumn = "solution";

    /// <summary>The --reward-funcs names, for help text and errors.</summary>
    public static IReadOnlyList<string> Names { get; } = ["exact_match", "contains", "think_format", "regex", "soft_overlong_punishment", "command", "model"];

    /// <summary>The functions' metric names; a name given twice (two regex rewards) takes its place's number: regex, regex_2.</summary>
    public static List<string> MetricNames(IReadOnlyList<IRewardFunction> rewards) =>
        [.. rewards.Select((r, i) => rewards.Take(i).Count(o => o.Name == r.Name) is var before and > 0 ? $"{r.Name}_{before + 1}" : r.Name)];

    /// <summary>One error naming the file when a function reads a column the data lacks.</summary>
    public static void RequireColumns(IReadOnlyList<IRewardFunction> rewards, string path, IReadOnlyList<string> columns)
    {
        foreach (var reward in rewards)
            if (reward.RequiredColumns.FirstOrDefault(c => !columns.Contains(c)) is { } missing)
                throw new OrtLoraException($"{path}: reward function '{reward.Name}' reads column '{missing}', which the file lacks (columns: {string.Join(", ", columns)})");
    }

    const string Forms = "exact_match[:COLUMN], contains[:COLUMN], think_format, regex:PATTERN, soft_overlong_punishment[:CACHE], command:CMD, command[NAME]:CMD, model:PATH";

    /// <summary>One spec as the CLI takes it; <paramref name="maxCompletionLength"/> is GRPO's max_completion_length
    /// (only soft_overlong_punishment reads it). A command spec starts its process here, so the caller disposes the
    /// result.</summary>
    /// <param name="chatTemplateKwargs">chat_template_kwargs (JSON), for a reward model's chat template</param>
    public static IRewardFunction Parse(string spec, int maxCompletionLength, string? chatTemplateKwargs = null)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int colon = spec.IndexOf(':');
        string name = (colon < 0 ? spec : spec[..colon]).Trim();
        string? argument = colon < 0 ? null : spec[(colon + 1)..];
        switch (name)
        {
            case "exact_match":
                return new ExactMatchReward(Column(spec, argument), ignoreCase: false);
            case "contains":
                return new ExactMatchReward(Column(spec, argument), ignoreCase: true);
            case "think_format":
                if (argument is not null) throw Malformed(spec, "think_format takes no argument");
                return new ThinkFormatReward();
            case "regex":
                if (string.IsNullOrEmpty(argument)) throw Malformed(spec, "regex needs a pattern");
                return new RegexReward(argument);
            case "soft_overlong_punishment":
                return SoftOverlong(spec, argument, maxCompletionLength);
            case "command":
                if (string.IsNullOrWhiteSpace(argument)) throw Malformed(spec, "command needs a command line");
                return new CommandReward("command", argument);
            case "model":
                if (string.IsNullOrWhiteSpace(argument)) throw Malformed(spec, "model needs the path of an ONNX reward model (or of its folder)");
                return RewardModel.Load(argument.Trim(), chatTemplateKwargs);
        }
        if (name.StartsWith("command[", StringComparison.Ordinal))
        {
            // NAME goes into metric keys (and TensorBoard tags), so keep it to characters that are safe there.
            if (!name.EndsWith(']') || name.Length == "command[]".Length || !name["command[".Length..^1].All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
                throw Malformed(spec, "NAME in command[NAME]:CMD is one or more letters, digits, '_', '-' or '.'");
            if (string.IsNullOrWhiteSpace(argument)) throw Malformed(spec, "command needs a command line");
            return new CommandReward(name["command[".Length..^1], argument);
        }
        throw Malformed(spec, $"unknown reward function '{name}'");
    }

    static string Column(string spec, string? argument) =>
        argument is null ? DefaultColumn
        : argument.Trim() is { Length: > 0 } column ? column
        : throw Malformed(spec, "the column name after ':' is empty");

    static SoftOverlongPunishment SoftOverlong(string spec, string? argument, int max)
    {
        if (max < 1) throw new OrtLoraException($"--reward-funcs {spec}: max_completion_length is {max}; it must be at least 1");
        int cache = Math.Max(1, max / 5); // TRL has no default; a fifth of the budget is DAPO's proportion (4096 of 20480)
        if (argument is not null && !int.TryParse(argument.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out cache))
            throw Malformed(spec, $"CACHE '{argument}' is not an integer");
        if (cache < 1 || cache > max)
            throw new OrtLoraException($"--reward-funcs {spec}: CACHE {cache} must lie in [1, {max}] (max_completion_length)");
        return new SoftOverlongPunishment(max, cache);
    }

    static OrtLoraException Malformed(string spec, string why) =>
        new($"--reward-funcs '{spec}': {why}; the forms are {Forms}");

    /// <summary>Trims and collapses each whitespace run to one space, so line breaks and indentation in a completion
    /// do not decide a match.</summary>
    internal static string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        bool pendingSpace = false;
        foreach (char c in text)
        {
            if (char.IsWhiteSpace(c)) { pendingSpace = sb.Length > 0; continue; }
            if (pendingSpace) { sb.Append(' '); pendingSpace = false; }
            sb.Append(c);
        }
        return sb.ToString();
    }

    /// <summary>A column's value in one row; the trainer checked RequiredColumns up front, so a missing key is a bug
    /// in the caller, reported as such rather than scored.</summary>
    internal static string? Cell(RewardInput input, string column, string reward) =>
        input.Columns.TryGetValue(column, out var value) ? value
        : throw new OrtLoraException($"reward {reward}: the row has no column '{column}'");
}

/// <summary>exact_match and contains: the completion against one column, both normalized.</summary>
sealed class ExactMatchReward(string column, bool ignoreCase) : IRewardFunction
{
    public string Name { get; } = (ignoreCase ? "contains" : "exact_match") + (column == RewardFunctions.DefaultColumn ? "" : ":" + column);
    public IReadOnlyList<string> RequiredColumns { get; } = [column];

    public double?[] Score(IReadOnlyList<RewardInput> batch) =>
        batch.Select(input =>
        {
            if (RewardFunctions.Cell(input, column, Name) is not { } value) return (double?)null;
            string completion = RewardFunctions.Normalize(input.Completion), expected = RewardFunctions.Normalize(value);
            bool hit = ignoreCase ? completion.Contains(expected, StringComparison.OrdinalIgnoreCase) : string.Equals(completion, expected, StringComparison.Ordinal);
            return hit ? 1.0 : 0.0;
        }).ToArray();

    public void Dispose() { }
}

/// <summary>TRL's think_format_reward: one reasoning block opening the completion, no second &lt;think&gt; after it.
/// TRL's re.match with DOTALL | MULTILINE: MULTILINE changes nothing here, since match anchors at 0 and the
/// greedy .* under DOTALL reaches the end.</summary>
sealed class ThinkFormatReward : IRewardFunction
{
    static readonly Regex Pattern = new("^<think>(?!.*<think>)(.*?)</think>.*$", RegexOptions.Singleline | RegexOptions.CultureInvariant);

    public string Name => "think_format_reward";
    public IReadOnlyList<string> RequiredColumns => [];

    public double?[] Score(IReadOnlyList<RewardInput> batch) =>
        batch.Select(input => (double?)(Pattern.IsMatch(input.Completion) ? 1.0 : 0.0)).ToArray();

    public void Dispose() { }
}

/// <summary>regex:PATTERN, compiled once here so a bad pattern fails at parse time, before any model loads.</summary>
sealed class RegexReward : IRewardFunction
{
    // A pattern that backtracks catastrophically on some completion would otherwise hang training with no message.
    static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    readonly Regex _regex;
    readonly string _pattern;

    public RegexReward(string pattern)
    {
        _pattern = pattern;
        try { _regex = new Regex(pattern, RegexOptions.None, Timeout); }
        catch (ArgumentException e) { throw new OrtLoraException($"--reward-funcs regex:{pattern}: invalid regular expression '{pattern}': {e.Message}", e); }
    }

    public string Name => "regex";
    public IReadOnlyList<string> RequiredColumns => [];

    public double?[] Score(IReadOnlyList<RewardInput> batch)
    {
        try { return batch.Select(input => (double?)(_regex.IsMatch(input.Completion) ? 1.0 : 0.0)).ToArray(); }
        catch (RegexMatchTimeoutException e)
        {
            throw new OrtLoraException($"reward regex:{_pattern}: matching one completion took over {Timeout.TotalSeconds:0} s; simplify the pattern", e);
        }
    }

    public void Dispose() { }
}

/// <summary>TRL's get_soft_overlong_punishment (DAPO eq. 13) on the completion's token count L: 0 up to max − cache,
/// then a linear ramp down to −1 at L = max, and −1 beyond.</summary>
sealed class SoftOverlongPunishment(int max, int cache) : IRewardFunction
{
    public string Name => "soft_overlong_punishment_reward";
    public IReadOnlyList<string> RequiredColumns => [];

    public double?[] Score(IReadOnlyList<RewardInput> batch) =>
        batch.Select(input => (double?)At(input.CompletionTokens)).ToArray();

    double At(int length) =>
        length <= max - cache ? 0.0
        : length <= max ? (double)(max - cache - length) / cache
        : -1.0;

    public void Dispose() { }
}
