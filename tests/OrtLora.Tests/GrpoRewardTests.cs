using System.Diagnostics;
using System.Text.Json;
using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

public partial class GrpoRewardTests
{
    static RewardInput Row(string completion, string? solution = "x", int tokens = 1, bool truncated = false, string column = "solution") =>
        new("prompt", completion, tokens, truncated, new Dictionary<string, string?> { [column] = solution });

    static double?[] Score(string spec, params RewardInput[] batch)
    {
        using var reward = RewardFunctions.Parse(spec, maxCompletionLength: 20);
        return reward.Score(batch);
    }

    static double? ScoreOne(string spec, RewardInput input) => Score(spec, input)[0];

    // ---- exact_match / contains ----

    [TestCase("42", "42", 1.0)]
    [TestCase("  42 \n", "42", 1.0)] // trimmed
    [TestCase("a  b\n\tc", "a b c", 1.0)] // whitespace runs collapse to one space
    [TestCase("a b c", "a\n\nb   c ", 1.0)] // the expected value is normalized too
    [TestCase("ab c", "a b c", 0.0)] // whitespace is collapsed, not removed
    [TestCase("Paris", "paris", 0.0)] // case-sensitive
    [TestCase("The answer is 42", "42", 0.0)] // equality, not containment
    [TestCase("", "", 1.0)]
    public void ExactMatch(string completion, string solution, double expected)
    {
        Assert.That(ScoreOne("exact_match", Row(completion, solution)), Is.EqualTo(expected));
    }

    [TestCase("The answer is 42.", "42", 1.0)]
    [TestCase("THE CAPITAL IS PARIS", "paris", 1.0)] // ignores case
    [TestCase("first\n   second  line", "first second", 1.0)] // both normalized before the search
    [TestCase("first-second", "first second", 0.0)]
    [TestCase("4 2", "42", 0.0)]
    [TestCase("anything", "", 1.0)] // an empty value is contained in every completion
    public void Contains(string completion, string solution, double expected)
    {
        Assert.That(ScoreOne("contains", Row(completion, solution)), Is.EqualTo(expected));
    }

    [Test]
    public void NullColumnValueScoresNullAndKeepsOrder()
    {
        var batch = new[] { Row("42", "42"), Row("42", null), Row("41", "42") };
        Assert.That(Score("exact_match", batch), Is.EqualTo(new double?[] { 1.0, null, 0.0 }));
        Assert.That(Score("contains", batch), Is.EqualTo(new double?[] { 1.0, null, 0.0 }));
    }

    [Test]
    public void ColumnCanBeNamed()
    {
        using var reward = RewardFunctions.Parse("exact_match:answer", 20);
        Assert.That(reward.RequiredColumns, Is.EqualTo(new[] { "answer" }));
        Assert.That(reward.Name, Is.EqualTo("exact_match:answer"));
        Assert.That(reward.Score([Row("7", "7", column: "answer"), Row("7", "8", column: "answer")]), Is.EqualTo(new double?[] { 1.0, 0.0 }));

        using var byDefault = RewardFunctions.Parse("contains", 20);
        Assert.That(byDefault.RequiredColumns, Is.EqualTo(new[] { "solution" }));
        Assert.That(byDefault.Name, Is.EqualTo("contains"));
        // the column read is the one named, not whichever the row has
        var ex = Assert.Throws<OrtLoraException>(() => reward.Score([Row("7", "7")]));
        Assert.That(ex!.Message, Does.Contain("'answer'"));
    }

    // ---- think_format (TRL's think_format_reward) ----

    [TestCase("<think>\nThis is my reasoning.\n</think>\nThis is my answer.", 1.0)] // TRL's docstring examples
    [TestCase("<think>\nThis is my reasoning.\nThis is my answer.", 0.0)]
    [TestCase("<think></think>", 1.0)]
    [TestCase("<think>a</think>b<think>c</think>", 0.0)] // a second <think> anywhere after the first
    [TestCase("<think>a<think>b</think>", 0.0)]
    [TestCase("<think>a</think>\n<answer>b</answer>\n", 1.0)] // DOTALL: text after </think> spans lines
    [TestCase(" <think>a</think>", 0.0)] // must open the completion
    [TestCase("answer <think>a</think>", 0.0)]
    [TestCase("<think>a</think>b</think>", 1.0)] // only a second opening tag is rejected
    [TestCase("<THINK>a</THINK>", 0.0)]
    public void ThinkFormat(string completion, double expected)
    {
        Assert.That(ScoreOne("think_format", Row(completion)), Is.EqualTo(expected));
    }

    [Test]
    public void ThinkFormatLogsUnderTrlsName()
    {
        using var reward = RewardFunctions.Parse("think_format", 20);
        Assert.That(reward.Name, Is.EqualTo("think_format_reward"));
        Assert.That(reward.RequiredColumns, Is.Empty);
    }

    // ---- regex ----

    [TestCase(@"\d+", "abc 123", 1.0)] // searches anywhere
    [TestCase(@"^\d+$", "abc 123", 0.0)]
    [TestCase(@"^a.b$", "a\nb", 0.0)] // default options: '.' stops at a newline
    [TestCase(@"(?s)^a.b$", "a\nb", 1.0)]
    [TestCase(@"answer: (yes|no)", "final answer: no", 1.0)] // colons after the first belong to the pattern
    [TestCase(@"Yes", "yes", 0.0)]
    public void Regex(string pattern, string completion, double expected)
    {
        using var reward = RewardFunctions.Parse("regex:" + pattern, 20);
        Assert.That(reward.Name, Is.EqualTo("regex"));
        Assert.That(reward.Score([Row(completion)]), Is.EqualTo(new double?[] { expected }));
    }

    // ---- soft_overlong_punishment (TRL's get_soft_overlong_punishment) ----

    // max 20, cache 4: 0 up to 16, then (16 − L) / 4 up to 20, then −1
    [TestCase(1, 0.0)]
    [TestCase(16, 0.0)] // L = max − cache
    [TestCase(17, -0.25)] // max − cache + 1
    [TestCase(18, -0.5)]
    [TestCase(19, -0.75)]
    [TestCase(20, -1.0)] // L = max
    [TestCase(21, -1.0)] // max + 1
    [TestCase(500, -1.0)]
    public void SoftOverlongPunishment(int tokens, double expected)
    {
        using var reward = RewardFunctions.Parse("soft_overlong_punishment:4", 20);
        Assert.That(reward.Score([Row("c", tokens: tokens)])[0], Is.EqualTo(expected));
    }

    [Test]
    public void SoftOverlongPunishmentDefaultsAndBounds()
    {
        // default cache: max / 5 = 20 / 5 = 4, so the ramp starts after 16 tokens
        using var byDefault = RewardFunctions.Parse("soft_overlong_punishment", 20);
        Assert.That(byDefault.Name, Is.EqualTo("soft_overlong_punishment_reward"));
        Assert.That(byDefault.Score([Row("c", tokens: 16), Row("c", tokens: 17), Row("c", tokens: 19)]), Is.EqualTo(new double?[] { 0.0, -0.25, -0.75 }));
        // max 4: 4 / 5 = 0 → cache 1, a cliff of one token: 0 at 3, −1 at 4
        using var tiny = RewardFunctions.Parse("soft_overlong_punishment", 4);
        Assert.That(tiny.Score([Row("c", tokens: 3), Row("c", tokens: 4)]), Is.EqualTo(new double?[] { 0.0, -1.0 }));
        // cache = max: the ramp spans the whole budget
        using var whole = RewardFunctions.Parse("soft_overlong_punishment:10", 10);
        Assert.That(whole.Score([Row("c", tokens: 0), Row("c", tokens: 5), Row("c", tokens: 10), Row("c", tokens: 11)]), Is.EqualTo(new double?[] { 0.0, -0.5, -1.0, -1.0 }));
        // cache 3 of 10: (7 − 8) / 3, an inexact fraction
        using var third = RewardFunctions.Parse("soft_overlong_punishment:3", 10);
        Assert.That(third.Score([Row("c", tokens: 8)])[0], Is.EqualTo(-1.0 / 3.0));
    }

    // ---- parse errors ----

    [TestCase("exact_mach", "unknown reward function 'exact_mach'")]
    [TestCase("", "unknown reward function ''")]
    [TestCase("regex", "regex needs a pattern")]
    [TestCase("regex:", "regex needs a pattern")]
    [TestCase("exact_match:", "column name")]
    [TestCase("think_format:x", "think_format takes no argument")]
    [TestCase("command", "command needs a command line")]
    [TestCase("command:  ", "command needs a command line")]
    [TestCase("command[]:true", "NAME in command[NAME]:CMD")]
    [TestCase("command[a b]:true", "NAME in command[NAME]:CMD")]
    [TestCase("soft_overlong_punishment:abc", "CACHE 'abc' is not an integer")]
    public void MalformedSpecsListTheForms(string spec, string why)
    {
        var ex = Assert.Throws<OrtLoraException>(() => RewardFunctions.Parse(spec, 20).Dispose());
        Assert.That(ex!.Message, Does.Contain(why));
        foreach (var form in new[] { "exact_match[:COLUMN]", "contains[:COLUMN]", "think_format", "regex:PATTERN", "soft_overlong_punishment[:CACHE]", "command:CMD", "command[NAME]:CMD" })
            Assert.That(ex.Message, Does.Contain(form));
    }

    [Test]
    public void NamesCoverEveryKeyword()
    {
        Assert.That(RewardFunctions.Names, Is.EqualTo(new[] { "exact_match", "contains", "think_format", "regex", "soft_overlong_punishment", "command", "model" }));
        // each name is one Parse knows: it makes a function, or asks for its argument
        foreach (var name in RewardFunctions.Names)
        {
            try { RewardFunctions.Parse(name, 20).Dispose(); }
            catch (OrtLoraException e) { Assert.That(e.Message, Does.Not.Contain("unknown reward function"), name); }
        }
    }

    [TestCase("(unclosed")]
    [TestCase("a{2,1}")]
    [TestCase("[z-a]")]
    public void InvalidRegexNamesThePattern(string pattern)
    {
        var ex = Assert.Throws<OrtLoraException>(() => RewardFunctions.Parse("regex:" + pattern, 20).Dispose());
        Assert.That(ex!.Message, Does.Contain($"'{pattern}'"));
    }

    [TestCase("soft_overlong_punishment:0", 20, "CACHE 0 must lie in [1, 20]")]
    [TestCase("soft_overlong_punishment:-3", 20, "CACHE -3 must lie in [1, 20]")]
    [TestCase("soft_overlong_punishment:21", 20, "CACHE 21 must lie in [1, 20]")]
    [TestCase("soft_overlong_punishment", 0, "max_completion_length is 0")]
    public void BadCache(string spec, int max, string why)
    {
        var ex = Assert.Throws<OrtLoraException>(() => RewardFunctions.Parse(spec, max).Dispose());
        Assert.That(ex!.Message, Does.Contain(why));
    }
}
