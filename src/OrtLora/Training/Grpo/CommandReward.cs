using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtLora.Training.Grpo;

/// <summary>An external reward function in any language: <c>command:CMD</c> (metric name "command") or
/// <c>command[NAME]:CMD</c> (metric name NAME). CMD runs once, through <c>/bin/sh -c CMD</c> (Windows:
/// <c>cmd /d /s /c "CMD"</c>), and stays running across batches, so a script loads its model or data once.
/// <para>Protocol, one exchange per Score call: ortlora writes one line of JSON to the process's stdin, an object with
/// the keyword arguments TRL passes to a Python reward function: "prompts", "completions" (strings),
/// "completion_lengths" (token counts), "truncated" (booleans: cut at max_completion_length) and each dataset column
/// as "NAME": [strings or null] (a column named like one of those four is left out). The process answers one line on
/// stdout: a JSON array with one number or null per completion, in order (null: does not apply, like TRL's None;
/// NaN is not JSON, so write null). It must flush after each line (Python: print(json.dumps(scores), flush=True)),
/// and it must print nothing else on stdout; stderr is free for logs (its tail goes into error messages).</para>
/// <para>A process that exits, closes stdout, or answers anything but such an array stops training with an
/// OrtLoraException naming the command. Dispose closes stdin (the process's cue to exit), waits briefly, then kills
/// its process tree.</para></summary>
sealed class CommandReward : IRewardFunction
{
    static readonly string[] FixedKeys = ["prompts", "completions", "completion_lengths", "truncated"];
    const int StderrTail = 500;
    static readonly TimeSpan ExitGrace = TimeSpan.FromSeconds(2);

    readonly string _command;
    readonly Process _process;
    readonly StringBuilder _stderr = new(); // a rolling tail, appended from the async reader's thread
    readonly object _gate = new();
    int _disposed; // 1 once Dispose began
    bool Disposed => Volatile.Read(ref _disposed) != 0;

    public CommandReward(string name, string command)
    {
        Name = name;
        _command = command;
        var start = new ProcessStartInfo
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            // No BOM: a BOM before the first request would make it invalid JSON for the reader.
            StandardInputEncoding = new UTF8Encoding(false),
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        if (OperatingSystem.IsWindows())
        {
            start.FileName = "cmd.exe";
            start.Arguments = $"/d /s /c \"{command}\""; // /s: strip exactly the outer quotes, keep CMD's own
        }
        else
        {
            start.FileName = "/bin/sh";
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add(command);
        }
        _process = new Process { StartInfo = start };
        // Read stderr as it comes: a process that logs more than the pipe buffer holds would otherwise block on a
        // write while ortlora waits for its answer.
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (_stderr)
            {
                _stderr.Append(e.Data).Append('\n');
                if (_stderr.Length > 4 * StderrTail) _stderr.Remove(0, _stderr.Length - StderrTail);
            }
        };
        try { _process.Start(); }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            _process.Dispose();
            throw new OrtLoraException($"reward command '{command}' could not start: {e.Message}", e);
        }
        _process.BeginErrorReadLine();
    }

    public string Name { get; }
    public IReadOnlyList<string> RequiredColumns => []; // it reads whatever columns the data has, all passed along

    public double?[] Score(IReadOnlyList<RewardInput> batch)
    {
        if (batch.Count == 0) return [];
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(Disposed, this);
            string request = Request(batch);
            string? answer;
            try
            {
                _process.StandardInput.Write(request);
                _process.StandardInput.Write('\n');
                _process.StandardInput.Flush();
                answer = ReadAnswer();
            }
            catch (Exception e) when (Broken(e)) // a broken pipe: the process is gone
            {
                ObjectDisposedException.ThrowIf(Disposed, this);
                throw new OrtLoraException(Gone(), e);
            }
            if (answer is null)
            {
                ObjectDisposedException.ThrowIf(Disposed, this); // Dispose ended the process while this Score waited
                throw new OrtLoraException(Gone());
            }
            return Answer(answer, batch.Count);
        }
    }

    /// <summary>The answer line, or null once stdout ends or the process has ended without one. Polled rather than a
    /// plain ReadLine: a process that dies leaving a child holding its stdout (sh -c 'x & y') would send no EOF.</summary>
    string? ReadAnswer()
    {
        var pending = _process.StandardOutput.ReadLineAsync();
        try
        {
            while (!pending.Wait(TimeSpan.FromMilliseconds(100)))
                if (_process.HasExited && !pending.Wait(ExitGrace)) return null; // the grace: a line already in the pipe
            return pending.Result;
        }
        catch (AggregateException e) when (e.InnerException is { } inner && Broken(inner))
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(inner);
            throw;
        }
    }

    static bool Broken(Exception e) => e is IOException or ObjectDisposedException or InvalidOperationException;

    /// <summary>The request line. JSON's default encoder escapes control characters in strings, so the object is one line
    /// whatever the completions hold, and every non-ASCII character (\uXXXX), so a reader
    /// whose stdin decodes in a legacy code page (Python on Windows) still gets the exact text.</summary>
    static string Request(IReadOnlyList<RewardInput> batch)
    {
        var columns = new List<string>(); // in order of first appearance, so the request reads like the dataset
        var seen = new HashSet<string>(FixedKeys, StringComparer.Ordinal);
        foreach (var input in batch)
            foreach (var key in input.Columns.Keys)
                if (seen.Add(key)) columns.Add(key);

        JsonArray Array(Func<RewardInput, JsonNode?> value) => [.. batch.Select(value)];
        var request = new JsonObject
        {
            ["prompts"] = Array(input => input.Prompt),
            ["completions"] = Array(input => input.Completion),
            ["completion_lengths"] = Array(input => input.CompletionTokens),
            ["truncated"] = Array(input => input.Truncated),
        };
        foreach (var column in columns) request[column] = Array(input => input.Columns.GetValueOrDefault(column));
        return request.ToJsonString();
    }

    double?[] Answer(string line, int count)
    {
        const string Expected = "one line holding a JSON array of numbers or nulls, one per completion";
        JsonDocument document;
        try { document = JsonDocument.Parse(line); }
        catch (JsonException) { throw new OrtLoraException($"reward command '{_command}' answered {Quote(line)}, not {Expected}"); }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Array)
                throw new OrtLoraException($"reward command '{_command}' answered {Quote(line)}, not {Expected}");
            if (root.GetArrayLength() != count)
                throw new OrtLoraException($"reward command '{_command}' answered {root.GetArrayLength()} scores for {count} completions");
            var scores = new double?[count];
            int i = 0;
            foreach (var element in root.EnumerateArray())
            {
                scores[i] = element.ValueKind switch
                {
                    JsonValueKind.Number => element.GetDouble(),
                    JsonValueKind.Null => null,
                    _ => throw new OrtLoraException($"reward command '{_command}' answered {Quote(line)}: element {i} is {element.ValueKind.ToString().ToLowerInvariant()} {Quote(element.GetRawText())}, not a number or null"),
                };
                i++;
            }
            return scores;
        }
    }

    /// <summary>Why no answer came: the exit code once the process has ended, and what it last said on stderr.</summary>
    string Gone()
    {
        // Only the untimed WaitForExit() waits for the async stderr reader to finish, so the tail is complete; bounded
        // all the same, since a child the command left running may hold stderr open (or, with stdout closed, the
        // process itself may still run).
        string state = _process.WaitForExit(ExitGrace) ? $"exited with code {ExitCode()}" : "closed its stdout";
        if (_process.HasExited) Task.Run(_process.WaitForExit).Wait(ExitGrace);
        string tail;
        lock (_stderr) tail = _stderr.ToString().TrimEnd();
        if (tail.Length > StderrTail) tail = "…" + tail[^StderrTail..];
        return $"reward command '{_command}' {state} before answering" + (tail.Length > 0 ? $"; its stderr ends:\n{tail}" : "; it wrote nothing on stderr");
    }

    int ExitCode()
    {
        try { return _process.ExitCode; }
        catch (InvalidOperationException) { return -1; }
    }

    static string Quote(string text) => text.Length <= 200 ? $"'{text}'" : $"'{text[..200]}…' ({text.Length} characters)";

    /// <summary>Ends the process: EOF on stdin first (its cue to finish cleanly), then a kill of its tree (sh -c may
    /// have forked CMD) if it is still running after a moment. Not under the Score lock, so it also frees a Score
    /// stuck on a process that never answers (Ctrl+C, a watchdog): that Score then throws.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            if (!_process.HasExited)
            {
                try { _process.StandardInput.Close(); }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { } // broken pipe, or a Score writing
                if (!_process.WaitForExit(ExitGrace)) _process.Kill(entireProcessTree: true);
            }
        }
        catch (InvalidOperationException) { } // it ended between the checks
        catch (System.ComponentModel.Win32Exception) { } // could not be killed: nothing more to do here
        // Free the handle once no Score uses it; should a Score still hang on a process that could not be killed, leave
        // the handle to the finalizer rather than hang here too.
        if (!Monitor.TryEnter(_gate, ExitGrace)) return;
        try { _process.Dispose(); }
        finally { Monitor.Exit(_gate); }
    }
}
