using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>Examples → labelled token sequences → padded batches, packing, and the resumable order. Token ids come
/// from tokenizers checked against their peers in <see cref="TokenizerTests"/>.</summary>
public class DataBatchTests
{
    const int Ignore = ExampleEncoder.IgnoreIndex;
    // Loaded once: a tokenizer is immutable, and loading GPT-2's JSON costs about a second.
    static readonly Lazy<TextTokenizer> Gpt2Tokenizer = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json")));
    static readonly Lazy<TextTokenizer> LlamaTokenizer = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model")));
    static TextTokenizer Gpt2() => Gpt2Tokenizer.Value;
    static TextTokenizer Llama() => LlamaTokenizer.Value;
    static string DataFile(string name) => Shared.Require("data", name);

    static List<InstructionRecord> AlpacaRows()
    {
        using var data = ParquetDataset.Open(DataFile("alpaca_500.zstd.parquet"));
        return [.. data.ReadRowGroup(0).Cast<InstructionRecord>()];
    }

    [TestCase("gpt2")]
    [TestCase("llama")]
    public void InstructionLabelsAreMinus100ExactlyOnThePrompt(string which)
    {
        var tokenizer = which == "gpt2" ? Gpt2() : Llama();
        var encoder = new ExampleEncoder(tokenizer, 4096);
        var renderer = new ExampleRenderer(ChatTemplate.ChatMl, tokenizer.AddsBos);
        foreach (var row in AlpacaRows().Take(40))
        {
            var example = encoder.Encode(renderer.Render(0, row))!;
            var prompt = tokenizer.Encode(AlpacaTemplate.Prompt(row), addBos: tokenizer.AddsBos);
            var whole = tokenizer.Encode(AlpacaTemplate.Prompt(row) + row.Output, addBos: tokenizer.AddsBos);
            Assert.That(example.InputIds, Is.EqualTo(whole.Append(tokenizer.EosId!.Value)), "tokens of prompt + response, then EOS");
            Assert.That(whole.Take(prompt.Length), Is.EqualTo(prompt), "the prompt tokenizes the same alone");
            var expected = Enumerable.Repeat(Ignore, prompt.Length).Concat(example.InputIds.Skip(prompt.Length));
            Assert.That(example.Labels, Is.EqualTo(expected), "-100 on the prompt, the token itself on response and EOS");
            var trained = example.InputIds.Where((_, i) => example.Labels[i] != Ignore).ToList();
            Assert.That(tokenizer.Decode(trained, skipSpecialTokens: true).TrimStart(), Is.EqualTo(row.Output.TrimStart()));
            Assert.That(trained[^1], Is.EqualTo(tokenizer.EosId));
            if (tokenizer.AddsBos) Assert.That((example.InputIds[0], example.Labels[0]), Is.EqualTo((tokenizer.BosId!.Value, Ignore)));
        }
    }

    [Test]
    public void TrainOnPromptLabelsEverythingButBos()
    {
        var tokenizer = Llama();
        var row = AlpacaRows()[0];
        var example = new ExampleEncoder(tokenizer, 4096).Encode(new ExampleRenderer(ChatTemplate.ChatMl, true, trainOnPrompt: true).Render(0, row))!;
        Assert.That(example.Labels, Is.EqualTo(example.InputIds.Select((id, i) => i == 0 ? Ignore : id)));
    }

    [Test]
    public void ChatMlTrainsOnlyAssistantTurns()
    {
        var tokenizer = Gpt2();
        var messages = new[]
        {
            new ChatMessage("system", "Be brief."), new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello!"),
            new ChatMessage("user", "2+2?"), new ChatMessage("assistant", "4"),
        };
        var example = new ExampleRenderer(ChatTemplate.ChatMl, tokenizer.AddsBos).Render(7, new ChatRecord(messages));
        Assert.That(example.Text, Is.EqualTo("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n" +
                                             "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n"));
        var encoded = new ExampleEncoder(tokenizer, 4096).Encode(example)!;
        Assert.That(encoded.InputIds, Is.EqualTo(tokenizer.Encode(example.Text)));
        Assert.That(TrainedSpans(tokenizer, encoded), Is.EqualTo(new[] { "Hello!<|im_end|>", "4<|im_end|>" }));
    }

    [Test]
    public void Llama2ChatTemplateTrainsAnswersAndEos()
    {
        var tokenizer = Llama();
        var messages = new[]
        {
            new ChatMessage("system", "Be brief."), new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello!"),
            new ChatMessage("user", "2+2?"), new ChatMessage("assistant", "4"),
        };
        var example = new ExampleRenderer(ChatTemplate.Llama2, tokenizer.AddsBos).Render(0, new ChatRecord(messages));
        Assert.That(example.Text, Is.EqualTo("<bos>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! <eos><bos>[INST] 2+2? [/INST] 4 <eos>"));
        var encoded = new ExampleEncoder(tokenizer, 4096).Encode(example)!;
        // Each BOS-to-EOS stretch is encoded as one text, as Hugging Face's Llama tokenizer encodes the text between special tokens.
        var first = tokenizer.Encode("[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! ");
        var second = tokenizer.Encode("[INST] 2+2? [/INST] 4 ");
        Assert.That(encoded.InputIds, Is.EqualTo(new[] { 1 }.Concat(first).Append(2).Append(1).Concat(second).Append(2)));
        Assert.That(TrainedSpans(tokenizer, encoded).Select(s => s.Trim()), Is.EqualTo(new[] { "Hello!", "4" }));
        Assert.That(encoded.Labels[first.Length + 1], Is.EqualTo(2), "EOS after an answer is learned");
    }

    /// <summary>The trained stretches of an example, decoded.</summary>
    static List<string> TrainedSpans(TextTokenizer tokenizer, TokenizedExample e)
    {
        var spans = new List<string>();
        var current = new List<int>();
        for (int i = 0; i <= e.Length; i++)
        {
            if (i < e.Length && e.Labels[i] != Ignore) { current.Add(e.InputIds[i]); continue; }
            if (current.Count > 0) spans.Add(tokenizer.Decode(current, skipSpecialTokens: tokenizer.Kind == "sentencepiece"));
            current.Clear();
        }
        return spans;
    }

    [Test]
    public void TruncationCutsTheEndAndDropsExamplesWithNothingLeftToLearn()
    {
        var tokenizer = Gpt2();
        var row = AlpacaRows()[0];
        var renderer = new ExampleRenderer(ChatTemplate.ChatMl, false);
        var full = new ExampleEncoder(tokenizer, 4096).Encode(renderer.Render(0, row))!;
        var promptLength = tokenizer.Encode(AlpacaTemplate.Prompt(row)).Length;
        var cut = new ExampleEncoder(tokenizer, promptLength + 1).Encode(renderer.Render(0, row))!;
        Assert.That(cut.InputIds, Is.EqualTo(full.InputIds.Take(promptLength + 1)));
        Assert.That(cut.TrainedTokens, Is.EqualTo(1));
        Assert.That(new ExampleEncoder(tokenizer, promptLength).Encode(renderer.Render(0, row)), Is.Null);
    }

    [Test]
    public void BatchesArePaddedRightToTheLongest()
    {
        var tokenizer = Gpt2();
        using var data = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer,
            new DataOptions { BatchSize = 4, MaxSeqLength = 256, Shuffle = false });
        var encoder = new ExampleEncoder(tokenizer, 256);
        var renderer = new ExampleRenderer(ChatTemplate.ChatMl, false);
        var rows = AlpacaRows();
        var batches = data.Batches(new DataPosition(0, 0)).Take(3).ToList();
        foreach (var batch in batches)
        {
            var examples = batch.Rows.Select(r => encoder.Encode(renderer.Render(r, rows[(int)r]))!).ToList();
            Assert.That(batch.Shape, Is.EqualTo(new long[] { 4, examples.Max(e => e.Length) }));
            for (int b = 0; b < 4; b++)
            {
                var e = examples[b];
                var row = Enumerable.Range(0, batch.SeqLength).Select(t => b * batch.SeqLength + t).ToArray();
                Assert.That(row.Select(i => batch.InputIds[i]), Is.EqualTo(e.InputIds.Select(x => (long)x).Concat(Enumerable.Repeat((long)tokenizer.PadId, batch.SeqLength - e.Length))));
                Assert.That(row.Select(i => batch.AttentionMask[i]), Is.EqualTo(Enumerable.Repeat(1L, e.Length).Concat(Enumerable.Repeat(0L, batch.SeqLength - e.Length))));
                Assert.That(row.Select(i => batch.Labels[i]), Is.EqualTo(e.Labels.Select(x => (long)x).Concat(Enumerable.Repeat((long)Ignore, batch.SeqLength - e.Length))));
            }
        }
        Assert.That(batches.SelectMany(b => b.Rows), Is.EqualTo(Enumerable.Range(0, 12).Select(i => (long)i)), "unshuffled: file order");
        Assert.That(batches.Any(b => b.AttentionMask.Contains(0)), "some padding exercised");
        var feeds = batches[0].ToFeeds(withLabels: true);
        Assert.That(feeds.Keys, Is.EquivalentTo(new[] { "input_ids", "attention_mask", "labels" }));
        Assert.That((feeds["labels"].Int64s, feeds["input_ids"].Shape), Is.EqualTo((batches[0].Labels, batches[0].Shape)));
    }

    /// <summary>--pad-to-max-length: every batch, the epoch's last one and eval's included, is [batch size, max length];
    /// the real rows are the padded-to-longest rows extended with padding, and the filler rows of the last batch attend
    /// to one pad token and have no label.</summary>
    [Test]
    public void PadToMaxLengthGivesEveryBatchOneShape()
    {
        var options = new DataOptions { BatchSize = 3, EvalBatchSize = 3, MaxSeqLength = 300, Shuffle = false, EvalSplit = 0.05 };
        using var longest = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), Gpt2(), options);
        using var fixedShape = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), Gpt2(), options with { PadToMaxLength = true });
        var pairs = longest.Batches(new DataPosition(0, 0)).Zip(fixedShape.Batches(new DataPosition(0, 0))).ToList();
        var evalPairs = longest.EvalBatches().Zip(fixedShape.EvalBatches()).ToList();
        Assert.That(pairs.Count + evalPairs.Count, Is.EqualTo(longest.CountBatches() + longest.EvalBatches().Count()));
        Assert.That(pairs.Concat(evalPairs).Select(p => p.Second.Shape), Has.All.EqualTo(new long[] { 3, 300 }));
        var lastRows = pairs.Concat(evalPairs).Select(p => p.First.BatchSize).ToList();
        Assert.That(lastRows, Has.Some.LessThan(3), "a short last batch is exercised");
        foreach (var (a, b) in pairs.Concat(evalPairs))
        {
            Assert.That(b.Rows, Is.EqualTo(a.Rows));
            Assert.That((b.LossTokens, b.TrainedTokens), Is.EqualTo((a.LossTokens, a.TrainedTokens)));
            for (int row = 0; row < 3; row++)
            {
                var span = Enumerable.Range(row * 300, 300);
                if (row < a.BatchSize)
                {
                    var expected = Enumerable.Range(row * a.SeqLength, a.SeqLength);
                    Assert.That(span.Take(a.SeqLength).Select(i => b.InputIds[i]), Is.EqualTo(expected.Select(i => a.InputIds[i])));
                    Assert.That(span.Select(i => b.AttentionMask[i]).Sum(), Is.EqualTo(expected.Select(i => a.AttentionMask[i]).Sum()));
                }
                else
                {
                    Assert.That(span.Select(i => b.AttentionMask[i]), Is.EqualTo(Enumerable.Repeat(0L, 300).Prepend(1L).Take(300)), "filler row: one attended pad");
                    Assert.That(span.Select(i => b.Labels[i]), Has.All.EqualTo((long)Ignore));
                }
            }
        }
    }

    [Test]
    public void PackingConcatenatesWholeExamplesUpToMaxLength()
    {
        var tokenizer = Gpt2();
        var plain = new DataOptions { BatchSize = 1, MaxSeqLength = 512, Seed = 3 };
        using var single = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer, plain);
        using var packed = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer, plain with { Packing = true });
        var singles = single.Batches(new DataPosition(0, 0)).ToList();
        var packs = packed.Batches(new DataPosition(0, 0)).ToList();
        Assert.That(packs.Count, Is.LessThan(singles.Count / 2), "several examples per sequence");
        Assert.That(packs.All(p => p.SeqLength <= 512 && !p.AttentionMask.Contains(0)), "no padding with batch size 1");
        Assert.That(packs.SelectMany(p => p.Rows), Is.EqualTo(singles.SelectMany(s => s.Rows)), "same examples, same order");
        Assert.That(packs.SelectMany(p => p.InputIds), Is.EqualTo(singles.SelectMany(s => s.InputIds)), "tokens concatenated");
        Assert.That(packs.SelectMany(p => p.Labels), Is.EqualTo(singles.SelectMany(s => s.Labels)), "labels kept per example");
        // Greedy: the next example would not have fit.
        for (int i = 0; i + 1 < packs.Count; i++)
        {
            var nextRow = packs[i + 1].Rows[0];
            var nextLength = singles.First(s => s.Rows[0] == nextRow).SeqLength;
            Assert.That(packs[i].SeqLength + nextLength, Is.GreaterThan(512));
        }
    }

    [TestCase(false)]
    [TestCase(true)]
    public void ResumingFromAPositionContinuesExactly(bool packing)
    {
        var tokenizer = Gpt2();
        var options = new DataOptions { BatchSize = 3, MaxSeqLength = 96, Packing = packing, Seed = 11 };
        List<Batch> all;
        using (var data = TrainingData.Open(DataFile("alpaca_5000.parquet"), tokenizer, options))
            all = data.Batches(new DataPosition(1, 0)).Take(700).ToList();
        foreach (var stop in new[] { 0, 1, 333, 698 })
        {
            using var resumed = TrainingData.Open(DataFile("alpaca_5000.parquet"), tokenizer, options);
            var rest = resumed.Batches(all[stop].Next).Take(all.Count - stop - 1).ToList();
            Assert.That(rest.Select(b => b.Rows), Is.EqualTo(all.Skip(stop + 1).Select(b => b.Rows)), $"rows after batch {stop}");
            Assert.That(rest.Select(b => b.InputIds), Is.EqualTo(all.Skip(stop + 1).Select(b => b.InputIds)), $"tokens after batch {stop}");
        }
    }

    [Test]
    public void ResumingSkipsNullRowsAndEvalRowsTheSameWay()
    {
        var options = new DataOptions { BatchSize = 5, MaxSeqLength = 64, EvalSplit = 0.2, Seed = 4 };
        using var data = TrainingData.Open(DataFile("text_300.nulls.parquet"), Gpt2(), options);
        var all = data.Batches(new DataPosition(2, 0)).ToList();
        var eval = data.EvalBatches().SelectMany(b => b.Rows).ToHashSet();
        Assert.That(all.SelectMany(b => b.Rows).Count() + eval.Count, Is.EqualTo(data.Summary.Usable));
        for (int stop = 0; stop < all.Count; stop++)
            Assert.That(data.Batches(all[stop].Next).Select(b => b.Rows), Is.EqualTo(all.Skip(stop + 1).Select(b => b.Rows)), $"after batch {stop}");
    }

    [Test]
    public void ShuffleIsSeededPerEpochAndCoversEveryRowOnce()
    {
        using var data = ParquetDataset.Open(DataFile("alpaca_5000.parquet"));
        var order = new EpochOrder(data, seed: 5, shuffle: true);
        var epoch0 = order.Rows(0).Select(r => r.RowIndex).ToList();
        var epoch1 = order.Rows(1).Select(r => r.RowIndex).ToList();
        Assert.That(epoch0, Is.EquivalentTo(Enumerable.Range(0, 5000).Select(i => (long)i)));
        Assert.That(epoch1, Is.EquivalentTo(epoch0));
        Assert.That(epoch1, Is.Not.EqualTo(epoch0));
        Assert.That(new EpochOrder(data, 5, true).Rows(0).Select(r => r.RowIndex), Is.EqualTo(epoch0), "same seed, same order");
        Assert.That(new EpochOrder(data, 6, true).Rows(0).Select(r => r.RowIndex), Is.Not.EqualTo(epoch0));
        Assert.That(order.Rows(0, 2500).Select(r => r.RowIndex), Is.EqualTo(epoch0.Skip(2500)), "start mid-epoch");
    }

    [Test]
    public void EvalSplitIsDeterministicAndDisjoint()
    {
        var tokenizer = Gpt2();
        var options = new DataOptions { BatchSize = 8, MaxSeqLength = 64, EvalSplit = 0.1, Seed = 1 };
        using var data = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer, options);
        var train = data.Batches(new DataPosition(0, 0)).SelectMany(b => b.Rows).ToList();
        var eval = data.EvalBatches().SelectMany(b => b.Rows).ToList();
        Assert.That(train.Intersect(eval), Is.Empty);
        // At 64 tokens some prompts leave no room for the response: those rows are dropped, and counted.
        Assert.That(data.SkippedNoTrainedTokens, Is.GreaterThan(0));
        Assert.That(train.Count + eval.Count + data.SkippedNoTrainedTokens, Is.EqualTo(500));
        Assert.That(eval.Count, Is.InRange(30, 70));
        Assert.That(eval, Is.Ordered, "eval in file order");
        Assert.That(data.EvalBatches().SelectMany(b => b.InputIds), Is.EqualTo(data.EvalBatches().SelectMany(b => b.InputIds)), "kept between evaluations");
        using var again = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer, options);
        Assert.That(again.EvalBatches().SelectMany(b => b.Rows), Is.EqualTo(eval));
        Assert.That(data.Describe(), Is.EqualTo($"alpaca_500.zstd.parquet: instruction data, 500 rows read, 0 skipped null, 0 skipped empty, 500 usable, " +
                                                $"{data.SkippedNoTrainedTokens} dropped (no response left within 64 tokens); eval: 10% of rows"));
        using var separate = TrainingData.Open(DataFile("alpaca_500.zstd.parquet"), tokenizer, options with { EvalSplit = 0, MaxSeqLength = 2048 },
            evalPath: DataFile("alpaca_500.zstd.parquet"));
        Assert.That(separate.EvalBatches().SelectMany(b => b.Rows), Is.EqualTo(Enumerable.Range(0, 500).Select(i => (long)i)), "every row of the eval file");
        Assert.That(separate.Batches(new DataPosition(0, 0)).Sum(b => b.BatchSize), Is.EqualTo(500), "and all rows to train on");
    }

    [Test]
    public void ChatDataThroughTheWholePipeline()
    {
        var tokenizer = Llama();
        using var data = TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer,
            new DataOptions { BatchSize = 2, MaxSeqLength = 512, Shuffle = false, ChatTemplate = "llama2" });
        var batch = data.Batches(new DataPosition(0, 0)).First();
        var first = Enumerable.Range(0, batch.SeqLength).Select(t => batch.Labels[t]).Where(l => l != Ignore).Select(l => (int)l).ToList();
        Assert.That(tokenizer.Decode(first, skipSpecialTokens: true).Trim(), Is.EqualTo("No"));
        Assert.That(first[^1], Is.EqualTo(2));
        Assert.That(batch.InputIds[0], Is.EqualTo(1));
    }

    /// <summary>A model's own template (tokenizer_config.json's chat_template) is run, whatever its style; a named
    /// template or a template file wins; without either, ChatML.</summary>
    [TestCase("{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n'}}{% endfor %}",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")]
    [TestCase("{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}{{ eos_token }}\n{% else %}<|assistant|>\n{{ m['content'] }}{{ eos_token }}\n{% endif %}{% endfor %}",
        "<|user|>\nHi<eos>\n<|assistant|>\nHello<eos>\n")]
    [TestCase(null, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n")]
    public void ChatTemplateComesFromTheModelsTokenizerConfig(string? jinja, string expected)
    {
        var dir = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
        if (jinja is not null) File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), System.Text.Json.JsonSerializer.Serialize(new { chat_template = jinja, eos_token = "<|endoftext|>" }));
        var tokenizer = TokenizerLoader.Load(dir);
        using var data = TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer, new DataOptions());
        Assert.That(data.ChatTemplate.Name, Is.EqualTo(jinja is null ? "chatml" : "tokenizer_config.json's own"));
        var example = new ExampleRenderer(data.ChatTemplate, false).Render(0, new ChatRecord([new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello")]));
        Assert.That(example.Text, Is.EqualTo(expected));
        using var named = TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer, new DataOptions { ChatTemplate = "llama-2" });
        Assert.That(named.ChatTemplate.Name, Is.EqualTo("llama2"), "a named template wins");
        var file = Path.Combine(dir, "mine.jinja");
        File.WriteAllText(file, "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}");
        using var fromFile = TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer, new DataOptions { ChatTemplate = file });
        Assert.That(fromFile.ChatTemplate.Name, Is.EqualTo("mine.jinja's own"), "a template file wins");
    }

    [Test]
    public void BrokenAndUnknownChatTemplatesAreClearErrors()
    {
        var dir = Shared.TempDir();
        File.Copy(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json"), Path.Combine(dir, "tokenizer.json"));
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"chat_template": "{% for m in messages %}\n<|user|>{{ m['content'] }}"}""");
        var tokenizer = TokenizerLoader.Load(dir);
        Assert.That(() => TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer, new DataOptions()), Throws.TypeOf<OrtLoraException>()
            .With.Message.StartsWith(Path.Combine(dir, "tokenizer_config.json") + ": chat template line "));
        Assert.That(() => TrainingData.Open(DataFile("alpaca_500.chat.parquet"), tokenizer, new DataOptions { ChatTemplate = "vicuna" }),
            Throws.TypeOf<OrtLoraException>().With.Message.EqualTo("unknown chat template 'vicuna'; built in: chatml, llama2, or a Jinja template file"));
    }

    [Test]
    public void TextDataSkipsNullRowsAndLearnsEveryToken()
    {
        var tokenizer = Gpt2();
        using var data = TrainingData.Open(DataFile("text_300.nulls.parquet"), tokenizer, new DataOptions { BatchSize = 16, MaxSeqLength = 1024 });
        var batches = data.Batches(new DataPosition(0, 0)).ToList();
        Assert.That(batches.Sum(b => b.BatchSize), Is.EqualTo(data.Summary.Usable));
        foreach (var b in batches)
            for (int i = 0; i < b.InputIds.Length; i++)
                Assert.That(b.Labels[i], Is.EqualTo(b.AttentionMask[i] == 1 ? b.InputIds[i] : Ignore));
    }

    [Test]
    public void VocabularyLargerThanTheEmbeddingIsAnError()
    {
        // The fixture models have 320 embedding rows.
        var llama = Llama();
        Assert.That(() => VocabularyCheck.Require(llama, 320, "model.onnx"), Throws.TypeOf<OrtLoraException>()
            .With.Message.Contains("32000").And.Message.Contains("320 embedding rows").And.Message.Contains("model.onnx"));
        Assert.That(() => VocabularyCheck.Require(llama, 32000, "model.onnx"), Throws.Nothing);
    }

    [TestCase("llama", "model.dynamo.onnx")]
    [TestCase("llama", "model.torchscript.onnx")]
    [TestCase("gpt2", "model.dynamo.onnx")]
    [TestCase("gpt2", "model.torchscript.onnx")]
    public void EmbeddingRowsAreReadFromTheModel(string arch, string file)
    {
        var path = Shared.Peft(arch, file);
        using var model = OrtLora.Onnx.OnnxModel.Load(path);
        Assert.That(VocabularyCheck.EmbeddingRows(model), Is.EqualTo(320), "the fixtures' vocabulary");
        Assert.That(() => VocabularyCheck.Require(Gpt2(), model), Throws.TypeOf<OrtLoraException>()
            .With.Message.Contains("has 50257 tokens").And.Message.Contains("only 320 embedding rows").And.Message.Contains(path));
    }
}
