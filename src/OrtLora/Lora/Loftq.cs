using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>LoftQ (Li et al., "LoftQ: LoRA-Fine-Tuning-Aware Quantization"; PEFT's init_lora_weights="loftq" with
/// LoftQConfig(loftq_bits, loftq_iter)): the layer's weight W is stored quantized as Q, and A, B start from the rank-r
/// SVD of the quantization error, so that Q + scale·B·A ≈ W better than Q alone. Alternating, loftq_iter times:
/// Q = quantize(W − scale·B·A), then B·A = SVD_r(W − Q) / scale (√(S/scale) in each factor, as PiSSA splits it).
/// The quantizer is ortlora's (<see cref="WeightQuantizer"/>: uint4 blocks or int8 channels, what DequantizeLinear reads)
/// where PEFT uses NF4; the SVD is torch's svd_lowrank algorithm with 8 power iterations (<see cref="ResidualInit.Pissa"/>).</summary>
public static class Loftq
{
    const int PowerIterations = 8;

    /// <summary>Quantizes the layer's weight in place (a DequantizeLinear, in the weight's own layout) and returns A, B and
    /// the layer as it now reads its weight.</summary>
    public static (float[] A, float[] B, LinearLayer Layer) ForLayer(OnnxModel model, GraphEditor g, LinearLayer layer, string path, LoraConfig config,
        int r, double scale, int parts, Random rng)
    {
        string Refuse(string why) => throw new OrtLoraException($"{model.Source}: loftq on '{path}': {why}");
        if (parts > 1) Refuse("it quantizes the whole fused weight; use --variant performant");
        if (config.UseDora) Refuse("with DoRA it is not supported");
        if (layer.Dequantize is not null) Refuse("the weight is quantized already; LoftQ quantizes the float weight itself");
        if (layer.Tied || g.Consumers(layer.Weight).Count > 1) Refuse($"weight '{layer.Weight}' is read by other nodes too (tied?)");
        var weight = g.Initializer(layer.Weight)!;
        var stored = model.ReadFloats(weight);
        var dims = weight.Dims.ToArray();
        int outDim = (int)layer.Out, inDim = (int)layer.In;
        var w = new double[outDim * inDim]; // [out, in]
        for (int o = 0; o < outDim; o++)
            for (int i = 0; i < inDim; i++)
                w[o * inDim + i] = layer.Layout == WeightLayout.OutIn ? stored[o * inDim + i] : stored[i * outDim + o];

        var a = new float[r * inDim];
        var b = new float[outDim * r];
        WeightQuantizer.Quantized quantized = null!;
        for (int iteration = 0; iteration < Math.Max(1, config.LoftqIter); iteration++)
        {
            var target = new float[stored.Length]; // W − scale·B·A, in the stored layout
            for (int o = 0; o < outDim; o++)
                for (int i = 0; i < inDim; i++)
                {
                    double ba = 0;
                    for (int k = 0; k < r; k++) ba += b[o * r + k] * a[k * inDim + i];
                    target[layer.Layout == WeightLayout.OutIn ? o * inDim + i : i * outDim + o] = (float)(w[o * inDim + i] - scale * ba);
                }
            quantized = WeightQuantizer.Quantize(target, dims, layer.Layout, config.LoftqBits, config.LoftqBlockSize);
            var q = quantized.Dequantized();
            var error = new double[w.Length];
            for (int o = 0; o < outDim; o++)
                for (int i = 0; i < inDim; i++)
                    error[o * inDim + i] = w[o * inDim + i] - q[layer.Layout == WeightLayout.OutIn ? o * inDim + i : i * outDim + o];
            (a, b) = ResidualInit.Pissa(error, outDim, inDim, r, scale, PowerIterations, rng);
        }
        var dq = WeightQuantizer.Replace(g, weight.Name, weight.Name, quantized);
        g.Graph.Node.Remove(dq); // it reads initializers only: first, so the graph stays in topological order
        g.Graph.Node.Insert(0, dq);
        return (a, b, layer with { Weight = dq.Input[0], Dequantize = dq });
    }
}
