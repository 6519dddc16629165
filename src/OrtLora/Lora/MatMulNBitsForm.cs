using Google.Protobuf;
using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>ONNX Runtime's MatMulNBits (com.microsoft; what its int4 quantizer writes by default) rewritten as the
/// standard weight-only QDQ form: DequantizeLinear of the integers [K, N] in blocks along K, then MatMul (then the
/// bias). The same numbers: Y = A·dequant(B)ᵀ, where B holds N rows of K integers, block_size to a scale and a zero
/// point (8 when absent, for 4 bits). Everything ortlora does to quantized bases (inject, train, merge, DoRA) then
/// applies, and ONNX Runtime fuses DequantizeLinear + MatMul back into MatMulNBits when it runs the model.</summary>
public static class MatMulNBitsForm
{
    /// <summary>Rewrites every MatMulNBits node; returns how many. Refuses the forms that have no blocked
    /// DequantizeLinear equivalent (g_idx, float zero points, 2 or 3 bits).</summary>
    public static int ToQdq(OnnxModel model)
    {
        var nodes = model.Graph.Node.Where(n => n.OpType == "MatMulNBits" && n.Domain == "com.microsoft").ToList();
        if (nodes.Count == 0) return 0;
        var g = new GraphEditor(model.Graph);
        WeightQuantizer.RaiseToOpset21(model); // uint4 and block_size
        foreach (var node in nodes)
        {
            OrtLoraException Refused(string why) => new($"{model.Source}: MatMulNBits '{node.Name}': {why}");
            long k = Attrs.Int(node, "K", 0), n = Attrs.Int(node, "N", 0), bits = Attrs.Int(node, "bits", 4), block = Attrs.Int(node, "block_size", 0);
            if (bits is not (4 or 8)) throw Refused($"{bits}-bit weights have no standard DequantizeLinear type");
            if (node.Input.Count > 4 && node.Input[4] != "") throw Refused("g_idx (act-order) has no standard form");
            if (k % block != 0) throw Refused($"K={k} is not a whole number of blocks of {block}");
            TensorProto Initializer(int i) => g.Initializer(node.Input[i]) ?? throw Refused($"input {i} ('{node.Input[i]}') is not an initializer");
            var packed = model.ReadBytes(Initializer(1));
            var scales = model.ReadFloats(Initializer(2));
            int scaleType = Initializer(2).DataType;
            long blocks = (k + block - 1) / block;
            if (scales.Length != n * blocks) throw Refused($"{scales.Length} scales for N={n} and {blocks} blocks");
            // Integers as N rows of blocks·block_size values (the last block zero-padded), zero points N rows of blocks.
            int integerType = bits == 4 ? (int)DT.Uint4 : (int)DT.Uint8;
            int[] q = Dequantize.Integers(model.Source, node.Input[1], integerType, n * blocks * block, packed);
            int[] zero;
            if (node.Input.Count > 3 && node.Input[3] != "")
            {
                var z = Initializer(3);
                if (z.DataType != (int)DT.Uint8) throw Refused("float zero points have no integer DequantizeLinear form");
                long perRow = (blocks * bits + 7) / 8; // each row's zero points start on a byte
                var zBytes = model.ReadBytes(z);
                zero = new int[n * blocks];
                for (long row = 0; row < n; row++)
                {
                    var rowValues = Dequantize.Integers(model.Source, z.Name, integerType, blocks, zBytes.AsSpan((int)(row * perRow), (int)perRow).ToArray());
                    Array.Copy(rowValues, 0, zero, row * blocks, blocks);
                }
            }
            else zero = Enumerable.Repeat(1 << (int)(bits - 1), (int)(n * blocks)).ToArray();

            // Transposed to [K, N], blocks along K (axis 0): the layout ONNX Runtime fuses back into MatMulNBits.
            var values = new int[k * n];
            for (long row = 0; row < n; row++)
                for (long col = 0; col < k; col++)
                    values[col * n + row] = q[row * blocks * block + col];
            var zeroKn = new int[blocks * n];
            var scaleKn = new float[blocks * n];
            for (long row = 0; row < n; row++)
                for (long b = 0; b < blocks; b++)
                {
                    zeroKn[b * n + row] = zero[row * blocks + b];
                    scaleKn[b * n + row] = scales[row * blocks + b];
                }
            // ONNX Runtime's quantizer names the node and the weight after the originals plus _Q4: take them back, so the
            // module path reads as before (/model/layers.0/self_attn/q_proj/MatMul).
            string Original(string s) => System.Text.RegularExpressions.Regex.Replace(s, "_Q[48]$", "");
            var name = Original(node.Input[1]);
            g.RemoveNode(node);
            var integers = g.AddInitializer(WeightQuantizer.Integers(g.Unique(name + "_DQ_Q" + bits), [k, n], values, integerType));
            var scale = g.AddInitializer(Tensors.FromFloats(g.Unique(name + "_DQ_scales"), [blocks, n], scaleKn, scaleType));
            var zeros = g.AddInitializer(WeightQuantizer.Integers(g.Unique(name + "_DQ_zero_points"), [blocks, n], zeroKn, integerType));
            var weight = g.Add("DequantizeLinear", [integers, scale, zeros], name: name + "/DequantizeLinear",
                attributes: [("axis", 0L), ("block_size", block)]);
            bool bias = node.Input.Count > 5 && node.Input[5] != "";
            var product = g.Add("MatMul", [node.Input[0], weight], name: Original(node.Name), outputs: bias ? null : [node.Output[0]]);
            if (bias) g.Add("Add", [product, node.Input[5]], name: Original(node.Name) + "/Add", outputs: [node.Output[0]]);
        }
        g.TopologicalSort(); // the new nodes were appended; Cleanup reads the order
        g.Cleanup();
        return nodes.Count;
    }
}
