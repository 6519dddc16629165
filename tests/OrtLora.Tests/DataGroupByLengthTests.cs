using OrtLora.Lora;
using OrtLora.Training.Data;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>--group-by-length (the Trainer's length-grouped sampler) over the epoch's shuffled stream.</summary>
public class DataGroupByLengthTests
{
    /// <summary>103 sequences of random lengths, one row each (NextIndex = order index + 1), in batches of 4 and groups of
    /// 20: every row once; inside a group batches go longest first; far fewer pad tokens than stream-order batches; and
    /// resuming from any batch's Next gives exactly the batches that followed it.</summary>
    [Test]
    public void GroupsSortByLengthPadLessAndResumeFromAnyBatch()
    {
        var rng = new Random(9);
        var sequences = Enumerable.Range(0, 103).Select(i =>
        {
            int length = rng.Next(3, 120);
            var ids = Enumerable.Repeat(i + 1, length).ToArray();
            return new Sequence(ids, ids, i + 1, [i]);
        }).ToList();
        IEnumerable<Sequence> From(long index) => sequences.Skip((int)index);
        var grouped = Batching.GroupedByLength(sequences, 4, 20, padId: 0, new DataPosition(0, 0)).ToList();
        var plain = Batching.Batches(sequences, 4, 0, 0).ToList();
        Assert.That(grouped, Has.Count.EqualTo(plain.Count).And.Count.EqualTo(26));
        Assert.That(grouped.SelectMany(b => b.Rows).Order(), Is.EqualTo(Enumerable.Range(0, 103).Select(i => (long)i)));
        long Padding(List<Batch> batches) => batches.Sum(b => b.AttentionMask.LongLength - b.AttentionMask.Sum());
        Assert.That(Padding(grouped), Is.LessThan(Padding(plain) / 3), "similar lengths together");
        for (int g = 0; g < 6; g++)
        {
            var widths = grouped.Skip(5 * g).Take(5).Select(b => b.SeqLength).ToList();
            Assert.That(widths, Is.Ordered.Descending, $"group {g}");
        }
        for (int k = 0; k < grouped.Count - 1; k++)
        {
            var next = grouped[k].Next;
            var resumed = Batching.GroupedByLength(From(next.Index), 4, 20, 0, next).ToList();
            Assert.That(resumed.Select(b => b.Rows), Is.EqualTo(grouped.Skip(k + 1).Select(b => b.Rows)), $"resumed after batch {k} ({next})");
        }
        Assert.That(grouped[^1].Next, Is.EqualTo(new DataPosition(0, 103)));
    }

    /// <summary>As a user runs it: resumed from a checkpoint inside a length group, a run ends with the adapter of the
    /// uninterrupted run, byte for byte; --packing with it is one error.</summary>
    [Test]
    public void TrainResumesInsideALengthGroup()
    {
        string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);
        string[] Args(string dir, params string[] extra) =>
        [
            "train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--target-modules", "q_proj,v_proj", "--r", "4",
            "--per-device-train-batch-size", "4", "--learning-rate", "5e-3", "--max-steps", "8", "--save-steps", "3",
            "--group-by-length", "--plain-log", "-o", dir, .. extra,
        ];
        var straight = Shared.TempDir();
        OrtloraOk(Args(straight));
        var state = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(straight, "checkpoint-3", "trainer_state.json")))!;
        Assert.That(state["data_skip_batches"]!.GetValue<int>(), Is.EqualTo(3), "263 rows in batches of 4: groups of 16 batches, step 3 is inside the first");
        var adapter = File.ReadAllBytes(Path.Combine(straight, PeftAdapter.WeightsFile));
        File.Delete(Path.Combine(straight, PeftAdapter.WeightsFile));
        OrtloraOk(Args(straight, "--resume-from-checkpoint", Path.Combine(straight, "checkpoint-3")));
        Assert.That(File.ReadAllBytes(Path.Combine(straight, PeftAdapter.WeightsFile)), Is.EqualTo(adapter));
        var refused = Ortlora(Args(Shared.TempDir(), "--packing"));
        Assert.That(refused.ExitCode, Is.Not.Zero);
        Assert.That(refused.Error, Does.Contain("--group-by-length"));
    }
}
