using System.Text;

namespace OrtLora.Training.Data.Jinja;

/// <summary>Arguments of a call bound to parameter names, positionally or by keyword, as Python binds them.</summary>
sealed class CallArguments
{
    readonly object?[] _values;
    readonly bool[] _given;
    readonly string _function;
    readonly string[] _names;

    CallArguments(string function, string[] names)
    {
        _function = function;
        _names = names;
        _values = new object?[names.Length];
        _given = new bool[names.Length];
    }

    public static CallArguments Bind(string function, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs,
                                     params string[] names)
    {
        var bound = new CallArguments(function, names);
        if (args.Count > names.Length)
            throw new JinjaException($"{function}() takes at most {names.Length} argument(s) ({args.Count} given)");
        for (int i = 0; i < args.Count; i++) bound.Set(i, args[i]);
        foreach (var (name, value) in kwargs)
        {
            int i = Array.IndexOf(names, name);
            if (i < 0) throw new JinjaException($"{function}() got an unexpected keyword argument {PythonText.Repr(name)}");
            if (bound._given[i]) throw new JinjaException($"{function}() got multiple values for argument {PythonText.Repr(name)}");
            bound.Set(i, value);
        }
        return bound;
    }

    void Set(int i, object? value)
    {
        _values[i] = value;
        _given[i] = true;
    }

    public bool Has(int i) => _given[i];
    public object? Get(int i, object? fallback = null) => _given[i] ? _values[i] : fallback;

    public object? Required(int i) => _given[i]
        ? _values[i]
        : throw new JinjaException($"{_function}() missing required argument {PythonText.Repr(_names[i])}");

    /// <summary>A str argument that Python also accepts as None (strip's chars, split's sep).</summary>
    public string? OptionalString(int i) => Get(i) is null ? null : JinjaValue.RequireString(Get(i), $"{_function}() argument {_names[i]}");

    public long Integer(int i, long fallback) => _given[i] ? JinjaValue.RequireInteger(_values[i], $"{_function}() argument {_names[i]}") : fallback;
}

/// <summary>The Python methods templates call on strings, dicts and lists (<c>content.strip()</c>,
/// <c>d.items()</c>), and the global functions range, namespace and dict.</summary>
static class JinjaMethods
{
    // Methods that would mutate: the immutable sandbox transformers renders in refuses them.
    static readonly HashSet<string> UnsafeDictMethods = ["clear", "pop", "popitem", "setdefault", "update"];
    static readonly HashSet<string> UnsafeListMethods = ["append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"];

    // Real str methods this interpreter does not implement: calling one says so instead of "undefined".
    static readonly HashSet<string> UnsupportedStringMethods = ["format", "format_map", "partition", "rpartition", "encode",
        "center", "ljust", "rjust", "zfill", "swapcase", "casefold", "expandtabs", "translate", "maketrans", "isdecimal",
        "isnumeric", "isidentifier", "isprintable", "istitle", "isascii"];

    public static bool IsUnsafe(object? target, string name) =>
        (target is IReadOnlyDictionary<string, object?> && UnsafeDictMethods.Contains(name))
        || (target is IReadOnlyList<object?> and not JinjaTuple && UnsafeListMethods.Contains(name));

    public static bool TryGetMethod(object? target, string name, out object? method)
    {
        method = target switch
        {
            string s => StringMethod(s, name),
            IReadOnlyDictionary<string, object?> map => DictMethod(map, name),
            IReadOnlyList<object?> list => ListMethod(list, name),
            _ => null,
        };
        if (method is null && IsUnsafe(target, name))
            method = new JinjaUndefined($"access to attribute {PythonText.Repr(name)} of {PythonText.Repr(JinjaValue.TypeName(target))} object is unsafe.");
        return method is not null;
    }

    static JinjaFunction Method(string owner, string name, Func<CallArguments, object?> body, params string[] parameters) =>
        new($"{owner}.{name}", (args, kwargs) => body(CallArguments.Bind($"{owner}.{name}", args, kwargs, parameters)));

    static JinjaFunction? StringMethod(string s, string name) => name switch
    {
        "strip" => Method("str", name, a => PythonText.Strip(s, a.OptionalString(0)), "chars"),
        "lstrip" => Method("str", name, a => PythonText.LStrip(s, a.OptionalString(0)), "chars"),
        "rstrip" => Method("str", name, a => PythonText.RStrip(s, a.OptionalString(0)), "chars"),
        "split" => Method("str", name, a => PythonText.Split(s, a.OptionalString(0), a.Integer(1, -1)), "sep", "maxsplit"),
        "rsplit" => Method("str", name, a => PythonText.RSplit(s, a.OptionalString(0), a.Integer(1, -1)), "sep", "maxsplit"),
        "splitlines" => Method("str", name, a => PythonText.SplitLines(s, JinjaValue.Truthy(a.Get(0, false))).Cast<object?>().ToList(), "keepends"),
        "startswith" => Method("str", name, a => Affix(s, a.Required(0), s.StartsWith), "prefix"),
        "endswith" => Method("str", name, a => Affix(s, a.Required(0), s.EndsWith), "suffix"),
        "upper" => Method("str", name, _ => s.ToUpperInvariant()),
        "lower" => Method("str", name, _ => s.ToLowerInvariant()),
        "title" => Method("str", name, _ => PythonText.Title(s)),
        "capitalize" => Method("str", name, _ => PythonText.Capitalize(s)),
        "replace" => Method("str", name, a => Replace(s, Text(a.Required(0)), Text(a.Required(1)), a.Integer(2, -1)), "old", "new", "count"),
        "find" => Method("str", name, a => (long)CodePointIndex(s, s.IndexOf(Text(a.Required(0)), StringComparison.Ordinal)), "sub"),
        "rfind" => Method("str", name, a => (long)CodePointIndex(s, s.LastIndexOf(Text(a.Required(0)), StringComparison.Ordinal)), "sub"),
        "index" or "rindex" => Method("str", name, a =>
        {
            string sub = Text(a.Required(0));
            int at = name == "index" ? s.IndexOf(sub, StringComparison.Ordinal) : s.LastIndexOf(sub, StringComparison.Ordinal);
            return at < 0 ? throw new JinjaException("substring not found") : (long)CodePointIndex(s, at);
        }, "sub"),
        "count" => Method("str", name, a => Count(s, Text(a.Required(0))), "sub"),
        "join" => Method("str", name, a => string.Join(s, JinjaValue.Iterate(a.Required(0)).Select((item, i) => item as string
            ?? throw new JinjaException($"sequence item {i}: expected str instance, {JinjaValue.TypeName(item)} found"))), "iterable"),
        "removeprefix" => Method("str", name, a => Text(a.Required(0)) is var p && s.StartsWith(p, StringComparison.Ordinal) ? s[p.Length..] : s, "prefix"),
        "removesuffix" => Method("str", name, a => Text(a.Required(0)) is var p && p.Length > 0 && s.EndsWith(p, StringComparison.Ordinal) ? s[..^p.Length] : s, "suffix"),
        "isdigit" => Method("str", name, _ => s.Length > 0 && s.EnumerateRunes().All(Rune.IsDigit)),
        "isalpha" => Method("str", name, _ => s.Length > 0 && s.EnumerateRunes().All(Rune.IsLetter)),
        "isalnum" => Method("str", name, _ => s.Length > 0 && s.EnumerateRunes().All(Rune.IsLetterOrDigit)),
        "isspace" => Method("str", name, _ => s.Length > 0 && s.All(PythonText.IsSpace)),
        "islower" => Method("str", name, _ => PythonText.HasOnlyCase(s, lower: true)),
        "isupper" => Method("str", name, _ => PythonText.HasOnlyCase(s, lower: false)),
        _ when UnsupportedStringMethods.Contains(name) =>
            new JinjaFunction($"str.{name}", (_, _) => throw new JinjaException($"str.{name}() is not supported by ortlora's Jinja interpreter")),
        _ => null,
    };

    static string Text(object? value) => JinjaValue.RequireString(value, "argument");

    static int CodePointIndex(string s, int utf16Index) => utf16Index < 0 ? -1 : PythonText.Length(s[..utf16Index]);

    static bool Affix(string s, object? affix, Func<string, StringComparison, bool> test) => affix switch
    {
        string one => test(one, StringComparison.Ordinal),
        JinjaTuple options => options.Any(o => test(Text(o), StringComparison.Ordinal)),
        _ => throw new JinjaException($"startswith/endswith first arg must be str or a tuple of str, not {JinjaValue.TypeName(affix)}"),
    };

    /// <summary>str.replace: at most <paramref name="count"/> replacements (all when negative); an empty
    /// <paramref name="old"/> inserts between characters, as in Python.</summary>
    public static string Replace(string s, string old, string replacement, long count)
    {
        if (count < 0 && old.Length > 0) return s.Replace(old, replacement, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int from = 0;
        long done = 0;
        if (old.Length == 0)
        {
            var points = PythonText.CodePoints(s);
            for (int i = 0; i <= points.Length; i++)
            {
                if (count < 0 || done < count)
                {
                    sb.Append(replacement);
                    done++;
                }
                if (i < points.Length) sb.Append(PythonText.FromCodePoints([points[i]]));
            }
            return sb.ToString();
        }
        while (done < count)
        {
            int at = s.IndexOf(old, from, StringComparison.Ordinal);
            if (at < 0) break;
            sb.Append(s, from, at - from).Append(replacement);
            from = at + old.Length;
            done++;
        }
        return sb.Append(s, from, s.Length - from).ToString();
    }

    static long Count(string s, string sub)
    {
        if (sub.Length == 0) return PythonText.Length(s) + 1;
        long n = 0;
        for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    static JinjaFunction? DictMethod(IReadOnlyDictionary<string, object?> map, string name) => name switch
    {
        "items" => Method("dict", name, _ => map.Select(p => (object?)new JinjaTuple([p.Key, p.Value])).ToList()),
        "keys" => Method("dict", name, _ => map.Keys.Cast<object?>().ToList()),
        "values" => Method("dict", name, _ => map.Values.ToList()),
        "get" => Method("dict", name, a => a.Required(0) is string key && map.TryGetValue(key, out var v) ? v : a.Get(1), "key", "default"),
        "copy" => Method("dict", name, _ => map.ToDictionary(p => p.Key, p => p.Value)),
        _ => null,
    };

    static JinjaFunction? ListMethod(IReadOnlyList<object?> list, string name) => name switch
    {
        "count" => Method(JinjaValue.TypeName(list), name, a => (long)list.Count(x => JinjaOperators.PyEquals(x, a.Required(0))), "value"),
        "index" => Method(JinjaValue.TypeName(list), name, a =>
        {
            for (int i = 0; i < list.Count; i++)
                if (JinjaOperators.PyEquals(list[i], a.Required(0))) return (long)i;
            throw new JinjaException($"{JinjaValue.Repr(a.Required(0))} is not in list");
        }, "value"),
        "copy" when list is not JinjaTuple => Method("list", name, _ => list.ToList()),
        _ => null,
    };

    /// <summary>range(stop) or range(start, stop[, step]) as a list; the sandbox caps it at 100000 items.</summary>
    public static object? Range(IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs)
    {
        if (kwargs.Count > 0 || args.Count is 0 or > 3) throw new JinjaException("range() takes 1 to 3 positional arguments");
        long Arg(int i) => JinjaValue.RequireInteger(args[i], "range() argument");
        long start = args.Count == 1 ? 0 : Arg(0), stop = args.Count == 1 ? Arg(0) : Arg(1), step = args.Count == 3 ? Arg(2) : 1;
        if (step == 0) throw new JinjaException("range() arg 3 must not be zero");
        var items = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            if (items.Count >= 100_000) throw new JinjaException("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
            items.Add(i);
        }
        return items;
    }

    /// <summary>namespace(...) and dict(...): from keyword arguments and optionally one mapping first.</summary>
    public static Dictionary<string, object?> KeywordMapping(string function, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs)
    {
        var map = new Dictionary<string, object?>();
        if (args.Count > 1) throw new JinjaException($"{function}() takes at most one positional argument");
        if (args.Count == 1)
        {
            if (args[0] is not IReadOnlyDictionary<string, object?> initial)
                throw new JinjaException($"{function}() argument must be a mapping, not {JinjaValue.TypeName(args[0])}");
            foreach (var (key, value) in initial) map[key] = value;
        }
        foreach (var (key, value) in kwargs) map[key] = value;
        return map;
    }
}
