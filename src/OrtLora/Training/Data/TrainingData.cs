using System.Globalization;

namespace OrtLora.Training.Data;

/// <summary>Data options, named as the Hugging Face Trainer / TRL name them (CLI: --max-seq-length ...).</summary>
public sealed record DataOptions
{
    public DatasetFormat Format { get; init; } = DatasetFormat.Auto;
    /// <summary>The column of plain-text data (TRL's dataset_text_field).</summary>
    public string TextColumn { get; init; } = "text";
    /// <summary>Classification data: the label column (run_ner's and run_classification's label_column_name); null:
    /// label/labels, or a token classifier's ner_tags, tags, ...</summary>
    public string? LabelColumn { get; init; }
    /// <summary>Classification data: text columns joined into one text (run_classification's text_column_names), or null.</summary>
    public IReadOnlyList<string>? TextColumnNames { get; init; }
    /// <summary>What joins <see cref="TextColumnNames"/> (run_classification's text_column_delimiter).</summary>
    public string TextColumnDelimiter { get; init; } = " ";
    public int MaxSeqLength { get; init; } = 512;
    /// <summary>Also learn the prompt (instruction data) / user turns (chat data); off: loss on responses only.</summary>
    public bool TrainOnPrompt { get; init; }
    /// <summary>Concatenate examples into sequences of up to MaxSeqLength tokens.</summary>
    public bool Packing { get; init; }
    /// <summary>The Trainer's group_by_length: batches of similar lengths (less padding), see <see cref="Batching.GroupedByLength"/>.</summary>
    public bool GroupByLength { get; init; }
    /// <summary>The Trainer's dataloader_drop_last: an epoch's (and an evaluation's) last batch is left out when it has fewer rows.</summary>
    public bool DropLast { get; init; }
    /// <summary>Pad every batch to MaxSeqLength and to BatchSize rows (the tokenizers' padding="max_length"): one batch
    /// shape for the whole run.</summary>
    public bool PadToMaxLength { get; init; }
    /// <summary>per_device_train_batch_size.</summary>
    public int BatchSize { get; init; } = 1;
    public int EvalBatchSize { get; init; } = 1;
    public int Seed { get; init; } = 42;
    public bool Shuffle { get; init; } = true;
    /// <summary>Fraction of the training file's rows held out for evaluation (decided per row, from the seed).</summary>
    public double EvalSplit { get; init; }
    /// <summary>A built-in chat template name; null: the model's own (tokenizer_config.json), else ChatML.</summary>
    public string? ChatTemplate { get; init; }
    /// <summary>TRL's chat_template_kwargs as a JSON object (e.g. {"enable_thinking": false}), for a Jinja template.</summary>
    public string? ChatTemplateKwargs { get; init; }
    /// <summary>Preference data (TRL's DPOConfig): the prompt keeps its last max_prompt_length tokens.</summary>
    public int MaxPromptLength { get; init; } = 512;
    /// <summary>Preference data: each completion keeps its first max_completion_length tokens (null: all).</summary>
    public int? MaxCompletionLength { get; init; }
    /// <summary>Preference data: which end of prompt + completion a cut to MaxSeqLength keeps, keep_end (TRL's default) or keep_start.</summary>
    public string TruncationMode { get; init; } = "keep_end";
    /// <summary>Preference data trains a reward model (TRL's RewardTrainer): each pair's sequences are tokenized whole
    /// (<see cref="PreferenceEncoder.EncodeWhole"/>), and pairs longer than MaxSeqLength are dropped, not cut.</summary>
    public bool RewardModeling { get; init; }
    /// <summary>Sequence classification (<see cref="DatasetFormat.Classification"/> data): the classes; null there:
    /// found in the training file (<see cref="Data.ClassLabels.From"/>).</summary>
    public ClassLabels? ClassLabels { get; init; }
    /// <summary>Token classification: a word's later tokens take its label too (run_ner's label_all_tokens), not -100.</summary>
    public bool LabelAllTokens { get; init; }
}

/// <summary>The training data: a Parquet file read row group by row group, rendered, tokenized, labelled, optionally
/// packed, and batched, in a seeded order that a <see cref="DataPosition"/> can resume exactly. Eval data is a
/// fraction of the rows (EvalSplit) or a separate file.</summary>
public sealed class TrainingData : IDisposable
{
    readonly EpochOrder _order;
    readonly ExampleRenderer _renderer;
    readonly ExampleEncoder _encoder;
    readonly PreferenceEncoder? _preference;

    TrainingData(ParquetDataset train, ParquetDataset? eval, TextTokenizer tokenizer, DataOptions options, ChatTemplate chat)
    {
        Train = train;
        EvalFile = eval;
        Tokenizer = tokenizer;
        Options = options;
        _order = new EpochOrder(train, options.Seed, options.Shuffle);
        _renderer = new ExampleRenderer(chat, tokenizer.AddsBos, options.TrainOnPrompt);
        _encoder = new ExampleEncoder(tokenizer, options.MaxSeqLength);
        if (train.Format is DatasetFormat.Preference or DatasetFormat.UnpairedPreference)
            _preference = new PreferenceEncoder(tokenizer, chat, options.MaxSeqLength, options.MaxPromptLength, options.MaxCompletionLength,
                keepEnd: options.TruncationMode == "keep_end");
    }

    /// <summary>Preference data: each example is a pair of sequences, chosen then rejected, side by side in a batch
    /// (rows 2i and 2i + 1), a batch holding BatchSize pairs; the DPO loss trains on them. Unpaired preference data
    /// (KTO) too: a batch holds BatchSize examples and as many KL rows after them.</summary>
    public bool IsPreference => _preference is not null;

    /// <summary>Unpaired preference data (KTO's): each batch's examples, then its KL rows (<see cref="UnpairedBatches"/>).</summary>
    public bool IsUnpaired => Train.Format == DatasetFormat.UnpairedPreference;

    /// <summary>KTO's loss is what unpaired data trains with; paired data takes the others.</summary>
    public void RequireLoss(Autodiff.PreferenceOptions options)
    {
        if (options.IsRewardModel && IsUnpaired)
            throw new OrtLoraException($"{Train.Path}: a reward model trains on pairs (chosen, rejected); this file has unpaired preference data (prompt, completion, label)");
        if (IsUnpaired == options.Unpaired) return;
        throw new OrtLoraException(IsUnpaired
            ? $"{Train.Path}: unpaired preference data (prompt, completion, label) trains with --loss-type kto"
            : $"{Train.Path}: --loss-type kto takes unpaired preference data (prompt, completion, label); this file has pairs (chosen, rejected)");
    }

    /// <summary>Sequences in a full batch of <paramref name="examples"/> examples.</summary>
    int Sequences(int examples) => IsPreference ? 2 * examples : examples;

    public ParquetDataset Train { get; }
    /// <summary>Classification data: its classes (null for other data).</summary>
    public ClassLabels? ClassLabels => Options.ClassLabels;
    public bool IsClassification => Classifies(Train.Format);
    static bool Classifies(DatasetFormat format) => format is DatasetFormat.Classification or DatasetFormat.TokenClassification;
    /// <summary>Token classification data: a class for each word.</summary>
    public bool IsTokenClassification => Train.Format == DatasetFormat.TokenClassification;
    public ParquetDataset? EvalFile { get; }
    public TextTokenizer Tokenizer { get; }
    public DataOptions Options { get; }
    public ChatTemplate ChatTemplate => _renderer.ChatTemplate;
    /// <summary>Examples dropped because truncation left none of their response (counted once per row).</summary>
    public long SkippedNoTrainedTokens => _truncatedAway.Count;
    readonly HashSet<long> _truncatedAway = new();
    /// <summary>Classification rows whose text was cut to fit max_length.</summary>
    readonly HashSet<long> _cut = new();

    /// <summary>Opens the data. The chat template is the one the options name, else the model's own (from
    /// <paramref name="tokenizerConfig"/> when given, else the tokenizer's tokenizer_config.json), else ChatML.</summary>
    public static TrainingData Open(string trainPath, TextTokenizer tokenizer, DataOptions options, string? evalPath = null,
        TokenizerConfig? tokenizerConfig = null)
    {
        if (options.BatchSize <= 0 || options.EvalBatchSize <= 0)
            throw new OrtLoraException($"batch sizes must be positive, got {options.BatchSize} (train) and {options.EvalBatchSize} (eval)");
        if (options.EvalSplit is < 0 or >= 1) throw new OrtLoraException($"--eval-split must be in [0, 1), got {options.EvalSplit}");
        if (evalPath is not null && options.EvalSplit > 0) throw new OrtLoraException("give either an eval file or --eval-split, not both");
        if (options.GroupByLength && options.Packing)
            throw new OrtLoraException("--group-by-length sorts examples by length to pad less; packed sequences are all about --max-seq-length: choose one");
        if (options.TruncationMode is not ("keep_end" or "keep_start"))
            throw new OrtLoraException($"--truncation-mode must be keep_end or keep_start, got '{options.TruncationMode}'");
        if (options.MaxPromptLength <= 0 || options.MaxCompletionLength <= 0)
            throw new OrtLoraException($"--max-prompt-length and --max-completion-length must be positive, got {options.MaxPromptLength} and {options.MaxCompletionLength}");
        var train = ParquetDataset.Open(trainPath, options.Format, options.TextColumn, labelColumn: options.LabelColumn, textColumnNames: options.TextColumnNames, textColumnDelimiter: options.TextColumnDelimiter);
        // Without this the renderer and encoders, which know completions only, would fail on the first row.
        if (train.Format == DatasetFormat.Prompt)
        {
            train.Dispose();
            throw new OrtLoraException($"{trainPath}: prompt-only data (a 'prompt' column and no completion) has nothing to learn from by itself: " +
                                       "it is for `ortlora grpo`, which samples completions and scores them with reward functions");
        }
        if (Classifies(train.Format) && options.Packing)
        {
            train.Dispose();
            throw new OrtLoraException($"{trainPath}: classification reads its labels from each row's own sequence; --packing would put several rows in one");
        }
        if (train.Format is DatasetFormat.Preference or DatasetFormat.UnpairedPreference && (options.Packing || options.GroupByLength))
        {
            train.Dispose();
            throw new OrtLoraException($"{trainPath}: preference data trains pairs side by side (chosen, rejected); --packing and --group-by-length would take them apart");
        }
        ParquetDataset? eval = null;
        try
        {
            eval = evalPath is null ? null : ParquetDataset.Open(evalPath, train.Format, options.TextColumn, labelColumn: options.LabelColumn, textColumnNames: options.TextColumnNames, textColumnDelimiter: options.TextColumnDelimiter);
            var chat = train.IsConversational
                ? Data.ChatTemplate.Resolve(options.ChatTemplate, tokenizerConfig ?? tokenizer.Config,
                    Path.Combine(Path.GetDirectoryName(tokenizer.Source) ?? "", "tokenizer_config.json"), options.ChatTemplateKwargs)
                : Data.ChatTemplate.ChatMl;
            var classes = !Classifies(train.Format) ? null : options.ClassLabels ?? Data.ClassLabels.From(train);
            return new TrainingData(train, eval, tokenizer, options with { ClassLabels = classes }, chat);
        }
        catch
        {
            train.Dispose();
            eval?.Dispose();
            throw;
        }
    }

    /// <summary>The batches of <paramref name="from"/>.Epoch from that position to the epoch's end.</summary>
    public IEnumerable<Batch> Batches(DataPosition from)
    {
        var examples = TrainExamples(from);
        var sequences = Options.Packing ? Batching.Pack(examples, Options.MaxSeqLength) : Batching.Single(examples);
        if (Options.GroupByLength)
        {
            // transformers' megabatch: 50 batches, fewer when the data has under 200 batches (a quarter of them)
            int batches = (int)Math.Clamp(Train.RowCount / (4L * Options.BatchSize), 1, 50);
            return DropPartial(Batching.GroupedByLength(sequences, Options.BatchSize, batches * Options.BatchSize, Tokenizer.PadId, from, FixedLength));
        }
        if (IsUnpaired) return DropPartial(UnpairedBatches(examples, Options.BatchSize, from.Epoch));
        return DropPartial(Batching.Batches(sequences, Sequences(Options.BatchSize), Tokenizer.PadId, from.Epoch, FixedLength));
    }

    /// <summary>KTO's batches, as TRL's KTOTrainer builds them: <paramref name="batchSize"/> examples, then one KL row for
    /// each, the example's prompt with the previous example's completion (the batch's completions rotated by one), which
    /// estimates the policy's KL divergence from the reference and is not trained.</summary>
    IEnumerable<Batch> UnpairedBatches(IEnumerable<(TokenizedExample Example, long Next)> examples, int batchSize, int epoch)
    {
        foreach (var chunk in examples.Chunk(batchSize))
        {
            var pieces = chunk.Select(e => _unpaired.TryGetValue(e.Example, out var p) ? p : throw new InvalidOperationException("an unpaired example without its pieces")).ToList();
            var rows = chunk.Select((e, i) => new Sequence(e.Example.InputIds, e.Example.Labels, e.Next, [e.Example.RowIndex]) { Role = pieces[i].Desirable ? 1 : -1 })
                .Concat(chunk.Select((e, i) => _preference!.Sequence(e.Example.RowIndex, pieces[i].Prompt, pieces[(i + chunk.Length - 1) % chunk.Length].Completion) is var kl
                    ? new Sequence(kl.InputIds, kl.Labels, e.Next, [e.Example.RowIndex]) : null!))
                .ToList();
            yield return Batching.Pad(rows, Tokenizer.PadId, epoch, FixedLength is { } l ? (Sequences(batchSize), l) : null);
        }
    }

    /// <summary>KTO: each tokenized example's prompt and completion ids and label, for its batch's KL rows.</summary>
    readonly System.Runtime.CompilerServices.ConditionalWeakTable<TokenizedExample, UnpairedPieces> _unpaired = new();
    sealed record UnpairedPieces(List<int> Prompt, List<int> Completion, bool Desirable);

    /// <summary>With <see cref="DataOptions.DropLast"/>, the batches that hold fewer rows than the batch size (only ever
    /// an epoch's last: grouping sorts within groups of whole batches).</summary>
    IEnumerable<Batch> DropPartial(IEnumerable<Batch> batches, int? batchSize = null) =>
        Options.DropLast ? batches.Where(b => b.Sequences >= Sequences(batchSize ?? Options.BatchSize)) : batches;

    /// <summary>Batches for evaluation: the eval file, or the held-out rows, in file order (never packed). The eval
    /// examples are tokenized on the first call and kept, so later evaluations do not read the files again. As the
    /// Trainer's eval dataloader, drop_last leaves out a last batch with fewer rows.</summary>
    public IEnumerable<Batch> EvalBatches()
    {
        _evalExamples ??= [.. Tokenize(EvalFile ?? Train, EvalRows().Select(r => (r.Index, r.Record, r.Index + 1)))];
        if (IsUnpaired) return DropPartial(UnpairedBatches(_evalExamples, Options.EvalBatchSize, 0), Options.EvalBatchSize);
        return DropPartial(Batching.Batches(Batching.Single(_evalExamples), Sequences(Options.EvalBatchSize), Tokenizer.PadId, 0, FixedLength), Options.EvalBatchSize);
    }

    List<(TokenizedExample, long)>? _evalExamples;

    /// <summary>Preference data: the training rows' pairs in file order, EvalBatchSize pairs a batch, for computing the
    /// reference's log-probabilities once (TRL's precompute_ref_log_probs).</summary>
    public IEnumerable<Batch> TrainPairsInFileOrder() =>
        Batching.Batches(Batching.Single(Tokenize(Train, Train.ReadAll().Where(r => !EpochOrder.IsEval(r.Index, Options.EvalSplit, Options.Seed))
            .Select(r => (r.Index, r.Record, r.Index + 1)))), Sequences(Options.EvalBatchSize), Tokenizer.PadId, 0, FixedLength);

    IEnumerable<(long Index, DataRecord Record)> EvalRows() =>
        EvalFile is not null ? EvalFile.ReadAll()
        : Options.EvalSplit > 0 ? Train.ReadAll().Where(r => EpochOrder.IsEval(r.Index, Options.EvalSplit, Options.Seed))
        : [];

    public bool HasEval => EvalFile is not null || Options.EvalSplit > 0;

    /// <summary>Number of batches in one epoch (a streamed pass that tokenizes everything; with packing the count
    /// can differ slightly between epochs, as the order changes).</summary>
    int? FixedLength => Options.PadToMaxLength ? Options.MaxSeqLength : null;

    public int CountBatches(int epoch = 0) => Batches(new DataPosition(epoch, 0)).Count();

    /// <summary>The usable rows in file order, each tokenized and labelled as training would (null: truncation left
    /// nothing to learn), without the epoch's shuffle: what `ortlora show-data` prints. A preference row gives two,
    /// chosen then rejected.</summary>
    public IEnumerable<(long Row, TokenizedExample? Example)> FileExamples() =>
        Train.ReadAll().SelectMany(r => IsClassification ? [(r.Index, EncodeClassification(Train, r.Index, r.Record))]
            : _preference is null ? [(r.Index, _encoder.Encode(Render(Train, r.Index, r.Record)))]
            : IsUnpaired ? [(r.Index, EncodeUnpaired(Train, r.Index, r.Record)?.Example)]
            : EncodePair(Train, r.Index, r.Record) is { } pair ? [(r.Index, pair.Chosen), (r.Index, pair.Rejected)]
            : new (long, TokenizedExample?)[] { (r.Index, null) });

    /// <summary>The training rows of an epoch from a position: eval rows and skipped rows left out.</summary>
    IEnumerable<(TokenizedExample, long)> TrainExamples(DataPosition from) =>
        Tokenize(Train, _order.Rows(from.Epoch, from.Index)
            .Where(r => r.Record is not null && !EpochOrder.IsEval(r.RowIndex, Options.EvalSplit, Options.Seed))
            .Select(r => (r.RowIndex, r.Record!, r.OrderIndex + 1)));

    IEnumerable<(TokenizedExample, long)> Tokenize(ParquetDataset file, IEnumerable<(long RowIndex, DataRecord Record, long NextIndex)> rows)
    {
        foreach (var (rowIndex, record, next) in rows)
        {
            if (IsUnpaired)
            {
                if (EncodeUnpaired(file, rowIndex, record) is not { } unpaired) { _truncatedAway.Add(rowIndex); continue; }
                _unpaired.AddOrUpdate(unpaired.Example, new UnpairedPieces(unpaired.Prompt, unpaired.Completion, record switch
                {
                    UnpairedPreferenceRecord r => r.Label,
                    ChatUnpairedPreferenceRecord r => r.Label,
                    _ => false,
                }));
                yield return (unpaired.Example, next);
                continue;
            }
            if (_preference is not null)
            {
                if (EncodePair(file, rowIndex, record) is not { } pair) { _truncatedAway.Add(rowIndex); continue; }
                yield return (pair.Chosen, next);
                yield return (pair.Rejected, next);
                continue;
            }
            var example = IsClassification ? EncodeClassification(file, rowIndex, record) : _encoder.Encode(Render(file, rowIndex, record));
            if (example is null) { _truncatedAway.Add(rowIndex); continue; }
            yield return (example, next);
        }
    }

    /// <summary>A classification row's tokens (<see cref="ClassificationTokens"/>). The label is the class index at the
    /// last token, -100 elsewhere: the loss reads one class a row (the classifier scores the last non-pad token), and the
    /// batch's labelled rows are its rows. A regression's row is marked by a label 0 there, its target going with the
    /// row; a multi-label row too, with its classes multi-hot.</summary>
    TokenizedExample? EncodeClassification(ParquetDataset file, long rowIndex, DataRecord record)
    {
        if (record is TokenClassificationRecord words) return EncodeTokenClassification(file, rowIndex, words);
        var row = record as ClassificationRecord ?? throw new OrtLoraException($"{file.Path}: row {rowIndex} is not a classification row");
        var classes = ClassLabels!;
        if (classes.IsMultiLabel != row.LabelSet is not null && !(row.LabelSet is null && row.Label == ""))
            throw new OrtLoraException($"{file.Path}: row {rowIndex}: {(classes.IsMultiLabel ? "one label; the classifier is multi-label (a list of labels a row)" : "a list of labels; the classifier takes one label a row")}");
        int label = classes.IsRegression || classes.IsMultiLabel ? 0 : classes.Id(row.Label, file.Path, rowIndex);
        float[]? targets = classes.IsMultiLabel ? classes.Targets(row.LabelSet ?? [], file.Path, rowIndex) : null;
        float target = classes.IsRegression ? classes.Target(row.Label, file.Path, rowIndex) : 0;
        var (ids, cut) = ClassificationTokens.Encode(Tokenizer, row.Text, row.TextPair, Options.MaxSeqLength);
        if (cut) _cut.Add(rowIndex);
        if (ids.Length == 0) return null;
        var labels = Enumerable.Repeat(ExampleEncoder.IgnoreIndex, ids.Length).ToArray();
        labels[^1] = label;
        return new TokenizedExample(rowIndex, ids, labels) { RowValue = target, RowTargets = targets };
    }

    /// <summary>A token classification row's tokens and labels (<see cref="TokenClassificationTokens"/>): each word's
    /// class at its first token.</summary>
    TokenizedExample? EncodeTokenClassification(ParquetDataset file, long rowIndex, TokenClassificationRecord row)
    {
        var classes = ClassLabels!;
        var labels = row.Labels.Count == 0 ? null : row.Labels.Select(l => classes.Id(l, file.Path, rowIndex)).ToList();
        var (ids, tags, _, cut) = TokenClassificationTokens.Encode(Tokenizer, row.Words, labels, Options.MaxSeqLength, Options.LabelAllTokens, classes);
        if (cut) _cut.Add(rowIndex);
        var example = new TokenizedExample(rowIndex, ids, tags);
        return example.TrainedTokens == 0 ? null : example;
    }

    /// <summary>A row rendered; what the template refuses (a role it has no place for, its raise_exception) names the
    /// data file and the row.</summary>
    Example Render(ParquetDataset file, long rowIndex, DataRecord record)
    {
        try { return _renderer.Render(rowIndex, record); }
        catch (OrtLoraException e) { throw new OrtLoraException($"{file.Path}: row {rowIndex}: {e.Message}", e); }
    }

    (TokenizedExample Example, List<int> Prompt, List<int> Completion)? EncodeUnpaired(ParquetDataset file, long rowIndex, DataRecord record)
    {
        try { return _preference!.EncodeUnpaired(rowIndex, record); }
        catch (OrtLoraException e) { throw new OrtLoraException($"{file.Path}: row {rowIndex}: {e.Message}", e); }
    }

    (TokenizedExample Chosen, TokenizedExample Rejected)? EncodePair(ParquetDataset file, long rowIndex, DataRecord record)
    {
        try { return Options.RewardModeling ? _preference!.EncodeWhole(rowIndex, record) : _preference!.Encode(rowIndex, record); }
        catch (OrtLoraException e) { throw new OrtLoraException($"{file.Path}: row {rowIndex}: {e.Message}", e); }
    }

    /// <summary>One line for the log: file, format, counts, eval source.</summary>
    public string Describe() =>
        $"{Path.GetFileName(Train.Path)}: {ParquetDataset.FormatName(Train.Format)}{(Train.ConversationalPrompts ? " (conversational)" : "")} data" +
        (Train.IsConversational ? $" ({ChatTemplate.Name} template)" : "") +
        $", {Summary}" +
        (ClassLabels is { } classes ? $", {classes}" : "") + (_cut.Count > 0 ? $", {_cut.Count} cut to {Options.MaxSeqLength} tokens" : "") +
        (SkippedNoTrainedTokens > 0 ? $", {SkippedNoTrainedTokens} dropped ({(Options.RewardModeling ? "longer than" : "no response left within")} {Options.MaxSeqLength} tokens)" : "") +
        (EvalFile is not null ? $"; eval: {Path.GetFileName(EvalFile.Path)}" : Options.EvalSplit > 0 ? string.Create(CultureInfo.InvariantCulture, $"; eval: {Options.EvalSplit * 100:0.##}% of rows") : "");

    /// <summary>Counts of the training file (reads it once, streamed, if not yet read whole).</summary>
    public DataSummary Summary => Train.Scan();

    public void Dispose()
    {
        Train.Dispose();
        EvalFile?.Dispose();
    }
}
