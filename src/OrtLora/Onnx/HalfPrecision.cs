using System.Runtime.InteropServices;
using Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Onnx;

/// <summary>What <see cref="HalfPrecision.Apply"/> did: nodes computing in half and in float32 on the activation
/// path, Casts added, constants stored in half and their size in half.</summary>
public sealed record HalfPrecisionReport(int HalfNodes, int Float32Nodes, int Casts, int ConvertedTensors, long ConvertedBytes);

/// <summary>Turns a float32 model into one that computes in float16 or bfloat16 the way PyTorch runs a model loaded in
/// that dtype under autocast, with the model's interface unchanged (declared input and output types).
/// <list type="bullet">
/// <item>Activations are the values computed from the token embeddings (a Gather from a constant table) or from a float
/// graph input other than a mask. Only nodes that read an activation change; masks, rotary tables and shape
/// arithmetic, computed from integer inputs, stay float32 (Hugging Face computes rotary embeddings in float32 too).</item>
/// <item>Rotary tables (values computed off the activation path from a Cos or Sin) are then stored in half, once, where
/// a layout op (each layer's Unsqueeze) or the activation path first reads them: Hugging Face's rotary embedding returns
/// <c>cos.to(x.dtype)</c>, so q and k rotate in half; keeping the tables float32 would promote the rotation to float32
/// and cost q and k a round trip through float32 in every layer, with the matching casts in the backward.</item>
/// <item>On the activation path MatMul, Gemm, Conv, Einsum and Attention compute in half (autocast's lower-precision
/// list); the reductions, Softmax, LogSoftmax, Pow, Sqrt, Reciprocal, Exp, Log, CumSum and the normalization ops in
/// float32 (autocast's float32 list; LlamaRMSNorm and eager attention's softmax upcast the same way, and a sum of
/// squares overflows float16 early); any other op in float32 when one of its non-constant float inputs is float32
/// (type promotion: the rotary products, the mask addition), else in half.</item>
/// <item>Constants (initializers, Constant nodes) and graph inputs take the type of the node reading them, as Python
/// scalars do in PyTorch; one read in both types is stored in both. Converted values saturate at the half type's
/// largest finite value, so float32's minimum in a mask becomes -65504 (torch.finfo(float16).min), not -inf.</item>
/// <item>Nodes in <c>float32Nodes</c> (the LoRA branches) compute in float32 from their float32 parameters, and their
/// outputs take the reader's type: PEFT's autocast_adapter_dtype (x cast to the adapter's dtype, the result back to the
/// base's).</item>
/// <item>A float32 Cast on the activation path keeps its input's type: in a float32 export it is a no-op or Hugging
/// Face's upcast, which the float32 list already covers.</item>
/// </list></summary>
public static class HalfPrecision
{
    const int F32 = (int)DT.Float;
    static readonly HashSet<string> HalfOps = ["MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum", "Attention"];
    static readonly HashSet<string> Float32Ops = ["Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceSumSquare",
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "Pow", "Sqrt", "Reciprocal", "Exp", "Log",
        "CumSum", "LayerNormalization", "RMSNormalization", "GroupNormalization", "InstanceNormalization", "BatchNormalization",
        // not for its arithmetic (it has none) but for its gradient, a scatter-add, which ONNX Runtime's CPU provider
        // has no float16 kernel for (a sequence classifier's pooling)
        "GatherND"];
    /// <summary>Ops that move data without computing: on constants only (a transposed weight) they form constant
    /// expressions, which follow their readers' type like the constants themselves. DequantizeLinear too, in float16 from
    /// opset 19 (before, its scale is float32 only; CUDA has no bfloat16 scale): its output takes its scale's type, so a
    /// weight stored quantized dequantizes straight into half. Otherwise it dequantizes to float32 and its reader casts.</summary>
    static readonly HashSet<string> LayoutOps = ["Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten",
        "Expand", "Slice", "Concat", "Split", "Gather", "Tile", "DequantizeLinear"];
    /// <summary>Inputs left in their own type: read for their shape only, or typed apart from the data by the schema.</summary>
    static readonly Dictionary<string, int[]> OwnTypeInputs = new() { ["Shape"] = [0], ["Size"] = [0], ["Resize"] = [1, 2], ["Dropout"] = [1] };

    public static string Suffix(int half) => half == (int)DT.Float16 ? "fp16" : "bf16";

    /// <summary>Rewrites <paramref name="model"/> in place. Its initializers are inline, or <paramref name="read"/> gives
    /// the bytes of those that are not (<see cref="OnnxModel.ReadIfNotInline"/>): each is then read once, when it is
    /// converted, so a large model is never held in float32 whole; those that stay float32 stay as they are.</summary>
    public static HalfPrecisionReport Apply(ModelProto model, int half, IReadOnlySet<string> float32Nodes, Func<TensorProto, byte[]?>? read = null)
    {
        if (half is not ((int)DT.Float16 or (int)DT.Bfloat16)) throw new ArgumentException($"not a half type: {(DT)half}");
        int opset = model.OpsetImport.Where(o => o.Domain is "" or "ai.onnx").Select(o => (int)o.Version).DefaultIfEmpty(0).Max();
        return new Pass(model.Graph, half, float32Nodes, halfScales: opset >= 19 && half == (int)DT.Float16, read).Run();
    }

    /// <summary>The largest finite value of <paramref name="half"/>; float32 values beyond it saturate.</summary>
    public static float MaxFinite(int half) => half == (int)DT.Float16 ? (float)Half.MaxValue : BitConverter.Int32BitsToSingle(0x7F7F0000);

    sealed class Pass(GraphProto g, int half, IReadOnlySet<string> float32Nodes, bool halfScales, Func<TensorProto, byte[]?>? read)
    {
        sealed class ConstantUse { public bool Float32; public readonly List<(NodeProto Node, int Input)> Half = new(); }

        readonly GraphEditor _editor = new(g);
        readonly Dictionary<string, int> _original = new(), _now = new();
        readonly HashSet<string> _activations = new(), _weak = new(), _constants = new(), _tables = new();
        readonly Dictionary<string, ConstantUse> _constantUses = new();
        readonly Dictionary<(string, int), string> _casts = new();
        readonly List<NodeProto> _nodes = new(), _constantExpressions = new();
        int _halfNodes, _floatNodes, _converted;
        long _convertedBytes;

        public HalfPrecisionReport Run()
        {
            if (g.Node.FirstOrDefault(n => n.Attribute.Any(a => a.G is not null || a.Graphs.Count > 0)) is { } control)
                throw new OrtLoraException($"node '{control.Name}' ({control.OpType}) has subgraphs; half-precision compute converts graphs without control flow");
            var inputs = new HashSet<string>(g.Input.Select(i => i.Name));
            foreach (var t in g.Initializer.Where(t => !inputs.Contains(t.Name)))
            {
                _original[t.Name] = _now[t.Name] = t.DataType;
                _constants.Add(t.Name);
                _weak.Add(t.Name);
            }
            foreach (var i in g.Input)
            {
                int type = i.Type?.TensorType?.ElemType ?? 0;
                _original[i.Name] = _now[i.Name] = type;
                // A float mask stays float32 data, as an integer mask cast to float is; other float inputs (a past
                // cache, inputs_embeds) are activations that take their reader's type.
                if (type == F32 && !i.Name.Contains("mask")) { _weak.Add(i.Name); _activations.Add(i.Name); }
            }
            foreach (var n in g.Node.ToList()) Visit(n);
            foreach (var o in g.Output) if (_constants.Contains(o.Name)) Use(o.Name).Float32 = true;
            KeepOutputTypes();
            StoreConstants();
            g.Node.Clear();
            g.Node.AddRange(_nodes);
            foreach (var v in g.ValueInfo)
                if (v.Type?.TensorType is { } t && _now.TryGetValue(v.Name, out var now) && IsConvertible(t.ElemType)) t.ElemType = now;
            return new HalfPrecisionReport(_halfNodes, _floatNodes, _casts.Count, _converted, _convertedBytes);
        }

        bool IsConvertible(int type) => type == F32 || type == half;
        ConstantUse Use(string constant) => _constantUses.TryGetValue(constant, out var u) ? u : _constantUses[constant] = new();

        void Visit(NodeProto n)
        {
            var types = ElementTypes.Outputs(n, v => _original.GetValueOrDefault(v));
            for (int i = 0; i < n.Output.Count; i++) if (n.Output[i] != "") _original[n.Output[i]] = types[i];
            if (n.OpType == "Constant") { _constants.Add(n.Output[0]); _weak.Add(n.Output[0]); }
            bool branch = float32Nodes.Contains(n.Name);
            if (!branch && LayoutOps.Contains(n.OpType) && (n.OpType != "DequantizeLinear" || halfScales) && n.Input.All(v => v == "" || _constants.Contains(v))
                && n.Input.Any(v => v != "" && _original[v] == F32))
            {
                // Typed later (StoreConstants), once every reader has asked for its type.
                foreach (var o in n.Output.Where(o => o != "")) { _now[o] = _original[o]; _constants.Add(o); _weak.Add(o); }
                _constantExpressions.Add(n);
                _nodes.Add(n);
                return;
            }
            if (!branch && !n.Input.Any(_activations.Contains) && !IsEmbeddingLookup(n))
            {
                // Off the activation path: unchanged, in float32, except that a layout op moves a rotary table in half.
                bool table = n.OpType is "Cos" or "Sin" || n.Input.Any(_tables.Contains);
                // (a layout op that also moves other float32 data, a table concatenated with positions, stays float32)
                bool layout = table && LayoutOps.Contains(n.OpType) && n.Input.All(v => v == "" || _tables.Contains(v) || _original[v] != F32);
                for (int i = 0; i < n.Input.Count; i++)
                {
                    var v = n.Input[i];
                    if (_constants.Contains(v) && _original[v] == F32) Use(v).Float32 = true;
                    if (!_tables.Contains(v)) continue;
                    if (layout && _now[v] == F32) n.Input[i] = CastTo(v, half);
                    else if (!layout && _now[v] == half) n.Input[i] = CastTo(v, F32);
                }
                foreach (var o in n.Output.Where(o => o != ""))
                {
                    _now[o] = layout && _original[o] == F32 ? half : _original[o];
                    if (table && _original[o] == F32) _tables.Add(o);
                }
                _nodes.Add(n);
                return;
            }
            int compute = branch || Float32Ops.Contains(n.OpType) ? F32
                : HalfOps.Contains(n.OpType) ? half
                : n.Input.Any(v => v != "" && !_weak.Contains(v) && !_tables.Contains(v) && _now.GetValueOrDefault(v) == F32) ? F32 : half;
            if (n.OpType == "Cast")
            {
                var to = Attrs.Find(n, "to")!;
                if (to.I == F32 && IsConvertible(_now[n.Input[0]])) to.I = _now[n.Input[0]];
                compute = (int)to.I;
            }
            else ConvertInputs(n, compute);
            if (Attrs.Find(n, "dtype") is { } dtype && dtype.I == F32) dtype.I = compute;
            if (compute == F32) _floatNodes++; else if (compute == half) _halfNodes++;
            foreach (var o in n.Output.Where(o => o != ""))
            {
                _now[o] = _original[o] == F32 ? compute : _original[o];
                if (_original[o] != F32) continue;
                _activations.Add(o);
                if (branch) _weak.Add(o);
            }
            _nodes.Add(n);
        }

        void ConvertInputs(NodeProto n, int compute)
        {
            var own = OwnTypeInputs.GetValueOrDefault(n.OpType) ?? [];
            for (int i = 0; i < n.Input.Count; i++)
            {
                var v = n.Input[i];
                if (v == "" || own.Contains(i) || !IsConvertible(_now.GetValueOrDefault(v))) continue;
                if (_constants.Contains(v) && _original[v] == F32)
                {
                    if (compute == F32) Use(v).Float32 = true;
                    else Use(v).Half.Add((n, i));
                }
                else if (_now[v] != compute) n.Input[i] = CastTo(v, compute);
            }
        }

        /// <summary>A token (or position) embedding: the activation path starts at a lookup into a constant float table.</summary>
        bool IsEmbeddingLookup(NodeProto n) => n.OpType == "Gather" && _constants.Contains(n.Input[0]) && _original[n.Input[0]] == F32
            && !_constants.Contains(n.Input[1]);

        /// <summary>The value cast to <paramref name="type"/>: one Cast per value and type, appended to the nodes (or
        /// inserted at <paramref name="at"/>).</summary>
        string CastTo(string value, int type, int? at = null)
        {
            if (_casts.TryGetValue((value, type), out var cast)) return cast;
            var name = _editor.Unique($"{value}/to_{(type == F32 ? "fp32" : Suffix(type))}");
            var node = new NodeProto { OpType = "Cast", Name = name, Input = { value }, Output = { _editor.Unique(name + "_output") } };
            node.Attribute.Add(Attrs.Make("to", (long)type));
            _nodes.Insert(at ?? _nodes.Count, node);
            _now[node.Output[0]] = type;
            return _casts[(value, type)] = node.Output[0];
        }

        /// <summary>Graph outputs keep their declared type: a half value is computed under a new name and cast back.</summary>
        void KeepOutputTypes()
        {
            foreach (var output in g.Output)
            {
                int declared = output.Type?.TensorType?.ElemType ?? 0;
                if (declared == 0) declared = _original.GetValueOrDefault(output.Name);
                if (!_now.TryGetValue(output.Name, out var type) || type == declared || !IsConvertible(type) || _constants.Contains(output.Name)) continue;
                var inner = _editor.Unique($"{output.Name}/{Suffix(half)}");
                foreach (var n in _nodes)
                {
                    for (int i = 0; i < n.Output.Count; i++) if (n.Output[i] == output.Name) n.Output[i] = inner;
                    for (int i = 0; i < n.Input.Count; i++) if (n.Input[i] == output.Name) n.Input[i] = inner;
                }
                var cast = new NodeProto { OpType = "Cast", Name = _editor.Unique(output.Name + "/to_declared"), Input = { inner }, Output = { output.Name } };
                cast.Attribute.Add(Attrs.Make("to", (long)declared));
                _nodes.Add(cast);
                _now[inner] = type;
                _now[output.Name] = declared;
            }
        }

        /// <summary>A constant expression read only in half runs in half from half inputs; one also read in float32 stays
        /// float32 and is cast for its half readers (ONNX Runtime folds that Cast when it loads the model). Then each
        /// constant read in half is converted where it is (read only in half) or stored a second time.</summary>
        void StoreConstants()
        {
            var expressionOutputs = new HashSet<string>();
            for (int k = _constantExpressions.Count - 1; k >= 0; k--)
            {
                var n = _constantExpressions[k];
                var outputs = n.Output.Where(o => o != "" && _original[o] == F32).ToList();
                expressionOutputs.UnionWith(outputs);
                var uses = outputs.Select(o => _constantUses.GetValueOrDefault(o)).OfType<ConstantUse>().ToList();
                bool halfOnly = uses.Any(u => u.Half.Count > 0) && !uses.Any(u => u.Float32);
                for (int i = 0; i < n.Input.Count; i++)
                {
                    if (n.Input[i] == "" || _original[n.Input[i]] != F32) continue;
                    if (halfOnly) Use(n.Input[i]).Half.Add((n, i));
                    else Use(n.Input[i]).Float32 = true;
                }
                foreach (var o in outputs)
                {
                    if (halfOnly) { _now[o] = half; continue; }
                    if (_constantUses.GetValueOrDefault(o) is not { Half.Count: > 0 } use) continue;
                    var cast = CastTo(o, half, at: _nodes.IndexOf(n) + 1);
                    foreach (var (node, input) in use.Half) node.Input[input] = cast;
                }
            }
            var producers = g.Node.Where(n => n.OpType == "Constant").ToDictionary(n => n.Output[0]);
            foreach (var (name, use) in _constantUses)
            {
                if (use.Half.Count == 0 || expressionOutputs.Contains(name)) continue;
                var producer = producers.GetValueOrDefault(name);
                var source = producer is null ? _editor.Initializer(name)! : ConstantTensor(producer);
                var converted = new TensorProto { Name = name, DataType = half };
                converted.Dims.AddRange(source.Dims);
                // One pass from the float32 bytes to the half ones, wrapped, not copied: a billion-parameter model's weights
                // are gigabytes, which each extra copy (or LINQ) turned into seconds.
                var stored = producer is null ? read?.Invoke(source) : null;
                ReadOnlySpan<float> floats = stored is not null ? MemoryMarshal.Cast<byte, float>(stored.AsSpan())
                    : source.HasRawData ? MemoryMarshal.Cast<byte, float>(source.RawData.Span) : Tensors.BytesToFloats(Tensors.InlineBytes(source), F32);
                converted.RawData = Google.Protobuf.UnsafeByteOperations.UnsafeWrap(SaturatedHalf(floats));
                _converted++;
                _convertedBytes += converted.RawData.Length;
                if (!use.Float32)
                {
                    if (producer is null) { source.DataType = half; Tensors.SetRaw(source, converted.RawData); }
                    else { producer.Attribute.Clear(); producer.Attribute.Add(Attrs.Make("value", converted)); }
                    _now[name] = half;
                    continue;
                }
                converted.Name = _editor.Unique($"{name}/{Suffix(half)}");
                g.Initializer.Add(converted);
                foreach (var (node, input) in use.Half) node.Input[input] = converted.Name;
            }
        }

        /// <summary>The values in <c>half</c>, finite ones clamped to its largest finite value (float16 would turn a
        /// float32 weight past 65504 into infinity).</summary>
        byte[] SaturatedHalf(ReadOnlySpan<float> values)
        {
            float max = MaxFinite(half);
            var clamped = new float[values.Length];
            for (int i = 0; i < values.Length; i++) clamped[i] = float.IsFinite(values[i]) ? Math.Clamp(values[i], -max, max) : values[i];
            return Tensors.FloatsToBytes(clamped, half);
        }

        static TensorProto ConstantTensor(NodeProto constant)
        {
            var a = constant.Attribute.Single();
            if (a.T is { } t) return t;
            var floats = a.Name == "value_float" ? [a.F] : a.Floats.ToArray();
            return Tensors.FromFloats(constant.Output[0], a.Name == "value_float" ? [] : [floats.Length], floats);
        }
    }
}
