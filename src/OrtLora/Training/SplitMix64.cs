namespace OrtLora.Training;

/// <summary>SplitMix64: a fixed generator, so data orders and NEFTune's noise never change with the .NET version.</summary>
internal static class SplitMix64
{
    public static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The starting state of the stream keyed by (a, b, c).</summary>
    public static ulong Stream(ulong a, ulong b, ulong c)
    {
        ulong state = a * 0x9E3779B97F4A7C15UL ^ b * 0xC2B2AE3D27D4EB4FUL ^ c * 0x165667B19E3779F9UL;
        Next(ref state);
        return state;
    }

    /// <summary>A non-negative sampler seed keyed by (a, b, c): the first draw of that stream.</summary>
    public static int Seed(ulong a, ulong b, ulong c)
    {
        ulong stream = Stream(a, b, c);
        return (int)(Next(ref stream) & int.MaxValue);
    }
}
