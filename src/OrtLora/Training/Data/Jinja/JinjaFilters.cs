using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace OrtLora.Training.Data.Jinja;

using Kwargs = IReadOnlyList<(string Name, object? Value)>;

/// <summary>jinja2's built-in filters that chat templates use, with jinja2's semantics (Python's str() for text,
/// Undefined as empty), and transformers' tojson.</summary>
static class JinjaFilters
{
    delegate object? Filter(object? value, IReadOnlyList<object?> args, Kwargs kwargs);

    // Every filter jinja2 has. A name outside this set fails as jinja2 fails (JinjaNameCheck); one inside it that is
    // not implemented below fails only if the template reaches it, so a template using it elsewhere still renders.
    static readonly HashSet<string> JinjaBuiltins = ["abs", "attr", "batch", "capitalize", "center", "count", "d", "default",
        "dictsort", "e", "escape", "filesizeformat", "first", "float", "forceescape", "format", "groupby", "indent", "int",
        "items", "join", "last", "length", "list", "lower", "map", "max", "min", "pprint", "random", "reject", "rejectattr",
        "replace", "reverse", "round", "safe", "select", "selectattr", "slice", "sort", "string", "striptags", "sum",
        "title", "tojson", "trim", "truncate", "unique", "upper", "urlencode", "urlize", "wordcount", "wordwrap", "xmlattr"];

    static readonly Regex WordBeginning = new(@"([-\s(\{\[<]+)");

    static readonly Dictionary<string, Filter> Filters = new()
    {
        ["abs"] = Simple("abs", v => v switch
        {
            bool or long => (object)Math.Abs(JinjaValue.AsLong(v)), // not unified to double with the next arm
            double d => Math.Abs(d),
            _ => throw new JinjaException($"bad operand type for abs(): {PythonText.Repr(JinjaValue.TypeName(v))}"),
        }),
        ["capitalize"] = Simple("capitalize", v => PythonText.Capitalize(JinjaValue.Str(v))),
        ["count"] = Simple("count", v => JinjaValue.Length(v)),
        ["length"] = Simple("length", v => JinjaValue.Length(v)),
        ["d"] = WithArguments("default", ["default_value", "boolean"], Default),
        ["default"] = WithArguments("default", ["default_value", "boolean"], Default),
        ["e"] = Simple("escape", Escape),
        ["escape"] = Simple("escape", Escape),
        ["first"] = Simple("first", v => JinjaValue.Iterate(v).Take(1).ToList() is [var first]
            ? first : new JinjaUndefined("No first item, sequence was empty.")),
        ["last"] = Simple("last", v => v is JinjaIterator iterator
            ? throw new JinjaException($"{PythonText.Repr(iterator.TypeName)} object is not reversible")
            : JinjaValue.ToList(v) is { Count: > 0 } items ? items[^1] : new JinjaUndefined("No last item, sequence was empty.")),
        ["float"] = WithArguments("float", ["default"], (v, a) => ToFloat(v, a.Get(0, 0.0))),
        ["int"] = WithArguments("int", ["default", "base"], (v, a) => ToInt(v, a.Get(0, 0L), a.Integer(1, 10))),
        ["indent"] = WithArguments("indent", ["width", "first", "blank"], Indent),
        ["items"] = Simple("items", v => new JinjaIterator(ItemPairs(v))),
        ["join"] = WithArguments("join", ["d", "attribute"], (v, a) =>
            string.Join(JinjaValue.Str(a.Get(0, "")), JinjaValue.Iterate(v).Select(AttributeGetter(a.Get(1))).Select(JinjaValue.Str))),
        ["list"] = Simple("list", v => JinjaValue.ToList(v)),
        ["lower"] = Simple("lower", v => JinjaValue.Str(v).ToLowerInvariant()),
        ["upper"] = Simple("upper", v => JinjaValue.Str(v).ToUpperInvariant()),
        ["map"] = Map,
        ["select"] = (v, a, k) => SelectOrReject(v, a, k, byAttribute: false, keep: true),
        ["reject"] = (v, a, k) => SelectOrReject(v, a, k, byAttribute: false, keep: false),
        ["selectattr"] = (v, a, k) => SelectOrReject(v, a, k, byAttribute: true, keep: true),
        ["rejectattr"] = (v, a, k) => SelectOrReject(v, a, k, byAttribute: true, keep: false),
        ["replace"] = WithArguments("replace", ["old", "new", "count"], (v, a) => JinjaMethods.Replace(
            JinjaValue.Str(v), JinjaValue.Str(a.Required(0)), JinjaValue.Str(a.Required(1)), a.Get(2) is null ? -1 : a.Integer(2, -1))),
        ["reverse"] = Simple("reverse", Reverse),
        ["safe"] = Simple("safe", v => v), // no Markup type: with autoescape off, safe text prints as it is
        ["string"] = Simple("string", v => JinjaValue.Str(v)),
        ["title"] = Simple("title", v => TitleWords(JinjaValue.Str(v))),
        ["tojson"] = WithArguments("tojson", ["ensure_ascii", "indent", "separators", "sort_keys"], JinjaJson.ToJson),
        ["trim"] = WithArguments("trim", ["chars"], (v, a) => PythonText.Strip(JinjaValue.Str(v), a.OptionalString(0))),
        ["unique"] = WithArguments("unique", ["case_sensitive", "attribute"], Unique),
    };

    /// <summary>What jinja2's generator filters do: nothing until read, and nothing at all for a false value
    /// (they start with <c>if value:</c>).</summary>
    static IEnumerable<object?> Lazily(object? value, Func<IEnumerable<object?>, IEnumerable<object?>> pipeline)
    {
        if (!JinjaValue.Truthy(value)) yield break;
        foreach (var item in pipeline(JinjaValue.Iterate(value))) yield return item;
    }

    /// <summary>The items filter's pairs, lazily: a non-mapping fails when they are read, as jinja2's generator does.</summary>
    static IEnumerable<object?> ItemPairs(object? value)
    {
        if (value is JinjaUndefined) yield break;
        if (value is not IReadOnlyDictionary<string, object?> map) throw new JinjaException("Can only get item pairs from a mapping.");
        foreach (var (key, item) in map) yield return new JinjaTuple([key, item]);
    }

    /// <summary>A string reversed; a list, tuple or dict as a reverse iterator; an iterator read into a reversed list.</summary>
    static object? Reverse(object? value) => value switch
    {
        string s => PythonText.FromCodePoints(PythonText.CodePoints(s).Reverse()),
        JinjaIterator iterator => Enumerable.Reverse(iterator.Consume().ToList()).ToList(),
        _ when JinjaValue.IsSequence(value) => new JinjaIterator(Enumerable.Reverse(JinjaValue.ToList(value)), "list_reverseiterator"),
        _ => throw new JinjaException("argument must be iterable"),
    };

    /// <summary>A filter without parameters.</summary>
    static Filter Simple(string name, Func<object?, object?> body) => (value, args, kwargs) =>
    {
        CallArguments.Bind(name, args, kwargs);
        return body(value);
    };

    static Filter WithArguments(string name, string[] parameters, Func<object?, CallArguments, object?> body) =>
        (value, args, kwargs) => body(value, CallArguments.Bind(name, args, kwargs, parameters));

    public static bool IsJinjaFilter(string name) => JinjaBuiltins.Contains(name);

    public static object? Apply(string name, object? value, IReadOnlyList<object?> args, Kwargs kwargs) =>
        Filters.TryGetValue(name, out var filter)
            ? filter(value, args, kwargs)
            : throw new JinjaException(JinjaBuiltins.Contains(name)
                ? $"the '{name}' filter is not supported by ortlora's Jinja interpreter" : $"No filter named '{name}' found.");

    /// <summary>default(value, default_value='', boolean=False): the fallback for Undefined, or with boolean for
    /// anything false.</summary>
    static object? Default(object? value, CallArguments args)
    {
        bool useFallback = value is JinjaUndefined || (JinjaValue.Truthy(args.Get(1, false)) && !JinjaValue.Truthy(value));
        return useFallback ? args.Get(0, "") : value;
    }

    /// <summary>HTML escaping as markupsafe does it.</summary>
    static object? Escape(object? value) =>
        JinjaValue.Str(value).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");

    /// <summary>jinja2's title filter (not str.title): words start after '-', whitespace or an opening bracket.</summary>
    static string TitleWords(string s)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var part in WordBeginning.Split(s))
        {
            if (part.Length == 0) continue;
            int width = char.IsSurrogatePair(part, 0) ? 2 : 1;
            sb.Append(part[..width].ToUpperInvariant()).Append(part[width..].ToLowerInvariant());
        }
        return sb.ToString();
    }

    /// <summary>int(value, default=0, base=10): a string is read as Python's int(), else through float();
    /// what cannot convert gives the default.</summary>
    static object? ToInt(object? value, object? fallback, long numberBase)
    {
        switch (value)
        {
            case JinjaUndefined u: throw u.Fail();
            case bool or long: return JinjaValue.AsLong(value);
            case double d: return double.IsFinite(d) ? (long)Math.Truncate(d) : throw new JinjaException("cannot convert float infinity or NaN to integer");
            case string s:
                string digits = PythonText.Strip(s).Replace("_", "");
                if (numberBase == 10 && long.TryParse(digits, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long parsedInteger))
                    return parsedInteger;
                try
                {
                    if (numberBase != 10 && digits.Length > 0) return Convert.ToInt64(digits, (int)numberBase);
                }
                catch (Exception e) when (e is FormatException or ArgumentException or OverflowException) { }
                return ToFloat(s, null) is double parsed && double.IsFinite(parsed) ? (long)Math.Truncate(parsed) : fallback;
            default: return fallback;
        }
    }

    /// <summary>float(value, default=0.0): Python's float() of numbers and of strings like " 2.5 ", "1e3", "inf".</summary>
    static object? ToFloat(object? value, object? fallback)
    {
        switch (value)
        {
            case JinjaUndefined u: throw u.Fail();
            case bool or long or double: return JinjaValue.AsDouble(value);
            case string s:
                string text = PythonText.Strip(s).Replace("_", "").ToLowerInvariant();
                double sign = text.StartsWith('-') ? -1 : 1;
                switch (text.TrimStart('+', '-'))
                {
                    case "inf" or "infinity": return sign * double.PositiveInfinity;
                    case "nan": return double.NaN;
                }
                return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) ? d : fallback;
            default: return fallback;
        }
    }

    /// <summary>indent(s, width=4, first=False, blank=False): lines after the first (and with first, the first)
    /// are prefixed; blank lines only with blank.</summary>
    static object? Indent(object? value, CallArguments b)
    {
        string indention = b.Get(0, 4L) is string s ? s : new string(' ', (int)Math.Max(0, b.Integer(0, 4)));
        string text = value switch // jinja2 appends "\n" to the value itself, which only a str survives
        {
            string str => str,
            JinjaUndefined u => throw u.Fail(),
            JinjaTuple => throw new JinjaException("can only concatenate tuple (not \"str\") to tuple"),
            IReadOnlyList<object?> => throw new JinjaException("'list' object has no attribute 'splitlines'"),
            _ => throw new JinjaException($"unsupported operand type(s) for +=: {PythonText.Repr(JinjaValue.TypeName(value))} and 'str'"),
        };
        var lines = PythonText.SplitLines(text + "\n");
        string result;
        if (JinjaValue.Truthy(b.Get(2, false))) result = string.Join("\n" + indention, lines);
        else
        {
            result = lines[0];
            if (lines.Count > 1) result += "\n" + string.Join("\n", lines.Skip(1).Select(line => line.Length > 0 ? indention + line : line));
        }
        return JinjaValue.Truthy(b.Get(1, false)) ? indention + result : result;
    }

    /// <summary>jinja2's attribute getter: a dotted path of item lookups ("a.b", digits as indexes);
    /// Undefined results become <paramref name="fallback"/> when one is given.</summary>
    static Func<object?, object?> AttributeGetter(object? attribute, object? fallback = null)
    {
        if (attribute is null) return item => item;
        var parts = (attribute is string path ? path.Split('.') : [JinjaValue.Str(attribute)])
            .Select(p => p.Length > 0 && p.All(char.IsAsciiDigit) ? (object?)long.Parse(p) : p).ToList();
        return item =>
        {
            foreach (var part in parts)
            {
                item = JinjaOperators.GetItem(item, part);
                if (fallback is not null && item is JinjaUndefined) item = fallback;
            }
            return item;
        };
    }

    /// <summary>map(attribute='x', default=...) or map('filter', args...).</summary>
    static object? Map(object? value, IReadOnlyList<object?> args, Kwargs kwargs)
    {
        Func<object?, object?> transform;
        if (args.Count == 0 && kwargs.Any(k => k.Name == "attribute"))
        {
            var b = CallArguments.Bind("map", args, kwargs, "attribute", "default");
            transform = AttributeGetter(b.Get(0), b.Get(1));
        }
        else
        {
            if (args.Count == 0) throw new JinjaException("map requires a filter argument");
            string filter = JinjaValue.RequireString(args[0], "map() filter name");
            var rest = args.Skip(1).ToList();
            transform = item => Apply(filter, item, rest, kwargs);
        }
        return new JinjaIterator(Lazily(value, items => items.Select(transform)));
    }

    /// <summary>select/reject(test, args...) and selectattr/rejectattr(attribute, test, args...); without a test
    /// the value's truth decides.</summary>
    static object? SelectOrReject(object? value, IReadOnlyList<object?> args, Kwargs kwargs, bool byAttribute, bool keep)
    {
        int offset = byAttribute ? 1 : 0;
        if (byAttribute && args.Count == 0) throw new JinjaException("Missing parameter for attribute name");
        var getter = byAttribute ? AttributeGetter(args[0]) : (item => item);
        Func<object?, bool> test = args.Count > offset
            ? item => JinjaValue.Truthy(JinjaTests.Apply(JinjaValue.RequireString(args[offset], "test name"), item, args.Skip(offset + 1).ToList(), kwargs))
            : JinjaValue.Truthy;
        return new JinjaIterator(Lazily(value, items => items.Where(item => test(getter(item)) == keep)));
    }

    /// <summary>unique(case_sensitive=False, attribute=None): first occurrences, strings compared lower-cased.</summary>
    static object? Unique(object? value, CallArguments b)
    {
        bool caseSensitive = JinjaValue.Truthy(b.Get(0, false));
        var getter = AttributeGetter(b.Get(1));
        return new JinjaIterator(Lazily(value, items => UniqueItems(items, caseSensitive, getter)));
    }

    static IEnumerable<object?> UniqueItems(IEnumerable<object?> items, bool caseSensitive, Func<object?, object?> getter)
    {
        var seen = new List<object?>();
        foreach (var item in items)
        {
            var key = getter(item);
            if (!caseSensitive && key is string s) key = s.ToLowerInvariant();
            if (seen.Any(k => JinjaOperators.PyEquals(k, key))) continue;
            seen.Add(key);
            yield return item;
        }
    }
}
