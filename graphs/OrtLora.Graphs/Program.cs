using OrtLora;
using OrtLora.Graphs;

// dotnet run --project graphs/OrtLora.Graphs -- tiny                       regenerates graphs/tiny (committed)
// dotnet run --project graphs/OrtLora.Graphs -- smollm2-135m -o DIR        writes DIR/model.onnx (+ config.json)
//   options: --seed N (default 42), --kv-cache, --external-data
try
{
    var request = GraphsRequest.Parse(args);
    if (request is null)
    {
        Console.Error.WriteLine(GraphsRequest.Usage);
        return 2;
    }
    request.Run();
    return 0;
}
catch (OrtLoraException e)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return 1;
}
