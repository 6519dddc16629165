using Microsoft.ML.Tokenizers;
using OrtLora.Graphs;
using OrtLora.Onnx;

namespace OrtLora.Tests;

/// <summary>graphs/tiny's tokenizer and demo dataset: the tokenizer loads in Microsoft.ML.Tokenizers as a GPT-2
/// byte-level BPE and round-trips text; the dataset has the promised columns, sizes and split.</summary>
public class GraphsDemoAssetsTests
{
    static string Tiny(string file) => Path.Combine(Shared.RepoRoot, "graphs", "tiny", file);

    /// <summary>GPT-2's files through Microsoft.ML.Tokenizers' general BPE: byte-level, GPT-2's pre-tokenizer,
    /// &lt;|endoftext|&gt; special. (CodeGenTokenizer.Create is not a fit: it adds CodeGen's own whitespace tokens.)</summary>
    static BpeTokenizer LoadTokenizer()
    {
        var special = new Dictionary<string, int> { [TinyAssets.EndOfText] = LlamaShape.Tiny.VocabSize - 1 };
        return BpeTokenizer.Create(new BpeOptions(Tiny("vocab.json"), Tiny("merges.txt"))
        {
            ByteLevel = true,
            PreTokenizer = new RegexPreTokenizer(ByteLevelBpe.PreTokenizer, special),
            SpecialTokens = special,
        });
    }

    static readonly string[] OddTexts = ["", "  two  spaces\tand a tab\n", "naïve café, 東京 👋🏽", "Zebra's QUIET 12345", "   "];

    static IEnumerable<string> DatasetTexts() =>
        DemoDataset.Read(Tiny("demo.parquet")).Concat(DemoDataset.Read(Tiny("demo_eval.parquet"))).Select(TinyAssets.AlpacaText);

    [Test]
    public void TokenizerVocabularyMatchesTheModelsVocabSize()
    {
        var tokenizer = LoadTokenizer();
        Assert.That(tokenizer.Vocabulary, Has.Count.EqualTo(LlamaShape.Tiny.VocabSize));
        using var model = OnnxModel.Load(Tiny("model.onnx"));
        Assert.That(new GraphEditor(model.Graph).Initializer("model.embed_tokens.weight")!.Dims[0], Is.EqualTo(tokenizer.Vocabulary.Count));
        Assert.That(tokenizer.Vocabulary[TinyAssets.EndOfText], Is.EqualTo(LlamaShape.Tiny.VocabSize - 1));
    }

    [Test]
    public void TokenizerRoundTripsDatasetRowsAndOddText()
    {
        var tokenizer = LoadTokenizer();
        var texts = DatasetTexts().Concat(OddTexts).ToList();
        foreach (var text in texts)
        {
            var ids = tokenizer.EncodeToIds(text);
            Assert.That(ids.All(id => id >= 0 && id < LlamaShape.Tiny.VocabSize - 1), Is.True, text + ": " + string.Join(",", ids));
            Assert.That(tokenizer.Decode(ids), Is.EqualTo(text));
        }
    }

    [Test]
    public void LearnedMergesCompressTheDemoText()
    {
        // The tokenizer was trained on this text: its merges must beat raw bytes by a wide margin.
        var tokenizer = LoadTokenizer();
        var text = string.Join("\n", DatasetTexts());
        int bytes = System.Text.Encoding.UTF8.GetByteCount(text), tokens = tokenizer.CountTokens(text);
        Assert.That(tokens, Is.LessThan(bytes / 3), $"{tokens} tokens for {bytes} bytes");
    }

    [Test]
    public void TokenizerEncodesAsTheTextbookBpeRuleOverTheTrainedMerges()
    {
        // Our reference encoder (highest-priority merge first) over the trainer's merges, against Microsoft's loader
        // of the files: the same ids for every dataset row and the odd texts.
        var tokenizer = LoadTokenizer();
        var bpe = TinyAssets.TrainTokenizer(DemoDataset.Build().Train, LlamaShape.Tiny.VocabSize);
        foreach (var text in DatasetTexts().Concat(OddTexts))
            Assert.That(tokenizer.EncodeToIds(text), Is.EqualTo(bpe.Encode(text)), text);
    }

    [Test]
    public void EndOfTextIsOneSpecialToken()
    {
        var ids = LoadTokenizer().EncodeToIds("The capital of Peru is Lima.<|endoftext|>");
        Assert.That(ids[^1], Is.EqualTo(LlamaShape.Tiny.VocabSize - 1));
        Assert.That(ids.Count(id => id == LlamaShape.Tiny.VocabSize - 1), Is.EqualTo(1));
    }

    [Test]
    public void DatasetHasAlpacaColumnsShortAnswersAndAHeldOutSplit()
    {
        var tokenizer = LoadTokenizer();
        var train = DemoDataset.Read(Tiny("demo.parquet"));
        var eval = DemoDataset.Read(Tiny("demo_eval.parquet"));
        Assert.That(train, Has.Count.InRange(200, 600));
        Assert.That(eval, Has.Count.InRange(15, 80));
        Assert.That(eval.Intersect(train), Is.Empty, "eval rows are held out");
        foreach (var row in train.Concat(eval))
        {
            Assert.That(row.Instruction, Is.Not.Empty);
            Assert.That(tokenizer.CountTokens(row.Output), Is.LessThan(20), row.Output);
            Assert.That(tokenizer.CountTokens(TinyAssets.AlpacaText(row)), Is.LessThan(96), "Alpaca prompt + answer");
        }
        // Every held-out answer was seen in training: under another wording, or as another review's label.
        var trainAnswers = train.Select(r => r.Output).ToHashSet();
        Assert.That(eval.Where(r => !trainAnswers.Contains(r.Output)), Is.Empty);
        var trainInputs = train.Select(r => r.Input).ToHashSet();
        Assert.That(eval.Count(r => r.Output.StartsWith("The review is") && !trainInputs.Contains(r.Input)), Is.GreaterThanOrEqualTo(5), "unseen reviews");
        Assert.That(train.Count(r => r.Input != ""), Is.InRange(train.Count / 4, train.Count * 3 / 4), "a mix of rows with and without input");
    }

    /// <summary>The committed GRPO prompts are the demo rows' Alpaca prompts, as ortlora renders them, with each row's
    /// answer as the solution column; prompt-only data, what the code makes.</summary>
    [TestCase("demo.parquet", "demo_prompts.parquet")]
    [TestCase("demo_eval.parquet", "demo_prompts_eval.parquet")]
    public void GrpoPromptsAreTheRowsPromptsWithTheirAnswers(string rowsFile, string promptsFile)
    {
        var rows = DemoDataset.Read(Tiny(rowsFile));
        using var file = OrtLora.Training.Data.ParquetDataset.Open(Tiny(promptsFile));
        Assert.That(file.Format, Is.EqualTo(OrtLora.Training.Data.DatasetFormat.Prompt));
        var prompts = file.ReadAll().Select(r => (OrtLora.Training.Data.PromptRecord)r.Record).ToList();
        Assert.That(prompts, Has.Count.EqualTo(rows.Count));
        for (int i = 0; i < rows.Count; i++)
        {
            Assert.That(prompts[i].Prompt, Is.EqualTo(OrtLora.Training.Data.AlpacaTemplate.Prompt(new(rows[i].Instruction, rows[i].Input, rows[i].Output))));
            Assert.That(prompts[i].Columns["solution"], Is.EqualTo(rows[i].Output));
        }
    }

    /// <summary>The committed preference pairs are the demo rows': each row's Alpaca prompt as ortlora renders it, its
    /// answer chosen, and a wrong answer of the same sentence form rejected; they are what the code makes.</summary>
    [TestCase("demo.parquet", "demo_preferences.parquet")]
    [TestCase("demo_eval.parquet", "demo_preferences_eval.parquet")]
    public void PreferencePairsAreTheRowsWithAWrongAnswerOfTheSameKind(string rowsFile, string pairsFile)
    {
        var rows = DemoDataset.Read(Tiny(rowsFile));
        using var file = OrtLora.Training.Data.ParquetDataset.Open(Tiny(pairsFile));
        var pairs = file.ReadAll().Select(r => (OrtLora.Training.Data.PreferenceRecord)r.Record).ToList();
        Assert.That(pairs, Has.Count.EqualTo(rows.Count));
        Assert.That(pairs, Is.EqualTo(DemoPreferences.Build(rows).Select(p => new OrtLora.Training.Data.PreferenceRecord(p.Prompt, p.Chosen, p.Rejected))));
        for (int i = 0; i < rows.Count; i++)
        {
            var instruction = new OrtLora.Training.Data.InstructionRecord(rows[i].Instruction, rows[i].Input, rows[i].Output);
            Assert.That(pairs[i].Prompt, Is.EqualTo(OrtLora.Training.Data.AlpacaTemplate.Prompt(instruction)), "the prompt instruction data trains with");
            Assert.That(pairs[i].Chosen, Is.EqualTo(rows[i].Output));
            Assert.That(pairs[i].Rejected, Is.Not.EqualTo(pairs[i].Chosen));
            // the same sentence up to its last " is " / " says ", another value after it
            var chosen = pairs[i].Chosen;
            int cut = Math.Max(chosen.LastIndexOf(" is ", StringComparison.Ordinal), chosen.LastIndexOf(" says ", StringComparison.Ordinal));
            Assert.That(cut, Is.GreaterThan(0), chosen);
            var form = chosen[..(chosen.IndexOf(' ', cut + 1) + 1)];
            Assert.That(pairs[i].Rejected, Does.StartWith(form).And.EndWith("."), pairs[i].Rejected);
        }
    }
}
