using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>Adds LoRA adapters to an exported model: for each targeted linear layer y = x·W (+ b) becomes
/// y = x·W (+ b) + scale·(x·Aᵀ)·Bᵀ, with A [r, in] and B [out, r] float32 initializers under PEFT's key names
/// (the trainer updates them in that layout) and the scale a named scalar initializer.</summary>
public static class LoraInjector
{
    /// <summary>One adapter to add: A and B values and, for one part of a fused layer, which output columns it covers.</summary>
    /// <param name="Bias">lora_bias: B's bias [Size], or null</param>
    sealed record PartPlan(string KeyA, float[] A, string KeyB, float[] B, long Size, LoraPart? Part, float[]? Bias = null);
    /// <param name="Dora">DoRA's m [out] and ‖W‖² per output feature, null for plain LoRA</param>
    /// <param name="Residual">A and B come from W (PiSSA, OLoRA): the weight becomes the residual and the initial A, B are kept</param>
    sealed record Plan(LinearLayer Layer, string PeftPath, int R, double Scale, List<PartPlan> Parts,
        (float[] Magnitude, float[] WeightNormSquared)? Dora = null, bool Residual = false);

    /// <summary>Injects fresh adapters chosen by <paramref name="config"/> (A random, B zero: outputs unchanged).</summary>
    public static LoraModel Inject(OnnxModel model, LoraConfig config) => Apply(model, config, peft: null);

    /// <summary>Injects exactly the adapter of a PEFT directory (its r, lora_alpha, targets and values).</summary>
    public static LoraModel Inject(OnnxModel model, PeftAdapter adapter) => Apply(model, adapter.Config, adapter);

    static LoraModel Apply(OnnxModel model, LoraConfig config, PeftAdapter? peft)
    {
        if (LoraModel.Read(model) is not null)
            throw new OrtLoraException($"{model.Source}: the model already has LoRA adapters (merge them first)");
        MatMulNBitsForm.ToQdq(model); // ONNX Runtime's int4 layers as DequantizeLinear + MatMul, which inject and autodiff read
        var g = new GraphEditor(model.Graph);
        var layers = LinearLayers.Find(g);
        if (layers.Count == 0 && model.Graph.Node.FirstOrDefault(HasLinearSubgraph) is { } branching)
            throw new OrtLoraException($"{model.Source}: the linear layers are inside the subgraphs of {branching.OpType} node '{branching.Name}' " +
                "(an Optimum merged decoder, decoder_model_merged.onnx?); export without merging (optimum-cli export onnx without --legacy gives model.onnx) and inject that");
        if (layers.Count == 0) throw new OrtLoraException($"{model.Source}: no linear layer (MatMul/Gemm with a 2-D weight initializer) found");
        var prefix = ModuleNames.WrapperPrefix(layers.Select(l => l.Module).ToList());
        var layerBiases = TrainedBiases.OfLayers(g, layers); // before the LoRA Adds sit between the MatMuls and their biases
        var biasValues = new Dictionary<NodeProto, string>(ReferenceEqualityComparer.Instance); // lora_bias merges there
        foreach (var layer in layers) if (TrainedBiases.ValueOf(g, layer.Node) is { } value) biasValues[layer.Node] = value;
        var embeddings = LinearLayers.Embeddings(g);
        var plans = peft is null ? PlanFresh(model, g, config, layers, embeddings, prefix) : PlanFromPeft(model, g, peft, [.. layers, .. embeddings], prefix);
        var adapters = new List<LoraAdapter>();
        var added = new Dictionary<NodeProto, List<NodeProto>>();
        foreach (var p in plans)
        {
            var (nodes, entries) = Emit(g, p, model.Opset(), biasValues.GetValueOrDefault(p.Layer.Node));
            added[p.Layer.Node] = nodes;
            adapters.AddRange(entries);
        }
        var ordered = new List<NodeProto>(model.Graph.Node.Count + added.Values.Sum(n => n.Count));
        foreach (var n in model.Graph.Node)
        {
            ordered.Add(n);
            if (added.TryGetValue(n, out var extra)) ordered.AddRange(extra);
        }
        model.Graph.Node.Clear();
        model.Graph.Node.AddRange(ordered);
        // PiSSA, OLoRA: the base weight becomes W − scale·B·A (written when the model is saved or read, in W's layout and type).
        foreach (var p in plans.Where(p => p.Residual))
        {
            var weight = g.Initializer(p.Layer.Weight)!;
            var principal = new LayerAdapter(p.PeftPath, p.R, p.Layer.In, p.Layer.Out, p.Scale, p.Parts[0].A, p.Parts[0].B, []);
            int dataType = weight.DataType;
            var layout = p.Layer.Layout;
            model.Defer(weight.Name, bytes => LoraMerger.AddDelta(bytes, dataType, principal, layout, factor: -1));
        }
        var adapted = plans.Select(p => p.Layer.Node).ToHashSet();
        var editor = new GraphEditor(model.Graph); // a fresh index: the LoRA branches renamed the layers' outputs
        var saved = ModulesToSave.Apply(model, editor, config.ModulesToSave, layers, prefix, adapted, peft?.Tensors, peft?.WeightsPath,
            config.EnsureWeightTying);
        var tokens = TrainableTokens.Apply(model, editor, config.TrainableTokenIndices, layers, prefix, adapted, saved, peft?.Tensors, peft?.WeightsPath);
        // PEFT's ModulesToSaveWrapper copies the whole module: a saved linear layer's bias trains with its weight
        var savedBiases = layers.Where(l => saved.Any(s => s.Kind == "linear" && s.Module == ModuleNames.Strip(l.Module, prefix)))
            .Select(l => TrainedBiases.ForSavedModule(model, editor, l.Node, ModuleNames.Strip(l.Module, prefix), peft?.Tensors, peft?.WeightsPath))
            .OfType<TrainedBias>().ToList();
        var biases = savedBiases.Concat(TrainedBiases.Apply(model, editor, config.Bias, layerBiases, layers, adapted, prefix, peft?.Tensors, peft?.WeightsPath, savedBiases)).ToList();
        var lora = new LoraModel { Config = config, Adapters = adapters, SavedModules = saved, TrainableTokens = tokens, TrainedBiases = biases };
        lora.Write(model.Proto);
        return lora;
    }

    static bool HasLinearSubgraph(NodeProto node) => node.Attribute.Any(a =>
        (a.G is { } g ? [g] : a.Graphs.ToList()).Any(sub => sub.Node.Any(n => n.OpType is "MatMul" or "Gemm" || HasLinearSubgraph(n))));

    static List<Plan> PlanFresh(OnnxModel model, GraphEditor g, LoraConfig config, List<LinearLayer> layers, List<LinearLayer> embeddings, string prefix)
    {
        if (config.TargetModules.Count == 0)
            config.TargetModules = ModuleNames.DefaultTargets(layers.Select(l => ModuleNames.Strip(l.Module, prefix)))
                ?? throw new OrtLoraException($"{model.Source}: no layer has a name PEFT targets by default; choose --target-modules (e.g. all-linear)");
        if (config.R < 1) throw new OrtLoraException($"r must be at least 1 (got {config.R})");
        if (config.Variant is not ("performant" or "canonical")) throw new OrtLoraException($"unknown variant '{config.Variant}' (use performant or canonical)");
        var rng = new Random(config.Seed);
        if (config.Init == "loftq") WeightQuantizer.Prepare(model, config.LoftqBits, config.LoftqBlockSize);
        var plans = new List<Plan>();
        foreach (var layer in layers.Concat(embeddings))
        {
            var path = ModuleNames.Strip(layer.Module, prefix);
            // As the head, an embedding is only adapted when named: PEFT's all-linear takes linear layers only.
            if (!config.Selects(path, layer.IsOutputHead || layer.Tied || layer.Embedding)) continue;
            if (plans.FirstOrDefault(p => p.PeftPath == path) is { } twice)
                throw new OrtLoraException($"{model.Source}: module '{path}' is applied by several nodes ('{twice.Layer.Node.Name}', '{layer.Node.Name}'); " +
                    "one adapter cannot be merged into weights shared between calls; target other modules");
            int r = config.RankFor(path);
            if (layer.Embedding) { plans.Add(EmbeddingPlan(model, g, config, layer, path, r, rng)); continue; }
            if (config.LoraBias) RequireLoraBias(model, config, path);
            var sizes = config.Variant == "canonical" && layer.Parts is { } parts ? parts : [(int)layer.Out];
            var partPlans = new List<PartPlan>();
            long offset = 0;
            for (int i = 0; i < sizes.Length; i++)
            {
                var suffix = sizes.Length > 1 ? $".part{i}" : null;
                var part = sizes.Length > 1 ? new LoraPart(i, sizes.Length, offset, sizes[i]) : null;
                partPlans.Add(new PartPlan(ModuleNames.LoraAKey(path, suffix), LoraInit.A(rng, config.Init, r, layer.In),
                    ModuleNames.LoraBKey(path, suffix), new float[sizes[i] * r], sizes[i], part, config.LoraBias ? new float[sizes[i]] : null));
                offset += sizes[i];
            }
            bool residual = ResidualInit.Applies(config.Init);
            if (config.Init == "corda") ResidualInit.Require(model, g, layer, path, config, partPlans.Count); // its residual is made when training starts
            var planned = layer;
            if (residual)
            {
                var (a, b) = ResidualInit.ForLayer(model, g, layer, path, config, r, config.ScaleFor(path, r), partPlans.Count, rng);
                partPlans[0] = partPlans[0] with { A = a, B = b };
            }
            else if (config.Init == "loftq")
            {
                var (a, b, quantized) = Loftq.ForLayer(model, g, layer, path, config, r, config.ScaleFor(path, r), partPlans.Count, rng);
                partPlans[0] = partPlans[0] with { A = a, B = b };
                planned = quantized;
            }
            else if (config.Init == "orthogonal")
            {
                if (r % 2 != 0) throw new OrtLoraException($"{model.Source}: init_lora_weights orthogonal on '{path}' needs an even r (got {r})");
                for (int i = 0; i < partPlans.Count; i++)
                {
                    var (a, b) = LoraInit.Orthogonal(rng, r, layer.In, partPlans[i].Size);
                    partPlans[i] = partPlans[i] with { A = a, B = b };
                }
            }
            plans.Add(new Plan(planned, path, r, config.ScaleFor(path, r), partPlans,
                config.UseDora ? Lora.Dora.InitialMagnitude(model, g, layer, path, config, partPlans.Count) : null, residual));
        }
        if (plans.Count == 0)
            throw new OrtLoraException($"{model.Source}: no linear layer matches target_modules [{string.Join(", ", config.TargetModules)}]" +
                (config.ExcludeModules.Count > 0 ? $" without exclude_modules [{string.Join(", ", config.ExcludeModules)}]" : "") +
                (config.LayersToTransform.Count > 0 ? $" in layers_to_transform [{string.Join(", ", config.LayersToTransform)}]" +
                    (config.LayersPattern.Count > 0 ? $" (layers_pattern {string.Join(", ", config.LayersPattern)})" : "") : "") + "; " +
                $"its linear layers are named: {string.Join(", ", layers.Select(l => ModuleNames.LastSegment(l.Module)).Distinct())}" +
                (embeddings.Count > 0 ? $"; its embeddings: {string.Join(", ", embeddings.Select(l => ModuleNames.LastSegment(l.Module)).Distinct())}" : ""));
        return plans;
    }

    /// <summary>PEFT's LoRA on nn.Embedding: A [r, vocabulary] starts at zero and B [hidden, r] from N(0, 1), the other
    /// way round from a linear layer (PEFT does so for every init but loftq, PiSSA's and OLoRA's included). With DoRA,
    /// m [hidden] starts at the norm of each of the table's columns (PEFT's DoraEmbeddingLayer: the table as a linear
    /// layer's [out, in] weight is its transpose).</summary>
    static Plan EmbeddingPlan(OnnxModel model, GraphEditor g, LoraConfig config, LinearLayer layer, string path, int r, Random rng)
    {
        if (config.LoraBias)
            throw new OrtLoraException($"{model.Source}: module '{path}' is an embedding, and lora_bias is for linear layers (PEFT refuses it on embeddings too); leave it out of target_modules");
        if (config.Init == "loftq")
            throw new OrtLoraException($"{model.Source}: module '{path}' is an embedding, and LoftQ quantizes linear layers only; leave it out of target_modules");
        var b = new float[layer.Out * r];
        for (int i = 0; i < b.Length; i++) b[i] = (float)LoraInit.Normal(rng);
        return new Plan(layer, path, r, config.ScaleFor(path, r),
            [new PartPlan(ModuleNames.LoraEmbeddingAKey(path), new float[r * layer.In], ModuleNames.LoraEmbeddingBKey(path), b, layer.Out, null)],
            config.UseDora ? Lora.Dora.InitialMagnitude(model, g, layer, path, config, parts: 1) : null);
    }

    /// <summary>lora_bias goes with plain LoRA on a model whose biases stay as they are.</summary>
    static void RequireLoraBias(OnnxModel model, LoraConfig config, string path)
    {
        string? why = config.UseDora ? "DoRA" : config.Bias != "none" ? $"bias '{config.Bias}' (both would train the layer's bias)"
            : GenAiNames.Applies(model.Graph) ? "an ORT GenAI builder export (its packed biases have no PEFT key)" : null;
        if (why is not null) throw new OrtLoraException($"{model.Source}: lora_bias on '{path}' does not go with {why}");
    }

    static List<Plan> PlanFromPeft(OnnxModel model, GraphEditor g, PeftAdapter adapter, List<LinearLayer> layers, string prefix)
    {
        var plans = new List<Plan>();
        var taken = new Dictionary<LinearLayer, string>();
        // ORT GenAI builder exports name attention attn.* and pack q, k, v into attn.qkv_proj (GenAiNames).
        bool genAi = GenAiNames.Applies(model.Graph);
        var packed = new Dictionary<LinearLayer, PeftAdapter.Module?[]>();
        List<LinearLayer> Matching(string path) => layers.Where(l => l.Module == path || l.Module.EndsWith("." + path)).ToList();
        foreach (var m in adapter.Modules())
        {
            // The adapter's module path is relative to the Hugging Face model; the graph's may carry a wrapper prefix.
            var matches = Matching(m.Path);
            if (matches.Count == 0 && genAi)
            {
                var builderPath = GenAiNames.FromPeft(m.Path);
                matches = Matching(builderPath);
                if (matches.Count == 0 && GenAiNames.PackedPart(builderPath) is var (packedPath, part)
                    && Matching(packedPath) is [{ Parts.Length: 3 } fused])
                {
                    if (m.M is not null) throw new OrtLoraException($"{adapter.WeightsPath}: '{m.Path}' is a DoRA module and {model.Source} packs it into '{fused.Module}'; DoRA on packed q, k, v is not supported");
                    (packed.TryGetValue(fused, out var parts) ? parts : packed[fused] = new PeftAdapter.Module?[3])[part] = m;
                    continue;
                }
            }
            if (matches.Count == 0)
                throw new OrtLoraException($"{adapter.WeightsPath}: tensor '{m.KeyA}': no linear layer '{m.Path}' in {model.Source}");
            if (matches.Count > 1)
                throw new OrtLoraException($"{adapter.WeightsPath}: tensor '{m.KeyA}' matches several layers in {model.Source}: {string.Join(", ", matches.Select(l => l.Module))}");
            var layer = matches[0];
            if (taken.TryGetValue(layer, out var other))
                throw new OrtLoraException($"{adapter.WeightsPath}: tensors '{other}' and '{m.KeyA}' adapt the same layer '{layer.Module}'");
            taken[layer] = m.KeyA;
            if (m.Embedding != layer.Embedding)
                throw new OrtLoraException($"{adapter.WeightsPath}: tensor '{m.KeyA}' is {(m.Embedding ? "an embedding's" : "a linear layer's")} adapter, " +
                    $"but '{layer.Module}' in {model.Source} is {(layer.Embedding ? "an embedding" : "a linear layer")}");
            CheckShape(adapter, model, m.KeyA, m.A.Shape, [m.A.Shape[0], layer.In]);
            CheckShape(adapter, model, m.KeyB, m.B.Shape, [layer.Out, m.A.Shape[0]]);
            int r = (int)m.A.Shape[0];
            var path = ModuleNames.Strip(layer.Module, prefix);
            if (m.M is not null) Lora.Dora.RequireSupported(model, layer, path, adapter.Config, parts: 1);
            // Keys read with PEFT's ".default" are named as ortlora names them, which training and export recognize.
            var (keyA, keyB) = m.Embedding ? (ModuleNames.LoraEmbeddingAKey(path), ModuleNames.LoraEmbeddingBKey(path)) : (m.KeyA, m.KeyB);
            if (m.Bias is not null) { RequireLoraBias(model, adapter.Config, path); CheckShape(adapter, model, ModuleNames.LoraBiasKey(m.Path), m.Bias.Shape, [layer.Out]); }
            plans.Add(new Plan(layer, path, r, adapter.Config.ScaleFor(m.Path, r),
                [new PartPlan(keyA, m.A.AsFloats(), keyB, m.B.AsFloats(), layer.Out, null, m.Bias?.AsFloats())],
                m.M is null ? null : (m.M.AsFloats(), Lora.Dora.WeightNormSquared(model, g, layer))));
        }
        foreach (var (layer, parts) in packed) plans.Add(PackedPlan(model, adapter, layer, ModuleNames.Strip(layer.Module, prefix), parts));
        return plans.OrderBy(p => layers.IndexOf(p.Layer)).ToList();
    }

    /// <summary>q_proj, k_proj, v_proj adapters of a PEFT adapter on a packed qkv_proj: one adapter per part (canonical),
    /// a part the adapter lacks as zeros (A and B zero stay zero in training, and export leaves them out again).</summary>
    static Plan PackedPlan(OnnxModel model, PeftAdapter adapter, LinearLayer layer, string path, PeftAdapter.Module?[] parts)
    {
        var given = parts.OfType<PeftAdapter.Module>().ToList();
        var ranks = given.Select(m => (int)m.A.Shape[0]).Distinct().ToList();
        var scales = given.Select(m => adapter.Config.ScaleFor(m.Path, (int)m.A.Shape[0])).Distinct().ToList();
        if (ranks.Count > 1 || scales.Count > 1)
            throw new OrtLoraException($"{adapter.WeightsPath}: {string.Join(", ", given.Select(m => m.Path))} have different ranks or scales, and {model.Source} packs them into '{layer.Module}'");
        int r = ranks[0];
        var plans = new List<PartPlan>();
        long offset = 0;
        for (int i = 0; i < 3; offset += layer.Parts![i], i++)
        {
            long size = layer.Parts![i];
            var part = new LoraPart(i, 3, offset, size);
            string keyA = ModuleNames.LoraAKey(path, $".part{i}"), keyB = ModuleNames.LoraBKey(path, $".part{i}");
            if (parts[i] is not { } m) { plans.Add(new PartPlan(keyA, new float[r * layer.In], keyB, new float[size * r], size, part)); continue; }
            CheckShape(adapter, model, m.KeyA, m.A.Shape, [r, layer.In]);
            CheckShape(adapter, model, m.KeyB, m.B.Shape, [size, r]);
            plans.Add(new PartPlan(keyA, m.A.AsFloats(), keyB, m.B.AsFloats(), size, part));
        }
        return new Plan(layer, path, r, scales[0], plans);
    }

    static void CheckShape(PeftAdapter adapter, OnnxModel model, string key, long[] actual, long[] expected)
    {
        if (!actual.SequenceEqual(expected))
            throw new OrtLoraException($"{adapter.WeightsPath}: tensor '{key}' has shape [{string.Join(", ", actual)}] but " +
                $"the layer in {model.Source} needs [{string.Join(", ", expected)}]");
    }

    /// <summary>B's bias key beside B's: base_model.model.PATH[.partI].lora_B.bias.</summary>
    static string BiasKey(PartPlan part) => System.Text.RegularExpressions.Regex.Replace(part.KeyB, @"\.lora_B(\.default)?\.weight$", ".lora_B.bias");

    /// <summary>The nodes of one layer's LoRA branch, in order, and the metadata entry of each part.</summary>
    /// <param name="baseBias">the value the layer adds as its bias (lora_bias merges into it), or null</param>
    static (List<NodeProto> Nodes, List<LoraAdapter> Entries) Emit(GraphEditor g, Plan p, int opset, string? baseBias)
    {
        var layer = p.Layer;
        if (string.IsNullOrEmpty(layer.Node.Name)) layer.Node.Name = g.Unique($"{p.PeftPath}/{layer.Node.OpType}");
        var nodes = new List<NodeProto>();
        string Node(string op, string name, string[] inputs, params (string, object)[] attrs)
        {
            var n = new NodeProto { OpType = op, Name = g.Unique($"{p.PeftPath}/lora/{name}") };
            n.Input.AddRange(inputs);
            n.Output.Add(g.Unique(n.Name + "_output"));
            foreach (var (k, v) in attrs) n.Attribute.Add(Attrs.Make(k, v));
            nodes.Add(n);
            return n.Output[0];
        }
        bool isFloat = layer.DataType == (int)DT.Float;
        var x = isFloat || layer.Embedding ? layer.Input : Node("Cast", "Cast_x", [layer.Input], ("to", (int)DT.Float));
        var partOutputs = new List<string>();
        foreach (var part in p.Parts)
        {
            var tag = part.Part is { } pp ? $"part{pp.Index}/" : "";
            g.AddInitializer(Tensors.FromFloats(part.KeyA, [p.R, layer.In], part.A));
            g.AddInitializer(Tensors.FromFloats(part.KeyB, [part.Size, p.R], part.B));
            var aT = Node("Transpose", tag + "lora_A/Transpose", [part.KeyA], ("perm", new long[] { 1, 0 }));
            // An embedding's x·Aᵀ is onehot(ids)·Aᵀ: the ids' rows of Aᵀ (PEFT's F.embedding(x, A.T)).
            var h = layer.Embedding ? Node("Gather", tag + "lora_A/Gather", [aT, x]) : Node("MatMul", tag + "lora_A/MatMul", [x, aT]);
            var bT = Node("Transpose", tag + "lora_B/Transpose", [part.KeyB], ("perm", new long[] { 1, 0 }));
            var bh = Node("MatMul", tag + "lora_B/MatMul", [h, bT]);
            if (part.Bias is not null)
            {
                // PEFT's lora_B is an nn.Linear with a bias: it is added before the scale.
                g.AddInitializer(Tensors.FromFloats(BiasKey(part), [part.Size], part.Bias));
                bh = Node("Add", tag + "lora_B/Add", [bh, BiasKey(part)]);
            }
            partOutputs.Add(bh);
        }
        var delta = partOutputs.Count == 1 ? partOutputs[0] : Node("Concat", "Concat", partOutputs.ToArray(), ("axis", -1L));
        var scaleName = g.Unique($"{ModuleNames.PeftKeyPrefix}{p.PeftPath}.lora_scaling");
        g.AddInitializer(Tensors.Scalar(scaleName, p.Scale, (int)DT.Float));
        var scaled = Node("Mul", "Mul", [delta, scaleName]);
        // The base node now writes a fresh name; the LoRA Add takes over the original, so consumers and graph
        // outputs keep reading the same value name.
        var output = layer.Output;
        var baseOutput = g.Unique(output + "_base");
        layer.Node.Output[0] = baseOutput;
        string? magnitude = null, weightNorm = null, initialA = null, initialB = null;
        if (p.Residual)
        {
            // The initial factors, for exporting to PEFT relative to the original weight (PEFT's pissa conversion).
            initialA = g.AddInitializer(Tensors.FromFloats(g.Unique(p.Parts[0].KeyA + ".pissa_init"), [p.R, layer.In], p.Parts[0].A));
            initialB = g.AddInitializer(Tensors.FromFloats(g.Unique(p.Parts[0].KeyB + ".pissa_init"), [layer.Out, p.R], p.Parts[0].B));
        }
        if (p.Dora is var (m, squares))
        {
            magnitude = ModuleNames.MagnitudeKey(p.PeftPath);
            g.AddInitializer(Tensors.FromFloats(magnitude, [layer.Out], m));
            var squaresName = g.AddInitializer(Tensors.FromFloats(g.Unique(magnitude + ".weight_norm_squared"), [layer.Out], squares));
            (scaled, weightNorm) = Dora.Emit(g, layer, opset, p.Parts[0].KeyA, p.Parts[0].KeyB, scaleName, magnitude, squaresName,
                isFloat ? baseOutput : Node("Cast", "dora/Cast_base", [baseOutput], ("to", (int)DT.Float)), scaled,
                (op, name, inputs, attrs) => Node(op, "dora/" + name, inputs, attrs));
        }
        if (!isFloat) scaled = Node("Cast", "Cast_y", [scaled], ("to", layer.DataType));
        Node("Add", "Add", [baseOutput, scaled]);
        nodes[^1].Output[0] = output;
        var names = nodes.Select(n => n.Name).ToList();
        var entries = p.Parts.Select(part => new LoraAdapter
        {
            Module = p.PeftPath, LoraA = part.KeyA, LoraB = part.KeyB, R = p.R, Scale = p.Scale, ScaleName = scaleName,
            BaseWeight = layer.Weight, Layout = layer.Layout, In = layer.In, Out = layer.Out, GemmAlpha = layer.GemmAlpha,
            Part = part.Part, Embedding = layer.Embedding, LoraBias = part.Bias is null ? null : BiasKey(part), BaseBias = part.Bias is null ? null : baseBias,
            Node = layer.Node.Name, BaseOutput = baseOutput, Output = output, Nodes = names,
            Magnitude = magnitude, WeightNorm = weightNorm, InitialA = initialA, InitialB = initialB,
        }).ToList();
        return (nodes, entries);
    }
}
