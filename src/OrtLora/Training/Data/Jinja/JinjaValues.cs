using System.Collections;
using System.Globalization;
using System.Text;

namespace OrtLora.Training.Data.Jinja;

// Runtime values are plain objects with Python's meaning: null is None, bool, long (every int), double, string,
// List<object?> (list), JinjaTuple, Dictionary<string, object?> (dict, in insertion order), and the types below.

/// <summary>jinja2's default Undefined: prints as "", is false and empty, equals only another Undefined; using it
/// any other way (attribute, item, arithmetic, call) raises UndefinedError with this message.</summary>
sealed class JinjaUndefined(string message)
{
    public string Message { get; } = message;

    public static JinjaUndefined Named(string name) => new($"{PythonText.Repr(name)} is undefined");

    /// <summary>The result of looking up a missing attribute or item, worded as jinja2 words it.</summary>
    public static JinjaUndefined Missing(object? owner, object? key) => key is string name
        ? new($"{PythonText.Repr(JinjaValue.ObjectTypeRepr(owner))} has no attribute {PythonText.Repr(name)}")
        : new($"{JinjaValue.ObjectTypeRepr(owner)} has no element {JinjaValue.Repr(key)}");

    public JinjaException Fail() => new(Message);
}

/// <summary>A Python tuple: from literals like <c>('a', 'b')</c> and <c>dict.items()</c>.</summary>
sealed class JinjaTuple(IReadOnlyList<object?> items) : IReadOnlyList<object?>
{
    public object? this[int index] => items[index];
    public int Count => items.Count;
    public IEnumerator<object?> GetEnumerator() => items.GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}

/// <summary><c>namespace(...)</c>: the one mutable object templates get, so a loop can carry state out.</summary>
sealed class JinjaNamespace
{
    public Dictionary<string, object?> Attributes { get; } = [];
}

/// <summary>A one-shot Python iterator: what jinja2's select/map/unique/items filters return (generators) and its
/// reverse filter returns for a list. Always true, without len(), and exhausted once iterated.</summary>
sealed class JinjaIterator(IEnumerable<object?> source, string typeName = "generator")
{
    readonly IEnumerator<object?> _items = source.GetEnumerator();

    public string TypeName => typeName;

    public IEnumerable<object?> Consume()
    {
        while (_items.MoveNext()) yield return _items.Current;
    }

    public override string ToString() => $"<{typeName} object>";
}

/// <summary>The <c>loop</c> variable of one for-loop iteration.</summary>
sealed class JinjaLoop(IReadOnlyList<object?> items, int index)
{
    public object? Attribute(string name) => name switch
    {
        "index" => (long)index + 1,
        "index0" => (long)index,
        "revindex" => (long)(items.Count - index),
        "revindex0" => (long)(items.Count - index - 1),
        "first" => index == 0,
        "last" => index == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => index > 0 ? items[index - 1] : new JinjaUndefined("there is no previous item"),
        "nextitem" => index < items.Count - 1 ? items[index + 1] : new JinjaUndefined("there is no next item"),
        "cycle" => new JinjaFunction("cycle", (args, _) =>
            args.Count == 0 ? throw new JinjaException("no items for cycling given") : args[index % args.Count]),
        _ => JinjaUndefined.Missing(this, name),
    };

    public override string ToString() => $"<LoopContext {index + 1}/{items.Count}>";
}

/// <summary>Something a template can call: a built-in function or method, or a macro.</summary>
interface IJinjaCallable
{
    object? Call(IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs);
}

sealed class JinjaFunction(string name, Func<IReadOnlyList<object?>, IReadOnlyList<(string Name, object? Value)>, object?> body)
    : IJinjaCallable
{
    public string Name => name;
    public object? Call(IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs) => body(args, kwargs);
    public override string ToString() => $"<built-in function {name}>";
}

/// <summary>Python's view of values: type names, truth, str() and repr(), iteration and len().</summary>
static class JinjaValue
{
    /// <summary>A caller's value in the runtime's representation: ints become long, floats double, lists and
    /// dictionaries are copied (dictionaries keep their order).</summary>
    public static object? FromHost(object? value) => value switch
    {
        null or string or bool or long or double => value,
        int i => (long)i,
        short s => (long)s,
        byte b => (long)b,
        uint u => (long)u,
        float f => (double)f,
        decimal m => (double)m,
        IReadOnlyDictionary<string, object?> map => map.ToDictionary(p => p.Key, p => FromHost(p.Value)),
        IReadOnlyList<object?> list => list.Select(FromHost).ToList(),
        _ => throw new JinjaException($"a template variable cannot be a {value.GetType().Name}"),
    };

    public static string TypeName(object? value) => value switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        JinjaTuple => "tuple",
        IReadOnlyList<object?> => "list",
        IReadOnlyDictionary<string, object?> => "dict",
        JinjaUndefined => "Undefined",
        JinjaNamespace => "Namespace",
        JinjaLoop => "LoopContext",
        JinjaMacro => "Macro",
        JinjaIterator iterator => iterator.TypeName,
        _ => "builtin_function_or_method",
    };

    /// <summary>jinja2's object_type_repr, used in undefined messages: "dict object", "None".</summary>
    public static string ObjectTypeRepr(object? value) => value switch
    {
        null => "None",
        JinjaNamespace => "jinja2.utils.Namespace object",
        JinjaLoop => "jinja2.runtime.LoopContext object",
        JinjaMacro => "jinja2.runtime.Macro object",
        _ => TypeName(value) + " object",
    };

    public static bool Truthy(object? value) => value switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        IReadOnlyList<object?> list => list.Count > 0,
        IReadOnlyDictionary<string, object?> map => map.Count > 0,
        _ => true,
    };

    /// <summary>Python's str(): what <c>{{ x }}</c> prints.</summary>
    public static string Str(object? value) => value switch
    {
        string s => s,
        JinjaUndefined => "",
        _ => Repr(value),
    };

    public static string Repr(object? value)
    {
        switch (value)
        {
            case null: return "None";
            case bool b: return b ? "True" : "False";
            case long l: return l.ToString(CultureInfo.InvariantCulture);
            case double d: return PythonText.FloatRepr(d);
            case string s: return PythonText.Repr(s);
            case JinjaUndefined: return "Undefined";
            case JinjaTuple t: return t.Count == 1 ? $"({Repr(t[0])},)" : "(" + string.Join(", ", t.Select(Repr)) + ")";
            case IReadOnlyList<object?> list: return "[" + string.Join(", ", list.Select(Repr)) + "]";
            case IReadOnlyDictionary<string, object?> map: return DictRepr(map);
            case JinjaNamespace ns: return "<Namespace " + DictRepr(ns.Attributes) + ">";
            default: return value.ToString() ?? "";
        }
    }

    static string DictRepr(IReadOnlyDictionary<string, object?> map)
    {
        var sb = new StringBuilder("{");
        foreach (var (key, item) in map)
        {
            if (sb.Length > 1) sb.Append(", ");
            sb.Append(PythonText.Repr(key)).Append(": ").Append(Repr(item));
        }
        return sb.Append('}').ToString();
    }

    /// <summary>iter(): a string yields its characters (code points), a dict its keys, Undefined nothing.</summary>
    public static IEnumerable<object?> Iterate(object? value) => value switch
    {
        string s => PythonText.CodePoints(s).Select(p => (object?)PythonText.FromCodePoints([p])),
        IReadOnlyList<object?> list => list,
        IReadOnlyDictionary<string, object?> map => map.Keys,
        JinjaIterator iterator => iterator.Consume(),
        JinjaUndefined => [],
        _ => throw new JinjaException($"{PythonText.Repr(TypeName(value))} object is not iterable"),
    };

    public static List<object?> ToList(object? value) => [.. Iterate(value)];

    /// <summary>What has len() and items: str, list, tuple, dict, and (as jinja2 sees it) Undefined.</summary>
    public static bool IsSequence(object? value) => value is string or IReadOnlyList<object?> or IReadOnlyDictionary<string, object?> or JinjaUndefined;

    public static bool IsIterable(object? value) => IsSequence(value) || value is JinjaIterator;

    public static long Length(object? value) => value switch
    {
        string s => PythonText.Length(s),
        IReadOnlyList<object?> list => list.Count,
        IReadOnlyDictionary<string, object?> map => map.Count,
        JinjaUndefined => 0,
        _ => throw new JinjaException($"object of type {PythonText.Repr(TypeName(value))} has no len()"),
    };

    public static bool IsNumber(object? value) => value is bool or long or double;
    public static bool IsInteger(object? value) => value is bool or long;
    public static long AsLong(object? value) => value is bool b ? (b ? 1 : 0) : (long)value!;
    public static double AsDouble(object? value) => value switch { bool b => b ? 1 : 0, long l => l, _ => (double)value! };

    public static long RequireInteger(object? value, string what) => value switch
    {
        bool or long => AsLong(value),
        JinjaUndefined u => throw u.Fail(),
        _ => throw new JinjaException($"{what} must be an integer, not {PythonText.Repr(TypeName(value))}"),
    };

    public static string RequireString(object? value, string what) => value switch
    {
        string s => s,
        JinjaUndefined u => throw u.Fail(),
        _ => throw new JinjaException($"{what} must be a str, not {TypeName(value)}"),
    };
}
