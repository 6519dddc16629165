namespace OrtLora.Training.Data.Jinja;

/// <summary>The expression half of the parser, method for method jinja2's precedence climbing: conditional,
/// or, and, not, comparison, + -, ~, * / // %, **, unary, then postfix (attribute, item, call) and the
/// filters and tests that bind tighter than any binary operator (<c>'a' + x | trim</c> trims x alone).</summary>
sealed partial class JinjaParser
{
    static readonly string[] CompareOperators = ["==", "!=", "<", ">", "<=", ">="];

    /// <summary>Expressions separated by commas make a tuple (<c>{{ a, b }}</c>, <c>set a, b = 1, 2</c>);
    /// <paramref name="simplified"/> reads only primaries, as assignment targets are.</summary>
    Expr ParseTuple(bool simplified = false, bool withCondexpr = true, string[]? extraEndNames = null, bool explicitParentheses = false)
    {
        int line = Current.Line;
        var items = new List<Expr>();
        bool isTuple = false;
        while (true)
        {
            if (items.Count > 0) ExpectOperator(",");
            if (IsTupleEnd(extraEndNames)) break;
            items.Add(simplified ? ParsePrimary() : ParseExpression(withCondexpr));
            if (Current.IsOperator(",")) isTuple = true;
            else break;
        }
        if (!isTuple)
        {
            if (items.Count == 1) return items[0];
            if (!explicitParentheses) throw new JinjaException($"expected an expression but found {Describe(Current)}", Current.Line);
        }
        return new TupleExpr(items, line);
    }

    bool IsTupleEnd(string[]? extraEndNames) =>
        Current.Kind is TokenKind.VariableEnd or TokenKind.BlockEnd || Current.IsOperator(")")
        || (extraEndNames is not null && Current.Kind == TokenKind.Name && extraEndNames.Contains(Current.Text));

    Expr ParseExpression(bool withCondexpr = true) => withCondexpr ? ParseConditional() : ParseOr();

    Expr ParseConditional()
    {
        var expr = ParseOr();
        while (Current.IsName("if"))
        {
            int line = Next().Line;
            var test = ParseOr();
            var otherwise = SkipName("else") ? ParseConditional() : null;
            expr = new ConditionalExpr(test, expr, otherwise, line);
        }
        return expr;
    }

    Expr ParseOr()
    {
        var left = ParseAnd();
        while (Current.IsName("or"))
        {
            int line = Next().Line;
            left = new BinaryExpr("or", left, ParseAnd(), line);
        }
        return left;
    }

    Expr ParseAnd()
    {
        var left = ParseNot();
        while (Current.IsName("and"))
        {
            int line = Next().Line;
            left = new BinaryExpr("and", left, ParseNot(), line);
        }
        return left;
    }

    Expr ParseNot()
    {
        if (!Current.IsName("not")) return ParseCompare();
        int line = Next().Line;
        return new UnaryExpr("not", ParseNot(), line);
    }

    Expr ParseCompare()
    {
        int line = Current.Line;
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            if (Current.Kind == TokenKind.Operator && CompareOperators.Contains(Current.Text)) rest.Add((Next().Text, ParseMath1()));
            else if (SkipName("in")) rest.Add(("in", ParseMath1()));
            else if (Current.IsName("not") && Peek(1).IsName("in"))
            {
                Next();
                Next();
                rest.Add(("notin", ParseMath1()));
            }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest, line);
    }

    Expr ParseMath1() => ParseLeftAssociative(ParseConcat, "+", "-");
    Expr ParseConcat() => ParseLeftAssociative(ParseMath2, "~");
    Expr ParseMath2() => ParseLeftAssociative(ParsePow, "*", "/", "//", "%");
    Expr ParsePow() => ParseLeftAssociative(() => ParseUnary(), "**"); // jinja2's ** is left-associative

    Expr ParseLeftAssociative(Func<Expr> operand, params string[] operators)
    {
        var left = operand();
        while (Current.Kind == TokenKind.Operator && operators.Contains(Current.Text))
        {
            var op = Next();
            left = new BinaryExpr(op.Text, left, operand(), op.Line);
        }
        return left;
    }

    Expr ParseUnary(bool withFilter = true)
    {
        var token = Current;
        Expr node;
        if (token.IsOperator("-") || token.IsOperator("+"))
        {
            Next();
            node = new UnaryExpr(token.Text, ParseUnary(false), token.Line);
        }
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilterAndTest(node) : node;
    }

    Expr ParsePrimary()
    {
        var token = Current;
        switch (token.Kind)
        {
            case TokenKind.Name:
                Next();
                return token.Text switch
                {
                    "true" or "True" => new LiteralExpr(true, token.Line),
                    "false" or "False" => new LiteralExpr(false, token.Line),
                    "none" or "None" => new LiteralExpr(null, token.Line),
                    _ => new NameExpr(token.Text, token.Line),
                };
            case TokenKind.String:
                // Adjacent string literals concatenate, as in Python.
                string text = (string)Next().Value!;
                while (Current.Kind == TokenKind.String) text += (string)Next().Value!;
                return new LiteralExpr(text, token.Line);
            case TokenKind.Integer or TokenKind.Float:
                return new LiteralExpr(Next().Value, token.Line);
            case TokenKind.Operator when token.Text == "(":
                Next();
                var inner = ParseTuple(explicitParentheses: true);
                ExpectOperator(")");
                return inner;
            case TokenKind.Operator when token.Text == "[":
                return ParseList();
            case TokenKind.Operator when token.Text == "{":
                return ParseDict();
            default:
                throw Unexpected(token);
        }
    }

    ListExpr ParseList()
    {
        int line = ExpectOperator("[").Line;
        var items = new List<Expr>();
        while (!Current.IsOperator("]"))
        {
            if (items.Count > 0) ExpectOperator(",");
            if (Current.IsOperator("]")) break;
            items.Add(ParseExpression());
        }
        ExpectOperator("]");
        return new ListExpr(items, line);
    }

    DictExpr ParseDict()
    {
        int line = ExpectOperator("{").Line;
        var items = new List<(Expr, Expr)>();
        while (!Current.IsOperator("}"))
        {
            if (items.Count > 0) ExpectOperator(",");
            if (Current.IsOperator("}")) break;
            var key = ParseExpression();
            ExpectOperator(":");
            items.Add((key, ParseExpression()));
        }
        ExpectOperator("}");
        return new DictExpr(items, line);
    }

    Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            if (Current.IsOperator(".") || Current.IsOperator("[")) node = ParseSubscript(node);
            else if (Current.IsOperator("(")) node = ParseCall(node);
            else return node;
        }
    }

    Expr ParseFilterAndTest(Expr node)
    {
        while (true)
        {
            if (SkipOperator("|")) node = ParseFilterCall(node);
            else if (Current.IsName("is")) node = ParseTest(node);
            else if (Current.IsOperator("(")) node = ParseCall(node);
            else return node;
        }
    }

    Expr ParseSubscript(Expr node)
    {
        var token = Next();
        if (token.IsOperator("."))
        {
            var attribute = Next();
            if (attribute.Kind == TokenKind.Name) return new AttributeExpr(node, attribute.Text, token.Line);
            if (attribute.Kind == TokenKind.Integer) return new ItemExpr(node, new LiteralExpr(attribute.Value, attribute.Line), token.Line);
            throw new JinjaException($"expected a name or number after '.' but found {Describe(attribute)}", attribute.Line);
        }
        var keys = new List<Expr>();
        while (!Current.IsOperator("]"))
        {
            if (keys.Count > 0) ExpectOperator(",");
            keys.Add(ParseSubscribed());
        }
        ExpectOperator("]");
        return new ItemExpr(node, keys.Count == 1 ? keys[0] : new TupleExpr(keys, token.Line), token.Line);
    }

    /// <summary>An index or a slice <c>start:stop:step</c>, any part optional.</summary>
    Expr ParseSubscribed()
    {
        int line = Current.Line;
        Expr? start = null;
        if (!Current.IsOperator(":"))
        {
            start = ParseExpression();
            if (!Current.IsOperator(":")) return start;
        }
        Next();
        Expr? stop = Current.IsOperator(":") || Current.IsOperator("]") || Current.IsOperator(",") ? null : ParseExpression();
        Expr? step = null;
        if (SkipOperator(":") && !Current.IsOperator("]") && !Current.IsOperator(",")) step = ParseExpression();
        return new SliceExpr(start, stop, step, line);
    }

    CallExpr ParseCall(Expr callee)
    {
        var (args, kwargs) = ParseCallArguments();
        return new CallExpr(callee, args, kwargs, callee.Line);
    }

    (List<Expr> Args, List<(string, Expr)> Kwargs) ParseCallArguments()
    {
        ExpectOperator("(");
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!Current.IsOperator(")"))
        {
            if (args.Count + kwargs.Count > 0)
            {
                ExpectOperator(",");
                if (Current.IsOperator(")")) break;
            }
            if (Current.IsOperator("*") || Current.IsOperator("**"))
                throw new JinjaException("*args and **kwargs in calls are not supported", Current.Line);
            if (Current.Kind == TokenKind.Name && Peek(1).IsOperator("="))
            {
                string name = Next().Text;
                Next();
                kwargs.Add((name, ParseExpression()));
            }
            else
            {
                if (kwargs.Count > 0) throw new JinjaException("positional argument after keyword argument", Current.Line);
                args.Add(ParseExpression());
            }
        }
        ExpectOperator(")");
        return (args, kwargs);
    }

    /// <summary>One <c>name(args)</c> after a <c>|</c>; JinjaNameCheck then rejects names jinja2 does not know.</summary>
    FilterExpr ParseFilterCall(Expr? input)
    {
        var token = Current;
        string name = ExpectName();
        while (SkipOperator(".")) name += "." + ExpectName();
        var (args, kwargs) = Current.IsOperator("(") ? ParseCallArguments() : ([], []);
        return new FilterExpr(input, name, args, kwargs, token.Line);
    }

    Expr ParseTest(Expr input)
    {
        int line = Next().Line; // 'is'
        bool negated = SkipName("not");
        string name = ExpectName();
        while (SkipOperator(".")) name += "." + ExpectName();
        List<Expr> args = [];
        List<(string, Expr)> kwargs = [];
        if (Current.IsOperator("(")) (args, kwargs) = ParseCallArguments();
        else if ((Current.Kind is TokenKind.Name or TokenKind.String or TokenKind.Integer or TokenKind.Float
                  || Current.IsOperator("[") || Current.IsOperator("{"))
                 && !Current.IsName("else") && !Current.IsName("or") && !Current.IsName("and"))
        {
            // `x is divisibleby 3`, `x is equalto 'a'`: one argument without parentheses.
            if (Current.IsName("is")) throw new JinjaException("tests cannot be chained with 'is'", Current.Line);
            args = [ParsePostfix(ParsePrimary())];
        }
        Expr test = new TestExpr(input, name, args, kwargs, line);
        return negated ? new UnaryExpr("not", test, line) : test;
    }
}
