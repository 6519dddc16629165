using System.Globalization;
using System.Text;

namespace OrtLora.Training.Data.Jinja;

/// <summary>Python's string behaviour where templates can see it: what counts as whitespace, strip/split/title,
/// repr() of strings and floats, and strftime. Python indexes strings by code point, so the helpers that count or
/// slice work on code points, not UTF-16 units.</summary>
static class PythonText
{
    /// <summary>str.isspace(): .NET's whitespace plus the four ASCII separators U+001C..U+001F.</summary>
    public static bool IsSpace(char c) => char.IsWhiteSpace(c) || c is >= '\x1c' and <= '\x1f';

    public static string Strip(string s, string? chars = null) => LStrip(RStrip(s, chars), chars);

    public static string LStrip(string s, string? chars = null)
    {
        int start = 0;
        while (start < s.Length && Stripped(s, start, chars, out int width)) start += width;
        return s[start..];
    }

    public static string RStrip(string s, string? chars = null)
    {
        int end = s.Length;
        while (end > 0)
        {
            int at = end >= 2 && char.IsSurrogatePair(s[end - 2], s[end - 1]) ? end - 2 : end - 1;
            if (!Stripped(s, at, chars, out _)) break;
            end = at;
        }
        return s[..end];
    }

    static bool Stripped(string s, int index, string? chars, out int width)
    {
        width = char.IsSurrogatePair(s, index) ? 2 : 1;
        if (chars is null) return IsSpace(s[index]);
        return chars.Contains(s.Substring(index, width), StringComparison.Ordinal);
    }

    /// <summary>str.split(sep, maxsplit): without a separator, runs of whitespace split and ends are dropped.</summary>
    public static List<object?> Split(string s, string? separator, long maxSplit)
    {
        var parts = new List<object?>();
        if (separator is null)
        {
            int i = 0;
            while (true)
            {
                while (i < s.Length && IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && parts.Count == maxSplit)
                {
                    parts.Add(s[i..]); // the remainder keeps its trailing whitespace, as in Python
                    break;
                }
                int start = i;
                while (i < s.Length && !IsSpace(s[i])) i++;
                parts.Add(s[start..i]);
            }
            return parts;
        }
        if (separator.Length == 0) throw new JinjaException("ValueError: empty separator");
        int from = 0;
        while (maxSplit < 0 || parts.Count < maxSplit)
        {
            int at = s.IndexOf(separator, from, StringComparison.Ordinal);
            if (at < 0) break;
            parts.Add(s[from..at]);
            from = at + separator.Length;
        }
        parts.Add(s[from..]);
        return parts;
    }

    /// <summary>str.rsplit(sep, maxsplit) for an explicit separator (without one, or without a limit, the result is
    /// split's).</summary>
    public static List<object?> RSplit(string s, string? separator, long maxSplit)
    {
        if (separator is null || maxSplit < 0) return Split(s, separator, maxSplit);
        if (separator.Length == 0) throw new JinjaException("ValueError: empty separator");
        var parts = new List<object?>();
        int end = s.Length;
        while (parts.Count < maxSplit)
        {
            int at = end - separator.Length < 0 ? -1 : s.LastIndexOf(separator, end - separator.Length, StringComparison.Ordinal);
            if (at < 0) break;
            parts.Insert(0, s[(at + separator.Length)..end]);
            end = at;
        }
        parts.Insert(0, s[..end]);
        return parts;
    }

    /// <summary>str.splitlines(): Python's line boundaries, \r\n counting as one.</summary>
    public static List<string> SplitLines(string s, bool keepEnds = false)
    {
        var lines = new List<string>();
        int start = 0, i = 0;
        while (i < s.Length)
        {
            char c = s[i];
            if (c is '\n' or '\r' or '\v' or '\f' or '\x1c' or '\x1d' or '\x1e' or '\x85' or '\u2028' or '\u2029')
            {
                int next = c == '\r' && i + 1 < s.Length && s[i + 1] == '\n' ? i + 2 : i + 1;
                lines.Add(s[start..(keepEnds ? next : i)]);
                start = i = next;
            }
            else i++;
        }
        if (start < s.Length) lines.Add(s[start..]);
        return lines;
    }

    static bool IsCased(Rune r) => Rune.IsUpper(r) || Rune.IsLower(r) || Rune.GetUnicodeCategory(r) == UnicodeCategory.TitlecaseLetter;

    /// <summary>str.title(): a cased character after an uncased one is upper-cased, the rest lower-cased
    /// (so "they're" becomes "They'Re").</summary>
    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousCased = false;
        foreach (var r in s.EnumerateRunes())
        {
            sb.Append((previousCased ? Rune.ToLowerInvariant(r) : Rune.ToUpperInvariant(r)).ToString());
            previousCased = IsCased(r);
        }
        return sb.ToString();
    }

    /// <summary>str.capitalize(): the first character upper-cased, the rest lower-cased.</summary>
    public static string Capitalize(string s) =>
        s.Length == 0 ? s : char.IsSurrogatePair(s, 0)
            ? s[..2].ToUpperInvariant() + s[2..].ToLowerInvariant()
            : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();

    /// <summary>str.islower()/isupper(): at least one cased character and none of the other case.</summary>
    public static bool HasOnlyCase(string s, bool lower)
    {
        bool cased = false;
        foreach (var r in s.EnumerateRunes())
        {
            if (lower ? Rune.IsUpper(r) : Rune.IsLower(r)) return false;
            if (Rune.GetUnicodeCategory(r) == UnicodeCategory.TitlecaseLetter) return false;
            cased |= lower ? Rune.IsLower(r) : Rune.IsUpper(r);
        }
        return cased;
    }

    public static int[] CodePoints(string s)
    {
        var points = new List<int>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsSurrogatePair(s, i))
            {
                points.Add(char.ConvertToUtf32(s[i], s[i + 1]));
                i++;
            }
            else points.Add(s[i]);
        }
        return [.. points];
    }

    public static string FromCodePoints(IEnumerable<int> points)
    {
        var sb = new StringBuilder();
        foreach (int p in points) AppendCodePoint(sb, p);
        return sb.ToString();
    }

    static void AppendCodePoint(StringBuilder sb, int point)
    {
        if (point is >= 0xD800 and <= 0xDFFF) sb.Append((char)point);
        else sb.Append(char.ConvertFromUtf32(point));
    }

    public static int Length(string s)
    {
        int n = 0;
        for (int i = 0; i < s.Length; i++, n++)
            if (char.IsSurrogatePair(s, i)) i++;
        return n;
    }

    /// <summary>repr() of a str: single quotes unless the text has a single quote and no double quote;
    /// unprintable characters escaped as \x, \u or \U.</summary>
    public static string Repr(string s)
    {
        char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
        var sb = new StringBuilder(s.Length + 2).Append(quote);
        foreach (int c in CodePoints(s))
        {
            if (c == quote || c == '\\') sb.Append('\\').Append((char)c);
            else if (c == '\t') sb.Append("\\t");
            else if (c == '\n') sb.Append("\\n");
            else if (c == '\r') sb.Append("\\r");
            else if (c < ' ' || c == 0x7F) sb.Append($"\\x{c:x2}");
            else if (c < 0x7F || IsPrintable(c)) AppendCodePoint(sb, c);
            else if (c <= 0xFF) sb.Append($"\\x{c:x2}");
            else if (c <= 0xFFFF) sb.Append($"\\u{c:x4}");
            else sb.Append($"\\U{c:x8}");
        }
        return sb.Append(quote).ToString();
    }

    static bool IsPrintable(int c)
    {
        if (c is >= 0xD800 and <= 0xDFFF) return false;
        var category = CharUnicodeInfo.GetUnicodeCategory(c);
        return category is not (UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate
            or UnicodeCategory.PrivateUse or UnicodeCategory.OtherNotAssigned or UnicodeCategory.LineSeparator
            or UnicodeCategory.ParagraphSeparator or UnicodeCategory.SpaceSeparator);
    }

    /// <summary>repr() of a float: the shortest digits that read back the same (as .NET's "R" gives), written
    /// positionally when the decimal exponent is in [-4, 16), else as 1.5e-05, always with a '.0' or exponent.</summary>
    public static string FloatRepr(double value)
    {
        if (double.IsNaN(value)) return "nan";
        if (double.IsInfinity(value)) return value > 0 ? "inf" : "-inf";
        string r = value.ToString("R", CultureInfo.InvariantCulture);
        bool negative = r.StartsWith('-');
        if (negative) r = r[1..];
        int exponent = 0;
        int e = r.IndexOfAny(['E', 'e']);
        if (e >= 0)
        {
            exponent = int.Parse(r[(e + 1)..], CultureInfo.InvariantCulture);
            r = r[..e];
        }
        int point = r.IndexOf('.');
        string digits = point < 0 ? r : r.Remove(point, 1);
        int decimalPoint = (point < 0 ? r.Length : point) + exponent; // value = 0.DIGITS * 10^decimalPoint
        int lead = 0;
        while (lead < digits.Length - 1 && digits[lead] == '0') lead++;
        digits = digits[lead..];
        decimalPoint -= lead;
        digits = digits.TrimEnd('0');
        if (digits.Length == 0)
        {
            digits = "0";
            decimalPoint = 1;
        }
        string text;
        if (decimalPoint is > -4 and <= 16)
        {
            if (decimalPoint <= 0) text = "0." + new string('0', -decimalPoint) + digits;
            else if (decimalPoint >= digits.Length) text = digits + new string('0', decimalPoint - digits.Length) + ".0";
            else text = digits[..decimalPoint] + "." + digits[decimalPoint..];
        }
        else
        {
            int exp = decimalPoint - 1;
            text = digits[..1] + (digits.Length > 1 ? "." + digits[1..] : "") + "e" + (exp < 0 ? "-" : "+") + Math.Abs(exp).ToString("00");
        }
        return negative ? "-" + text : text;
    }

    static readonly string[] Days = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    static readonly string[] Months = ["January", "February", "March", "April", "May", "June", "July", "August",
                                       "September", "October", "November", "December"];

    /// <summary>time.strftime in the C locale, for the directives chat templates use; glibc's <c>%-d</c> drops
    /// the padding. Unknown directives are kept as written, as glibc does.</summary>
    public static string Strftime(DateTime t, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }
            bool unpadded = format[i + 1] == '-' && i + 2 < format.Length;
            char d = format[unpadded ? i + 2 : i + 1];
            string Pad(int v, int width) => unpadded ? v.ToString(CultureInfo.InvariantCulture) : v.ToString(new string('0', width), CultureInfo.InvariantCulture);
            string? piece = d switch
            {
                'a' => Days[(int)t.DayOfWeek][..3],
                'A' => Days[(int)t.DayOfWeek],
                'b' or 'h' => Months[t.Month - 1][..3],
                'B' => Months[t.Month - 1],
                'd' => Pad(t.Day, 2),
                'e' => unpadded ? t.Day.ToString(CultureInfo.InvariantCulture) : t.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2),
                'H' => Pad(t.Hour, 2),
                'I' => Pad(t.Hour % 12 == 0 ? 12 : t.Hour % 12, 2),
                'j' => Pad(t.DayOfYear, 3),
                'm' => Pad(t.Month, 2),
                'M' => Pad(t.Minute, 2),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'S' => Pad(t.Second, 2),
                'w' => ((int)t.DayOfWeek).ToString(CultureInfo.InvariantCulture),
                'y' => Pad(t.Year % 100, 2),
                'Y' => t.Year.ToString(CultureInfo.InvariantCulture),
                '%' => "%",
                _ => null,
            };
            if (piece is null)
            {
                sb.Append('%');
                continue;
            }
            sb.Append(piece);
            i += unpadded ? 2 : 1;
        }
        return sb.ToString();
    }
}
