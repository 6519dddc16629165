using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace OrtLora.Training.Data.Jinja;

enum TokenKind { Data, VariableBegin, VariableEnd, BlockBegin, BlockEnd, Name, String, Integer, Float, Operator, End }

/// <summary>One lexeme; <see cref="Value"/> is the decoded string or number of String, Integer and Float tokens.</summary>
readonly record struct Token(TokenKind Kind, string Text, int Line, object? Value = null)
{
    public bool Is(TokenKind kind, string text) => Kind == kind && Text == text;
    public bool IsName(string name) => Kind == TokenKind.Name && Text == name;
    public bool IsOperator(string op) => Kind == TokenKind.Operator && Text == op;
}

/// <summary>An error in the template, at a line; <see cref="JinjaTemplate"/> turns it into an OrtLoraException.</summary>
class JinjaException(string message, int line = 0) : Exception(message)
{
    public int Line { get; set; } = line;
}

/// <summary>Splits a template into data and tag tokens the way jinja2's lexer does in transformers' environment
/// (trim_blocks and lstrip_blocks on, keep_trailing_newline off): whitespace control with <c>-</c> and <c>+</c>,
/// <c>raw</c> blocks and comments are settled here, so the parser only sees data, expressions and tag edges.</summary>
sealed class JinjaLexer
{
    static readonly Regex FloatPattern = new(@"\G([0-9]+_)*[0-9]+((\.([0-9]+_)*[0-9]+)?[eE][+\-]?([0-9]+_)*[0-9]+|\.([0-9]+_)*[0-9]+)");
    static readonly Regex IntegerPattern = new(@"\G(0[bB](_?[01])+|0[oO](_?[0-7])+|0[xX](_?[0-9a-fA-F])+|[1-9](_?[0-9])*|0(_?0)*)");
    static readonly Regex StringPattern = new(@"\G('([^'\\]*(?:\\.[^'\\]*)*)'|""([^""\\]*(?:\\.[^""\\]*)*)"")", RegexOptions.Singleline);
    static readonly Regex RawBegin = new(@"\G\{%(-|\+|)\s*raw\s*(-%\}\s*|%\})");
    static readonly Regex RawEnd = new(@"\{%(-|\+|)\s*endraw\s*(\+%\}|-%\}\s*|%\}\n?)");
    static readonly string[] Operators = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "/", "*", "%", "~", "[", "]", "(", ")",
                                          "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"];

    readonly string _source;
    readonly List<Token> _tokens = [];
    int _pos;
    int _line = 1;
    bool _lineStarting = true; // whether the text just consumed ended a line: lstrip_blocks then also strips at offset 0

    JinjaLexer(string source)
    {
        // jinja2 reads every line ending as \n and, without keep_trailing_newline, drops one final newline.
        source = source.Replace("\r\n", "\n").Replace('\r', '\n');
        _source = source.EndsWith('\n') ? source[..^1] : source;
    }

    public static List<Token> Tokenize(string source) => new JinjaLexer(source).Run();

    List<Token> Run()
    {
        while (_pos < _source.Length)
        {
            int tag = NextTagStart(_pos);
            if (tag < 0)
            {
                AddData(_source[_pos..]);
                break;
            }
            char kind = _source[tag + 1];
            char sign = tag + 2 < _source.Length && _source[tag + 2] is '-' or '+' ? _source[tag + 2] : '\0';
            var raw = kind == '%' ? RawBegin.Match(_source, tag) : Match.Empty;
            AddData(StripBeforeTag(_source[_pos..tag], sign, kind));
            Advance(tag);
            if (raw.Success) LexRaw(raw);
            else if (kind == '#') SkipComment(tag + 2 + (sign == '\0' ? 0 : 1));
            else LexTag(kind, tag + 2 + (sign == '\0' ? 0 : 1));
        }
        _tokens.Add(new Token(TokenKind.End, "", _line));
        return _tokens;
    }

    int NextTagStart(int from)
    {
        for (int i = _source.IndexOf('{', from); i >= 0 && i + 1 < _source.Length; i = _source.IndexOf('{', i + 1))
            if (_source[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>The data before a tag after whitespace control: <c>-</c> strips all whitespace before the tag;
    /// otherwise lstrip_blocks strips spaces and tabs between a line start and a block or comment tag
    /// (never a <c>{{</c>), unless the tag opens with <c>+</c>.</summary>
    string StripBeforeTag(string text, char sign, char kind)
    {
        if (sign == '-') return PythonText.RStrip(text);
        if (sign == '+' || kind == '{') return text;
        int lineStart = text.LastIndexOf('\n') + 1;
        if (lineStart == 0 && !_lineStarting) return text;
        for (int i = lineStart; i < text.Length; i++)
            if (text[i] is not (' ' or '\t')) return text;
        return text[..lineStart];
    }

    void LexTag(char kind, int start)
    {
        bool block = kind == '%';
        _tokens.Add(new Token(block ? TokenKind.BlockBegin : TokenKind.VariableBegin, block ? "{%" : "{{", _line));
        Advance(start);
        int depth = 0; // inside brackets an end delimiter is just operators, as in jinja2's balancing stack
        while (true)
        {
            if (_pos >= _source.Length) throw new JinjaException("unexpected end of template inside a tag", _line);
            if (depth == 0 && TryTagEnd(block)) return;
            char c = _source[_pos];
            if (PythonText.IsSpace(c))
            {
                Advance(_pos + 1);
                continue;
            }
            var token = LexToken();
            if (token.Kind == TokenKind.Operator)
            {
                if (token.Text is "(" or "[" or "{") depth++;
                else if (token.Text is ")" or "]" or "}")
                {
                    if (depth == 0) throw new JinjaException($"unexpected '{token.Text}'", _line);
                    depth--;
                }
            }
            _tokens.Add(token);
        }
    }

    /// <summary>Ends a tag at <c>%}</c>/<c>}}</c>: <c>-</c> eats all following whitespace, a plain <c>%}</c> one
    /// newline (trim_blocks), <c>+%}</c> nothing.</summary>
    bool TryTagEnd(bool block)
    {
        string close = block ? "%}" : "}}";
        int end;
        if (block && string.CompareOrdinal(_source, _pos, "+%}", 0, 3) == 0) end = _pos + 3;
        else if (string.CompareOrdinal(_source, _pos, "-" + close, 0, 3) == 0) end = SkipSpace(_pos + 3);
        else if (string.CompareOrdinal(_source, _pos, close, 0, 2) == 0)
            end = block && _pos + 2 < _source.Length && _source[_pos + 2] == '\n' ? _pos + 3 : _pos + 2;
        else return false;
        _tokens.Add(new Token(block ? TokenKind.BlockEnd : TokenKind.VariableEnd, close, _line));
        Advance(end);
        return true;
    }

    void SkipComment(int start)
    {
        int close = _source.IndexOf("#}", start, StringComparison.Ordinal);
        if (close < 0) throw new JinjaException("missing end of comment tag", _line);
        int end;
        if (close > start && _source[close - 1] == '+') end = close + 2;
        else if (close > start && _source[close - 1] == '-') end = SkipSpace(close + 2);
        else end = close + 2 < _source.Length && _source[close + 2] == '\n' ? close + 3 : close + 2;
        Advance(end);
    }

    void LexRaw(Match begin)
    {
        Advance(begin.Index + begin.Length);
        var end = RawEnd.Match(_source, _pos);
        if (!end.Success) throw new JinjaException("missing end of raw directive", _line);
        char sign = end.Groups[1].Value is [var s] ? s : '\0';
        AddData(StripBeforeTag(_source[_pos..end.Index], sign, '%'));
        Advance(end.Index + end.Length);
    }

    int SkipSpace(int i)
    {
        while (i < _source.Length && PythonText.IsSpace(_source[i])) i++;
        return i;
    }

    /// <summary>Moves to <paramref name="to"/>, counting lines and noting whether the consumed text ended a line.</summary>
    void Advance(int to)
    {
        for (int i = _pos; i < to; i++)
            if (_source[i] == '\n') _line++;
        if (to > _pos) _lineStarting = _source[to - 1] == '\n';
        _pos = to;
    }

    void AddData(string text)
    {
        if (text.Length > 0) _tokens.Add(new Token(TokenKind.Data, text, _line));
    }

    Token LexToken()
    {
        int line = _line;
        char c = _source[_pos];
        Match m;
        if (char.IsAsciiDigit(c))
        {
            // jinja2's float pattern has a (?<!\.) lookbehind, so "x.0.1" reads as attribute digits.
            if ((_pos == 0 || _source[_pos - 1] != '.') && (m = FloatPattern.Match(_source, _pos)).Success)
            {
                Advance(_pos + m.Length);
                return new Token(TokenKind.Float, m.Value, line, double.Parse(m.Value.Replace("_", ""), CultureInfo.InvariantCulture));
            }
            if ((m = IntegerPattern.Match(_source, _pos)).Success)
            {
                Advance(_pos + m.Length);
                return new Token(TokenKind.Integer, m.Value, line, ParseInteger(m.Value.Replace("_", "")));
            }
        }
        if (char.IsLetter(c) || c == '_')
        {
            int end = _pos + 1;
            while (end < _source.Length && (char.IsLetterOrDigit(_source[end]) || _source[end] == '_')) end++;
            string name = _source[_pos..end];
            Advance(end);
            return new Token(TokenKind.Name, name, line);
        }
        if ((c == '\'' || c == '"') && (m = StringPattern.Match(_source, _pos)).Success)
        {
            Advance(_pos + m.Length);
            return new Token(TokenKind.String, m.Value, line, DecodeEscapes(m.Value[1..^1], line));
        }
        foreach (var op in Operators)
            if (string.CompareOrdinal(_source, _pos, op, 0, op.Length) == 0)
            {
                Advance(_pos + op.Length);
                return new Token(TokenKind.Operator, op, line);
            }
        throw new JinjaException($"unexpected char {PythonText.Repr(c.ToString())}", line);
    }

    static long ParseInteger(string text)
    {
        try
        {
            if (text.Length > 2 && text[0] == '0' && char.ToLowerInvariant(text[1]) is 'x' or 'o' or 'b')
                return Convert.ToInt64(text[2..], char.ToLowerInvariant(text[1]) switch { 'x' => 16, 'o' => 8, _ => 2 });
            return long.Parse(text, CultureInfo.InvariantCulture);
        }
        catch (OverflowException)
        {
            throw new JinjaException($"integer literal {text} is too large", 0);
        }
    }

    /// <summary>Python's unicode-escape decoding, which jinja2 applies to string literals.</summary>
    static string DecodeEscapes(string body, int line)
    {
        if (!body.Contains('\\')) return body;
        var sb = new StringBuilder(body.Length);
        for (int i = 0; i < body.Length; i++)
        {
            char c = body[i];
            if (c != '\\' || i + 1 >= body.Length)
            {
                sb.Append(c);
                continue;
            }
            char e = body[++i];
            switch (e)
            {
                case '\n': break; // a backslash-newline continues the line
                case '\\': case '\'': case '"': sb.Append(e); break;
                case 'a': sb.Append('\a'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case 'n': sb.Append('\n'); break;
                case 'r': sb.Append('\r'); break;
                case 't': sb.Append('\t'); break;
                case 'v': sb.Append('\v'); break;
                case 'x': sb.Append(HexEscape(body, ref i, 2, line)); break;
                case 'u': sb.Append(HexEscape(body, ref i, 4, line)); break;
                case 'U': sb.Append(HexEscape(body, ref i, 8, line)); break;
                case >= '0' and <= '7':
                    int value = e - '0';
                    for (int k = 0; k < 2 && i + 1 < body.Length && body[i + 1] is >= '0' and <= '7'; k++) value = value * 8 + (body[++i] - '0');
                    sb.Append(char.ConvertFromUtf32(value));
                    break;
                default: sb.Append('\\').Append(e); break; // Python keeps unknown escapes as written
            }
        }
        return sb.ToString();
    }

    static string HexEscape(string body, ref int i, int digits, int line)
    {
        if (i + digits >= body.Length || !int.TryParse(body.AsSpan(i + 1, digits), NumberStyles.AllowHexSpecifier, null, out int code)
            || code > 0x10FFFF)
            throw new JinjaException($"bad \\{body[i]} escape in a string literal", line);
        i += digits;
        return code is >= 0xD800 and <= 0xDFFF ? ((char)code).ToString() : char.ConvertFromUtf32(code);
    }
}
