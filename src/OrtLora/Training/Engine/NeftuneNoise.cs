using Onnx;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>NEFTune (Jain et al., "NEFTune: Noisy Embeddings Improve Instruction Finetuning"; the Hugging Face Trainer's
/// neftune_noise_alpha): while training, uniform noise in [−α/√(S·d), α/√(S·d)] is added to the token embeddings, S the
/// (padded) sequence length and d the hidden size, as transformers' forward hook on the input embeddings does. Only
/// the training graphs get it: eval, the exported adapter and the merged model see no noise.
/// <para>The noise is drawn on the host and fed as an input, not drawn in the graph: ONNX Runtime has no
/// RandomUniformLike kernel for opset 22 and later; an input is the same in a recomputed checkpoint segment, fits a
/// captured CUDA graph (a fixed buffer like the batch's), and is a function of (seed, optimizer step, micro-batch), so
/// a resumed run draws what an uninterrupted one would.</para></summary>
public static class NeftuneNoise
{
    /// <summary>The training graphs' input: noise shaped [batch, sequence, hidden], float32.</summary>
    public const string Input = "neftune_noise";

    /// <summary>Adds the <see cref="Input"/> to the output of the token embedding's Gather in <paramref name="g"/>.</summary>
    /// <returns>the embedding's width d</returns>
    public static long Apply(GraphEditor g, string source)
    {
        var (gather, elemType, hidden) = Lora.TokenEmbedding.Find(g)
            ?? throw new OrtLoraException($"{source}: --neftune-noise-alpha adds noise to the token embeddings, and no token embedding " +
                "(a Gather of a [vocabulary, hidden] table by input_ids) was found");
        g.Graph.Input.Add(TrainingGraph.Input(Input, (int)DT.Float, ["batch", "sequence", hidden]));

        var embedding = gather.Output[0];
        var noise = elemType == (int)DT.Float ? Input : g.Add("Cast", [Input], name: "neftune/Cast", attributes: ("to", (long)elemType));
        // The embedding's own shape: exports that flatten input_ids first gather [B·S, d].
        var shape = g.Add("Shape", [embedding], name: "neftune/Shape");
        noise = g.Add("Reshape", [noise, shape], name: "neftune/Reshape");
        var noisy = g.Add("Add", [embedding, noise], name: "neftune/Add", outputs: [g.Unique(embedding + "/neftune")]);
        g.ReplaceUses(embedding, noisy, g.Producer(noisy)!, g.Producer(shape)!);
        g.TopologicalSort();
        return hidden;
    }

    /// <summary>The noise for one micro-batch: uniform in ±α/√(S·d), [batch, sequence, d], a function of its arguments
    /// only. Drawn in parallel blocks, each from its own SplitMix64 stream.</summary>
    public static float[] Draw(double alpha, int seed, int step, int microBatch, int batch, int sequence, long hidden)
    {
        var noise = new float[checked(batch * sequence * (int)hidden)];
        float magnitude = (float)(alpha / Math.Sqrt(sequence * (double)hidden));
        const int block = 1 << 16;
        ulong stream = SplitMix64.Stream((uint)seed, (uint)step, (uint)microBatch);
        Parallel.For(0, (noise.Length + block - 1) / block, b =>
        {
            ulong state = SplitMix64.Stream(stream, (ulong)b, 0x5EED);
            int end = Math.Min(noise.Length, (b + 1) * block);
            for (int i = b * block; i < end; i++)
            {
                // 24 random bits → [0, 1) → [−1, 1), scaled.
                float unit = (SplitMix64.Next(ref state) >> 40) * (1f / (1 << 24));
                noise[i] = (2f * unit - 1f) * magnitude;
            }
        });
        return noise;
    }
}
