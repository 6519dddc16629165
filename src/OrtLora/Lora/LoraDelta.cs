using System.Numerics;
using OrtLora.Onnx;

namespace OrtLora.Lora;

/// <summary>The adapter of one base layer as one PEFT adapter: A [r, in], B [out, r], scale. For a fused layer with
/// one adapter per part (canonical variant) that is exact with rank parts·r: A = concat(A_i) along rows and
/// B = block-diagonal(B_i), since B·A then stacks the B_i·A_i of each part's output rows.</summary>
public sealed record LayerAdapter(string Module, int R, long In, long Out, double Scale, float[] A, float[] B,
    IReadOnlyList<LoraAdapter> Entries)
{
    /// <summary>DoRA's magnitude m [Out], or null for plain LoRA.</summary>
    public float[]? Magnitude { get; init; }
    /// <summary>lora_bias: B's bias [Out] (the parts' side by side), or null.</summary>
    public float[]? Bias { get; init; }

    public bool IsCanonical => Entries.Count > 1 || Entries[0].Part is not null;

    public static LayerAdapter Read(OnnxModel model, IReadOnlyList<LoraAdapter> group)
    {
        var first = group[0];
        long inDim = first.In, outDim = first.Out;
        int r = group.Sum(e => e.R);
        var a = new float[r * inDim];
        var b = new float[outDim * r];
        var bias = group.Any(e => e.LoraBias is not null) ? new float[outDim] : null;
        int rank = 0;
        foreach (var e in group)
        {
            var partA = ReadFloats(model, e.LoraA, [e.R, inDim]);
            long offset = e.Part?.Offset ?? 0, size = e.Part?.Size ?? outDim;
            var partB = ReadFloats(model, e.LoraB, [size, e.R]);
            partA.CopyTo(a, rank * inDim);
            for (long o = 0; o < size; o++)
                Array.Copy(partB, o * e.R, b, (offset + o) * r + rank, e.R);
            if (e.LoraBias is { } name) ReadFloats(model, name, [size]).CopyTo(bias!, offset);
            rank += e.R;
        }
        return new LayerAdapter(first.Module, r, inDim, outDim, first.Scale, a, b, group)
        {
            Magnitude = first.Magnitude is { } m ? ReadFloats(model, m, [outDim]) : null,
            Bias = bias,
        };
    }

    static float[] ReadFloats(OnnxModel model, string name, long[] dims)
    {
        var t = model.Graph.Initializer.FirstOrDefault(i => i.Name == name)
            ?? throw new OrtLoraException($"{model.Source}: LoRA initializer '{name}' named in the '{LoraModel.MetadataKey}' metadata is missing");
        if (!t.Dims.SequenceEqual(dims))
            throw new OrtLoraException($"{model.Source}: LoRA initializer '{name}' has shape [{string.Join(", ", t.Dims)}], the metadata says [{string.Join(", ", dims)}]");
        return model.ReadFloats(t);
    }

    /// <summary>PEFT's get_delta_weight, applied in place: weight += factor·scale·(B·A), the weight stored
    /// [out, in] or [in, out] as the graph stores it. The only place ortlora computes a LoRA delta.</summary>
    public void AddDeltaTo(Span<float> weight, WeightLayout layout, double factor = 1)
    {
        if (weight.Length != In * Out) throw new ArgumentException($"weight has {weight.Length} elements, expected {In}x{Out}");
        float s = (float)(Scale * factor);
        if (layout == WeightLayout.OutIn)
            AddRowCombinations(weight, rows: Out, width: In, coefficients: B, basis: A, s);
        else
            AddRowCombinations(weight, rows: In, width: Out, coefficients: Tensors.Transpose(A, R, In), basis: Tensors.Transpose(B, Out, R), s);
    }

    /// <summary>weight[row, :] += s·Σ_k coefficients[row, k]·basis[k, :], rows in parallel, each row vectorized.</summary>
    void AddRowCombinations(Span<float> weight, long rows, long width, float[] coefficients, float[] basis, float s)
    {
        unsafe
        {
            fixed (float* w = weight)
            {
                var wp = (nint)w;
                int r = R;
                Parallel.For(0L, rows, row =>
                {
                    var target = new Span<float>((float*)wp + row * width, (int)width);
                    for (int k = 0; k < r; k++)
                    {
                        float c = s * coefficients[row * r + k];
                        if (c != 0) Axpy(target, basis.AsSpan((int)(k * width), (int)width), c);
                    }
                });
            }
        }
    }

    static void Axpy(Span<float> y, ReadOnlySpan<float> x, float a)
    {
        int i = 0;
        if (Vector.IsHardwareAccelerated)
        {
            var va = new Vector<float>(a);
            for (; i <= y.Length - Vector<float>.Count; i += Vector<float>.Count)
                (new Vector<float>(y[i..]) + va * new Vector<float>(x[i..])).CopyTo(y[i..]);
        }
        for (; i < y.Length; i++) y[i] += a * x[i];
    }
}
