using System.Text;

namespace OrtLora.Training.Data.Jinja;

/// <summary>Variables visible at one point of a render. A for-loop iteration, a macro call and a block-set body
/// each get a child scope, so what they set stays inside (hence namespace()); <c>if</c> does not.</summary>
sealed class Scope(Scope? parent)
{
    readonly Dictionary<string, object?> _variables = [];

    public Scope? Parent => parent;

    public bool TryLookup(string name, out object? value)
    {
        for (var scope = this; scope is not null; scope = scope.Parent)
            if (scope._variables.TryGetValue(name, out value)) return true;
        value = null;
        return false;
    }

    public void Set(string name, object? value) => _variables[name] = value;
}

/// <summary>raise_exception(message) from the template.</summary>
sealed class JinjaRaisedException(string message) : JinjaException(message);

/// <summary>A macro bound to the render that defined it; calling it renders its body to a string.</summary>
sealed class JinjaMacro(MacroNode node, JinjaRenderer renderer) : IJinjaCallable
{
    public object? Call(IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs) => renderer.CallMacro(node, args, kwargs);
    public override string ToString() => $"<Macro {PythonText.Repr(node.Name)}>";
}

/// <summary>Walks the syntax tree and writes the output, evaluating expressions with Python's semantics.</summary>
sealed class JinjaRenderer
{
    enum Flow { Normal, Break, Continue }

    const int MaxMacroDepth = 200; // deep enough for any template, short of .NET's own stack

    readonly Scope _root;
    int _line;
    int _macroDepth;

    JinjaRenderer(IReadOnlyDictionary<string, object?> variables, Func<DateTime> clock)
    {
        // transformers' globals sit under the caller's variables, which may shadow them.
        var globals = new Scope(null);
        globals.Set("raise_exception", new JinjaFunction("raise_exception", (args, _) =>
            throw new JinjaRaisedException(args.Count > 0 ? JinjaValue.Str(args[0]) : "")));
        globals.Set("strftime_now", new JinjaFunction("strftime_now", (args, kwargs) =>
            PythonText.Strftime(clock(), JinjaValue.RequireString(CallArguments.Bind("strftime_now", args, kwargs, "format").Required(0), "format"))));
        globals.Set("range", new JinjaFunction("range", JinjaMethods.Range));
        globals.Set("dict", new JinjaFunction("dict", (args, kwargs) => JinjaMethods.KeywordMapping("dict", args, kwargs)));
        globals.Set("namespace", new JinjaFunction("namespace", (args, kwargs) =>
        {
            var ns = new JinjaNamespace();
            foreach (var (key, value) in JinjaMethods.KeywordMapping("namespace", args, kwargs)) ns.Attributes[key] = value;
            return ns;
        }));
        _root = new Scope(globals);
        foreach (var (name, value) in variables)
        {
            try
            {
                _root.Set(name, JinjaValue.FromHost(value));
            }
            catch (JinjaException e)
            {
                throw new JinjaException($"variable '{name}': {e.Message}");
            }
        }
    }

    public static string Render(IReadOnlyList<Node> body, IReadOnlyDictionary<string, object?> variables, Func<DateTime> clock) =>
        RenderTracked(body, variables, clock).Text;

    /// <summary>The text, and where the text of each <c>{% generation %}</c> block lies in it, in order.</summary>
    public static (string Text, IReadOnlyList<(int Start, int End)> Generated) RenderTracked(IReadOnlyList<Node> body,
        IReadOnlyDictionary<string, object?> variables, Func<DateTime> clock)
    {
        var renderer = new JinjaRenderer(variables, clock);
        try
        {
            renderer.Execute(body, renderer._root, renderer._output);
        }
        catch (JinjaException e) when (e.Line == 0)
        {
            e.Line = renderer._line;
            throw;
        }
        return (renderer._output.ToString(), renderer._generated);
    }

    readonly StringBuilder _output = new();
    readonly List<(int Start, int End)> _generated = [];

    Flow Execute(IReadOnlyList<Node> nodes, Scope scope, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            _line = node.Line;
            var flow = Flow.Normal;
            switch (node)
            {
                case TextNode text:
                    output.Append(text.Text);
                    break;
                case OutputNode print:
                    output.Append(JinjaValue.Str(Evaluate(print.Value, scope)));
                    break;
                case IfNode conditional:
                    flow = Execute(ChosenBranch(conditional, scope), scope, output);
                    break;
                case ForNode loop:
                    flow = ExecuteFor(loop, scope, output);
                    break;
                case SetNode set:
                    Assign(set.Target, Evaluate(set.Value, scope), scope);
                    break;
                case SetBlockNode setBlock:
                    Assign(setBlock.Target, RenderFiltered(setBlock.Body, setBlock.Filters, scope), scope);
                    break;
                case FilterBlockNode filterBlock:
                    output.Append(JinjaValue.Str(RenderFiltered(filterBlock.Body, filterBlock.Filters, scope)));
                    break;
                case MacroNode macro:
                    scope.Set(macro.Name, new JinjaMacro(macro, this));
                    break;
                case ScopeNode block:
                    var inner = new Scope(scope);
                    foreach (var (target, value) in block.Assignments) Assign(target, Evaluate(value, scope), inner);
                    int start = output.Length;
                    flow = Execute(block.Body, inner, output);
                    // Only text written to the template's own output has a place in it (not a macro's or a set block's).
                    if (block.Generation && ReferenceEquals(output, _output)) _generated.Add((start, output.Length));
                    break;
                case LoopControlNode control:
                    return control.IsBreak ? Flow.Break : Flow.Continue;
            }
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    IReadOnlyList<Node> ChosenBranch(IfNode conditional, Scope scope)
    {
        foreach (var (test, body) in conditional.Branches)
            if (JinjaValue.Truthy(Evaluate(test, scope))) return body;
        return conditional.Else;
    }

    /// <summary>A for loop: the <c>if</c> filter first (so loop.length counts what is kept), then one child scope
    /// per iteration holding the target and <c>loop</c>. The else body runs unless some iteration reached the end of
    /// the body: jinja2 clears its flag there, so a loop left by break or continue on every pass runs it too.</summary>
    Flow ExecuteFor(ForNode loop, Scope scope, StringBuilder output)
    {
        var items = JinjaValue.ToList(Evaluate(loop.Iterable, scope));
        if (loop.Filter is not null)
            items = items.Where(item =>
            {
                var probe = new Scope(scope);
                Assign(loop.Target, item, probe);
                return JinjaValue.Truthy(Evaluate(loop.Filter, probe));
            }).ToList();
        bool bodyCompleted = false;
        for (int i = 0; i < items.Count; i++)
        {
            var iteration = new Scope(scope);
            Assign(loop.Target, items[i], iteration);
            iteration.Set("loop", new JinjaLoop(items, i));
            var flow = Execute(loop.Body, iteration, output);
            if (flow == Flow.Break) break;
            if (flow == Flow.Normal) bodyCompleted = true;
        }
        return bodyCompleted ? Flow.Normal : Execute(loop.Else, new Scope(scope), output);
    }

    object? RenderFiltered(IReadOnlyList<Node> body, IReadOnlyList<FilterExpr> filters, Scope scope)
    {
        var text = new StringBuilder();
        Execute(body, new Scope(scope), text);
        object? value = text.ToString();
        foreach (var filter in filters) value = JinjaFilters.Apply(filter.Name, value, EvaluateAll(filter.Args, scope), EvaluateKeywords(filter.Kwargs, scope));
        return value;
    }

    void Assign(Target target, object? value, Scope scope)
    {
        switch (target)
        {
            case NameTarget name:
                scope.Set(name.Name, value);
                break;
            case TupleTarget tuple:
                var items = JinjaValue.ToList(value);
                if (items.Count != tuple.Items.Count)
                    throw new JinjaException(items.Count < tuple.Items.Count
                        ? $"not enough values to unpack (expected {tuple.Items.Count}, got {items.Count})"
                        : $"too many values to unpack (expected {tuple.Items.Count})", target.Line);
                for (int i = 0; i < items.Count; i++) Assign(tuple.Items[i], items[i], scope);
                break;
            case NamespaceAttributeTarget attribute:
                if (!scope.TryLookup(attribute.Namespace, out var ns) || ns is not JinjaNamespace namespaceObject)
                    throw new JinjaException("cannot assign attribute on non-namespace object", target.Line);
                namespaceObject.Attributes[attribute.Attribute] = value;
                break;
        }
    }

    internal object? CallMacro(MacroNode macro, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs)
    {
        if (args.Count > macro.Parameters.Count)
            throw new JinjaException($"macro {PythonText.Repr(macro.Name)} takes not more than {macro.Parameters.Count} argument(s)");
        // Macros see the template's top level (the caller's variables and top-level sets), not the caller's loop.
        var scope = new Scope(_root);
        var given = new bool[macro.Parameters.Count];
        for (int i = 0; i < args.Count; i++)
        {
            scope.Set(macro.Parameters[i], args[i]);
            given[i] = true;
        }
        foreach (var (name, value) in kwargs)
        {
            int i = macro.Parameters.ToList().IndexOf(name);
            if (i < 0) throw new JinjaException($"macro {PythonText.Repr(macro.Name)} takes no keyword argument {PythonText.Repr(name)}");
            if (given[i]) throw new JinjaException($"macro {PythonText.Repr(macro.Name)} got multiple values for argument {PythonText.Repr(name)}");
            scope.Set(name, value);
            given[i] = true;
        }
        for (int i = 0; i < given.Length; i++)
            if (!given[i])
                scope.Set(macro.Parameters[i], macro.Defaults[i] is { } fallback
                    ? Evaluate(fallback, scope)
                    : new JinjaUndefined($"parameter {PythonText.Repr(macro.Parameters[i])} was not provided"));
        if (++_macroDepth > MaxMacroDepth) throw new JinjaException("maximum recursion depth exceeded in macro calls");
        int callerLine = _line;
        try
        {
            var output = new StringBuilder();
            Execute(macro.Body, scope, output);
            return output.ToString();
        }
        finally
        {
            _macroDepth--;
            _line = callerLine;
        }
    }

    List<object?> EvaluateAll(IReadOnlyList<Expr> exprs, Scope scope) => exprs.Select(e => Evaluate(e, scope)).ToList();

    List<(string, object?)> EvaluateKeywords(IReadOnlyList<(string Name, Expr Value)> kwargs, Scope scope) =>
        kwargs.Select(k => (k.Name, Evaluate(k.Value, scope))).ToList();

    object? Evaluate(Expr expr, Scope scope)
    {
        _line = expr.Line;
        switch (expr)
        {
            case LiteralExpr literal:
                return literal.Value;
            case NameExpr name:
                return scope.TryLookup(name.Name, out var value) ? value : JinjaUndefined.Named(name.Name);
            case ListExpr list:
                return EvaluateAll(list.Items, scope);
            case TupleExpr tuple:
                return new JinjaTuple(EvaluateAll(tuple.Items, scope));
            case DictExpr dict:
                var map = new Dictionary<string, object?>();
                foreach (var (key, item) in dict.Items)
                    map[Evaluate(key, scope) as string ?? throw new JinjaException("dict literal keys must be strings", key.Line)] = Evaluate(item, scope);
                return map;
            case AttributeExpr attribute:
                return JinjaOperators.GetAttribute(Evaluate(attribute.Target, scope), attribute.Name);
            case ItemExpr item:
                var target = Evaluate(item.Target, scope);
                return JinjaOperators.GetItem(target, Evaluate(item.Key, scope));
            case SliceExpr slice:
                return new JinjaSlice(SliceBound(slice.Start, scope), SliceBound(slice.Stop, scope), SliceBound(slice.Step, scope));
            case CallExpr call:
                return Call(Evaluate(call.Callee, scope), EvaluateAll(call.Args, scope), EvaluateKeywords(call.Kwargs, scope));
            case FilterExpr filter:
                var input = filter.Input is null ? null : Evaluate(filter.Input, scope);
                return JinjaFilters.Apply(filter.Name, input, EvaluateAll(filter.Args, scope), EvaluateKeywords(filter.Kwargs, scope));
            case TestExpr test:
                var tested = Evaluate(test.Input, scope);
                return JinjaTests.Apply(test.Name, tested, EvaluateAll(test.Args, scope), EvaluateKeywords(test.Kwargs, scope));
            case UnaryExpr unary:
                var operand = Evaluate(unary.Operand, scope);
                return unary.Operator == "not" ? !JinjaValue.Truthy(operand) : JinjaOperators.Negate(operand, unary.Operator);
            case BinaryExpr binary:
                return EvaluateBinary(binary, scope);
            case CompareExpr compare:
                return EvaluateCompare(compare, scope);
            case ConditionalExpr conditional:
                if (JinjaValue.Truthy(Evaluate(conditional.Test, scope))) return Evaluate(conditional.Then, scope);
                return conditional.Otherwise is null
                    ? new JinjaUndefined($"the inline if-expression on line {conditional.Line} evaluated to false and no else section was defined.")
                    : Evaluate(conditional.Otherwise, scope);
            default:
                throw new JinjaException($"cannot evaluate {expr.GetType().Name}", expr.Line);
        }
    }

    long? SliceBound(Expr? bound, Scope scope) => bound is null ? null : Evaluate(bound, scope) switch
    {
        null => null,
        var v => JinjaValue.RequireInteger(v, "slice indices"),
    };

    static object? Call(object? callee, IReadOnlyList<object?> args, IReadOnlyList<(string Name, object? Value)> kwargs) => callee switch
    {
        IJinjaCallable function => function.Call(args, kwargs),
        JinjaUndefined undefined => throw undefined.Fail(),
        _ => throw new JinjaException($"{PythonText.Repr(JinjaValue.TypeName(callee))} object is not callable"),
    };

    /// <summary><c>and</c>/<c>or</c> return an operand, as in Python; <c>~</c> joins str() of both sides.</summary>
    object? EvaluateBinary(BinaryExpr binary, Scope scope)
    {
        var left = Evaluate(binary.Left, scope);
        switch (binary.Operator)
        {
            case "and": return JinjaValue.Truthy(left) ? Evaluate(binary.Right, scope) : left;
            case "or": return JinjaValue.Truthy(left) ? left : Evaluate(binary.Right, scope);
        }
        var right = Evaluate(binary.Right, scope);
        _line = binary.Line;
        return binary.Operator == "~" ? JinjaValue.Str(left) + JinjaValue.Str(right) : JinjaOperators.Arithmetic(binary.Operator, left, right);
    }

    bool EvaluateCompare(CompareExpr compare, Scope scope)
    {
        var left = Evaluate(compare.First, scope);
        foreach (var (op, operandExpr) in compare.Rest)
        {
            var right = Evaluate(operandExpr, scope);
            bool holds = op switch
            {
                "==" => JinjaOperators.PyEquals(left, right),
                "!=" => !JinjaOperators.PyEquals(left, right),
                "in" => JinjaOperators.Contains(right, left),
                "notin" => !JinjaOperators.Contains(right, left),
                "<" => JinjaOperators.Compare(left, right, op) < 0,
                "<=" => JinjaOperators.Compare(left, right, op) <= 0,
                ">" => JinjaOperators.Compare(left, right, op) > 0,
                _ => JinjaOperators.Compare(left, right, op) >= 0,
            };
            if (!holds) return false;
            left = right;
        }
        return true;
    }
}
