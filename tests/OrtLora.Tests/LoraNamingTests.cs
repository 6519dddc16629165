using Onnx;
using OrtLora.Lora;
using OrtLora.Onnx;
using DT = Onnx.TensorProto.Types.DataType;

namespace OrtLora.Tests;

/// <summary>Module paths of an export that uses Hugging Face's own names (no wrapper) and ties the LM head to the
/// embedding, as the legacy exporter writes it: the head must be called lm_head (from its node), not
/// model.embed_tokens (from the weight it reads), and no wrapper prefix may be stripped.</summary>
public class LoraNamingTests
{
    static OnnxModel TiedHeadModel()
    {
        var graph = new GraphProto { Name = "tied" };
        graph.Input.Add(new ValueInfoProto { Name = "ids", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DT.Int64 } } });
        var g = new GraphEditor(graph);
        var rng = new Random(5);
        float[] Values(int n) => Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() - 0.5)).ToArray();
        g.AddInitializer(Tensors.FromFloats("model.embed_tokens.weight", [10, 16], Values(160)));
        g.AddInitializer(Tensors.FromFloats("model.layers.0.self_attn.q_proj.weight", [16, 16], Values(256)));
        var h = g.Add("Gather", ["model.embed_tokens.weight", "ids"], name: "/model/embed_tokens/Gather");
        var wq = g.Add("Transpose", ["model.layers.0.self_attn.q_proj.weight"], name: "/model/layers.0/self_attn/q_proj/Transpose", attributes: ("perm", new long[] { 1, 0 }));
        var q = g.Add("MatMul", [h, wq], name: "/model/layers.0/self_attn/q_proj/MatMul");
        var we = g.Add("Transpose", ["model.embed_tokens.weight"], name: "/lm_head/Transpose", attributes: ("perm", new long[] { 1, 0 }));
        g.Add("MatMul", [q, we], name: "/lm_head/MatMul", outputs: ["logits"]);
        graph.Output.Add(new ValueInfoProto { Name = "logits", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DT.Float } } });
        var proto = new ModelProto { IrVersion = 9, Graph = graph };
        proto.OpsetImport.Add(new OperatorSetIdProto { Version = 18 });
        return new OnnxModel(proto);
    }

    static float[] Logits(OnnxModel model) =>
        OrtRun.Run(model, new Dictionary<string, HostTensor> { ["ids"] = HostTensor.Of(new long[] { 1, 4, 9 }, 3) })["logits"].Floats;

    [Test]
    public void TiedHeadIsNamedByItsNodeAndLeftAloneByAllLinear()
    {
        using var model = TiedHeadModel();
        var layers = LinearLayers.Find(new GraphEditor(model.Graph));
        Assert.That(layers.Select(l => l.Module), Is.EqualTo(new[] { "model.layers.0.self_attn.q_proj", "lm_head" }));
        Assert.That(ModuleNames.WrapperPrefix(layers.Select(l => l.Module).ToList()), Is.EqualTo(""));
        var head = layers[1];
        Assert.That((head.IsOutputHead, head.Tied), Is.EqualTo((true, true)));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"], R = 2 });
        Assert.That(lora.Adapters.Select(a => a.LoraA), Is.EqualTo(new[] { "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" }));
    }

    [Test]
    public void NamedTiedHeadMergesIntoItsOwnCopy()
    {
        using var model = TiedHeadModel();
        var embedding = model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight"));
        var lora = LoraInjector.Inject(model, new LoraConfig { TargetModules = ["lm_head"], R = 2 });
        Assert.That(lora.Adapters.Single().LoraB, Is.EqualTo("base_model.model.lm_head.lora_B.weight"));
        LoraTestKit.RandomizeB(model);
        var unmerged = Logits(model);
        LoraMerger.Merge(model);
        Assert.That(Shared.MaxAbsDiff(Logits(model), unmerged), Is.LessThan(1e-5f));
        Assert.That(model.ReadFloats(model.Graph.Initializer.Single(t => t.Name == "model.embed_tokens.weight")), Is.EqualTo(embedding),
            "the embedding keeps its weights; only the head's copy is merged");
        Assert.That(GraphEditor.OpHistogram(model.Graph), Is.EqualTo(GraphEditor.OpHistogram(TiedHeadModel().Graph)));
    }

    [Test]
    public void ModuleCalledTwiceIsAClearError()
    {
        // One module applied at two places (shared weights, as in ALBERT): PEFT's one adapter would be merged twice.
        var graph = new GraphProto { Name = "shared" };
        graph.Input.Add(new ValueInfoProto { Name = "x", Type = new TypeProto { TensorType = new TypeProto.Types.Tensor { ElemType = (int)DT.Float } } });
        var g = new GraphEditor(graph);
        g.AddInitializer(Tensors.FromFloats("model.shared.proj.weight", [4, 4], new float[16]));
        var h = g.Add("MatMul", ["x", "model.shared.proj.weight"], name: "/model/shared/proj/MatMul");
        g.Add("MatMul", [h, "model.shared.proj.weight"], name: "/model/shared/proj/MatMul_1", outputs: ["y"]);
        graph.Output.Add(new ValueInfoProto { Name = "y" });
        var proto = new ModelProto { IrVersion = 9, Graph = graph };
        using var model = new OnnxModel(proto, source: "shared.onnx");
        var e = Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TargetModules = ["proj"] }))!;
        Assert.That(e.Message, Does.Contain("shared.onnx").And.Contain("model.shared.proj").And.Contain("several nodes"));
        // all-linear leaves shared weights alone, as it leaves a tied head alone: nothing is left to adapt here.
        Assert.Throws<OrtLoraException>(() => LoraInjector.Inject(model, new LoraConfig { TargetModules = ["all-linear"] }));
    }
}
