using System.Text.Json;
using System.Text.Json.Nodes;
using Parquet.Schema;
using Parquet.Serialization;

namespace OrtLora.Training.Data;

/// <summary>JSON data files as Hugging Face's `datasets` reads them (one JSON object a line, or one JSON array of
/// objects), turned into Parquet in memory so that <see cref="ParquetDataset"/> reads them like any other file. Text and
/// numbers become string columns; a list of objects with a `role` becomes a list of messages (role, content, name,
/// tool_call_id, tool_calls with their function's name and arguments, arguments written as JSON text as datasets store
/// them); any other list or object (a `tools` column of schemas) becomes its JSON text.</summary>
public static class JsonLines
{
    /// <summary>Whether <paramref name="path"/> names a JSON data file (.jsonl or .json).</summary>
    public static bool Is(string path) =>
        path.EndsWith(".jsonl", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".json", StringComparison.OrdinalIgnoreCase);

    enum Kind { Text, Messages }

    /// <summary>The file's rows as a Parquet file (bytes); errors name the file and the line.</summary>
    public static byte[] ToParquet(string path)
    {
        var rows = Read(path);
        if (rows.Count == 0) throw new OrtLoraException($"{path}: no JSON objects (an empty file?)");
        // Columns in order of first appearance; a column's kind is what its non-null values hold.
        var kinds = new Dictionary<string, Kind>();
        var order = new List<string>();
        foreach (var (line, row) in rows)
            foreach (var (key, value) in row)
            {
                if (value is null) { if (!kinds.ContainsKey(key)) { kinds[key] = Kind.Text; order.Add(key); } continue; }
                var kind = IsMessageList(value) ? Kind.Messages : Kind.Text;
                if (!kinds.TryGetValue(key, out var seen)) { kinds[key] = kind; order.Add(key); }
                else if (seen != kind && rows.Any(r => r.Row[key] is { } v && (IsMessageList(v) ? Kind.Messages : Kind.Text) == seen))
                    throw new OrtLoraException($"{path}: line {line}: '{key}' holds {Describe(kind)} here and {Describe(seen)} in other rows");
                else kinds[key] = kind;
            }
        var schema = new ParquetSchema(order.Select(key => kinds[key] == Kind.Messages ? MessagesField(key) : (Field)new DataField<string>(key)));
        object? Cell(JsonObject row, string key) => row.TryGetPropertyValue(key, out var value) && value is not null
            ? kinds[key] == Kind.Messages ? Messages(value.AsArray()) : Text(value) : null;
        var data = rows.Select(r => (IDictionary<string, object?>)order.ToDictionary(key => key, key => Cell(r.Row, key))).ToList();
        using var buffer = new MemoryStream();
        ParquetSerializer.SerializeUntypedAsync(data, schema, buffer).GetAwaiter().GetResult();
        return buffer.ToArray();
    }

    static string Describe(Kind kind) => kind == Kind.Messages ? "a list of messages" : "text";

    /// <summary>The objects of a JSON Lines file, or of a file holding one JSON array, with their line numbers.</summary>
    static List<(int Line, JsonObject Row)> Read(string path)
    {
        var text = File.ReadAllText(path);
        var rows = new List<(int, JsonObject)>();
        if (text.TrimStart().StartsWith('['))
        {
            JsonArray array;
            try { array = JsonNode.Parse(text)!.AsArray(); }
            catch (Exception e) when (e is JsonException or InvalidOperationException) { throw new OrtLoraException($"{path}: not a JSON array of objects: {e.Message}", e); }
            foreach (var (item, i) in array.Select((item, i) => (item, i)))
                rows.Add((i + 1, item as JsonObject ?? throw new OrtLoraException($"{path}: item {i + 1} of the array is not a JSON object")));
            return rows;
        }
        int number = 0;
        foreach (var line in text.Split('\n'))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            try { rows.Add((number, JsonNode.Parse(line) as JsonObject ?? throw new JsonException("not an object"))); }
            catch (JsonException e)
            {
                // a pretty-printed document (a tokenizer.json, a config) is JSON but not data
                if (rows.Count == 0 && IsJson(text))
                    throw new OrtLoraException($"{path}: one JSON document, not data: data is one JSON object a line (JSON Lines) or one array of objects", e);
                throw new OrtLoraException($"{path}: line {number} is not a JSON object: {e.Message}", e);
            }
        }
        return rows;
    }

    static bool IsJson(string text)
    {
        try { JsonNode.Parse(text); return true; }
        catch (JsonException) { return false; }
    }

    static bool IsMessageList(JsonNode value) => value is JsonArray { Count: > 0 } array && array.All(m => m is JsonObject o && o.ContainsKey("role"));

    /// <summary>A string as itself, a number or boolean as its JSON text, a list or object (tool schemas) as its JSON text.</summary>
    static string Text(JsonNode value) => value is JsonValue v && v.TryGetValue<string>(out var s) ? s : value.ToJsonString();

    /// <summary>A message's content: text, or the text parts of a list of parts (`{"type": "text", "text": ...}`) joined.</summary>
    static string? Content(JsonNode? content) => content switch
    {
        null => null,
        JsonArray parts => string.Concat(parts.OfType<JsonObject>().Where(p => p["type"]?.GetValue<string>() == "text").Select(p => p["text"]?.GetValue<string>())),
        _ => Text(content),
    };

    static List<IDictionary<string, object?>> Messages(JsonArray messages) => [.. messages.OfType<JsonObject>().Select(m => (IDictionary<string, object?>)new Dictionary<string, object?>
    {
        ["role"] = m["role"] is { } role ? Text(role) : null,
        ["content"] = Content(m["content"]),
        ["name"] = m["name"] is { } name ? Text(name) : null,
        ["tool_call_id"] = m["tool_call_id"] is { } id ? Text(id) : null,
        ["tool_calls"] = m["tool_calls"] is JsonArray calls ? calls.OfType<JsonObject>().Select(c => (IDictionary<string, object?>)new Dictionary<string, object?>
        {
            ["id"] = c["id"] is { } callId ? Text(callId) : null,
            ["type"] = c["type"] is { } type ? Text(type) : null,
            ["function"] = c["function"] is JsonObject f ? new Dictionary<string, object?>
            {
                ["name"] = f["name"] is { } fn ? Text(fn) : null,
                ["arguments"] = f["arguments"] is { } arguments ? Text(arguments) : null,
            } : null,
        }).ToList() : null,
    })];

    /// <summary>Hugging Face's message format as a Parquet list of structs (the fields ParquetDataset reads).</summary>
    static ListField MessagesField(string name) => new(name, new StructField("element",
        new DataField<string>("role"), new DataField<string>("content"), new DataField<string>("name"), new DataField<string>("tool_call_id"),
        new ListField("tool_calls", new StructField("element", new DataField<string>("id"), new DataField<string>("type"),
            new StructField("function", new DataField<string>("name"), new DataField<string>("arguments"))))));
}
