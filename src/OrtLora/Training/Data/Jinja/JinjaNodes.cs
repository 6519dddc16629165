namespace OrtLora.Training.Data.Jinja;

// The syntax tree the parser builds and the renderer walks. Every node keeps its line for error messages.

abstract record Node(int Line);

sealed record TextNode(string Text, int Line) : Node(Line);
sealed record OutputNode(Expr Value, int Line) : Node(Line);
sealed record IfNode(IReadOnlyList<(Expr Test, IReadOnlyList<Node> Body)> Branches, IReadOnlyList<Node> Else, int Line) : Node(Line);

/// <summary><c>{% for target in iterable if filter %}body{% else %}otherwise{% endfor %}</c>.</summary>
sealed record ForNode(Target Target, Expr Iterable, Expr? Filter, IReadOnlyList<Node> Body, IReadOnlyList<Node> Else, int Line)
    : Node(Line);

sealed record SetNode(Target Target, Expr Value, int Line) : Node(Line);

/// <summary><c>{% set x %}body{% endset %}</c>: the rendered body, through the optional filters, is assigned.</summary>
sealed record SetBlockNode(Target Target, IReadOnlyList<FilterExpr> Filters, IReadOnlyList<Node> Body, int Line) : Node(Line);

sealed record MacroNode(string Name, IReadOnlyList<string> Parameters, IReadOnlyList<Expr?> Defaults, IReadOnlyList<Node> Body, int Line)
    : Node(Line);

sealed record LoopControlNode(bool IsBreak, int Line) : Node(Line);

/// <summary>A body rendered in a child scope: <c>{% generation %}</c> (transformers' AssistantTracker renders it as a
/// call block and records where its text lands: the assistant mask) and <c>{% with %}</c>, whose assignments come first.</summary>
sealed record ScopeNode(IReadOnlyList<(Target Target, Expr Value)> Assignments, IReadOnlyList<Node> Body, int Line, bool Generation = false) : Node(Line);

/// <summary><c>{% filter name %}body{% endfilter %}</c>: the rendered body through the filters.</summary>
sealed record FilterBlockNode(IReadOnlyList<FilterExpr> Filters, IReadOnlyList<Node> Body, int Line) : Node(Line);

// Assignment targets: a name, a tuple of names (unpacking), or a namespace attribute (set ns.attr = ...).
abstract record Target(int Line);
sealed record NameTarget(string Name, int Line) : Target(Line);
sealed record TupleTarget(IReadOnlyList<Target> Items, int Line) : Target(Line);
sealed record NamespaceAttributeTarget(string Namespace, string Attribute, int Line) : Target(Line);

abstract record Expr(int Line);
sealed record LiteralExpr(object? Value, int Line) : Expr(Line);
sealed record NameExpr(string Name, int Line) : Expr(Line);
sealed record ListExpr(IReadOnlyList<Expr> Items, int Line) : Expr(Line);
sealed record TupleExpr(IReadOnlyList<Expr> Items, int Line) : Expr(Line);
sealed record DictExpr(IReadOnlyList<(Expr Key, Expr Value)> Items, int Line) : Expr(Line);

/// <summary><c>x.name</c>: Python attribute first, then item (jinja2's getattr).</summary>
sealed record AttributeExpr(Expr Target, string Name, int Line) : Expr(Line);

/// <summary><c>x[key]</c> and <c>x.0</c>: item first, then attribute (jinja2's getitem).</summary>
sealed record ItemExpr(Expr Target, Expr Key, int Line) : Expr(Line);

sealed record SliceExpr(Expr? Start, Expr? Stop, Expr? Step, int Line) : Expr(Line);
sealed record CallExpr(Expr Callee, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs, int Line) : Expr(Line);

/// <summary><c>input | name(args)</c>; Input is null for the filters of a filter block or block set.</summary>
sealed record FilterExpr(Expr? Input, string Name, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs, int Line)
    : Expr(Line);

sealed record TestExpr(Expr Input, string Name, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs, int Line)
    : Expr(Line);

/// <summary><c>-x</c>, <c>+x</c>, <c>not x</c>.</summary>
sealed record UnaryExpr(string Operator, Expr Operand, int Line) : Expr(Line);

/// <summary>Arithmetic, <c>~</c>, <c>and</c>, <c>or</c>.</summary>
sealed record BinaryExpr(string Operator, Expr Left, Expr Right, int Line) : Expr(Line);

/// <summary>A comparison chain as in Python: <c>a &lt; b == c</c> is <c>a &lt; b and b == c</c>; operators include
/// <c>in</c> and <c>notin</c>.</summary>
sealed record CompareExpr(Expr First, IReadOnlyList<(string Operator, Expr Operand)> Rest, int Line) : Expr(Line);

/// <summary><c>then if test else otherwise</c>; without else the result is undefined when the test fails.</summary>
sealed record ConditionalExpr(Expr Test, Expr Then, Expr? Otherwise, int Line) : Expr(Line);
