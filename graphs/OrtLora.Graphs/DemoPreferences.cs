using System.Text.RegularExpressions;

namespace OrtLora.Graphs;

/// <summary>The demo dataset as preference pairs (TRL's preference format: prompt, chosen, rejected): each row's Alpaca
/// prompt, its answer chosen, and a wrong answer of the same kind rejected: another country's capital, another word's
/// opposite, another animal's sound, the other review label. So DPO has to learn which answer fits the question, not
/// merely which sentences to avoid.</summary>
public static partial class DemoPreferences
{
    public sealed record Pair(string Prompt, string Chosen, string Rejected);

    public static readonly string[] Columns = ["prompt", "chosen", "rejected"];

    /// <summary>The pairs of <paramref name="rows"/>, in order. The wrong answer takes the next distinct value of its kind
    /// in the order the answers first appear (deterministic, and never the right one).</summary>
    public static List<Pair> Build(IReadOnlyList<DemoRow> rows)
    {
        var kinds = new (Regex Pattern, Func<Match, string, string> Answer)[]
        {
            (Capital(), (m, city) => $"The capital of {m.Groups[1].Value} is {city}."),
            (Opposite(), (m, word) => $"The opposite of {m.Groups[1].Value} is {word}."),
            (Sound(), (m, sound) => $"A {m.Groups[1].Value} says {sound}."),
        };
        // the values each kind's answers hold (group 2), in order of first appearance
        var values = kinds.Select(k => rows.Select(r => k.Pattern.Match(r.Output)).Where(m => m.Success).Select(m => m.Groups[2].Value).Distinct().ToList()).ToList();
        var pairs = new List<Pair>(rows.Count);
        foreach (var row in rows)
        {
            string rejected = row.Output switch
            {
                "The review is positive." => "The review is negative.",
                "The review is negative." => "The review is positive.",
                _ => Wrong(row.Output),
            };
            pairs.Add(new Pair(TinyAssets.AlpacaText(row with { Output = "" }), row.Output, rejected));
        }
        return pairs;

        string Wrong(string answer)
        {
            for (int k = 0; k < kinds.Length; k++)
                if (kinds[k].Pattern.Match(answer) is { Success: true } m)
                {
                    var kind = values[k];
                    return kinds[k].Answer(m, kind[(kind.IndexOf(m.Groups[2].Value) + 1) % kind.Count]);
                }
            throw new InvalidOperationException($"no wrong answer for '{answer}'");
        }
    }

    [GeneratedRegex(@"^The capital of (.+) is (.+)\.$")] private static partial Regex Capital();
    [GeneratedRegex(@"^The opposite of (.+) is (.+)\.$")] private static partial Regex Opposite();
    [GeneratedRegex(@"^A (.+) says (.+)\.$")] private static partial Regex Sound();

    /// <summary>Writes the pairs as Parquet (one row group, three string columns), atomically.</summary>
    public static void Write(string path, IReadOnlyList<Pair> pairs) =>
        DemoDataset.WriteStrings(path, Columns, [pairs.Select(p => p.Prompt), pairs.Select(p => p.Chosen), pairs.Select(p => p.Rejected)]);
}
