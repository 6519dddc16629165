using Google.Protobuf;
using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Lora;

/// <summary>Stores the linear layers' weights quantized, read through DequantizeLinear (weight-only QDQ, the format
/// ONNX Runtime's quantizers write and fuse into MatMulNBits): the frozen base of QLoRA-style training. 4 bits: uint4 in
/// blocks along the input axis, asymmetric (a zero point per block, as ONNX Runtime's MatMul4BitsQuantizer does by
/// default; opset 21). 8 bits: int8 per output channel, symmetric. A weight read only through a Transpose (nn.Linear's
/// [out, in] in a dynamo export) is stored transposed, [in, out], so DequantizeLinear feeds the MatMul directly, as
/// ONNX Runtime's quantizer leaves it after its pre-processing.</summary>
public static class WeightQuantizer
{
    /// <summary>Integers, their scales and zero points, as DequantizeLinear reads them (axis, block_size 0 per channel).</summary>
    public sealed record Quantized(int[] Q, float[] Scales, int[] Zeros, long[] Dims, long[] ScaleDims, int Axis, int Bits, int BlockSize)
    {
        long ScaleIndex(long i)
        {
            long r = i / Dims[1], c = i % Dims[1];
            if (BlockSize == 0) return Axis == 0 ? r : c;
            return Axis == 0 ? r / BlockSize * Dims[1] + c : r * ScaleDims[1] + c / BlockSize;
        }

        /// <summary>The values DequantizeLinear gives: (q − zero point)·scale.</summary>
        public float[] Dequantized()
        {
            var values = new float[Q.Length];
            for (long i = 0; i < Q.Length; i++) { long s = ScaleIndex(i); values[i] = (Q[i] - Zeros[s]) * Scales[s]; }
            return values;
        }
    }

    /// <returns>the number of layers quantized</returns>
    public static int Apply(OnnxModel model, int bits, int blockSize = 32)
    {
        Prepare(model, bits, blockSize);
        var g = new GraphEditor(model.Graph);
        int count = 0;
        foreach (var layer in LinearLayers.Find(g).Where(l => l.Dequantize is null && !l.Tied).DistinctBy(l => l.Weight).ToList())
        {
            var weight = g.Initializer(layer.Weight)!;
            if (Tensors.ByteSize(weight) >= 16 << 20) GC.Collect(); // the last weight's arrays: keep the peak near one weight's
            var values = model.ReadFloats(weight);
            var dims = weight.Dims.ToArray();
            var read = weight.Name; // the value the quantized weight replaces
            var layout = layer.Layout;
            if (layout == WeightLayout.OutIn && g.Consumers(weight.Name) is [{ OpType: "Transpose" } transpose]
                && Attrs.Ints(transpose, "perm") is null or [1, 0] && !g.IsGraphOutput(transpose.Output[0]))
            {
                values = Tensors.Transpose(values, dims[0], dims[1]);
                dims = [dims[1], dims[0]];
                layout = WeightLayout.InOut;
                read = transpose.Output[0];
                g.RemoveNode(transpose);
            }
            Replace(g, weight.Name, read, Quantize(values, dims, layout, bits, blockSize));
            count++;
        }
        g.TopologicalSort();
        return count;
    }

    /// <summary>Checks the settings; raises the opset to 21 for 4 bits.</summary>
    internal static void Prepare(OnnxModel model, int bits, int blockSize)
    {
        if (bits is not (4 or 8)) throw new OrtLoraException($"quantization to {bits} bits: use 4 or 8");
        if (blockSize < 16 || (blockSize & (blockSize - 1)) != 0) throw new OrtLoraException($"block size {blockSize}: a power of two, 16 or more");
        int opset = model.Opset();
        if (opset < 13) throw new OrtLoraException($"{model.Source}: opset {opset}; per-channel DequantizeLinear needs opset 13 (re-export at 13 or later)");
        if (bits == 4) RaiseToOpset21(model);
    }

    /// <summary>4-bit types and block_size came with opset 21 (IR 10); <see cref="OpsetRaise"/> moves the graph there.</summary>
    internal static void RaiseToOpset21(OnnxModel model) => OpsetRaise.Raise(model.Proto, 21, model.Source);

    /// <summary>A 2-D weight in <paramref name="layout"/>, quantized: 4 bits in blocks along its input axis, 8 bits per
    /// output channel.</summary>
    public static Quantized Quantize(float[] values, long[] dims, WeightLayout layout, int bits, int blockSize)
    {
        // The input axis of the stored weight: blocks run along it; per-channel scales are along the other.
        int inputAxis = layout == WeightLayout.InOut ? 0 : 1;
        var (q, scales, zeros, scaleDims, axis) = bits == 4 ? Blocks(values, dims, inputAxis, blockSize) : PerChannel(values, dims, 1 - inputAxis);
        return new Quantized(q, scales, zeros, dims, scaleDims, axis, bits, bits == 4 ? blockSize : 0);
    }

    /// <summary>Stores <paramref name="quantized"/> in place of float initializer <paramref name="weight"/>: the readers of
    /// <paramref name="read"/> (the weight, or what replaced it) read a DequantizeLinear instead.</summary>
    /// <returns>the DequantizeLinear node</returns>
    internal static NodeProto Replace(GraphEditor g, string weight, string read, Quantized quantized)
    {
        int type = quantized.Bits == 4 ? (int)DT.Uint4 : (int)DT.Int8;
        var q = g.AddInitializer(Integers(g.Unique(weight + (quantized.Bits == 4 ? "_DQ_Q4" : "_quantized")), quantized.Dims, quantized.Q, type));
        var scale = g.AddInitializer(Tensors.FromFloats(g.Unique(weight + "_scale"), quantized.ScaleDims, quantized.Scales));
        var zero = g.AddInitializer(Integers(g.Unique(weight + "_zero_point"), quantized.ScaleDims, quantized.Zeros, type));
        var attributes = quantized.Bits == 4
            ? new (string, object)[] { ("axis", (long)quantized.Axis), ("block_size", (long)quantized.BlockSize) } : [("axis", (long)quantized.Axis)];
        var output = g.Add("DequantizeLinear", [q, scale, zero], name: weight + "/DequantizeLinear", attributes: attributes);
        var dq = g.Producer(output)!;
        // The float weight's readers now read its dequantized values; a weight stored in fp16 keeps its Cast.
        g.ReplaceUses(read, output, dq);
        if (g.Consumers(weight).Count == 0) g.RemoveInitializer(weight);
        return dq;
    }

    static (int[] Q, float[] Scales, int[] Zeros, long[] ScaleDims, int Axis) Blocks(float[] w, long[] dims, int axis, int block)
    {
        var scaleDims = dims.Select((d, i) => i == axis ? (d + block - 1) / block : d).ToArray();
        long Index(long r, long c) => axis == 0 ? r / block * dims[1] + c : r * scaleDims[1] + c / block;
        var min = new float[Tensors.ElementCount(scaleDims)];
        var max = new float[min.Length];
        for (long r = 0; r < dims[0]; r++)
            for (long c = 0; c < dims[1]; c++)
            {
                long s = Index(r, c);
                float v = w[r * dims[1] + c];
                min[s] = Math.Min(min[s], v); // starts at 0: the range holds zero
                max[s] = Math.Max(max[s], v);
            }
        var scales = new float[min.Length];
        var zeros = new int[min.Length];
        for (int s = 0; s < scales.Length; s++)
        {
            scales[s] = max[s] > min[s] ? (max[s] - min[s]) / 15f : 1f;
            zeros[s] = Math.Clamp((int)MathF.Round(-min[s] / scales[s]), 0, 15);
        }
        var q = new int[w.Length];
        for (long r = 0; r < dims[0]; r++)
            for (long c = 0; c < dims[1]; c++)
            {
                long i = r * dims[1] + c, s = Index(r, c);
                q[i] = Math.Clamp((int)MathF.Round(w[i] / scales[s]) + zeros[s], 0, 15);
            }
        return (q, scales, zeros, scaleDims, axis);
    }

    static (int[] Q, float[] Scales, int[] Zeros, long[] ScaleDims, int Axis) PerChannel(float[] w, long[] dims, int axis)
    {
        var scales = new float[dims[axis]];
        for (long i = 0; i < w.Length; i++)
        {
            long channel = axis == 0 ? i / dims[1] : i % dims[1];
            scales[channel] = Math.Max(scales[channel], Math.Abs(w[i]) / 127f);
        }
        for (int s = 0; s < scales.Length; s++) if (scales[s] == 0) scales[s] = 1;
        var q = new int[w.Length];
        for (long i = 0; i < w.Length; i++)
            q[i] = Math.Clamp((int)MathF.Round(w[i] / scales[axis == 0 ? i / dims[1] : i % dims[1]]), -127, 127);
        return (q, scales, new int[scales.Length], [dims[axis]], axis);
    }

    /// <summary>An integer initializer: 4-bit types packed two to a byte, low nibble first; 8-bit types a byte each.</summary>
    internal static TensorProto Integers(string name, long[] dims, int[] values, int type)
    {
        var t = new TensorProto { Name = name, DataType = type };
        t.Dims.AddRange(dims);
        var bytes = new byte[type == (int)DT.Uint4 ? (values.Length + 1) / 2 : values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            if (type == (int)DT.Uint4) bytes[i / 2] |= (byte)((values[i] & 0xF) << (4 * (i % 2)));
            else bytes[i] = (byte)(sbyte)values[i];
        }
        t.RawData = ByteString.CopyFrom(bytes);
        return t;
    }
}
