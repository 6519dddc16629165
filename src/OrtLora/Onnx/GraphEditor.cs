using Onnx;

namespace OrtLora.Onnx;

/// <summary>The small vocabulary ortlora's rewrites are written in: find producers and consumers of a value,
/// add nodes and initializers under fresh names, remove what no output needs, restore topological order.
/// Edits go straight to the GraphProto; the indexes are rebuilt lazily after a change.</summary>
public sealed class GraphEditor
{
    public GraphProto Graph { get; }
    readonly HashSet<string> _names = new();
    Dictionary<string, NodeProto>? _producers;
    Dictionary<string, List<NodeProto>>? _consumers;
    Dictionary<string, TensorProto>? _initializers;

    public GraphEditor(GraphProto graph)
    {
        Graph = graph;
        foreach (var n in graph.Node) { _names.Add(n.Name); foreach (var o in n.Output) _names.Add(o); }
        foreach (var t in graph.Initializer) _names.Add(t.Name);
        foreach (var v in graph.Input) _names.Add(v.Name);
    }

    void Changed() { _producers = null; _consumers = null; _initializers = null; }

    /// <summary>A name not yet used in the graph, derived from <paramref name="wanted"/>.</summary>
    public string Unique(string wanted)
    {
        if (_names.Add(wanted)) return wanted;
        for (int i = 1; ; i++)
            if (_names.Add($"{wanted}_{i}")) return $"{wanted}_{i}";
    }

    public NodeProto? Producer(string value)
    {
        if (_producers is null)
        {
            _producers = new();
            foreach (var n in Graph.Node) foreach (var o in n.Output) if (o != "") _producers[o] = n;
        }
        return _producers.GetValueOrDefault(value);
    }

    public IReadOnlyList<NodeProto> Consumers(string value)
    {
        if (_consumers is null)
        {
            _consumers = new();
            foreach (var n in Graph.Node)
                foreach (var i in n.Input.Distinct())
                    if (i != "") (_consumers.TryGetValue(i, out var l) ? l : _consumers[i] = new()).Add(n);
        }
        return _consumers.TryGetValue(value, out var list) ? list : [];
    }

    public TensorProto? Initializer(string name)
    {
        _initializers ??= Graph.Initializer.GroupBy(t => t.Name).ToDictionary(g => g.Key, g => g.First());
        return _initializers.GetValueOrDefault(name);
    }

    /// <summary>The value's constant tensor: an initializer (not overridable by a graph input) or a Constant node's.</summary>
    public TensorProto? Constant(string name)
    {
        if (Initializer(name) is { } t && Graph.Input.All(i => i.Name != name)) return t;
        if (Producer(name) is { OpType: "Constant" } c) return Attrs.Tensor(c, "value");
        return null;
    }

    /// <summary>The integers of a constant value (<see cref="Constant"/>): axes, sizes, bounds; null when it is none.</summary>
    public long[]? ConstantInts(string name) =>
        name != "" && Constant(name) is { } t ? Tensors.ReadInt64s(Tensors.InlineBytes(t), t.DataType) : null;

    /// <summary>The values of a constant float tensor (<see cref="Constant"/>) as float32; null when it is none.</summary>
    public float[]? ConstantFloats(string name) =>
        name != "" && Constant(name) is { } t && Tensors.IsFloat(t.DataType) ? Tensors.BytesToFloats(Tensors.InlineBytes(t), t.DataType) : null;

    public bool IsGraphOutput(string name) => Graph.Output.Any(o => o.Name == name);

    /// <summary>Adds a node; returns its first output. Output names default to fresh names from the node's name.</summary>
    public string Add(string op, IEnumerable<string> inputs, string? name = null, string[]? outputs = null,
        string domain = "", params (string Name, object Value)[] attributes)
    {
        var node = new NodeProto { OpType = op, Name = Unique(name ?? op) };
        if (domain != "") node.Domain = domain;
        node.Input.AddRange(inputs);
        node.Output.AddRange(outputs ?? [Unique(node.Name + "_out")]);
        foreach (var (n, v) in attributes) node.Attribute.Add(Attrs.Make(n, v));
        Graph.Node.Add(node);
        Changed();
        return node.Output[0];
    }

    public NodeProto AddNode(NodeProto node) => InsertNode(Graph.Node.Count, node);

    /// <summary>Puts <paramref name="node"/> at <paramref name="index"/> in the node list (before its readers).</summary>
    public NodeProto InsertNode(int index, NodeProto node)
    {
        Graph.Node.Insert(index, node);
        _names.Add(node.Name);
        foreach (var o in node.Output) _names.Add(o);
        Changed();
        return node;
    }

    /// <summary>Appends a copy of <paramref name="node"/> (a piece of the graph computed again elsewhere) that reads
    /// renamed values where <paramref name="renames"/> has them and writes fresh ones, named output + suffix and
    /// recorded in <paramref name="renames"/>.</summary>
    public NodeProto AddRenamedCopy(NodeProto node, IDictionary<string, string> renames, string suffix)
    {
        var copy = node.Clone();
        copy.Name = Unique(node.Name + suffix);
        for (int i = 0; i < copy.Input.Count; i++) if (renames.TryGetValue(copy.Input[i], out var r)) copy.Input[i] = r;
        for (int i = 0; i < copy.Output.Count; i++)
            if (copy.Output[i] != "") renames[node.Output[i]] = copy.Output[i] = Unique(node.Output[i] + suffix);
        return AddNode(copy);
    }

    public string AddInitializer(TensorProto tensor)
    {
        if (Initializer(tensor.Name) is not null || !_names.Add(tensor.Name) && Producer(tensor.Name) is not null)
            throw new InvalidOperationException($"initializer name '{tensor.Name}' is already used");
        _names.Add(tensor.Name);
        Graph.Initializer.Add(tensor);
        Changed();
        return tensor.Name;
    }

    public void RemoveNode(NodeProto node) { Graph.Node.Remove(node); Changed(); }

    public void RemoveInitializer(string name)
    {
        var t = Initializer(name);
        if (t is not null) Graph.Initializer.Remove(t);
        Changed();
    }

    /// <summary>Every use of <paramref name="from"/> (node inputs and graph outputs) now reads <paramref name="to"/>,
    /// except in the nodes listed.</summary>
    public void ReplaceUses(string from, string to, params NodeProto[] except)
    {
        foreach (var n in Graph.Node)
        {
            if (except.Contains(n)) continue;
            for (int i = 0; i < n.Input.Count; i++) if (n.Input[i] == from) n.Input[i] = to;
        }
        foreach (var o in Graph.Output) if (o.Name == from) o.Name = to;
        Changed();
    }

    /// <summary>Removes nodes no graph output depends on, then initializers and value_info nothing reads.</summary>
    public void Cleanup()
    {
        var needed = new HashSet<string>(Graph.Output.Select(o => o.Name));
        var keep = new HashSet<NodeProto>();
        for (int i = Graph.Node.Count - 1; i >= 0; i--)
        {
            var n = Graph.Node[i];
            if (!n.Output.Any(needed.Contains)) continue;
            keep.Add(n);
            foreach (var input in n.Input) needed.Add(input);
            foreach (var sub in n.Attribute.Where(a => a.G is not null).Select(a => a.G).Concat(n.Attribute.SelectMany(a => a.Graphs)))
                foreach (var name in OuterScopeNames(sub)) needed.Add(name);
        }
        var nodes = Graph.Node.Where(keep.Contains).ToList();
        Graph.Node.Clear(); Graph.Node.AddRange(nodes);
        var inits = Graph.Initializer.Where(t => needed.Contains(t.Name)).ToList();
        Graph.Initializer.Clear(); Graph.Initializer.AddRange(inits);
        var infos = Graph.ValueInfo.Where(v => needed.Contains(v.Name)).ToList();
        Graph.ValueInfo.Clear(); Graph.ValueInfo.AddRange(infos);
        Changed();
    }

    /// <summary>Names a subgraph reads from the enclosing scope (so Cleanup keeps their producers).</summary>
    static IEnumerable<string> OuterScopeNames(GraphProto g)
    {
        var local = new HashSet<string>(g.Input.Select(i => i.Name).Concat(g.Initializer.Select(t => t.Name)).Concat(g.Node.SelectMany(n => n.Output)));
        foreach (var n in g.Node)
        {
            foreach (var i in n.Input) if (!local.Contains(i)) yield return i;
            foreach (var sub in n.Attribute.Where(a => a.G is not null).Select(a => a.G))
                foreach (var name in OuterScopeNames(sub)) if (!local.Contains(name)) yield return name;
        }
    }

    /// <summary>Kahn's algorithm, stable: nodes keep their relative order where dependencies allow.</summary>
    public void TopologicalSort()
    {
        var available = new HashSet<string>(Graph.Input.Select(i => i.Name).Concat(Graph.Initializer.Select(t => t.Name))) { "" };
        var pending = Graph.Node.ToList();
        var sorted = new List<NodeProto>(pending.Count);
        var produced = new HashSet<string>(pending.SelectMany(n => n.Output));
        while (pending.Count > 0)
        {
            var ready = pending.Where(n => n.Input.All(i => available.Contains(i) || !produced.Contains(i))).ToList();
            if (ready.Count == 0) throw new OrtLoraException($"graph '{Graph.Name}' has a cycle through node '{pending[0].Name}'");
            var readySet = new HashSet<NodeProto>(ready);
            foreach (var n in ready) { sorted.Add(n); foreach (var o in n.Output) available.Add(o); }
            pending = pending.Where(n => !readySet.Contains(n)).ToList();
        }
        Graph.Node.Clear(); Graph.Node.AddRange(sorted);
        Changed();
    }

    /// <summary>Op type → count, e.g. to show that merge restored the original topology.</summary>
    public static SortedDictionary<string, int> OpHistogram(GraphProto g)
    {
        var h = new SortedDictionary<string, int>();
        foreach (var n in g.Node) h[n.OpType] = h.GetValueOrDefault(n.OpType) + 1;
        return h;
    }
}
