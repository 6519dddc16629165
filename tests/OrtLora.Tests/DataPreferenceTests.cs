using OrtLora.Training.Data;

namespace OrtLora.Tests;

/// <summary>TRL's preference datasets (chosen and rejected, with or without a prompt; text or messages), tokenized as
/// TRL's DPOTrainer tokenizes them, and batched as pairs of rows.</summary>
public class DataPreferenceTests
{
    const int Ignore = ExampleEncoder.IgnoreIndex;
    static readonly Lazy<TextTokenizer> Gpt2 = new(() => TokenizerLoader.Load(Shared.Require("tokenizers", "hf-gpt2", "tokenizer.json")));

    sealed class TextRow { public string? prompt { get; set; } public string? chosen { get; set; } public string? rejected { get; set; } }
    sealed class ImplicitRow { public string? chosen { get; set; } public string? rejected { get; set; } }
    sealed class RequiredLabelRow { public int id { get; set; } public double score { get; set; } public string? prompt { get; set; } public string? completion { get; set; } public bool label { get; set; } }
    sealed class Turn { public string? role { get; set; } public string? content { get; set; } }
    sealed class ConversationRow { public List<Turn?>? prompt { get; set; } public List<Turn?>? chosen { get; set; } public List<Turn?>? rejected { get; set; } }
    sealed class ImplicitConversationRow { public List<Turn?>? chosen { get; set; } public List<Turn?>? rejected { get; set; } }

    static Turn T(string role, string content) => new() { role = role, content = content };

    static PreferenceEncoder Encoder(int maxLength = 1024, int maxPrompt = 512, int? maxCompletion = null, bool keepEnd = true) =>
        new(Gpt2.Value, ChatTemplate.ChatMl, maxLength, maxPrompt, maxCompletion, keepEnd);

    /// <summary>TRL's tokenize_row docstring, GPT-2: prompt "The sky is" → [464, 6766, 318], chosen " blue" → [4171, 50256],
    /// rejected " green" → [4077, 50256] (EOS appended, no BOS). The pair's sequences are prompt + completion, the prompt
    /// labelled -100.</summary>
    [Test]
    public void TextRowsTokenizeAsTrlsDocstring()
    {
        var path = Shared.WriteParquet([
            new TextRow { prompt = "The sky is", chosen = " blue", rejected = " green" },
            new TextRow { prompt = "Q", chosen = null, rejected = "x" },
            new TextRow { prompt = "Q", chosen = "a", rejected = " " },
        ], "preference.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That((data.Format, data.ConversationalPrompts), Is.EqualTo((DatasetFormat.Preference, false)));
        var rows = data.ReadRowGroup(0);
        Assert.That(rows[0], Is.EqualTo(new PreferenceRecord("The sky is", " blue", " green")));
        Assert.That(data.Summary, Is.EqualTo(new DataSummary(3, 1, 1)));

        var (chosen, rejected) = Encoder().Encode(0, rows[0]!)!.Value;
        Assert.That(chosen.InputIds, Is.EqualTo(new[] { 464, 6766, 318, 4171, 50256 }));
        Assert.That(rejected.InputIds, Is.EqualTo(new[] { 464, 6766, 318, 4077, 50256 }));
        Assert.That(chosen.Labels, Is.EqualTo(new[] { Ignore, Ignore, Ignore, 4171, 50256 }));
        Assert.That(rejected.Labels, Is.EqualTo(new[] { Ignore, Ignore, Ignore, 4077, 50256 }));
    }

    /// <summary>TRL's truncation: the prompt keeps its last max_prompt_length tokens, a completion its first
    /// max_completion_length, and prompt + completion cut to max_length keeps its end (keep_end) or its start.</summary>
    [Test]
    public void TruncationKeepsWhatTrlKeeps()
    {
        var row = new PreferenceRecord("The sky is", " blue", " green");
        var (c, _) = Encoder(maxPrompt: 2).Encode(0, row)!.Value;
        Assert.That(c.InputIds, Is.EqualTo(new[] { 6766, 318, 4171, 50256 }));
        (c, _) = Encoder(maxCompletion: 1).Encode(0, row)!.Value;
        Assert.That(c.InputIds, Is.EqualTo(new[] { 464, 6766, 318, 4171 }), "the completion's first token, without EOS");
        (c, _) = Encoder(maxLength: 3).Encode(0, row)!.Value;
        Assert.That((c.InputIds, c.Labels), Is.EqualTo((new[] { 318, 4171, 50256 }, new[] { Ignore, 4171, 50256 })), "keep_end");
        (c, _) = Encoder(maxLength: 4, keepEnd: false).Encode(0, row)!.Value;
        Assert.That(c.InputIds, Is.EqualTo(new[] { 464, 6766, 318, 4171 }), "keep_start");
        Assert.That(Encoder(maxLength: 3, keepEnd: false).Encode(0, row), Is.Null, "keep_start leaving no completion drops the pair");
    }

    /// <summary>Without a prompt column the prompt is the common start of chosen and rejected (TRL's extract_prompt): a
    /// space before the difference goes with the completions; for messages, the messages both share.</summary>
    [Test]
    public void ImplicitPromptsAreTheCommonStart()
    {
        using (var data = ParquetDataset.Open(Shared.WriteParquet([new ImplicitRow { chosen = "The sky is blue.", rejected = "The sky is green." }], "implicit.parquet")))
            Assert.That(data.ReadRowGroup(0)[0], Is.EqualTo(new PreferenceRecord("The sky is", " blue.", " green.")));

        var path = Shared.WriteParquet([new ImplicitConversationRow
        {
            chosen = [T("user", "Hi"), T("assistant", "Hello!"), T("user", "Sky colour?"), T("assistant", "Blue.")],
            rejected = [T("user", "Hi"), T("assistant", "Hello!"), T("user", "Sky colour?"), T("assistant", "Green.")],
        }], "implicit_chat.parquet");
        using var chat = ParquetDataset.Open(path);
        Assert.That((chat.Format, chat.IsConversational), Is.EqualTo((DatasetFormat.Preference, true)));
        var record = (ChatPreferenceRecord)chat.ReadRowGroup(0)[0]!;
        Assert.That(record.Prompt.Select(m => m.Content), Is.EqualTo(new[] { "Hi", "Hello!", "Sky colour?" }));
        Assert.That((record.Chosen.Single().Content, record.Rejected.Single().Content), Is.EqualTo(("Blue.", "Green.")));
    }

    /// <summary>A conversational row: the prompt is the template's render with the assistant's turn opened, each
    /// completion what the full render adds after it (no EOS appended: the template ends the turn); each is tokenized on
    /// its own.</summary>
    [Test]
    public void ConversationalRowsGoThroughTheChatTemplate()
    {
        var path = Shared.WriteParquet([new ConversationRow { prompt = [T("user", "Sky colour?")], chosen = [T("assistant", "Blue.")], rejected = [T("assistant", "Green.")] }],
            "chat_preference.parquet");
        using var data = ParquetDataset.Open(path);
        var record = data.ReadRowGroup(0)[0]!;
        var (chosen, rejected) = Encoder().Encode(0, record)!.Value;
        var tokenizer = Gpt2.Value;
        var prompt = tokenizer.Encode("<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n");
        Assert.That(chosen.InputIds, Is.EqualTo(prompt.Concat(tokenizer.Encode("Blue.<|im_end|>\n"))));
        Assert.That(rejected.InputIds, Is.EqualTo(prompt.Concat(tokenizer.Encode("Green.<|im_end|>\n"))));
        Assert.That(chosen.Labels.Take(prompt.Length), Is.All.EqualTo(Ignore));
        Assert.That(chosen.Labels.Skip(prompt.Length), Is.EqualTo(chosen.InputIds.Skip(prompt.Length)));
        Assert.That(tokenizer.Decode(rejected.InputIds.Where((_, i) => rejected.Labels[i] != Ignore)), Is.EqualTo("Green.<|im_end|>\n"));

        var ending = new ChatPreferenceRecord([new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hel")], [new ChatMessage("assistant", "lo")], [new ChatMessage("assistant", "p")]);
        Assert.That(() => Encoder().Encode(3, ending), Throws.TypeOf<OrtLoraException>().With.Message.Contains("must end with a user message"));
    }

    /// <summary>Batches hold pairs side by side, chosen then rejected, --per-device-train-batch-size pairs each; the
    /// prompts are labelled -100 and both rows of a pair start with the same prompt.</summary>
    [Test]
    public void BatchesHoldPairsSideBySide()
    {
        var rows = Enumerable.Range(0, 5).Select(i => new TextRow { prompt = $"Question {i}:", chosen = $" right {i}", rejected = $" wrong answer {i}" });
        var path = Shared.WriteParquet(rows, "pairs.parquet");
        using var data = TrainingData.Open(path, Gpt2.Value, new DataOptions { BatchSize = 2, Shuffle = false });
        Assert.That(data.IsPreference);
        var batches = data.Batches(new DataPosition(0, 0)).ToList();
        Assert.That(batches.Select(b => (b.BatchSize, b.Sequences)), Is.EqualTo(new[] { (4, 4), (4, 4), (2, 2) }));
        Assert.That(data.CountBatches(), Is.EqualTo(3));
        var first = batches[0];
        for (int pair = 0; pair < 2; pair++)
        {
            var (c, r) = Encoder().Encode(pair, new PreferenceRecord($"Question {pair}:", $" right {pair}", $" wrong answer {pair}"))!.Value;
            Assert.That(first.InputIds.Skip(2 * pair * first.SeqLength).Take(c.Length), Is.EqualTo(c.InputIds.Select(i => (long)i)));
            Assert.That(first.Labels.Skip((2 * pair + 1) * first.SeqLength).Take(r.Length), Is.EqualTo(r.Labels.Select(i => (long)i)));
            Assert.That(first.Rows[2 * pair], Is.EqualTo(first.Rows[2 * pair + 1]));
        }
        var dropped = TrainingData.Open(path, Gpt2.Value, new DataOptions { BatchSize = 2, Shuffle = false, DropLast = true });
        using (dropped) Assert.That(dropped.CountBatches(), Is.EqualTo(2), "drop_last leaves out the last, one-pair batch");
        Assert.That(() => TrainingData.Open(path, Gpt2.Value, new DataOptions { Packing = true }),
            Throws.TypeOf<OrtLoraException>().With.Message.Contains("pairs.parquet").And.Message.Contains("--packing"));
    }

    /// <summary>A tokenizer that puts BOS first (Llama 2's): the prompt starts with one BOS, as ortlora's SFT data and
    /// generate have it; the completions get none. Through the built-in ChatML template too.</summary>
    [Test]
    public void BosStartsThePromptWhereTheTokenizerAddsIt()
    {
        var llama = TokenizerLoader.Load(Shared.Require("tokenizers", "llama2-tokenizer.model"));
        var encoder = new PreferenceEncoder(llama, ChatTemplate.ChatMl, 1024, 512, null, keepEnd: true);
        var (chosen, rejected) = encoder.Encode(0, new PreferenceRecord("The sky is", " blue", " green"))!.Value;
        var prompt = llama.Encode("The sky is", addBos: true);
        Assert.That(prompt[0], Is.EqualTo(llama.BosId));
        Assert.That(chosen.InputIds, Is.EqualTo(prompt.Concat(llama.Encode(" blue")).Append(llama.EosId!.Value)));
        Assert.That(rejected.InputIds.Count(id => id == llama.BosId), Is.EqualTo(1));
        var chat = new ChatPreferenceRecord([new ChatMessage("user", "Hi")], [new ChatMessage("assistant", "Hello")], [new ChatMessage("assistant", "Go away")]);
        var (chatChosen, _) = encoder.Encode(1, chat)!.Value;
        Assert.That(chatChosen.InputIds[0], Is.EqualTo(llama.BosId));
        Assert.That(chatChosen.InputIds.Count(id => id == llama.BosId), Is.EqualTo(1));
    }

    /// <summary>A label column that is required (not nullable, as Parquet.Net writes a bool property), after other
    /// required columns: every stored value is read, none as null. The reader takes a required column as plain values,
    /// as the prompt-only reader does since Parquet.Net 6.1 gave it nulls reading required int and double columns into
    /// nullable values; this file does not trigger that, it guards the required path itself.</summary>
    [Test]
    public void RequiredLabelsAfterOtherRequiredColumnsAreRead()
    {
        var path = Shared.WriteParquet(Enumerable.Range(0, 6).Select(i => new RequiredLabelRow
            { id = i, score = i / 3.0, prompt = $"Q{i}?", completion = $" A{i}.", label = i % 3 != 0 }), "required_labels.parquet");
        using var data = ParquetDataset.Open(path);
        Assert.That(data.Format, Is.EqualTo(DatasetFormat.UnpairedPreference));
        var rows = data.ReadAll().Select(r => (UnpairedPreferenceRecord)r.Record).ToList();
        Assert.That(rows.Select(r => r.Label), Is.EqualTo(new[] { false, true, true, false, true, true }));
        Assert.That(data.Summary.SkippedNull, Is.EqualTo(0));
    }

    /// <summary>Unpaired rows (TRL's KTO format: prompt, completion, label), the label a boolean column or JSON's
    /// true/false. A batch holds its examples, then one KL row each: the example's prompt with the previous example's
    /// completion (TRL's KTOTrainer rotates the batch's completions by one); roles 1, -1 and 0.</summary>
    [Test]
    public void UnpairedRowsBatchWithTheirKlRows()
    {
        var json = Path.Combine(Shared.TempDir(), "unpaired.jsonl");
        File.WriteAllText(json, string.Join("\n",
            """{"prompt": "Sky?", "completion": " Blue.", "label": true}""",
            """{"prompt": "Grass?", "completion": " Red.", "label": false}""",
            """{"prompt": "Snow?", "completion": " White.", "label": true}""",
            """{"prompt": "Sun?", "completion": null, "label": true}"""));
        using (var file = ParquetDataset.Open(json))
        {
            Assert.That(file.Format, Is.EqualTo(DatasetFormat.UnpairedPreference));
            Assert.That(file.ReadRowGroup(0), Is.EqualTo(new DataRecord?[]
            {
                new UnpairedPreferenceRecord("Sky?", " Blue.", true), new UnpairedPreferenceRecord("Grass?", " Red.", false),
                new UnpairedPreferenceRecord("Snow?", " White.", true), null,
            }));
        }
        using var data = TrainingData.Open(json, Gpt2.Value, new DataOptions { BatchSize = 2, Shuffle = false });
        Assert.That((data.IsPreference, data.IsUnpaired), Is.EqualTo((true, true)));
        var batches = data.Batches(new DataPosition(0, 0)).ToList();
        Assert.That(batches.Select(b => b.Sequences), Is.EqualTo(new[] { 4, 2 }));
        var first = batches[0];
        Assert.That(first.Roles, Is.EqualTo(new float[] { 1, -1, 0, 0 }));
        string Row(int row) => Gpt2.Value.Decode(first.InputIds.Skip(row * first.SeqLength).Take(first.SeqLength).Where((_, t) => first.AttentionMask[row * first.SeqLength + t] == 1).Select(i => (int)i));
        Assert.That(Enumerable.Range(0, 4).Select(Row), Is.EqualTo(new[]
        {
            "Sky? Blue.<|endoftext|>", "Grass? Red.<|endoftext|>",
            "Sky? Red.<|endoftext|>", "Grass? Blue.<|endoftext|>", // KL rows: each prompt with the previous completion
        }));
        Assert.That(batches[1].Roles, Is.EqualTo(new float[] { 1, 0 }), "a one-example batch's KL row is its own prompt and completion");
    }

    /// <summary>Conversational unpaired rows: the prompt's messages and the completion's, through the chat template as
    /// preference rows go (the completion is what the full render adds after the generation prompt).</summary>
    [Test]
    public void ConversationalUnpairedRowsGoThroughTheChatTemplate()
    {
        var json = Path.Combine(Shared.TempDir(), "unpaired_chat.jsonl");
        File.WriteAllText(json, """{"prompt": [{"role": "user", "content": "Sky colour?"}], "completion": [{"role": "assistant", "content": "Blue."}], "label": false}""");
        using var file = ParquetDataset.Open(json);
        Assert.That((file.Format, file.IsConversational), Is.EqualTo((DatasetFormat.UnpairedPreference, true)));
        var record = (ChatUnpairedPreferenceRecord)file.ReadRowGroup(0)[0]!;
        Assert.That((record.Prompt.Single().Content, record.Completion.Single().Content, record.Label), Is.EqualTo(("Sky colour?", "Blue.", false)));
        var (example, prompt, completion) = Encoder().EncodeUnpaired(0, record)!.Value;
        var tokenizer = Gpt2.Value;
        Assert.That(prompt, Is.EqualTo(tokenizer.Encode("<|im_start|>user\nSky colour?<|im_end|>\n<|im_start|>assistant\n")));
        Assert.That(tokenizer.Decode(completion), Is.EqualTo("Blue.<|im_end|>\n"));
        Assert.That(example.InputIds, Is.EqualTo(prompt.Concat(completion)));
        Assert.That(example.Labels.Take(prompt.Count), Is.All.EqualTo(Ignore));
    }
}
