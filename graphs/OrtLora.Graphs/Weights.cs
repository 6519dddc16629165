using System.Runtime.InteropServices;
using System.Text;

namespace OrtLora.Graphs;

/// <summary>Deterministic initial weights: every tensor has its own random stream, seeded by the model seed and the
/// tensor's name, so a tensor's values do not depend on which other tensors exist or in what order they are made.
/// Only integer arithmetic and IEEE additions are used, so the bytes are the same on every platform.</summary>
public static class Weights
{
    /// <summary>Elements per independent stream: big tensors are filled in parallel, one chunk per stream; tensors
    /// smaller than this are one stream.</summary>
    public const int ChunkSize = 1 << 20;

    /// <summary>Approximately N(0, std²): the sum of four uniforms (Irwin–Hall), rescaled to unit variance.</summary>
    public static float[] Normal(int seed, string tensorName, long count, double std)
    {
        var values = new float[count];
        ulong tensorState = Mix((ulong)(uint)seed ^ Fnv1a(tensorName));
        long chunks = (count + ChunkSize - 1) / ChunkSize;
        Parallel.For(0L, chunks, chunk =>
        {
            ulong state = chunk == 0 ? tensorState : Mix(tensorState ^ (ulong)chunk * 0xD6E8FEB86659FD93UL);
            long end = Math.Min(count, (chunk + 1) * ChunkSize);
            FillNormal(values.AsSpan((int)(chunk * ChunkSize), (int)(end - chunk * ChunkSize)), ref state, std);
        });
        return values;
    }

    static void FillNormal(Span<float> values, ref ulong state, double std)
    {
        // Four uniforms on [0,1) sum to mean 2, variance 1/3.
        double scale = std * Math.Sqrt(3.0);
        for (int i = 0; i < values.Length; i++)
        {
            double sum = Uniform(ref state) + Uniform(ref state) + Uniform(ref state) + Uniform(ref state);
            values[i] = (float)((sum - 2.0) * scale);
        }
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
