using Onnx;
using OrtLora.Autodiff;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Training.Engine;

/// <summary>The graphs that update the parameters, built from <see cref="Gradients"/>: one Run per optimizer step, or
/// accumulation per micro-batch and then an apply graph; clipping and AdamW.</summary>
public sealed partial class TrainingGraph
{
    /// <summary>Forward, backward, clipping and AdamW in one graph.</summary>
    /// <param name="hostUpdated">parameters the host updates (<see cref="HostAdamW"/>): the graph outputs their gradients
    /// (grad.P) and the clip coefficient, and counts them in the global norm</param>
    public ModelProto BuildStep(AdamWOptions options, IReadOnlySet<string>? hostUpdated = null)
    {
        var proto = Gradients.Clone();
        var g = new GraphEditor(proto.Graph);
        AddOptimizer(proto, g, p => ScalesLoss ? ScaledGradients[p] : GradOf(p), options, ScalesLoss ? LossScale : null, hostUpdated ?? new HashSet<string>(), GradOf);
        return proto;
    }

    /// <summary>Forward and backward adding <c>grad_scale · grad</c> into the accumulators, a bundle of parameters at a time;
    /// the parameters in <paramref name="hostUpdated"/> output their gradient (grad.P) for the host to add.</summary>
    public ModelProto BuildAccumulate(IReadOnlySet<string>? hostUpdated = null)
    {
        var proto = Gradients.Clone();
        var g = new GraphEditor(proto.Graph);
        proto.Graph.Input.Add(Input(GradScale, (int)DT.Float, []));
        proto.Graph.Output.Clear();
        foreach (var reported in ReportedOutputs) proto.Graph.Output.Add(new ValueInfoProto { Name = reported });
        var inGraph = Parameters.Where(p => hostUpdated?.Contains(p) != true).ToList();
        foreach (var p in inGraph)
        {
            proto.Graph.Input.Add(Input(AccumulatorOf(p), (int)DT.Float, ParameterShapes[p].Select(d => (object)d)));
            proto.Graph.Output.Add(new ValueInfoProto { Name = Updated(AccumulatorOf(p)) });
        }
        foreach (var p in Parameters.Except(inGraph)) proto.Graph.Output.Add(new ValueInfoProto { Name = GradOf(p) });
        foreach (var bundle in ParameterBundle.Form(inGraph, ParameterShapes))
        {
            var joined = ScalesLoss ? g.Add("Div", [bundle.Join(g, p => ScaledGradients[p], "accumulate"), LossScale], name: "accumulate/unscale")
                : bundle.Join(g, GradOf, "accumulate");
            var scaled = g.Add("Mul", [joined, GradScale], name: "accumulate/Mul");
            var sum = g.Add("Add", [bundle.Join(g, AccumulatorOf, "accumulate"), scaled], name: "accumulate/Add");
            bundle.Unjoin(g, sum, "accumulate", p => Updated(AccumulatorOf(p)));
        }
        g.Cleanup(); // the per-parameter gradient outputs no one reads now
        return proto;
    }

    /// <summary>Clipping and AdamW applied to accumulated gradients (inputs grad_acc.P); no forward. The accumulators of
    /// <paramref name="hostUpdated"/> count in the norm only; the graph outputs the clip coefficient for the host.</summary>
    public ModelProto BuildApply(AdamWOptions options, IReadOnlySet<string>? hostUpdated = null)
    {
        var proto = new ModelProto { IrVersion = Gradients.IrVersion, Graph = new GraphProto { Name = "apply" } };
        proto.OpsetImport.Add(new OperatorSetIdProto { Domain = "", Version = Opset });
        var g = new GraphEditor(proto.Graph);
        foreach (var p in Parameters)
        {
            if (hostUpdated?.Contains(p) != true) proto.Graph.Input.Add(Input(p, (int)DT.Float, ParameterShapes[p].Select(d => (object)d)));
            proto.Graph.Input.Add(Input(AccumulatorOf(p), (int)DT.Float, ParameterShapes[p].Select(d => (object)d)));
        }
        AddOptimizer(proto, g, AccumulatorOf, options, null, hostUpdated ?? new HashSet<string>(), AccumulatorOf, outputHostGradients: false);
        return proto;
    }

    /// <param name="hostGradOf">the (divided) gradient of a host-updated parameter, counted in the norm</param>
    void AddOptimizer(ModelProto proto, GraphEditor g, Func<string, string> gradOf, AdamWOptions options, string? gradDivisor,
        IReadOnlySet<string> hostUpdated, Func<string, string> hostGradOf, bool outputHostGradients = true)
    {
        proto.Graph.Input.Add(Input(LearningRate, (int)DT.Float, []));
        proto.Graph.Input.Add(Input(Step, (int)DT.Float, []));
        proto.Graph.Input.Add(Input(MaxGradNorm, (int)DT.Float, []));
        var slots = new List<AdamWSlot>();
        var onHost = Parameters.Where(hostUpdated.Contains).ToList();
        foreach (var p in Parameters.Except(onHost))
        {
            var dims = ParameterShapes[p].Select(d => (object)d).ToArray();
            proto.Graph.Input.Add(Input(ExpAvgOf(p), (int)DT.Float, dims));
            proto.Graph.Input.Add(Input(ExpAvgSqOf(p), (int)DT.Float, dims));
            slots.Add(new AdamWSlot(p, gradOf(p), ExpAvgOf(p), ExpAvgSqOf(p)));
        }
        var result = AdamWGraph.Append(g, slots, ParameterShapes, LearningRate, Step, MaxGradNorm, options, gradDivisor, onHost.Select(hostGradOf).ToList());
        var outputs = proto.Graph.Output.Where(o => ReportedOutputs.Contains(o.Name)).ToList();
        proto.Graph.Output.Clear();
        proto.Graph.Output.AddRange(outputs);
        // a value only the graph output reads is renamed in place; others go through an Identity
        var read = new HashSet<string>(proto.Graph.Node.SelectMany(n => n.Input));
        var producers = new Dictionary<string, NodeProto>();
        foreach (var n in proto.Graph.Node) foreach (var o in n.Output) producers[o] = n;
        void Output(string value, string name)
        {
            if (!read.Contains(value) && producers.TryGetValue(value, out var producer))
                producer.Output[producer.Output.IndexOf(value)] = name;
            else g.Add("Identity", [value], name: "adamw/output", outputs: [name]);
            proto.Graph.Output.Add(new ValueInfoProto { Name = name });
        }
        Output(result.GradNorm, GradNorm);
        if (onHost.Count > 0) Output(result.ClipCoefficient, ClipCoefficient);
        if (outputHostGradients) foreach (var p in onHost) proto.Graph.Output.Add(new ValueInfoProto { Name = hostGradOf(p) }); // already so named
        foreach (var p in Parameters.Except(onHost))
        {
            var (param, m, v) = result.Updated[p];
            Output(param, Updated(p));
            Output(m, Updated(ExpAvgOf(p)));
            Output(v, Updated(ExpAvgSqOf(p)));
        }
        g.Cleanup();
    }
}
