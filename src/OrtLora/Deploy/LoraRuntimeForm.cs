using Onnx;
using OrtLora.Onnx;

namespace OrtLora.Deploy;

/// <summary>The model side of ONNX Runtime's runtime adapters. ORT's adapter API (RunOptions.AddActiveLoraAdapter)
/// feeds an adapter's parameters as graph inputs by name; an initializer that is also listed in graph.input is an
/// optional input whose default is the initializer. So a model whose LoRA parameters are listed as inputs runs with
/// its own (e.g. zero-B) values when no adapter is active and with the adapter's values when one is, and one session
/// serves any number of adapters.</summary>
public static class LoraRuntimeForm
{
    public static bool IsLoraParameter(string name) => name.EndsWith(".lora_magnitude_vector", StringComparison.Ordinal) || Lora.ModuleNames.IsLoraA(name)
        || Lora.ModuleNames.IsLoraB(name) || Lora.ModuleNames.IsLoraBias(name) || Lora.ModulesToSave.IsWeight(name) || Lora.TrainableTokens.IsRows(name) || Lora.TrainedBiases.IsBias(name);

    /// <summary>Lists every LoRA parameter initializer (name ending .lora_A.weight / .lora_B.weight) in graph.input,
    /// keeping its value as the default. Returns the parameter names (already-listed ones included).</summary>
    public static IReadOnlyList<string> MakeOverridable(OnnxModel model)
    {
        var graph = model.Graph;
        var listed = graph.Input.Select(i => i.Name).ToHashSet();
        var names = new List<string>();
        foreach (var t in graph.Initializer.Where(t => IsLoraParameter(t.Name)))
        {
            names.Add(t.Name);
            if (listed.Contains(t.Name)) continue;
            graph.Input.Add(InputFor(t));
        }
        if (names.Count == 0) throw new OrtLoraException($"{model.Source}: no LoRA parameters (initializers ending .lora_A.weight/.lora_B.weight); inject adapters first");
        // IR version 4 is where initializers stopped having to be inputs and inputs with initializers became overridable defaults.
        if (model.Proto.IrVersion < 4) model.Proto.IrVersion = 4;
        return names;
    }

    internal static ValueInfoProto InputFor(TensorProto t)
    {
        var shape = new TensorShapeProto();
        foreach (var d in t.Dims) shape.Dim.Add(new TensorShapeProto.Types.Dimension { DimValue = d });
        return new ValueInfoProto
        {
            Name = t.Name,
            Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = t.DataType, Shape = shape } },
        };
    }
}
