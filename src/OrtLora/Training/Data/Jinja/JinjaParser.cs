namespace OrtLora.Training.Data.Jinja;

/// <summary>Builds the syntax tree from tokens with jinja2's grammar. This half parses statements (tags); the
/// expression half is in JinjaExpressionParser.cs.</summary>
sealed partial class JinjaParser
{
    readonly List<Token> _tokens;
    int _pos;
    int _loopDepth; // break/continue are only valid inside a for body (jinja2's loopcontrols extension)

    JinjaParser(List<Token> tokens) => _tokens = tokens;

    public static IReadOnlyList<Node> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        var body = parser.Subparse(null);
        if (parser.Current.Kind != TokenKind.End) throw parser.Unexpected(parser.Current);
        JinjaNameCheck.Check(body);
        return body;
    }

    Token Current => _tokens[_pos];
    Token Peek(int ahead) => _tokens[Math.Min(_pos + ahead, _tokens.Count - 1)];

    Token Next()
    {
        var token = _tokens[_pos];
        if (_pos < _tokens.Count - 1) _pos++;
        return token;
    }

    Token Expect(TokenKind kind, string? text = null)
    {
        var token = Current;
        if (token.Kind != kind || (text is not null && token.Text != text))
            throw new JinjaException($"expected {Describe(kind, text)} but found {Describe(token)}", token.Line);
        return Next();
    }

    string ExpectName() => Expect(TokenKind.Name).Text;
    Token ExpectOperator(string op) => Expect(TokenKind.Operator, op);

    bool SkipName(string name)
    {
        if (!Current.IsName(name)) return false;
        Next();
        return true;
    }

    bool SkipOperator(string op)
    {
        if (!Current.IsOperator(op)) return false;
        Next();
        return true;
    }

    JinjaException Unexpected(Token token) => new($"unexpected {Describe(token)}", token.Line);

    static string Describe(Token token) => token.Kind switch
    {
        TokenKind.End => "end of template",
        TokenKind.Data => "template text",
        TokenKind.VariableBegin => "'{{'",
        TokenKind.VariableEnd => "'}}'",
        TokenKind.BlockBegin => "'{%'",
        TokenKind.BlockEnd => "'%}'",
        _ => $"'{token.Text}'",
    };

    static string Describe(TokenKind kind, string? text) => text is not null ? $"'{text}'" : kind switch
    {
        TokenKind.Name => "a name",
        TokenKind.VariableEnd => "'}}'",
        TokenKind.BlockEnd => "'%}'",
        _ => kind.ToString(),
    };

    /// <summary>Template body up to the end of the template or, when <paramref name="endTags"/> is given, up to a
    /// tag whose name is one of them (left as the current token for the caller).</summary>
    List<Node> Subparse(string[]? endTags)
    {
        var body = new List<Node>();
        while (true)
        {
            var token = Current;
            switch (token.Kind)
            {
                case TokenKind.End:
                    return body;
                case TokenKind.Data:
                    body.Add(new TextNode(token.Text, token.Line));
                    Next();
                    break;
                case TokenKind.VariableBegin:
                    Next();
                    body.Add(new OutputNode(ParseTuple(), token.Line));
                    Expect(TokenKind.VariableEnd);
                    break;
                case TokenKind.BlockBegin:
                    Next();
                    if (endTags is not null && Current.Kind == TokenKind.Name && endTags.Contains(Current.Text)) return body;
                    body.Add(ParseStatement());
                    Expect(TokenKind.BlockEnd);
                    break;
                default:
                    throw Unexpected(token);
            }
        }
    }

    /// <summary>The body of a block tag: closes the opening tag, parses to one of <paramref name="endTags"/> and,
    /// with <paramref name="dropEndTag"/>, consumes that tag's name.</summary>
    List<Node> ParseBody(string[] endTags, string opener, int openLine, bool dropEndTag)
    {
        SkipOperator(":"); // jinja2 allows a Python-style colon after the tag
        Expect(TokenKind.BlockEnd);
        var body = Subparse(endTags);
        if (Current.Kind == TokenKind.End)
            throw new JinjaException($"unexpected end of template: the '{opener}' on line {openLine} needs " +
                                     string.Join(" or ", endTags.Select(t => $"'{t}'")), Current.Line);
        if (dropEndTag) Next();
        return body;
    }

    Node ParseStatement()
    {
        var token = Current;
        if (token.Kind != TokenKind.Name) throw new JinjaException($"expected a tag name but found {Describe(token)}", token.Line);
        switch (token.Text)
        {
            case "if": return ParseIf();
            case "for": return ParseFor();
            case "set": return ParseSet();
            case "macro": return ParseMacro();
            case "with": return ParseWith();
            case "filter": return ParseFilterBlock();
            case "generation":
                Next();
                return new ScopeNode([], ParseBody(["endgeneration"], "generation", token.Line, true), token.Line, Generation: true);
            case "print":
                Next();
                return new OutputNode(ParseTuple(), token.Line);
            case "break" or "continue":
                Next();
                if (_loopDepth == 0) throw new JinjaException($"'{token.Text}' outside a for loop", token.Line);
                return new LoopControlNode(token.Text == "break", token.Line);
            case "block" or "extends" or "include" or "import" or "from" or "call" or "autoescape" or "do":
                throw new JinjaException($"the '{token.Text}' tag is not supported", token.Line);
            default:
                throw new JinjaException($"unknown tag '{token.Text}'", token.Line);
        }
    }

    IfNode ParseIf()
    {
        int line = Next().Line;
        var branches = new List<(Expr, IReadOnlyList<Node>)>();
        IReadOnlyList<Node> otherwise = [];
        while (true)
        {
            var test = ParseTuple(withCondexpr: false);
            branches.Add((test, ParseBody(["elif", "else", "endif"], "if", line, false)));
            var tag = Next();
            if (tag.Text == "elif") continue;
            if (tag.Text == "else") otherwise = ParseBody(["endif"], "if", line, true);
            break;
        }
        return new IfNode(branches, otherwise, line);
    }

    ForNode ParseFor()
    {
        int line = Next().Line;
        var target = ParseAssignTarget(extraEndNames: ["in"]);
        Expect(TokenKind.Name, "in");
        var iterable = ParseTuple(withCondexpr: false, extraEndNames: ["recursive"]);
        var filter = SkipName("if") ? ParseExpression() : null;
        if (Current.IsName("recursive")) throw new JinjaException("recursive for loops are not supported", Current.Line);
        _loopDepth++;
        var body = ParseBody(["endfor", "else"], "for", line, false);
        _loopDepth--;
        IReadOnlyList<Node> otherwise = Next().Text == "else" ? ParseBody(["endfor"], "for", line, true) : [];
        return new ForNode(target, iterable, filter, body, otherwise, line);
    }

    Node ParseSet()
    {
        int line = Next().Line;
        var target = ParseAssignTarget(withNamespace: true);
        if (SkipOperator("=")) return new SetNode(target, ParseTuple(), line);
        var filters = new List<FilterExpr>();
        while (SkipOperator("|")) filters.Add(ParseFilterCall(null));
        return new SetBlockNode(target, filters, ParseBody(["endset"], "set", line, true), line);
    }

    MacroNode ParseMacro()
    {
        int line = Next().Line;
        string name = ExpectName();
        ExpectOperator("(");
        var parameters = new List<string>();
        var defaults = new List<Expr?>();
        while (!Current.IsOperator(")"))
        {
            if (parameters.Count > 0) ExpectOperator(",");
            parameters.Add(ExpectName());
            if (SkipOperator("=")) defaults.Add(ParseExpression());
            else if (defaults.Any(d => d is not null)) throw new JinjaException("non-default argument follows default argument", Current.Line);
            else defaults.Add(null);
        }
        ExpectOperator(")");
        int outerLoops = _loopDepth;
        _loopDepth = 0;
        var body = ParseBody(["endmacro"], "macro", line, true);
        _loopDepth = outerLoops;
        return new MacroNode(name, parameters, defaults, body, line);
    }

    ScopeNode ParseWith()
    {
        int line = Next().Line;
        var assignments = new List<(Target, Expr)>();
        while (Current.Kind != TokenKind.BlockEnd)
        {
            if (assignments.Count > 0) ExpectOperator(",");
            var target = ParseAssignTarget();
            ExpectOperator("=");
            assignments.Add((target, ParseExpression()));
        }
        return new ScopeNode(assignments, ParseBody(["endwith"], "with", line, true), line);
    }

    FilterBlockNode ParseFilterBlock()
    {
        int line = Next().Line;
        var filters = new List<FilterExpr> { ParseFilterCall(null) };
        while (SkipOperator("|")) filters.Add(ParseFilterCall(null));
        return new FilterBlockNode(filters, ParseBody(["endfilter"], "filter", line, true), line);
    }

    /// <summary>A name, a tuple of names (<c>for k, v in ...</c>), or with <paramref name="withNamespace"/>
    /// <c>ns.attr</c>.</summary>
    Target ParseAssignTarget(string[]? extraEndNames = null, bool withNamespace = false)
    {
        var token = Current;
        if (withNamespace && token.Kind == TokenKind.Name && Peek(1).IsOperator("."))
        {
            Next();
            Next();
            return new NamespaceAttributeTarget(token.Text, ExpectName(), token.Line);
        }
        return ToTarget(ParseTuple(simplified: true, extraEndNames: extraEndNames));
    }

    static Target ToTarget(Expr expr) => expr switch
    {
        NameExpr name => new NameTarget(name.Name, name.Line),
        TupleExpr tuple => new TupleTarget(tuple.Items.Select(ToTarget).ToList(), tuple.Line),
        _ => throw new JinjaException("can only assign to names", expr.Line),
    };
}
