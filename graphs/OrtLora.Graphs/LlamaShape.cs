namespace OrtLora.Graphs;

/// <summary>The hyper-parameters of a LLaMA-style causal LM, named as in Hugging Face's LlamaConfig.</summary>
public sealed record LlamaShape(
    string Name,
    int HiddenSize,
    int NumHiddenLayers,
    int NumAttentionHeads,
    int NumKeyValueHeads,
    int IntermediateSize,
    int VocabSize,
    bool TieWordEmbeddings,
    double RopeTheta = 10000.0,
    float RmsNormEps = 1e-5f,
    int MaxPositionEmbeddings = 2048,
    double InitializerRange = 0.02,
    double? EmbeddingInitializerRange = null)
{
    public int HeadDim => HiddenSize / NumAttentionHeads;
    public int KvDim => NumKeyValueHeads * HeadDim;

    /// <summary>Standard deviation of the embedding's initial values (and a tied lm_head's).</summary>
    public double EmbeddingStd => EmbeddingInitializerRange ?? InitializerRange;

    /// <summary>The committed demo model: a few MB, trains in seconds on a CPU. Its initial weights are larger than
    /// Hugging Face's 0.02 so that the LoRA demo learns visibly in a minute. LoRA leaves the tied lm_head and the final
    /// norm frozen, so the largest logit a hidden state can reach is about sqrt(hidden) · |embedding row|: with 0.02
    /// that is 2.6, too little for a confident prediction over 512 tokens (the demo's loss stalled near 5). A 0.15
    /// embedding lifts the ceiling; linear layers at 0.05 make each layer's output outweigh the input token's own
    /// embedding, so the untrained model does not just predict its input token again (0.1/0.02 started at loss 11.7).
    /// Measured with `ortlora train` (all-linear, r 8, lr 5e-3, 5 epochs, ~1 min on 2 cores): eval loss 8.1 → 1.1,
    /// where 0.02/0.02 went 6.3 → 4.9.</summary>
    public static readonly LlamaShape Tiny = new("tiny", 128, 4, 4, 2, 352, 512, TieWordEmbeddings: true, MaxPositionEmbeddings: 512,
        InitializerRange: 0.05, EmbeddingInitializerRange: 0.15);

    /// <summary>The shape of HuggingFaceTB/SmolLM2-135M.</summary>
    public static readonly LlamaShape SmolLM2_135M = new("smollm2-135m", 576, 30, 9, 3, 1536, 49152, TieWordEmbeddings: true,
        RopeTheta: 100000.0, MaxPositionEmbeddings: 8192);

    /// <summary>A ~100M-parameter shape between the two (tied, 12 layers of 768).</summary>
    public static readonly LlamaShape Llama100M = new("llama-100m", 768, 12, 12, 4, 2048, 32000, TieWordEmbeddings: true);

    /// <summary>The shape of TinyLlama/TinyLlama-1.1B (untied lm_head).</summary>
    public static readonly LlamaShape TinyLlama_1_1B = new("tinyllama-1.1b", 2048, 22, 32, 4, 5632, 32000, TieWordEmbeddings: false);

    public static IReadOnlyList<LlamaShape> All { get; } = [Tiny, SmolLM2_135M, Llama100M, TinyLlama_1_1B];

    public static LlamaShape? Find(string name) =>
        All.FirstOrDefault(s => s.Name.Equals(name, StringComparison.OrdinalIgnoreCase)
            || name is "~100m" or "100m" && s == Llama100M);

    /// <summary>Number of parameters (a tied lm_head is counted once).</summary>
    public long ParameterCount
    {
        get
        {
            long h = HiddenSize, attention = h * h * 2 + h * KvDim * 2, mlp = 3 * h * IntermediateSize;
            long perLayer = attention + mlp + 2 * h;
            long embed = (long)VocabSize * h;
            return embed * (TieWordEmbeddings ? 1 : 2) + perLayer * NumHiddenLayers + h;
        }
    }
}
