using System.Text;

namespace OrtLora.Training.Data.Jinja;

/// <summary>Python's operators on runtime values, and jinja2's (sandboxed) attribute and item lookup.</summary>
static class JinjaOperators
{
    public static bool PyEquals(object? a, object? b)
    {
        if (a is JinjaUndefined || b is JinjaUndefined) return a is JinjaUndefined && b is JinjaUndefined;
        if (a is null || b is null) return a is null && b is null;
        if (JinjaValue.IsNumber(a) && JinjaValue.IsNumber(b))
        {
            if (JinjaValue.IsInteger(a) && JinjaValue.IsInteger(b)) return JinjaValue.AsLong(a) == JinjaValue.AsLong(b);
            return JinjaValue.AsDouble(a) == JinjaValue.AsDouble(b);
        }
        return (a, b) switch
        {
            (string x, string y) => x == y,
            (JinjaTuple x, JinjaTuple y) => SequenceEquals(x, y),
            (JinjaTuple, _) or (_, JinjaTuple) => false,
            (IReadOnlyList<object?> x, IReadOnlyList<object?> y) => SequenceEquals(x, y),
            (IReadOnlyDictionary<string, object?> x, IReadOnlyDictionary<string, object?> y) =>
                x.Count == y.Count && x.All(p => y.TryGetValue(p.Key, out var other) && PyEquals(p.Value, other)),
            _ => ReferenceEquals(a, b),
        };
    }

    static bool SequenceEquals(IReadOnlyList<object?> x, IReadOnlyList<object?> y)
    {
        if (x.Count != y.Count) return false;
        for (int i = 0; i < x.Count; i++)
            if (!PyEquals(x[i], y[i])) return false;
        return true;
    }

    /// <summary>Python's ordering for &lt; &gt; &lt;= &gt;=: numbers, strings by code point, lists and tuples item by item.</summary>
    public static int Compare(object? a, object? b, string op)
    {
        if (a is JinjaUndefined ua) throw ua.Fail();
        if (b is JinjaUndefined ub) throw ub.Fail();
        if (JinjaValue.IsNumber(a) && JinjaValue.IsNumber(b))
            return JinjaValue.IsInteger(a) && JinjaValue.IsInteger(b)
                ? JinjaValue.AsLong(a).CompareTo(JinjaValue.AsLong(b))
                : JinjaValue.AsDouble(a).CompareTo(JinjaValue.AsDouble(b));
        if (a is string sa && b is string sb) return CompareCodePoints(sa, sb);
        if (a is IReadOnlyList<object?> la && b is IReadOnlyList<object?> lb && (a is JinjaTuple) == (b is JinjaTuple))
        {
            for (int i = 0; i < Math.Min(la.Count, lb.Count); i++)
                if (!PyEquals(la[i], lb[i])) return Compare(la[i], lb[i], op);
            return la.Count.CompareTo(lb.Count);
        }
        throw new JinjaException($"'{op}' not supported between instances of {PythonText.Repr(JinjaValue.TypeName(a))} " +
                                 $"and {PythonText.Repr(JinjaValue.TypeName(b))}");
    }

    static int CompareCodePoints(string a, string b)
    {
        var ea = a.EnumerateRunes();
        var eb = b.EnumerateRunes();
        while (true)
        {
            bool hasA = ea.MoveNext(), hasB = eb.MoveNext();
            if (!hasA || !hasB) return hasA.CompareTo(hasB);
            int c = ea.Current.Value.CompareTo(eb.Current.Value);
            if (c != 0) return c;
        }
    }

    /// <summary>Python's <c>in</c>: substring, list item, dict key; nothing is in Undefined (it iterates empty).</summary>
    public static bool Contains(object? container, object? item) => container switch
    {
        string s when item is string sub => s.Contains(sub, StringComparison.Ordinal),
        string => throw new JinjaException($"'in <string>' requires string as left operand, not {JinjaValue.TypeName(item)}"),
        IReadOnlyList<object?> list => list.Any(x => PyEquals(x, item)),
        IReadOnlyDictionary<string, object?> when item is IReadOnlyDictionary<string, object?> or (IReadOnlyList<object?> and not JinjaTuple) =>
            throw new JinjaException($"unhashable type: {PythonText.Repr(JinjaValue.TypeName(item))}"),
        IReadOnlyDictionary<string, object?> map => item is string key && map.ContainsKey(key),
        JinjaIterator iterator => iterator.Consume().Any(x => PyEquals(x, item)),
        JinjaUndefined => false,
        _ => throw new JinjaException($"argument of type {PythonText.Repr(JinjaValue.TypeName(container))} is not iterable"),
    };

    public static object? Arithmetic(string op, object? a, object? b)
    {
        if (a is JinjaUndefined ua) throw ua.Fail();
        if (b is JinjaUndefined ub) throw ub.Fail();
        if (JinjaValue.IsNumber(a) && JinjaValue.IsNumber(b)) return Numeric(op, a!, b!);
        switch (op)
        {
            case "+" when a is string x && b is string y: return x + y;
            case "+" when a is JinjaTuple x && b is JinjaTuple y: return new JinjaTuple([.. x, .. y]);
            case "+" when a is IReadOnlyList<object?> x && b is IReadOnlyList<object?> y && a is not JinjaTuple && b is not JinjaTuple:
                return new List<object?>([.. x, .. y]);
            case "+" when a is string or IReadOnlyList<object?>:
                string kind = JinjaValue.TypeName(a);
                throw new JinjaException($"can only concatenate {kind} (not \"{JinjaValue.TypeName(b)}\") to {kind}");
            case "*" when JinjaValue.IsInteger(b) && a is string or IReadOnlyList<object?>: return Repeat(a!, JinjaValue.AsLong(b));
            case "*" when JinjaValue.IsInteger(a) && b is string or IReadOnlyList<object?>: return Repeat(b!, JinjaValue.AsLong(a));
        }
        throw new JinjaException($"unsupported operand type(s) for {op}: {PythonText.Repr(JinjaValue.TypeName(a))} and " +
                                 PythonText.Repr(JinjaValue.TypeName(b)));
    }

    static object Repeat(object sequence, long times)
    {
        if (sequence is string s)
        {
            var sb = new StringBuilder();
            for (long i = 0; i < times; i++) sb.Append(s);
            return sb.ToString();
        }
        var items = new List<object?>();
        for (long i = 0; i < times; i++) items.AddRange((IReadOnlyList<object?>)sequence);
        return sequence is JinjaTuple ? new JinjaTuple(items) : items;
    }

    static object Numeric(string op, object a, object b)
    {
        if (JinjaValue.IsInteger(a) && JinjaValue.IsInteger(b) && op != "/")
        {
            long x = JinjaValue.AsLong(a), y = JinjaValue.AsLong(b);
            try
            {
                checked
                {
                    switch (op)
                    {
                        case "+": return x + y;
                        case "-": return x - y;
                        case "*": return x * y;
                        case "//": return y == 0 ? throw ZeroDivision("integer division or modulo") : FloorDivide(x, y);
                        case "%": return y == 0 ? throw ZeroDivision("integer modulo") : x - FloorDivide(x, y) * y;
                        case "**" when y >= 0:
                            long result = 1;
                            for (long i = 0; i < y; i++) result *= x;
                            return result;
                        case "**": return Math.Pow(x, y);
                    }
                }
            }
            catch (OverflowException)
            {
                throw new JinjaException($"integer result of {x} {op} {y} is too large");
            }
        }
        double p = JinjaValue.AsDouble(a), q = JinjaValue.AsDouble(b);
        switch (op)
        {
            case "+": return p + q;
            case "-": return p - q;
            case "*": return p * q;
            case "/": return q == 0 ? throw ZeroDivision("division") : p / q;
            case "//": return q == 0 ? throw ZeroDivision("float floor division") : Math.Floor(p / q);
            case "%":
                if (q == 0) throw ZeroDivision("float modulo");
                double r = p % q;
                return r != 0 && (r < 0) != (q < 0) ? r + q : r;
            case "**": return Math.Pow(p, q);
        }
        throw new JinjaException($"unknown operator {op}");
    }

    static long FloorDivide(long x, long y)
    {
        long quotient = x / y;
        return (x % y != 0 && (x < 0) != (y < 0)) ? quotient - 1 : quotient;
    }

    static JinjaException ZeroDivision(string what) => new($"{what} by zero");

    public static object? Negate(object? value, string op) => value switch
    {
        JinjaUndefined u => throw u.Fail(),
        // (object) keeps the arms from unifying to double: an int stays an int.
        bool or long => (object)(op == "-" ? -JinjaValue.AsLong(value) : JinjaValue.AsLong(value)),
        double d => op == "-" ? -d : d,
        _ => throw new JinjaException($"bad operand type for unary {op}: {PythonText.Repr(JinjaValue.TypeName(value))}"),
    };

    /// <summary><c>x.name</c>: the Python attribute (so a dict's <c>items</c> is its method even when it has an
    /// "items" key), else the item, else Undefined. Methods that mutate are off limits in the immutable sandbox.</summary>
    public static object? GetAttribute(object? target, string name)
    {
        if (target is JinjaUndefined u) throw u.Fail();
        if (JinjaMethods.TryGetMethod(target, name, out var method)) return method;
        return target switch
        {
            JinjaNamespace ns => ns.Attributes.TryGetValue(name, out var v) ? v : JinjaUndefined.Missing(target, name),
            JinjaLoop loop => loop.Attribute(name),
            IReadOnlyDictionary<string, object?> map when !JinjaMethods.IsUnsafe(target, name) =>
                map.TryGetValue(name, out var v) ? v : JinjaUndefined.Missing(target, name),
            _ => JinjaUndefined.Missing(target, name),
        };
    }

    /// <summary><c>x[key]</c>: the item (negative indexes count from the end, slices copy), else for a string key
    /// the attribute, else Undefined; an index out of range is Undefined, not an error.</summary>
    public static object? GetItem(object? target, object? key)
    {
        if (target is JinjaUndefined u) throw u.Fail();
        if (key is JinjaSlice slice) return Slice(target, slice);
        switch (target)
        {
            case IReadOnlyDictionary<string, object?> map when key is string k && map.TryGetValue(k, out var v):
                return v;
            case IReadOnlyList<object?> list when JinjaValue.IsInteger(key):
                long i = JinjaValue.AsLong(key);
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : JinjaUndefined.Missing(target, key);
            case string s when JinjaValue.IsInteger(key):
                var points = PythonText.CodePoints(s);
                long j = JinjaValue.AsLong(key);
                if (j < 0) j += points.Length;
                return j >= 0 && j < points.Length ? PythonText.FromCodePoints([points[j]]) : JinjaUndefined.Missing(target, key);
        }
        if (key is string name && target is not JinjaNamespace && JinjaMethods.TryGetMethod(target, name, out var method)) return method;
        if (key is string loopName && target is JinjaLoop loop) return loop.Attribute(loopName);
        return JinjaUndefined.Missing(target, key);
    }

    static object? Slice(object? target, JinjaSlice slice)
    {
        switch (target)
        {
            case string s:
                var points = PythonText.CodePoints(s);
                return PythonText.FromCodePoints(SliceIndices(points.Length, slice).Select(i => points[i]));
            case JinjaTuple t:
                return new JinjaTuple(SliceIndices(t.Count, slice).Select(i => t[i]).ToList());
            case IReadOnlyList<object?> list:
                return SliceIndices(list.Count, slice).Select(i => list[i]).ToList();
            // jinja2 slices with Python's own subscript, not its forgiving getitem, so these raise.
            case IReadOnlyDictionary<string, object?>:
                throw new JinjaException("unhashable type: 'slice'");
            default:
                throw new JinjaException($"{PythonText.Repr(JinjaValue.TypeName(target))} object is not subscriptable");
        }
    }

    /// <summary>The indexes <c>seq[start:stop:step]</c> picks, with Python's clamping of out-of-range bounds.</summary>
    static IEnumerable<int> SliceIndices(int length, JinjaSlice slice)
    {
        long step = slice.Step ?? 1;
        if (step == 0) throw new JinjaException("slice step cannot be zero");
        long Bound(long? value, long whenMissing, long low, long high)
        {
            if (value is not { } v) return whenMissing;
            if (v < 0) v += length;
            return Math.Clamp(v, low, high);
        }
        long start = step > 0 ? Bound(slice.Start, 0, 0, length) : Bound(slice.Start, length - 1, -1, length - 1);
        long stop = step > 0 ? Bound(slice.Stop, length, 0, length) : Bound(slice.Stop, -1, -1, length - 1);
        for (long i = start; step > 0 ? i < stop : i > stop; i += step) yield return (int)i;
    }
}

/// <summary>An evaluated <c>start:stop:step</c> subscript.</summary>
sealed record JinjaSlice(long? Start, long? Stop, long? Step)
{
    public override string ToString() => $"slice({Part(Start)}, {Part(Stop)}, {Part(Step)})";
    static string Part(long? v) => v?.ToString() ?? "None";
}
