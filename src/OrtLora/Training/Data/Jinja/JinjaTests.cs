namespace OrtLora.Training.Data.Jinja;

using Kwargs = IReadOnlyList<(string Name, object? Value)>;

/// <summary>jinja2's built-in tests (<c>x is defined</c>, <c>x is divisibleby 3</c>), with Python's notion of
/// the types: a bool is a number but not an integer, Undefined is iterable, a dict is a sequence.</summary>
static class JinjaTests
{
    delegate bool Test(object? value, CallArguments args);

    static readonly Dictionary<string, (string[] Parameters, Test Body)> Tests = new()
    {
        ["defined"] = ([], (v, _) => v is not JinjaUndefined),
        ["undefined"] = ([], (v, _) => v is JinjaUndefined),
        ["none"] = ([], (v, _) => v is null),
        ["boolean"] = ([], (v, _) => v is bool),
        ["true"] = ([], (v, _) => v is true),
        ["false"] = ([], (v, _) => v is false),
        ["integer"] = ([], (v, _) => v is long),
        ["float"] = ([], (v, _) => v is double),
        ["number"] = ([], (v, _) => JinjaValue.IsNumber(v)),
        ["string"] = ([], (v, _) => v is string),
        ["mapping"] = ([], (v, _) => v is IReadOnlyDictionary<string, object?>),
        ["iterable"] = ([], (v, _) => JinjaValue.IsIterable(v)),
        // jinja2 asks for len() and __getitem__: strings, lists, tuples, dicts and (oddly) Undefined have both.
        ["sequence"] = ([], (v, _) => JinjaValue.IsSequence(v)),
        ["callable"] = ([], (v, _) => v is IJinjaCallable or JinjaUndefined), // Undefined has __call__ (that raises)
        ["escaped"] = ([], (_, _) => false),
        ["odd"] = ([], (v, _) => JinjaOperators.PyEquals(JinjaOperators.Arithmetic("%", v, 2L), 1L)),
        ["even"] = ([], (v, _) => JinjaOperators.PyEquals(JinjaOperators.Arithmetic("%", v, 2L), 0L)),
        ["divisibleby"] = (["num"], (v, a) => JinjaOperators.PyEquals(JinjaOperators.Arithmetic("%", v, a.Required(0)), 0L)),
        ["lower"] = ([], (v, _) => PythonText.HasOnlyCase(JinjaValue.Str(v), lower: true)),
        ["upper"] = ([], (v, _) => PythonText.HasOnlyCase(JinjaValue.Str(v), lower: false)),
        ["in"] = (["seq"], (v, a) => JinjaOperators.Contains(a.Required(0), v)),
        ["sameas"] = (["other"], (v, a) => SameAs(v, a.Required(0))),
        ["filter"] = ([], (v, _) => v is string name && JinjaFilters.IsJinjaFilter(name)),
        ["test"] = ([], (v, _) => v is string name && IsJinjaTest(name)),
        ["eq"] = Comparison((a, b) => JinjaOperators.PyEquals(a, b)),
        ["ne"] = Comparison((a, b) => !JinjaOperators.PyEquals(a, b)),
        ["lt"] = Comparison((a, b) => JinjaOperators.Compare(a, b, "<") < 0),
        ["le"] = Comparison((a, b) => JinjaOperators.Compare(a, b, "<=") <= 0),
        ["gt"] = Comparison((a, b) => JinjaOperators.Compare(a, b, ">") > 0),
        ["ge"] = Comparison((a, b) => JinjaOperators.Compare(a, b, ">=") >= 0),
    };

    // jinja2 registers the comparisons under several names.
    static readonly Dictionary<string, string> Aliases = new()
    {
        ["equalto"] = "eq", ["=="] = "eq", ["!="] = "ne", ["lessthan"] = "lt", ["<"] = "lt", ["<="] = "le",
        ["greaterthan"] = "gt", [">"] = "gt", [">="] = "ge",
    };

    static (string[], Test) Comparison(Func<object?, object?, bool> compare) => (["other"], (v, a) => compare(v, a.Required(0)));

    static bool SameAs(object? a, object? b) => (a, b) switch
    {
        (null, null) => true,
        (bool x, bool y) => x == y,
        (long x, long y) => x == y && x is >= -5 and <= 256, // CPython's cached small ints are the same object
        _ => ReferenceEquals(a, b),
    };

    public static bool IsJinjaTest(string name) => Tests.ContainsKey(name) || Aliases.ContainsKey(name);

    public static bool Apply(string name, object? value, IReadOnlyList<object?> args, Kwargs kwargs)
    {
        string canonical = Aliases.GetValueOrDefault(name, name);
        if (!Tests.TryGetValue(canonical, out var test)) throw new JinjaException($"No test named '{name}' found.");
        return test.Body(value, CallArguments.Bind(name, args, kwargs, test.Parameters));
    }
}
