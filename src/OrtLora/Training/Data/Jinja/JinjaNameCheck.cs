namespace OrtLora.Training.Data.Jinja;

/// <summary>jinja2 rejects a filter or test name it does not know when it compiles the template, except in a
/// "soft frame": an if statement or an inline if, where the name fails only if that code runs (so a template
/// whose untaken branch uses some other engine's filter still renders). This walk applies the same rule after
/// parsing; a for body, macro, block set or filter block starts a hard frame again.</summary>
static class JinjaNameCheck
{
    public static void Check(IReadOnlyList<Node> body) => Walk(body, soft: false);

    static void Walk(IReadOnlyList<Node> nodes, bool soft)
    {
        foreach (var node in nodes) Walk(node, soft);
    }

    static void Walk(Node node, bool soft)
    {
        switch (node)
        {
            case OutputNode output:
                Walk(output.Value, soft);
                break;
            case IfNode conditional:
                foreach (var (test, body) in conditional.Branches)
                {
                    Walk(test, true);
                    Walk(body, true);
                }
                Walk(conditional.Else, true);
                break;
            case ForNode loop:
                Walk(loop.Iterable, soft);
                if (loop.Filter is not null) Walk(loop.Filter, false);
                Walk(loop.Body, false);
                Walk(loop.Else, false);
                break;
            case SetNode set:
                Walk(set.Value, soft);
                break;
            case SetBlockNode setBlock:
                foreach (var filter in setBlock.Filters) Walk(filter, false);
                Walk(setBlock.Body, false);
                break;
            case FilterBlockNode filterBlock:
                foreach (var filter in filterBlock.Filters) Walk(filter, false);
                Walk(filterBlock.Body, false);
                break;
            case MacroNode macro:
                foreach (var fallback in macro.Defaults)
                    if (fallback is not null) Walk(fallback, false);
                Walk(macro.Body, false);
                break;
            case ScopeNode scope:
                foreach (var (_, value) in scope.Assignments) Walk(value, soft);
                Walk(scope.Body, false);
                break;
        }
    }

    static void Walk(Expr? expr, bool soft)
    {
        switch (expr)
        {
            case FilterExpr filter:
                if (!soft && !JinjaFilters.IsJinjaFilter(filter.Name)) throw new JinjaException($"No filter named '{filter.Name}'.", filter.Line);
                Walk(filter.Input, soft);
                WalkArguments(filter.Args, filter.Kwargs, soft);
                break;
            case TestExpr test:
                if (!soft && !JinjaTests.IsJinjaTest(test.Name)) throw new JinjaException($"No test named '{test.Name}'.", test.Line);
                Walk(test.Input, soft);
                WalkArguments(test.Args, test.Kwargs, soft);
                break;
            case ConditionalExpr conditional:
                Walk(conditional.Test, true);
                Walk(conditional.Then, true);
                Walk(conditional.Otherwise, true);
                break;
            case ListExpr list:
                foreach (var item in list.Items) Walk(item, soft);
                break;
            case TupleExpr tuple:
                foreach (var item in tuple.Items) Walk(item, soft);
                break;
            case DictExpr dict:
                foreach (var (key, value) in dict.Items)
                {
                    Walk(key, soft);
                    Walk(value, soft);
                }
                break;
            case AttributeExpr attribute:
                Walk(attribute.Target, soft);
                break;
            case ItemExpr item:
                Walk(item.Target, soft);
                Walk(item.Key, soft);
                break;
            case SliceExpr slice:
                Walk(slice.Start, soft);
                Walk(slice.Stop, soft);
                Walk(slice.Step, soft);
                break;
            case CallExpr call:
                Walk(call.Callee, soft);
                WalkArguments(call.Args, call.Kwargs, soft);
                break;
            case UnaryExpr unary:
                Walk(unary.Operand, soft);
                break;
            case BinaryExpr binary:
                Walk(binary.Left, soft);
                Walk(binary.Right, soft);
                break;
            case CompareExpr compare:
                Walk(compare.First, soft);
                foreach (var (_, operand) in compare.Rest) Walk(operand, soft);
                break;
        }
    }

    static void WalkArguments(IReadOnlyList<Expr> args, IReadOnlyList<(string Name, Expr Value)> kwargs, bool soft)
    {
        foreach (var arg in args) Walk(arg, soft);
        foreach (var (_, value) in kwargs) Walk(value, soft);
    }
}
