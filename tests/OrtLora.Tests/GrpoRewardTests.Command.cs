using System.Diagnostics;
using System.Text.Json;
using OrtLora.Training.Grpo;

namespace OrtLora.Tests;

/// <summary>command:CMD with POSIX sh, sed and awk scripts (CI may have no Python).</summary>
public partial class GrpoRewardTests
{
    static void RequirePosixShell()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) Assert.Ignore("the command reward tests use POSIX sh scripts");
    }

    /// <summary>A script file in a fresh folder, and the command line that runs it with sh.</summary>
    static (string Command, string Dir) Script(string body, string args = "")
    {
        var dir = Shared.TempDir();
        var path = Path.Combine(dir, "reward.sh");
        File.WriteAllText(path, body.ReplaceLineEndings("\n"));
        return ($"sh '{path}'{args}", dir);
    }

    static RewardInput Input(int tokens, bool truncated, string? solution, string completion = "c") =>
        new("p", completion, tokens, truncated, new Dictionary<string, string?> { ["solution"] = solution });

    /// <summary>Score, run within a minute: a protocol bug that blocks on a pipe fails the test instead of hanging the
    /// run (the test's Dispose then kills the process, freeing the thread).</summary>
    static Task<double?[]> Bounded(IRewardFunction reward, RewardInput[] batch)
    {
        var scoring = Task.Run(() => reward.Score(batch));
        try { scoring.Wait(TimeSpan.FromSeconds(60)); }
        catch (AggregateException) { } // a fault: the caller looks at it
        if (!scoring.IsCompleted) Assert.Fail("Score neither answered nor failed within 60 s");
        return scoring;
    }

    static double?[] Scores(IRewardFunction reward, params RewardInput[] batch) => Bounded(reward, batch).GetAwaiter().GetResult();

    static OrtLoraException ScoreFails(IRewardFunction reward, params RewardInput[] batch)
    {
        var scoring = Bounded(reward, batch);
        if (!scoring.IsFaulted) Assert.Fail($"Score answered [{string.Join(", ", scoring.Result)}] instead of failing");
        Assert.That(scoring.Exception!.InnerException, Is.TypeOf<OrtLoraException>());
        return (OrtLoraException)scoring.Exception.InnerException!;
    }

    // For each request line: null where solution is null, −L where truncated, else L / 4 — read from the request's
    // arrays, so the scores can only be right if the request reached the script whole and the answer came back in order.
    const string LengthScript = """
        log="$1"
        echo started >> "$log"
        echo "reward script ready" >&2
        while IFS= read -r line; do
          lengths=$(printf '%s\n' "$line" | sed -n 's/.*"completion_lengths":\[\([^]]*\)\].*/\1/p')
          truncated=$(printf '%s\n' "$line" | sed -n 's/.*"truncated":\[\([^]]*\)\].*/\1/p')
          solution=$(printf '%s\n' "$line" | sed -n 's/.*"solution":\[\([^]]*\)\].*/\1/p')
          awk -v l="$lengths" -v t="$truncated" -v s="$solution" 'BEGIN {
            n = split(l, L, ","); split(t, T, ","); split(s, S, ","); out = "["
            for (i = 1; i <= n; i++) { v = (S[i] == "null") ? "null" : (T[i] == "true" ? -L[i] : L[i] / 4); out = out (i > 1 ? "," : "") v }
            print out "]"
          }'
        done
        echo "stdin closed" >> "$log"
        """;

    [Test]
    public void CommandScoresComeBackInOrderFromTheRequest()
    {
        RequirePosixShell();
        var (command, dir) = Script(LengthScript);
        var log = Path.Combine(dir, "log.txt");
        var reward = RewardFunctions.Parse($"command[length_score]:{command} '{log}'", 20);
        try
        {
            Assert.That(reward.Name, Is.EqualTo("length_score"));
            Assert.That(reward.RequiredColumns, Is.Empty);
            // newlines, quotes and backslashes in a completion must not break the one-line framing
            var first = Scores(reward,
                Input(3, false, "a", "line one\nline two"),
                Input(5, true, "b", "say \"hi\" \\ [x]"),
                Input(8, false, null, "caf\u00e9 \U0001F600"),
                Input(2, false, "c"));
            Assert.That(first, Is.EqualTo(new double?[] { 0.75, -5.0, null, 0.5 }));
            Assert.That(Scores(reward, Input(10, false, "z")), Is.EqualTo(new double?[] { 2.5 }));
            Assert.That(reward.Score([]), Is.Empty);
            Assert.That(File.ReadAllLines(log), Is.EqualTo(new[] { "started" }), "one process serves every batch");
        }
        finally { reward.Dispose(); }
        // Dispose closes stdin, and the script's loop ends cleanly
        Assert.That(File.ReadAllLines(log), Is.EqualTo(new[] { "started", "stdin closed" }));
        using var plain = RewardFunctions.Parse("command:true", 20);
        Assert.That(plain.Name, Is.EqualTo("command"));
    }

    [Test]
    public void CommandRequestCarriesTrlsKeywordArguments()
    {
        RequirePosixShell();
        var (command, dir) = Script("""
            while IFS= read -r line; do printf '%s\n' "$line" >> "$1"; echo '[0.5, null]'; done
            """);
        var saved = Path.Combine(dir, "request.jsonl");
        using var reward = RewardFunctions.Parse($"command:{command} '{saved}'", 20);
        var batch = new[]
        {
            new RewardInput("What is 6*7?", "<think>\n6*7</think> 42", 7, false,
                new Dictionary<string, string?> { ["solution"] = "42", ["level"] = "easy", ["prompts"] = "a column named like a keyword" }),
            new RewardInput("Say \"\u00e9\"", "\u00e9\t\\", 12, true, new Dictionary<string, string?> { ["solution"] = null }),
        };
        Assert.That(Scores(reward, batch), Is.EqualTo(new double?[] { 0.5, null }));

        var lines = File.ReadAllLines(saved);
        Assert.That(lines, Has.Length.EqualTo(1));
        using var request = JsonDocument.Parse(lines[0]);
        var root = request.RootElement;
        Assert.That(root.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "prompts", "completions", "completion_lengths", "truncated", "solution", "level" }));
        Assert.That(root.GetProperty("prompts").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "What is 6*7?", "Say \"\u00e9\"" }));
        Assert.That(root.GetProperty("completions").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "<think>\n6*7</think> 42", "\u00e9\t\\" }));
        Assert.That(root.GetProperty("completion_lengths").EnumerateArray().Select(e => e.GetInt32()), Is.EqualTo(new[] { 7, 12 }));
        Assert.That(root.GetProperty("truncated").EnumerateArray().Select(e => e.GetBoolean()), Is.EqualTo(new[] { false, true }));
        Assert.That(root.GetProperty("solution").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "42", null }));
        Assert.That(root.GetProperty("level").EnumerateArray().Select(e => e.GetString()), Is.EqualTo(new[] { "easy", null }), "a column a row lacks is null");
        Assert.That(lines[0].All(char.IsAscii), "non-ASCII is escaped, so any reader encoding gets the same text");
    }

    [TestCase("echo 'not json at all'", "answered 'not json at all', not one line holding a JSON array")]
    [TestCase("echo '{\"scores\": [1, 2]}'", "not one line holding a JSON array")]
    [TestCase("echo '[1]'", "answered 1 scores for 2 completions")]
    [TestCase("echo '[1, 2, 3]'", "answered 3 scores for 2 completions")]
    [TestCase("echo '[1, \"high\"]'", "element 1 is string '\"high\"', not a number or null")]
    [TestCase("echo '[true, 1]'", "element 0 is true 'true', not a number or null")]
    [TestCase("echo '[NaN, 1]'", "not one line holding a JSON array")]
    [TestCase("echo", "answered '', not one line")]
    public void CommandBadAnswersNameTheCommand(string answer, string why)
    {
        RequirePosixShell();
        var (command, _) = Script($"while IFS= read -r line; do {answer}; done\n");
        using var reward = RewardFunctions.Parse("command:" + command, 20);
        Assert.That(reward.Score([]), Is.Empty, "an empty batch needs no exchange");
        var ex = ScoreFails(reward, Input(1, false, "a"), Input(2, false, "b"));
        Assert.That(ex.Message, Does.Contain($"reward command '{command}'"));
        Assert.That(ex.Message, Does.Contain(why));
    }

    [Test]
    public void CommandThatExitsReportsItsStderr()
    {
        RequirePosixShell();
        var (command, _) = Script("echo 'loading weights' >&2\necho 'reward model missing: /models/rm.onnx' >&2\nexit 3\n");
        using var reward = RewardFunctions.Parse("command:" + command, 20);
        var ex = ScoreFails(reward, Input(1, false, "a"));
        Assert.That(ex.Message, Does.Contain($"reward command '{command}' exited with code 3 before answering"));
        Assert.That(ex.Message, Does.Contain("loading weights\nreward model missing: /models/rm.onnx"));
    }

    [Test]
    public void CommandThatExitsLeavingAChildOnStderrStillReportsPromptly()
    {
        RequirePosixShell();
        // the background sleep keeps stdout and stderr open after the shell exits: waiting for their EOF would take 20 s
        using var reward = RewardFunctions.Parse("command:sleep 20 & echo 'boom' >&2; exit 2", 20);
        var clock = Stopwatch.StartNew();
        var ex = ScoreFails(reward, Input(1, false, "a"));
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(12)));
        Assert.That(ex.Message, Does.Contain("exited with code 2 before answering"));
        Assert.That(ex.Message, Does.Contain("boom"));
    }

    [Test]
    public void CommandThatCannotBeFoundReportsTheShellsError()
    {
        RequirePosixShell();
        const string missing = "/nonexistent/ortlora-reward-script";
        using var reward = RewardFunctions.Parse("command:" + missing, 20);
        var ex = ScoreFails(reward, Input(1, false, "a"));
        Assert.That(ex.Message, Does.Contain($"reward command '{missing}' exited with code 127"));
        Assert.That(ex.Message, Does.Contain("its stderr ends:").And.Contains(missing), "sh names what it could not find");
    }

    [Test]
    public void CommandStderrTailIsBounded()
    {
        RequirePosixShell();
        var (command, _) = Script("""
            awk 'BEGIN { for (i = 0; i < 5000; i++) print "log line " i > "/dev/stderr" }'
            exit 1
            """);
        using var reward = RewardFunctions.Parse("command:" + command, 20);
        var ex = ScoreFails(reward, Input(1, false, "a"));
        Assert.That(ex.Message, Does.Contain("log line 4999"));
        Assert.That(ex.Message, Does.Not.Contain("log line 4900\n"), "only the last ~500 characters");
        Assert.That(ex.Message, Has.Length.LessThan(800));
    }

    [Test]
    public void CommandChattyStderrDoesNotDeadlock()
    {
        RequirePosixShell();
        // ~1 MB on stderr before each answer: far past a pipe buffer, so an unread stderr would block the script
        var (command, _) = Script("""
            while IFS= read -r line; do
              awk 'BEGIN { for (i = 0; i < 20000; i++) print "progress ........................................ " i > "/dev/stderr" }'
              echo '[1]'
            done
            """);
        using var reward = RewardFunctions.Parse("command:" + command, 20);
        Assert.That(Scores(reward, Input(1, false, "a")), Is.EqualTo(new double?[] { 1.0 }));
    }

    [Test]
    public void DisposeKillsAProcessThatIgnoresStdin()
    {
        RequirePosixShell();
        var dir = Shared.TempDir();
        var pidFile = Path.Combine(dir, "pid");
        var reward = RewardFunctions.Parse($"command:echo $$ > '{pidFile}.tmp' && mv '{pidFile}.tmp' '{pidFile}' && exec sleep 120", 20);
        var clock = Stopwatch.StartNew();
        while (!File.Exists(pidFile) && clock.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(20);
        Assert.That(File.Exists(pidFile), "the command started");
        int pid = int.Parse(File.ReadAllText(pidFile).Trim());
        Assert.That(Alive(pid), "sleeping before Dispose");

        clock.Restart();
        reward.Dispose();
        Assert.That(clock.Elapsed, Is.LessThan(TimeSpan.FromSeconds(10)));
        var gone = Stopwatch.StartNew();
        while (Alive(pid) && gone.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(20);
        Assert.That(Alive(pid), Is.False, "killed by Dispose, not left to sleep 120 s");
        reward.Dispose(); // twice is harmless
    }

    [Test]
    public void DisposeFreesAScoreWaitingOnAProcessThatNeverAnswers()
    {
        RequirePosixShell();
        var reward = RewardFunctions.Parse("command:exec sleep 120", 20);
        var scoring = Task.Run(() => reward.Score([Input(1, false, "a")]));
        Assert.That(scoring.Wait(TimeSpan.FromMilliseconds(500)), Is.False, "waits for an answer that never comes");
        reward.Dispose();
        var ex = Assert.Throws<AggregateException>(() => scoring.Wait(TimeSpan.FromSeconds(10)));
        Assert.That(ex!.InnerException, Is.TypeOf<ObjectDisposedException>());
    }

    static bool Alive(int pid)
    {
        try { using var p = Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
    }
}
