using Parquet;
using Parquet.Schema;

namespace OrtLora.Graphs;

/// <summary>One Alpaca-style row.</summary>
public sealed record DemoRow(string Instruction, string Input, string Output);

/// <summary>The demo instruction dataset: short questions whose answers follow one fixed sentence per family
/// ("The capital of France is Paris."), so even a tiny random model visibly picks up the pattern within a minute
/// of LoRA training. Every fact is asked in two or three phrasings; the eval split holds one phrasing of some facts
/// (the answer was seen in training under another wording) and some unseen reviews.</summary>
public static class DemoDataset
{
    static readonly (string Country, string City)[] Capitals =
    [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
        ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
        ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Peru", "Lima"), ("Chile", "Santiago"),
        ("Argentina", "Buenos Aires"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Norway", "Oslo"),
        ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
        ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
        ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Australia", "Canberra"), ("Hungary", "Budapest"),
        ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Colombia", "Bogota"), ("South Korea", "Seoul"),
    ];

    static readonly (string Word, string Opposite)[] Opposites =
    [
        ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("day", "night"), ("open", "closed"),
        ("happy", "sad"), ("light", "dark"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("cheap", "expensive"),
        ("rich", "poor"), ("strong", "weak"), ("tall", "short"), ("wet", "dry"), ("loud", "quiet"), ("thick", "thin"),
        ("clean", "dirty"), ("near", "far"), ("win", "lose"), ("push", "pull"), ("buy", "sell"), ("first", "last"),
        ("left", "right"), ("inside", "outside"), ("high", "low"), ("young", "old"), ("love", "hate"), ("true", "false"),
    ];

    static readonly (string Animal, string Sound)[] Sounds =
    [
        ("dog", "woof"), ("cat", "meow"), ("cow", "moo"), ("duck", "quack"), ("sheep", "baa"), ("pig", "oink"),
        ("horse", "neigh"), ("lion", "roar"), ("owl", "hoot"), ("frog", "croak"), ("bee", "buzz"), ("snake", "hiss"),
        ("mouse", "squeak"), ("goat", "bleat"), ("wolf", "howl"), ("crow", "caw"), ("hen", "cluck"), ("dove", "coo"),
        ("donkey", "bray"), ("bird", "tweet"),
    ];

    static readonly string[] ReviewSubjects = ["movie", "book", "meal", "hotel", "phone", "concert", "game", "trip", "song", "class"];
    static readonly string[] PositiveWords = ["great", "wonderful", "excellent", "amazing", "lovely", "fantastic", "delightful", "superb"];
    static readonly string[] NegativeWords = ["terrible", "awful", "boring", "horrible", "dreadful", "disappointing", "poor", "bad"];
    static readonly string[] ReviewFrames = ["The {0} was {1}.", "What a {1} {0}!", "I found the {0} {1}.", "Honestly, this {0} is {1}."];

    /// <summary>Each fact with its phrasings (all sharing one answer). Reviews are one row each: their label follows
    /// from one word, so held-out reviews can be answered from what was learned on others.</summary>
    static IEnumerable<DemoRow[]> Facts(SplitMix random)
    {
        foreach (var (country, city) in Capitals)
        {
            var answer = $"The capital of {country} is {city}.";
            yield return
            [
                new($"What is the capital of {country}?", "", answer),
                new($"Name the capital city of {country}.", "", answer),
                new("Which city is the capital of this country?", country, answer),
            ];
        }
        foreach (var (word, opposite) in Opposites)
        {
            var answer = $"The opposite of {word} is {opposite}.";
            yield return [new("Give the opposite of the word.", word, answer), new($"What is the opposite of {word}?", "", answer)];
        }
        foreach (var (animal, sound) in Sounds)
        {
            var answer = $"A {animal} says {sound}.";
            yield return [new($"What sound does a {animal} make?", "", answer), new($"What does a {animal} say?", "", answer)];
        }
        foreach (var subject in ReviewSubjects)
            foreach (var (words, label) in new[] { (PositiveWords, "positive"), (NegativeWords, "negative") })
                foreach (var word in words.Where(_ => random.Next(2) == 0))
                {
                    var review = string.Format(ReviewFrames[random.Next(ReviewFrames.Length)], subject, word);
                    yield return [new("Is this review positive or negative?", review, $"The review is {label}.")];
                }
    }

    /// <summary>(train, eval), shuffled deterministically. About one fact in seven gives one phrasing to eval, and
    /// one review in four goes to eval.</summary>
    public static (List<DemoRow> Train, List<DemoRow> Eval) Build(int seed = 7)
    {
        var random = new SplitMix(seed);
        var train = new List<DemoRow>();
        var eval = new List<DemoRow>();
        foreach (var phrasings in Facts(random))
        {
            // A review is one row: hold out one in four, so eval has unseen reviews to judge.
            int held = random.Next(phrasings.Length == 1 ? 4 : 7) == 0 ? random.Next(phrasings.Length) : -1;
            for (int i = 0; i < phrasings.Length; i++) (i == held ? eval : train).Add(phrasings[i]);
        }
        random.Shuffle(train);
        random.Shuffle(eval);
        return (train, eval);
    }

    public static readonly string[] Columns = ["instruction", "input", "output"];

    /// <summary>Writes the rows as Parquet (one row group, three string columns), atomically.</summary>
    public static void Write(string path, IReadOnlyList<DemoRow> rows) =>
        WriteStrings(path, Columns, [rows.Select(r => r.Instruction), rows.Select(r => r.Input), rows.Select(r => r.Output)]);

    /// <summary>String columns as Parquet (one row group), atomically: the demo files' one layout.</summary>
    internal static void WriteStrings(string path, string[] names, IEnumerable<string>[] columns)
    {
        var fields = names.Select(c => new DataField<string>(c)).ToArray();
        using var buffer = new MemoryStream();
        WriteAsync(buffer, fields, columns).GetAwaiter().GetResult();
        ModelFiles.WriteAtomically(path, buffer.ToArray());
    }

    static async Task WriteAsync(Stream stream, DataField<string>[] fields, IEnumerable<string>[] columns)
    {
        await using var writer = await ParquetWriter.CreateAsync(new ParquetSchema(fields), stream);
        using var group = writer.CreateRowGroup();
        for (int i = 0; i < fields.Length; i++) await group.WriteAsync(fields[i], columns[i].ToArray());
    }

    public static List<DemoRow> Read(string path) => ReadAsync(path).GetAwaiter().GetResult();

    static async Task<List<DemoRow>> ReadAsync(string path)
    {
        await using var reader = await ParquetReader.CreateAsync(path);
        var fields = reader.Schema.GetDataFields();
        var rows = new List<DemoRow>();
        for (int g = 0; g < reader.RowGroupCount; g++)
        {
            using var group = reader.OpenRowGroupReader(g);
            var columns = new string?[Columns.Length][];
            for (int c = 0; c < Columns.Length; c++)
            {
                var field = fields.Single(f => f.Name == Columns[c]);
                columns[c] = new string?[group.RowCount];
                await group.ReadAsync(field, columns[c].AsMemory());
            }
            for (int r = 0; r < group.RowCount; r++) rows.Add(new(columns[0][r] ?? "", columns[1][r] ?? "", columns[2][r] ?? ""));
        }
        return rows;
    }
}

/// <summary>A small seeded generator with a stable sequence on every platform and .NET version.</summary>
public sealed class SplitMix(int seed)
{
    ulong _state = (ulong)(uint)seed * 0x9E3779B97F4A7C15UL;

    public ulong NextUInt64()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public int Next(int bound) => (int)(NextUInt64() % (ulong)bound);

    public void Shuffle<T>(IList<T> list)
    {
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
    }
}
