using System.Text;
using System.Text.Json.Nodes;
using OrtLora.Training;
using OrtLora.Training.TensorBoard;
using static OrtLora.Tests.LoraTestKit;

namespace OrtLora.Tests;

/// <summary>--report-to tensorboard: TensorBoard event files with the Trainer's tags, framed as TFRecord.</summary>
public class TensorBoardTests
{
    /// <summary>CRC-32C's standard check value, and TFRecord's masking of it.</summary>
    [Test]
    public void Crc32CIsCastagnolis()
    {
        Assert.That(TensorBoardWriter.Crc32C(Encoding.ASCII.GetBytes("123456789")), Is.EqualTo(0xE3069283u));
        Assert.That(TensorBoardWriter.Crc32C([]), Is.EqualTo(0u));
        uint crc = 0xE3069283u;
        Assert.That(TensorBoardWriter.MaskedCrc(Encoding.ASCII.GetBytes("123456789")), Is.EqualTo(unchecked(((crc >> 15) | (crc << 17)) + 0xa282ead8u)));
    }

    /// <summary>The records of an event file, each checked against its two CRCs.</summary>
    static List<Event> ReadEvents(string path)
    {
        var bytes = File.ReadAllBytes(path);
        var events = new List<Event>();
        for (int at = 0; at < bytes.Length;)
        {
            var header = bytes.AsSpan(at, 8);
            Assert.That(BitConverter.ToUInt32(bytes, at + 8), Is.EqualTo(TensorBoardWriter.MaskedCrc(header)), $"length CRC at {at}");
            int length = (int)BitConverter.ToUInt64(bytes, at);
            var data = bytes.AsSpan(at + 12, length);
            Assert.That(BitConverter.ToUInt32(bytes, at + 12 + length), Is.EqualTo(TensorBoardWriter.MaskedCrc(data)), $"data CRC at {at}");
            events.Add(Event.Parser.ParseFrom(data));
            at += 12 + length + 4;
        }
        return events;
    }

    /// <summary>Every number of metrics.jsonl is a scalar of its step: eval_x as eval/x, the rest as train/x.</summary>
    [Test]
    public void TrainWritesEveryLoggedNumberAsAScalar()
    {
        var dir = Shared.TempDir();
        var run = OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "--eval-split", "0.1", "-o", dir, "--max-steps", "4",
            "--logging-steps", "2", "--eval-steps", "2", "--plain-log", "--report-to", "tensorboard");
        var files = Directory.GetFiles(Path.Combine(dir, "runs"), "events.out.tfevents.*", SearchOption.AllDirectories);
        Assert.That(files, Has.Length.EqualTo(1));
        Assert.That(run.Out, Does.Contain("TensorBoard: " + Path.GetDirectoryName(files[0])));
        var events = ReadEvents(files[0]);
        Assert.That(events[0].FileVersion, Is.EqualTo("brain.Event:2"));
        var records = File.ReadAllLines(Path.Combine(dir, "metrics.jsonl")).Select(l => JsonNode.Parse(l)!.AsObject()).ToList();
        Assert.That(events.Count - 1, Is.EqualTo(records.Count), "one event per record, in order");
        int compared = 0;
        foreach (var (record, e) in records.Zip(events.Skip(1)))
        {
            int step = (int)record["step"]!;
            Assert.That(e.Step, Is.EqualTo(step));
            var scalars = e.Summary.Value.Select(v => (e.Step, v.Tag, Value: (double)v.SimpleValue)).ToList();
            foreach (var (key, node) in record)
            {
                if (key == "step" || node is not JsonValue value || value.GetValueKind() != System.Text.Json.JsonValueKind.Number) continue;
                var tag = key.StartsWith("eval_") ? "eval/" + key[5..] : record.ContainsKey("eval_loss") && key == "perplexity" ? "eval/perplexity" : "train/" + key;
                var match = scalars.Where(s => s.Tag == tag).ToList();
                Assert.That(match, Has.Count.EqualTo(1), $"{tag} at step {step}");
                Assert.That(match[0].Value, Is.EqualTo((double)value).Within(1e-6 * Math.Max(1, Math.Abs((double)value))), $"{tag} at step {step}");
                compared++;
            }
        }
        Assert.That(compared, Is.GreaterThan(15));
        Assert.That(events.SelectMany(e => e.Summary?.Value.Select(v => v.Tag) ?? []),
            Does.Contain("train/loss").And.Contain("eval/loss").And.Contain("train/learning_rate").And.Contain("eval/perplexity"));
    }

    [Test]
    public void LoggingDirAndRefusals()
    {
        var dir = Shared.TempDir();
        var logs = Path.Combine(dir, "tb");
        OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "out"), "--max-steps", "1",
            "--plain-log", "--report-to", "all", "--logging-dir", logs);
        Assert.That(Directory.GetFiles(logs, "events.out.tfevents.*"), Has.Length.EqualTo(1));
        Assert.That(Directory.Exists(Path.Combine(dir, "out", "runs")), Is.False);
        var none = Ortlora("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "x"), "--max-steps", "1", "--report-to", "none", "tensorboard");
        Assert.That(none.Error, Does.Contain("--report-to none goes alone"));
        var wandb = Ortlora("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "y"), "--max-steps", "1", "--report-to", "wandb");
        Assert.That(wandb.ExitCode, Is.Not.EqualTo(0));
        Assert.That(wandb.Error, Does.Contain("wandb"));
        var blocker = Path.Combine(dir, "a-file");
        File.WriteAllText(blocker, "");
        var unwritable = Ortlora("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "z"), "--max-steps", "1",
            "--report-to", "tensorboard", "--logging-dir", Path.Combine(blocker, "runs"));
        Assert.That(unwritable.ExitCode, Is.Not.EqualTo(0));
        Assert.That(unwritable.Error, Does.Contain("cannot write TensorBoard's event file"));
        OrtloraOk("train", Tiny("model.onnx"), "--data", Tiny("demo.parquet"), "-o", Path.Combine(dir, "plain"), "--max-steps", "1", "--plain-log");
        Assert.That(Directory.Exists(Path.Combine(dir, "plain", "runs")), Is.False, "none by default");
    }

    /// <summary>The reward-driven loops log through the same writer: GRPO's rewards under train/.</summary>
    [Test]
    public void GrpoReportsToTensorBoardToo()
    {
        var dir = Shared.TempDir();
        OrtloraOk([.. TrainGrpoTests.GrpoArgs(dir, "--max-steps", "2"), "--report-to", "tensorboard"]);
        var file = Directory.GetFiles(Path.Combine(dir, "runs"), "events.out.tfevents.*", SearchOption.AllDirectories).Single();
        var tags = ReadEvents(file).SelectMany(e => e.Summary?.Value.Select(v => v.Tag) ?? []).ToList();
        Assert.That(tags, Does.Contain("train/loss").And.Contain("train/reward"));
    }
}
