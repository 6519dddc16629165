using Google.Protobuf;

namespace OrtLora.Training.TensorBoard;

/// <summary>Writes scalars as TensorBoard reads them: an events.out.tfevents.* file of TFRecord records (length,
/// masked CRC-32C of the length, the serialized Event, masked CRC-32C of it), opened with the file_version event.
/// Every record is appended and the file closed again, so a killed run keeps what it logged, as metrics.jsonl does.</summary>
public sealed class TensorBoardWriter
{
    static int _writers;
    public string Path { get; }

    public TensorBoardWriter(string logDir)
    {
        Directory.CreateDirectory(logDir);
        var now = DateTimeOffset.UtcNow;
        // torch's SummaryWriter's name: time, host, process and a counter of the process's writers
        Path = System.IO.Path.Combine(logDir, $"events.out.tfevents.{now.ToUnixTimeSeconds()}.{Environment.MachineName}.{Environment.ProcessId}.{Interlocked.Increment(ref _writers)}");
        Write(new Event { WallTime = now.ToUnixTimeMilliseconds() / 1000.0, FileVersion = "brain.Event:2" });
    }

    /// <summary>One step's values, as one Event.</summary>
    public void Scalars(long step, IEnumerable<(string Tag, double Value)> values)
    {
        var summary = new Summary();
        foreach (var (tag, value) in values) summary.Value.Add(new Summary.Types.Value { Tag = tag, SimpleValue = (float)value });
        if (summary.Value.Count == 0) return;
        Write(new Event { WallTime = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0, Step = step, Summary = summary });
    }

    void Write(Event e)
    {
        var data = e.ToByteArray();
        var header = BitConverter.GetBytes((ulong)data.Length); // little-endian, as the format is (and this machine)
        using var file = new FileStream(Path, FileMode.Append, FileAccess.Write, FileShare.Read);
        file.Write(header);
        file.Write(BitConverter.GetBytes(MaskedCrc(header)));
        file.Write(data);
        file.Write(BitConverter.GetBytes(MaskedCrc(data)));
    }

    /// <summary>TFRecord's masked CRC: the CRC-32C rotated right by 15 bits, plus a constant.</summary>
    public static uint MaskedCrc(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return unchecked(((crc >> 15) | (crc << 17)) + 0xa282ead8u);
    }

    static readonly uint[] Table = BuildTable();

    static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0x82F63B78u ^ (c >> 1) : c >> 1; // Castagnoli, reflected
            table[i] = c;
        }
        return table;
    }

    /// <summary>CRC-32C (Castagnoli), the checksum TFRecord uses.</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (var b in data) crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return ~crc;
    }
}
