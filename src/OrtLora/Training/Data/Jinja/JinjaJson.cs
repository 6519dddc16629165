using System.Globalization;
using System.Text;

namespace OrtLora.Training.Data.Jinja;

/// <summary>The tojson filter as transformers defines it: Python's
/// <c>json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)</c>,
/// not jinja2's HTML-escaping one.</summary>
static class JinjaJson
{
    public static string ToJson(object? value, CallArguments args)
    {
        bool ensureAscii = JinjaValue.Truthy(args.Get(0, false));
        string? indent = args.Get(1) switch
        {
            null => null,
            string s => s,
            var n when JinjaValue.IsInteger(n) => new string(' ', (int)Math.Max(0, JinjaValue.AsLong(n))),
            var other => throw new JinjaException($"tojson indent must be an int or str, not {JinjaValue.TypeName(other)}"),
        };
        string itemSeparator = indent is null ? ", " : ",", keySeparator = ": ";
        if (args.Get(2) is { } separators)
        {
            if (separators is not IReadOnlyList<object?> { Count: 2 } pair)
                throw new JinjaException("tojson separators must be an (item_separator, key_separator) pair");
            itemSeparator = JinjaValue.RequireString(pair[0], "tojson item separator");
            keySeparator = JinjaValue.RequireString(pair[1], "tojson key separator");
        }
        var writer = new Writer(ensureAscii, indent, itemSeparator, keySeparator, JinjaValue.Truthy(args.Get(3, false)));
        writer.Write(value, 0);
        return writer.ToString();
    }

    sealed class Writer(bool ensureAscii, string? indent, string itemSeparator, string keySeparator, bool sortKeys)
    {
        readonly StringBuilder _out = new();

        public override string ToString() => _out.ToString();

        public void Write(object? value, int level)
        {
            switch (value)
            {
                case null: _out.Append("null"); break;
                case bool b: _out.Append(b ? "true" : "false"); break;
                case long l: _out.Append(l.ToString(CultureInfo.InvariantCulture)); break;
                case double d:
                    _out.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : PythonText.FloatRepr(d));
                    break;
                case string s: WriteString(s); break;
                case IReadOnlyList<object?> list: WriteContainer('[', ']', list.Count, level, list.Select<object?, Action<int>>(item => l => Write(item, l))); break;
                case IReadOnlyDictionary<string, object?> map:
                    var pairs = sortKeys ? map.OrderBy(p => p.Key, StringComparer.Ordinal).ToList() : map.ToList();
                    WriteContainer('{', '}', pairs.Count, level, pairs.Select<KeyValuePair<string, object?>, Action<int>>(p => l =>
                    {
                        WriteString(p.Key);
                        _out.Append(keySeparator);
                        Write(p.Value, l);
                    }));
                    break;
                default:
                    throw new JinjaException($"Object of type {JinjaValue.TypeName(value)} is not JSON serializable");
            }
        }

        void WriteContainer(char open, char close, int count, int level, IEnumerable<Action<int>> items)
        {
            if (count == 0)
            {
                _out.Append(open).Append(close);
                return;
            }
            _out.Append(open);
            string newline = indent is null ? "" : "\n" + string.Concat(Enumerable.Repeat(indent, level + 1));
            bool first = true;
            foreach (var item in items)
            {
                _out.Append(first ? newline : itemSeparator + newline);
                first = false;
                item(level + 1);
            }
            if (indent is not null) _out.Append('\n').Append(string.Concat(Enumerable.Repeat(indent, level)));
            _out.Append(close);
        }

        void WriteString(string s)
        {
            _out.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': _out.Append("\\\""); break;
                    case '\\': _out.Append("\\\\"); break;
                    case '\n': _out.Append("\\n"); break;
                    case '\r': _out.Append("\\r"); break;
                    case '\t': _out.Append("\\t"); break;
                    case '\b': _out.Append("\\b"); break;
                    case '\f': _out.Append("\\f"); break;
                    default:
                        // Python escapes controls always, and with ensure_ascii everything outside ' '..'~'
                        // (a character beyond the BMP as its two surrogates).
                        if (c < ' ' || (ensureAscii && c > '~')) _out.Append($"\\u{(int)c:x4}");
                        else _out.Append(c);
                        break;
                }
            }
            _out.Append('"');
        }
    }
}
