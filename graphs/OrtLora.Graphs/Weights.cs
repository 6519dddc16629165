using System.Runtime.InteropServices;
using System.Text;

namespace OrtLora.Graphs;

/// <summary>Deterministic initial weights: every tensor has its own random stream, seeded by the model seed and the
/// tensor's name, so a tensor's values do not depend on which other tensors exist or in what order they are made.
/// Only integer arithmetic and IEEE additions are used, so the bytes are the same on every platform.</summary>
public static class Weights
{
    /// <summary>Approximately N(0, std²): the sum of four uniforms (Irwin–Hall), rescaled to unit variance.</summary>
    public static float[] Normal(int seed, string tensorName, long count, double std)
    {
        var values = new float[count];
        ulong state = Mix((ulong)(uint)seed ^ Fnv1a(tensorName));
        // Four uniforms on [0,1) sum to mean 2, variance 1/3.
        double scale = std * Math.Sqrt(3.0);
        for (long i = 0; i < count; i++)
        {
            double sum = Uniform(ref state) + Uniform(ref state) + Uniform(ref state) + Uniform(ref state);
            values[i] = (float)((sum - 2.0) * scale);
        }
        return values;
    }

    public static float[] Ones(long count)
    {
        var values = new float[count];
        Array.Fill(values, 1f);
        return values;
    }

    public static byte[] Bytes(float[] values) => MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    static double Uniform(ref ulong state) => (Next(ref state) >> 11) * (1.0 / (1UL << 53));

    // SplitMix64: tiny, fast, and well distributed for independent streams.
    static ulong Next(ref ulong state)
    {
        state += 0x9E3779B97F4A7C15UL;
        return Mix(state);
    }

    static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static ulong Fnv1a(string text)
    {
        ulong hash = 0xCBF29CE484222325UL;
        foreach (var b in Encoding.UTF8.GetBytes(text)) hash = (hash ^ b) * 0x100000001B3UL;
        return hash;
    }
}
