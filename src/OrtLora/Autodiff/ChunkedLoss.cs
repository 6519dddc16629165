using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Autodiff;

/// <summary>The causal-LM loss and its gradient taken chunk by chunk along the sequence, through the lm_head (what
/// "fused linear cross-entropy" kernels do): for each chunk of the last hidden state h, its logits, loss and
/// d loss / d h, so that one chunk's [B, S/C, V] logits are alive at a time instead of several full [B, S, V] ones.
/// The backward then starts at h, seeded with the concatenated d loss / d h, and the full logits are never built.
/// <para>Applies when the logits are a position-wise function of h: a MatMul of h by a matrix that does not depend on
/// the batch (the lm_head weight, tied or not), then optional elementwise ops with batch-independent operands (Cast,
/// logit scaling, soft-capping). Each chunk's logits are computed only after the previous chunk's d loss / d h (its
/// slice of h is read through <c>h + 0·g</c>, g one element of that gradient), so ORT cannot run the chunks' logits
/// side by side.</para></summary>
public static class ChunkedLoss
{
    static readonly HashSet<string> PositionWise = ["Cast", "Mul", "Div", "Add", "Sub", "Tanh", "Identity"];

    /// <param name="Loss">the scalar loss (the sum of the chunks' parts)</param>
    /// <param name="Hidden">h, the input of the lm_head MatMul, [B, S, H]</param>
    /// <param name="HiddenGradient">d loss / d h (times the loss scale when given), [B, S, H]</param>
    /// <param name="Correct">the counted tokens whose target is the arg-max (<see cref="CausalLmLoss.AppendCorrect"/>), summed over the chunks</param>
    /// <param name="SequenceLogProbs">with the DPO loss: each row's π (<see cref="PreferenceLoss.SequenceLogProbs"/>)</param>
    public sealed record Result(string Loss, string Hidden, string HiddenGradient, string Correct, string? SequenceLogProbs = null);

    /// <summary>The head between h and the logits, or null when the logits are not a position-wise function of one
    /// [B, S, H] value through a MatMul.</summary>
    static (string Hidden, List<NodeProto> Path)? FindHead(GraphEditor g, string logits, ValueTable types)
    {
        var path = new List<NodeProto>();
        for (var value = logits; ;)
        {
            var node = g.Producer(value);
            if (node is null || node.Output.Count != 1 || (value != logits && g.Consumers(value).Count != 1)) return null;
            path.Insert(0, node);
            if (node.OpType == "MatMul")
            {
                string a = node.Input[0], b = node.Input[1];
                if (!types.VariesWithBatch(a) || types.VariesWithBatch(b) || types.Rank(a) != 3 || types.Rank(b) != 2) return null;
                return (a, path);
            }
            if (!PositionWise.Contains(node.OpType) || node.Domain is not ("" or "ai.onnx")) return null;
            var onPath = node.Input.Where(i => i != "" && types.VariesWithBatch(i)).ToList();
            if (onPath.Count != 1 || types.Rank(onPath[0]) != types.Rank(logits)) return null;
            value = onPath[0];
        }
    }

    /// <summary>The chunks of one loss: the head's input h split along the sequence, each chunk's logits computed by a
    /// renamed copy of the head, and the labels' targets chunked alike.</summary>
    sealed class Chunks(GraphEditor g, ValueTable types, string hidden, List<NodeProto> path, CausalLmLoss.Targets targets, int count)
    {
        // chunk length ceil(S / C); the last chunks may be short or empty
        readonly string _length = g.Add("Div", [g.Add("Add", [g.Add("Slice", [g.Add("Shape", [hidden], name: "loss_chunks/Shape"),
            Ints(g, 1), Ints(g, 2)], name: "loss_chunks/Slice"), Ints(g, count - 1)], name: "loss_chunks/Add"), Ints(g, count)], name: "loss_chunks/Div");

        public CausalLmLoss.Targets Targets => targets;
        public int HiddenType => types.ElemType(hidden);

        /// <summary>Chunk <paramref name="c"/>'s h and its loss pieces, computed after the values in <paramref name="after"/>
        /// (so that ORT runs the chunks one at a time); <paramref name="pass"/> names a second copy of the same chunk.</summary>
        public (string H, string Logits, CausalLmLoss Loss) At(int c, IReadOnlyList<(string Value, int ElemType)> after, double smoothing = 0, string pass = "")
        {
            var start = g.Add("Mul", [_length, Ints(g, c)], name: "loss_chunks/Mul");
            var end = g.Add("Mul", [_length, Ints(g, c + 1)], name: "loss_chunks/Mul");
            string Chunk(string value) => g.Add("Slice", [value, start, end, Ints(g, 1)], name: "loss_chunks/Slice");
            var h = Chunk(hidden);
            if (after.Count > 0) h = g.Add("Add", [h, Ordering.ZeroAfter(g, after, HiddenType)], name: "loss_chunks/Add");
            types.Set(h, types[hidden]);
            var z = h;
            var renames = new Dictionary<string, string> { [hidden] = h };
            foreach (var node in path)
            {
                z = g.AddRenamedCopy(node, renames, $"/chunk{c}{pass}").Output[0];
                types.Set(z, types[node.Output[0]]); // same rank and type; the rules compare shapes chunk against chunk
            }
            var weights = Chunk(targets.Weights);
            var chunkTargets = new CausalLmLoss.Targets(Chunk(targets.TargetIndex), weights, targets.Count, targets.ElemType)
                { Mask = targets.Mask == targets.Weights ? weights : Chunk(targets.Mask) };
            return (h, z, CausalLmLoss.Append(g, z, chunkTargets, smoothing));
        }

        static string Ints(GraphEditor g, params long[] v) => GraphConstants.Int64s(g, "loss_chunks/ints", v);
    }

    /// <param name="logits">the float logits the loss reads (after any upcast)</param>
    /// <param name="withGradient">also d loss / d h (training); without it (evaluation) each chunk waits for the
    /// previous chunk's loss instead, and <see cref="Result.HiddenGradient"/> is empty</param>
    /// <param name="lossScale">a scalar the gradient is multiplied by before it enters the head's backward (float16
    /// loss scaling), or null</param>
    /// <param name="smoothing">label_smoothing_factor (<see cref="CausalLmLoss.Smoothing"/>)</param>
    /// <param name="tokenWeights">each token's weight (<see cref="CausalLmLoss.AppendTargets"/>), or null</param>
    /// <returns>null when the head is not position-wise (see <see cref="ChunkedLoss"/>): use the full loss</returns>
    public static Result? Append(GraphEditor g, string logits, string labels, int logitsElemType, ValueTable types, int opset,
        int chunks, bool withGradient = true, string? lossScale = null, double smoothing = 0, string? tokenWeights = null)
    {
        // opset 14: the head's gradient reshapes an empty chunk (Reshape's allowzero)
        if (chunks < 2 || opset < 14 || FindHead(g, logits, types) is not var (hidden, path)) return null;
        var chunked = new Chunks(g, types, hidden, path, CausalLmLoss.AppendTargets(g, labels, logitsElemType, tokenWeights), chunks);
        var parts = new List<string>();
        var gradients = new List<string>();
        var correct = new List<string>();
        for (int c = 0; c < chunks; c++)
        {
            // The previous chunk's accuracy count too: otherwise ORT may leave every chunk's ArgMax, and so its logits, to the end.
            var (h, z, loss) = chunked.At(c, c == 0 ? []
                : [withGradient ? (gradients[^1], chunked.HiddenType) : (parts[^1], logitsElemType), (correct[^1], logitsElemType)], smoothing);
            parts.Add(loss.Loss);
            // Read next to the loss, so that the chunk's logits die with it.
            correct.Add(loss.AppendCorrect(g));
            if (!withGradient) continue;
            var seed = loss.AppendLogitsGradient(g);
            if (lossScale is not null) seed = g.Add("Mul", [seed, lossScale], name: "loss_chunks/scale");
            gradients.Add(GradientBuilder.Build(g, new Dictionary<string, string> { [z] = seed }, [h], types, opset)[h]);
        }
        var total = parts.Count == 1 ? parts[0] : g.Add("Sum", [.. parts], name: "loss_chunks/Sum");
        var right = g.Add("Sum", [.. correct], name: "loss_chunks/Sum");
        return new Result(total, hidden, withGradient ? g.Add("Concat", [.. gradients], name: "loss_chunks/Concat", attributes: ("axis", 1L)) : "", right);
    }

    /// <summary>The DPO loss (<see cref="PreferenceLoss"/>) chunk by chunk. Its gradient scales each row's tokens by
    /// d loss / d (the whole row's log-probability), known only once every chunk is summed, so it takes two passes: the
    /// first sums each row's log-probabilities chunk by chunk, the second computes each chunk's logits again and its
    /// d loss / d h. One more lm_head product than the causal-LM loss's one pass, and still one chunk's logits alive at a
    /// time.</summary>
    public static Result? AppendPreference(GraphEditor g, string logits, string labels, int logitsElemType, ValueTable types, int opset,
        int chunks, PreferenceOptions options, bool withGradient = true, string? lossScale = null)
    {
        if (chunks < 2 || opset < 14 || FindHead(g, logits, types) is not var (hidden, path)) return null;
        var chunked = new Chunks(g, types, hidden, path, CausalLmLoss.AppendTargets(g, labels, logitsElemType), chunks);

        // Pass 1: each row's Σ w·log p(target), a chunk at a time.
        var sums = new List<string>();
        var correct = new List<string>();
        for (int c = 0; c < chunks; c++)
        {
            var (_, _, loss) = chunked.At(c, c == 0 ? [] : [(sums[^1], logitsElemType), (correct[^1], logitsElemType)]);
            sums.Add(PreferenceLoss.SumRows(g, loss.TargetLogProb, loss.Weights));
            correct.Add(loss.AppendCorrect(g));
        }
        var preference = PreferenceLoss.FromRows(g, g.Add("Sum", [.. sums], name: "loss_chunks/Sum"), PreferenceLoss.CountRows(g, chunked.Targets.Weights),
            logitsElemType, options);
        var right = g.Add("Sum", [.. correct], name: "loss_chunks/Sum");
        if (!withGradient) return new Result(preference.Loss, hidden, "", right, preference.SequenceLogProbs);

        // Pass 2: each chunk's logits again, and d loss / d h with the rows' scales.
        var rowScale = g.Add("Unsqueeze", [preference.AppendRowScale(g, logitsElemType), GraphConstants.Int64s(g, "loss_chunks/ints", 1)],
            name: "loss_chunks/Unsqueeze"); // [R, 1]
        var gradients = new List<string>();
        for (int c = 0; c < chunks; c++)
        {
            var (h, z, loss) = chunked.At(c, c == 0 ? [(rowScale, logitsElemType), (right, logitsElemType)] : [(gradients[^1], chunked.HiddenType)],
                pass: "/grad");
            var seed = loss.AppendLogitsGradient(g, g.Add("Mul", [rowScale, loss.Weights], name: "loss_chunks/Mul"));
            if (lossScale is not null) seed = g.Add("Mul", [seed, lossScale], name: "loss_chunks/scale");
            gradients.Add(GradientBuilder.Build(g, new Dictionary<string, string> { [z] = seed }, [h], types, opset)[h]);
        }
        return new Result(preference.Loss, hidden, g.Add("Concat", [.. gradients], name: "loss_chunks/Concat", attributes: ("axis", 1L)), right,
            preference.SequenceLogProbs);
    }
}
