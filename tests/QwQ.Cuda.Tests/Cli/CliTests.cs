using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using QwQ.Cuda.Cli;
using QwQ.Cuda.Cli.Commands;
using QwQ.Cuda.Cli.Output;
using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Cli;

/// <summary>The qwq CLI through its entry point, with captured stdout/stderr (CPU only).</summary>
public class CliTests
{
    private static TestModels.TempDir? _shared;
    private static string TinyModelDir => _shared!.Combine("tiny");

    [OneTimeSetUp]
    public void WriteTinyModel()
    {
        _shared = new TestModels.TempDir();
        TestModels.WriteModelDir(TinyModelDir, TestModels.ConfigJson(maxPositions: 512));
    }

    [OneTimeTearDown]
    public void RemoveTinyModel() => _shared?.Dispose();

    internal sealed record Result(int ExitCode, string Out, string Err);

    internal static async Task<Result> QwqWithInput(string stdin, params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int code = await Program.RunAsync(args, o, e, new StringReader(stdin));
        return new Result(code, o.ToString(), e.ToString());
    }

    internal static Task<Result> Qwq(params string[] args) => QwqWithInput("", args);

    private static void AssertOneCleanError(Result r, int exitCode, params string[] fragments)
    {
        Assert.That(r.ExitCode, Is.EqualTo(exitCode), r.Err);
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines.Count(l => l.StartsWith("error:", StringComparison.Ordinal)), Is.EqualTo(1), r.Err);
        foreach (var f in fragments) Assert.That(r.Err, Does.Contain(f));
        Assert.That(r.Err, Does.Not.Contain("   at "), "no stack trace without --verbose");
    }

    private static string[] Gen(string model, params string[] more) => GenTokens(model, 4, more);

    private static string[] GenTokens(string model, int maxTokens, params string[] more) =>
        ["generate", "--model", model, "--backend", "cpu", "--prompt", "Hello", "--temperature", "0", "--max-tokens", maxTokens.ToString(CultureInfo.InvariantCulture), .. more];

    // ---- parsing and usage errors -------------------------------------------------------------

    [Test]
    public async Task HelpListsTheCommands()
    {
        var r = await Qwq("--help");
        Assert.That(r.ExitCode, Is.Zero);
        Assert.That(r.Out, Does.Contain("generate").And.Contain("chat").And.Contain("info"));
    }

    [Test]
    public async Task GenerateHelpListsEverySamplingOption()
    {
        var r = await Qwq("generate", "--help");
        Assert.That(r.ExitCode, Is.Zero);
        foreach (var o in new[] { "--temperature", "--top-p", "--top-k", "--min-p", "--presence-penalty", "--frequency-penalty",
                     "--repetition-penalty", "--seed", "--max-tokens", "--stop", "--max-context", "--synthetic", "--backend", "--json", "--hide-reasoning", "--verbose" })
            Assert.That(r.Out, Does.Contain(o));
    }

    [Test]
    public async Task UnknownOptionIsAUsageError()
    {
        var r = await Qwq("generate", "--bogus");
        Assert.That(r.ExitCode, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("--bogus"));
    }

    [Test]
    public async Task NonNumericValueIsAUsageError()
    {
        var r = await Qwq("generate", "--model", "x", "--prompt", "hi", "--temperature", "hot");
        Assert.That(r.ExitCode, Is.EqualTo(2));
        Assert.That(r.Err, Does.Contain("hot"));
    }

    [TestCase("generate", "--top-p", "abc", "--top-p expects a number such as 0.95, got 'abc'")]
    [TestCase("generate", "--temperature", "0,6", "--temperature expects a number such as 0.6, got '0,6'")]
    [TestCase("generate", "--seed", "-1", "--seed expects a whole number such as 42, got '-1'")]
    [TestCase("generate", "--max-tokens", "1.5", "--max-tokens expects a whole number such as 512, got '1.5'")]
    [TestCase("generate", "--top-k", "99999999999", "--top-k expects a whole number such as 40, got '99999999999'")]
    [TestCase("info", "--device", "gpu0", "--device expects a whole number such as 0, got 'gpu0'")]
    [TestCase("bench", "--prefill-gemm", "cutlass", "--prefill-gemm expects one of cublas, cublaslt, cublaslttuned, got 'cutlass'")]
    [TestCase("bench", "--steps", "many", "--steps expects a whole number such as 64, got 'many'")]
    [TestCase("generate", "--backend", "gpu", "--backend expects one of cuda, cpu, got 'gpu'")]          // was "Argument 'gpu' not recognized", the names on tab-indented lines
    [TestCase("generate", "--rope-scaling", "yarn", "--rope-scaling expects one of adaptive, static, off, got 'yarn'")]
    public async Task ParseErrorsSayWhatWasExpected(string command, string option, string value, string message)
    {
        var r = await Qwq(command == "generate" ? [command, "--model", "x", "--prompt", "hi", option, value] : [command, option, value]);
        AssertOneCleanError(r, 2, message);
        Assert.That(r.Err, Does.Not.Contain("System."), "no .NET type names");
    }

    // --kv-cache FP8 and --quantize INT4 were taken, --backend CPU was refused.
    [Test]
    public async Task BackendNamesAreCaseInsensitiveLikeTheOtherChoices()
    {
        var r = await Qwq("generate", "--model", TinyModelDir, "--backend", "CPU", "--rope-scaling", "Off", "--prompt", "Hello", "--max-tokens", "2");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("generated 2 tok"));
    }

    [TestCase("--prefill", "2147483647")]
    [TestCase("--decode", "512,99999999999")]
    [TestCase("--decode", "1e3")]
    public async Task BenchLengthsAreBoundedBeforeAnythingIsSized(string option, string value)
    {
        var r = await Qwq("bench", option, value);
        AssertOneCleanError(r, 2, option, "expected positive integers up to 16777216");
    }

    // An empty list (a variable that expanded to nothing) sized the sequence from no lengths: an internal error.
    [TestCase("--prefill", "")]
    [TestCase("--decode", " , ")]
    [TestCase("--batch", "")]
    public async Task BenchEmptyLengthListIsAUsageError(string option, string value)
    {
        var r = await Qwq("bench", option, value);
        AssertOneCleanError(r, 2, $"{option} '{value}'", "e.g. 512,2048");
    }

    // An --out that cannot be made was found only when the results were written, after the whole run: an internal error.
    [Test]
    public async Task BenchOutDirectoryIsCheckedBeforeAnythingLoads()
    {
        using var tmp = new TestModels.TempDir();
        string file = tmp.Combine("a-file");
        File.WriteAllText(file, "");
        var r = await Qwq("bench", "--out", Path.Combine(file, "results"));
        AssertOneCleanError(r, 2, "--out", Path.Combine(file, "results"));
    }

    [Test]
    public void BenchDecodeMixedReadsRowsOfDifferentContexts() =>
        Assert.That(BenchCommand.ParseMixed("32768+7x1024, 2x4096+512"),
            Is.EqualTo(new[] { new[] { 32768, 1024, 1024, 1024, 1024, 1024, 1024, 1024 }, new[] { 4096, 4096, 512 } }));

    [TestCase("0")]
    [TestCase("9")]
    public async Task BenchDecodeBlocksPerSmIsCheckedBeforeAnythingLoads(string value)
    {
        var r = await Qwq("bench", "--decode-blocks-per-sm", value);
        AssertOneCleanError(r, 2, $"--decode-blocks-per-sm must be from 1 to 4, got {value}");
    }

    [TestCase("0")]
    [TestCase("511")]
    [TestCase("-4096")]
    public async Task BenchPrefillChunkIsCheckedBeforeAnythingLoads(string value)
    {
        var r = await Qwq("bench", "--prefill-chunk", value);
        AssertOneCleanError(r, 2, $"--prefill-chunk must be at least 512, got {value}");
    }

    [TestCase("0", TestName = "BenchDecodeMixed_ContextZero_IsRefused")]
    [TestCase("1024+0x2048", TestName = "BenchDecodeMixed_ZeroRows_IsRefused")]
    [TestCase("1024+2y2048", TestName = "BenchDecodeMixed_NotNxC_IsRefused")]
    [TestCase("129x1024", TestName = "BenchDecodeMixed_MoreRowsThanAStepHolds_IsRefused")]
    [TestCase("99999999999", TestName = "BenchDecodeMixed_PastTheModelsPositions_IsRefused")]
    public async Task BenchDecodeMixedIsCheckedBeforeAnythingLoads(string value)
    {
        var r = await Qwq("bench", "--decode-mixed", value);
        AssertOneCleanError(r, 2, "--decode-mixed", "e.g. 32768+7x1024");
    }

    /// <summary>A culture that writes one half as "0,5": German-style ('.' groups digits) or French-style (a narrow space does).</summary>
    private static CultureInfo CommaCulture(string style)
    {
        var c = (CultureInfo)CultureInfo.InvariantCulture.Clone();
        c.NumberFormat.NumberDecimalSeparator = ",";
        c.NumberFormat.NumberGroupSeparator = style == "de" ? "." : "\u202F";
        return c;
    }

    // Under LC_ALL=de_DE.UTF-8, "--temperature 0.5" ran at 5 and "--repetition-penalty 1.05" at 105 ('.' groups digits
    // there); under fr_FR "0.6" did not parse. Cloned cultures make the test independent of installed ICU data.
    [TestCase("de")]
    [TestCase("fr")]
    public void NumbersParseTheSameUnderEveryLocale(string style)
    {
        var saved = CultureInfo.CurrentCulture;
        CultureInfo.CurrentCulture = CommaCulture(style);
        try
        {
            Assert.That(1.5.ToString(CultureInfo.CurrentCulture), Is.EqualTo("1,5"), "the culture really differs");
            var opts = new SamplingCliOptions();
            var cmd = new Command("x");
            opts.AddTo(cmd);
            var p = cmd.Parse(["--temperature", "0.5", "--repetition-penalty", "1.05", "--top-p", "0.95", "--min-p", "0.6", "--top-k", "1000"]);
            Assert.That(p.Errors, Is.Empty);
            var s = opts.Bind(p, SamplingOptions.FromGenerationConfig()).Sampling!;
            Assert.That((s.Temperature, s.RepetitionPenalty, s.TopP, s.MinP, s.TopK), Is.EqualTo((0.5f, 1.05f, 0.95f, 0.6f, 1000)));
            Assert.That(cmd.Parse(["--top-p", "0,95"]).Errors, Is.Not.Empty, "the locale's own spelling is not a second syntax");
        }
        finally { CultureInfo.CurrentCulture = saved; }
    }

    [Test]
    public async Task InfoPrintsInvariantNumbersUnderACommaLocale()
    {
        var saved = CultureInfo.CurrentCulture;
        var comma = CommaCulture("de");
        CultureInfo.CurrentCulture = comma;
        try
        {
            var r = await Qwq("info", "--synthetic", "qwq-32b");
            Assert.That(r.ExitCode, Is.Zero, r.Err);
            Assert.That(r.Out, Does.Contain("32,763,876,352 (32.76 B)").And.Contain("61.0 GiB"));
            Assert.That(CultureInfo.CurrentCulture, Is.SameAs(comma), "the caller's culture is left alone");
        }
        finally { CultureInfo.CurrentCulture = saved; }
    }

    [Test]
    public async Task InfoGivesASmallModelsKvSizeInBytes()
    {
        // tiny-chat: 2 layers, K and V, 2 KV heads of 16 → 2 · 2 · 2 · 16 · 2 bytes = 256 bytes a position, which printed as "0 KiB"
        var r = await Qwq("info", "--model", TestModels.GoldenModelDir("tiny-chat"));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("256 bytes (bf16 K and V, 2 layers)"));
        Assert.That(InfoCommand.PerTokenSize(512), Is.EqualTo("512 bytes"));
        Assert.That(InfoCommand.PerTokenSize(256 * 1024), Is.EqualTo("256 KiB"));
        Assert.That(InfoCommand.PerTokenSize(135_168), Is.EqualTo("132 KiB"));  // fp8 K and V with scales, 64 layers
    }

    // info took --tokenizer (its help lists it) and ignored it: the row always looked in the model directory.
    [Test]
    public async Task InfoLooksForTheTokenizerWhereTokenizerSays()
    {
        using var tmp = new TestModels.TempDir();
        string weightsOnly = tmp.Combine("weights"), tokenizerOnly = tmp.Combine("tokenizer");
        Directory.CreateDirectory(weightsOnly);
        Directory.CreateDirectory(tokenizerOnly);
        string chat = TestModels.GoldenModelDir("tiny-chat");
        File.Copy(Path.Combine(chat, "config.json"), Path.Combine(weightsOnly, "config.json"));
        foreach (string f in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(chat, f), Path.Combine(tokenizerOnly, f));

        var found = await Qwq("info", "--model", weightsOnly, "--tokenizer", tokenizerOnly);
        Assert.That(found.ExitCode, Is.Zero, found.Err);
        Assert.That(found.Out, Does.Contain(Path.Combine(tokenizerOnly, "tokenizer.json")));
        var json = await Qwq("info", "--model", weightsOnly, "--tokenizer", tokenizerOnly, "--json");
        Assert.That(JsonDocument.Parse(json.Out).RootElement.GetProperty("tokenizer").GetBoolean(), Is.True);

        var missing = await Qwq("info", "--model", chat, "--tokenizer", weightsOnly);
        Assert.That(missing.ExitCode, Is.Zero, missing.Err);
        Assert.That(missing.Out, Does.Contain($"none in {weightsOnly}"));
    }

    [Test]
    public async Task MissingModelSaysHowToGiveOne()
    {
        var r = await Qwq("generate", "--prompt", "hi");
        AssertOneCleanError(r, 2, "--model", "--synthetic");
    }

    [Test]
    public async Task ModelAndSyntheticTogetherAreRejected()
    {
        var r = await Qwq("generate", "--model", "x", "--synthetic", "qwq-32b", "--prompt", "hi");
        AssertOneCleanError(r, 2, "either --model or --synthetic");
    }

    [Test]
    public async Task SyntheticQwqOnTheCpuReferenceIsRefusedForItsSize()
    {
        // the preset's tokenizer is embedded, so this gets as far as the backend, which refuses 131 GB of fp32
        var r = await Qwq("generate", "--synthetic", "qwq-32b", "--prompt", "hi", "--backend", "cpu");
        AssertOneCleanError(r, 2, "--backend cuda");
    }

    [Test]
    public async Task UnknownPresetListsTheKnownOnes()
    {
        var r = await Qwq("info", "--synthetic", "gpt-5");
        AssertOneCleanError(r, 1, "gpt-5", "qwq-32b");
    }

    [TestCase("--temperature", "-1", "--temperature")]
    [TestCase("--top-p", "0", "--top-p")]
    [TestCase("--top-p", "1.5", "--top-p")]
    [TestCase("--top-k", "-1", "--top-k")]
    [TestCase("--min-p", "2", "--min-p")]
    [TestCase("--repetition-penalty", "0", "--repetition-penalty")]
    [TestCase("--max-tokens", "0", "--max-tokens")]
    [TestCase("--max-context", "0", "--max-context")]
    public async Task InvalidSamplingValuesNameTheOption(string option, string value, string named)
    {
        // Checked before the model is even looked up.
        var r = await Qwq("generate", "--model", "/no/such/model", "--prompt", "hi", option, value);
        AssertOneCleanError(r, 2, named);
    }

    // ---- model problems ------------------------------------------------------------------------

    [Test]
    public async Task MissingModelDirectoryIsNamed()
    {
        var r = await Qwq(Gen("/no/such/model"));
        AssertOneCleanError(r, 1, "/no/such/model", "does not exist");
    }

    [Test]
    public async Task MissingModelDirectoryWithVerboseShowsTheStack()
    {
        var r = await Qwq(Gen("/no/such/model", "--verbose"));
        Assert.That(r.ExitCode, Is.EqualTo(1));
        Assert.That(r.Err, Does.Contain("   at "));
    }

    [Test]
    public async Task HfIdNotInTheCacheNamesTheSearchedPlaces()
    {
        using var tmp = new TestModels.TempDir();
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", tmp.Path);
        try
        {
            var r = await Qwq(Gen("Qwen/QwQ-32B"));
            AssertOneCleanError(r, 1, "Qwen/QwQ-32B", tmp.Path);
        }
        finally { Environment.SetEnvironmentVariable("HF_HUB_CACHE", null); }
    }

    // bench read <DIR>/config.json itself: a missing directory was "Could not find a part of the path", a Hugging Face
    // id was taken for a relative directory, and --synthetic beside --model was silently ignored.
    [Test]
    public async Task BenchMissingModelDirectoryIsNamedAsByTheOtherCommands()
    {
        var r = await Qwq("bench", "--model", "/no/such/model");
        AssertOneCleanError(r, 1, "Model directory '/no/such/model' does not exist");
    }

    [Test]
    public async Task BenchLooksUpAHuggingFaceIdInTheCache()
    {
        using var tmp = new TestModels.TempDir();
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", tmp.Path);
        try
        {
            var r = await Qwq("bench", "--model", "Qwen/QwQ-32B");
            AssertOneCleanError(r, 1, "Qwen/QwQ-32B", tmp.Path);
        }
        finally { Environment.SetEnvironmentVariable("HF_HUB_CACHE", null); }
    }

    [Test]
    public async Task BenchDirectoryWithoutConfigJsonSaysWhatItNeeds()
    {
        using var tmp = new TestModels.TempDir();
        var r = await Qwq("bench", "--model", tmp.Path);
        AssertOneCleanError(r, 1, Path.Combine(tmp.Path, "config.json") + " does not exist");
    }

    [Test]
    public async Task BenchModelAndSyntheticTogetherAreRejected()
    {
        var r = await Qwq("bench", "--model", TinyModelDir, "--synthetic", "qwq-32b-yarn");
        AssertOneCleanError(r, 2, "either --model or --synthetic");
    }

    [Test]
    public async Task DirectoryWithoutConfigJson()
    {
        using var tmp = new TestModels.TempDir();
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "config.json");
    }

    [Test]
    public async Task MalformedConfigJson()
    {
        using var tmp = new TestModels.TempDir();
        File.WriteAllText(tmp.Combine("config.json"), "{ \"model_type\": \"qwen2\", ");
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "config.json", "malformed JSON");
    }

    [Test]
    public async Task ConfigThatIsNotQwen2()
    {
        using var tmp = new TestModels.TempDir();
        File.WriteAllText(tmp.Combine("config.json"), TestModels.ConfigJson().Replace("\"qwen2\"", "\"llama\""));
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "model_type", "llama");
    }

    [Test]
    public async Task NoSafetensors()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson());
        File.Delete(tmp.Combine("model.safetensors"));
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "safetensors", "--synthetic");
    }

    [Test]
    public async Task MissingShard()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson());
        File.Move(tmp.Combine("model.safetensors"), tmp.Combine("model-00001-of-00002.safetensors"));
        File.WriteAllText(tmp.Combine("model.safetensors.index.json"), """
            {"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
            """);
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "model-00002-of-00002.safetensors");
    }

    [Test]
    public async Task MissingTensor()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson(), skipTensor: "model.layers.1.mlp.up_proj.weight");
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "model.layers.1.mlp.up_proj.weight");
    }

    // Weights of a tiny model under the config of a large one: the CPU backend said the model was too big for it and
    // to use --backend cuda, when the fault is that config.json is another model's. The mismatch is named first.
    [Test]
    public async Task ConfigOfALargerModelThanItsWeightsIsNamedBeforeTheMemoryCheck()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson());
        // ~12 B parameters, 49 GB in fp32: over the CPU backend's 32 GB cap on any host.
        string large = TestModels.ConfigJson(hidden: 8192, layers: 64)
            .Replace("\"num_attention_heads\": 4, \"num_key_value_heads\": 2", "\"num_attention_heads\": 64, \"num_key_value_heads\": 8");
        Assert.That(large, Does.Contain("\"num_attention_heads\": 64"));
        File.WriteAllText(tmp.Combine("config.json"), large);
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "config.json and the checkpoint disagree", "model.embed_tokens.weight", tmp.Combine("model.safetensors"));
        Assert.That(r.Err, Does.Not.Contain("--backend cuda"));
    }

    // info is how users check a download; it printed a memory plan (exit 0) over weights that every other command
    // refuses at load: another model's config, a missing shard. Now the same one clear error; config.json alone still plans.
    [Test]
    public async Task InfoChecksTheWeightsAgainstTheConfig()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson());
        Assert.That((await Qwq("info", "--model", tmp.Path)).ExitCode, Is.Zero, "a sound checkpoint");
        File.WriteAllText(tmp.Combine("config.json"), TestModels.ConfigJson(hidden: 128));
        var r = await Qwq("info", "--model", tmp.Path);
        AssertOneCleanError(r, 1, "config.json and the checkpoint disagree", "model.embed_tokens.weight", tmp.Combine("model.safetensors"));

        File.Delete(tmp.Combine("model.safetensors"));
        Assert.That((await Qwq("info", "--model", tmp.Path)).ExitCode, Is.Zero, "config.json alone (before the download) is planned for");
        File.WriteAllText(tmp.Combine("model.safetensors.index.json"),
            """{"metadata": {}, "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}""");
        AssertOneCleanError(await Qwq("info", "--model", tmp.Path), 1, "model-00001-of-00002.safetensors", "missing");
    }

    // A checkpoint with NaN weights made every logit NaN; the message blamed logit_bias (which generate has no option
    // for) and exited 2, a usage error. It is the model's output: exit 1, and say so.
    [Test]
    public async Task NanWeightsAreReportedAsTheModelsOutputNotAsLogitBias()
    {
        using var tmp = new TestModels.TempDir();
        string configJson = TestModels.ConfigJson(maxPositions: 512);
        TestModels.WriteModelDir(tmp.Path, configJson);
        var config = ModelConfig.Parse(configJson, "config.json");
        var weights = Model.Reference.CpuWeights.Random(config, 7);
        Array.Fill(weights.FinalNorm, float.NaN);
        TestModels.WriteSafetensors(tmp.Combine("model.safetensors"), config, weights);
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "NaN", "weights");
        Assert.That(r.Err, Does.Not.Contain("logit_bias"));
    }

    [Test]
    public async Task TokenizerThatDoesNotFitTheVocabulary()
    {
        using var tmp = new TestModels.TempDir();
        TestModels.WriteModelDir(tmp.Path, TestModels.ConfigJson(vocab: 256, maxPositions: 64));
        var r = await Qwq(Gen(tmp.Path));
        AssertOneCleanError(r, 1, "vocab_size is 256", "tokenizer");
    }

    /// <summary>A directory with the QwQ tokenizer files, tokenizer.json edited by <paramref name="edit"/> when given.</summary>
    private static void WriteTokenizer(string dir, Func<string, string>? edit = null)
    {
        using var gz = new System.IO.Compression.GZipStream(File.OpenRead(Path.Combine(TestModels.QwqDir, "tokenizer.json.gz")),
            System.IO.Compression.CompressionMode.Decompress);
        string json = new StreamReader(gz).ReadToEnd();
        string edited = edit?.Invoke(json) ?? json;
        if (edit is not null) Assert.That(edited, Is.Not.EqualTo(json), "the edit applies");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), edited);
        File.Copy(Path.Combine(TestModels.QwqDir, "tokenizer_config.json"), Path.Combine(dir, "tokenizer_config.json"));
    }

    [TestCase("\"!\": 0,", "\"!\": -5,", "model.vocab[\"!\"] is -5")]
    [TestCase("\"!\": 0,", "\"!\": 2147483647,", "model.vocab[\"!\"] is 2147483647")]
    [TestCase("\"!\": 0,", "\"!\": \"0\",", "model.vocab[\"!\"] is string")]
    [TestCase("\"id\": 151643,", "\"id\": -151643,", "an added_tokens id is -151643")]
    public async Task TokenizerWithABadIdIsOneClearError(string find, string replace, string message)
    {
        using var tmp = new TestModels.TempDir();
        WriteTokenizer(tmp.Path, json => json.Replace(find, replace));
        var r = await Qwq("tokenize", "--model", tmp.Path, "--text", "Hello");
        AssertOneCleanError(r, 1, "tokenizer.json", message, "integers from 0 to 16777215");
        Assert.That(r.Err, Does.Not.Contain("internal error"));
    }

    [Test]
    public async Task TokenizerConfigWithANegativeIdIsOneClearError()
    {
        using var tmp = new TestModels.TempDir();
        WriteTokenizer(tmp.Path);
        string cfg = File.ReadAllText(tmp.Combine("tokenizer_config.json"));
        Assert.That(cfg, Does.Contain("\"151643\": {"));
        File.WriteAllText(tmp.Combine("tokenizer_config.json"), cfg.Replace("\"151643\": {", "\"-7\": {"));
        var r = await Qwq("tokenize", "--model", tmp.Path, "--text", "Hello");
        AssertOneCleanError(r, 1, "tokenizer_config.json", "added_tokens_decoder key \"-7\"");
    }

    [Test]
    public async Task TokenizerConfigWithAnEntryThatIsNoObjectIsOneClearError()
    {
        // An added_tokens_decoder entry is an object ({"content": ..., "special": ...}); a bare string crashed with exit 3.
        using var tmp = new TestModels.TempDir();
        WriteTokenizer(tmp.Path);
        var cfg = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(tmp.Combine("tokenizer_config.json")))!;
        cfg["added_tokens_decoder"]!["151643"] = "<|endoftext|>";
        File.WriteAllText(tmp.Combine("tokenizer_config.json"), cfg.ToJsonString());
        var r = await Qwq("tokenize", "--model", tmp.Path, "--text", "Hello");
        AssertOneCleanError(r, 1, "tokenizer_config.json", "added_tokens_decoder[\"151643\"]");
        Assert.That(r.Err, Does.Not.Contain("internal error"));
    }

    [Test]
    public async Task PromptLongerThanTheContext()
    {
        var r = await Qwq(Gen(TinyModelDir, "--max-context", "8"));
        AssertOneCleanError(r, 2, "context holds 8", "--max-context");
    }

    [Test]
    public async Task MaxContextBeyondTheModelIsRejected()
    {
        var r = await Qwq(Gen(TinyModelDir, "--max-context", "100000"));
        AssertOneCleanError(r, 2, "100000", "512");
    }

    [Test]
    public async Task NoCudaDeviceIsOneClearError()
    {
        if (global::QwQ.Cuda.Native.Cuda.IsAvailable(out _)) Assert.Ignore("a CUDA device is present");
        var r = await Qwq("generate", "--model", TinyModelDir, "--prompt", "Hello", "--max-tokens", "2");
        AssertOneCleanError(r, 1, "CUDA");
    }

    [Test]
    public void OutOfMemoryAndOtherErrorsGoThroughTheCentralHandler()
    {
        var err = new StringWriter();
        var host = new CliHost(new StringWriter(), err);
        int code = Program.Report(new CudaOutOfMemoryException("cuMemAlloc_v2", 2, "cuMemAlloc_v2 failed: CUDA_ERROR_OUT_OF_MEMORY (out of memory). Try a smaller --max-context"), host);
        Assert.That(code, Is.EqualTo(1));
        Assert.That(err.ToString(), Does.StartWith("error: cuMemAlloc_v2 failed").And.Not.Contain("   at "));

        err.GetStringBuilder().Clear();
        Assert.That(Program.Report(new CudaUnavailableException("No CUDA-capable GPU was detected."), host), Is.EqualTo(1));
        Assert.That(err.ToString(), Does.Contain("No CUDA-capable GPU"));

        err.GetStringBuilder().Clear();
        Assert.That(Program.Report(new OptionException("--top-p 2 must be in (0, 1]"), host), Is.EqualTo(2));

        err.GetStringBuilder().Clear();
        Assert.That(Program.Report(MakeThrown(new InvalidOperationException("boom")), host), Is.EqualTo(3));
        Assert.That(err.ToString(), Does.StartWith("internal error: InvalidOperationException: boom").And.Not.Contain("   at "));

        host.Verbose = true;
        err.GetStringBuilder().Clear();
        Program.Report(MakeThrown(new InvalidOperationException("boom")), host);
        Assert.That(err.ToString(), Does.Contain("   at "));
    }

    private static Exception MakeThrown(Exception e)
    {
        try { throw e; } catch (Exception caught) { return caught; }
    }

    // ---- info ----------------------------------------------------------------------------------

    [Test]
    public async Task InfoWorksFromConfigAloneWithoutGpu()
    {
        var r = await Qwq("info", "--model", TestModels.QwqDir);
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("32,763,876,352").And.Contain("32.76 B"));
        Assert.That(r.Out, Does.Contain("256 KiB"));
        Assert.That(r.Out, Does.Contain("max context"));
        Assert.That(r.Out, Does.Contain("no *.safetensors (config only)"));
        if (!global::QwQ.Cuda.Native.Cuda.IsAvailable(out _))
            Assert.That(r.Out, Does.Contain("no usable GPU").And.Contain("H100 80GB").And.Contain("40,960 tokens"));
    }

    [Test]
    public async Task InfoSaysWhichRopeRunsByDefault()
    {
        var yarn = await Qwq("info", "--synthetic", "qwq-32b-yarn");
        Assert.That(yarn.ExitCode, Is.Zero, yarn.Err);
        Assert.That(yarn.Out, Does.Contain("adaptive (the default): plain RoPE up to 32,768 positions, YaRN (factor 4) past them"));
        var plain = await Qwq("info", "--synthetic", "qwq-32b");
        Assert.That(plain.Out, Does.Contain("none: plain RoPE"));

        var json = await Qwq("info", "--synthetic", "qwq-32b-yarn", "--json");
        using var doc = JsonDocument.Parse(json.Out);
        var rope = doc.RootElement.GetProperty("rope_scaling");
        Assert.That((rope.GetProperty("default_mode").GetString(), rope.GetProperty("switch_position").GetInt32(), rope.GetProperty("factor").GetDouble()),
            Is.EqualTo(("adaptive", 32768, 4.0)));
        using var none = JsonDocument.Parse((await Qwq("info", "--synthetic", "qwq-32b", "--json")).Out);
        Assert.That(none.RootElement.GetProperty("rope_scaling").ValueKind, Is.EqualTo(JsonValueKind.Null));
    }

    [Test]
    public async Task InfoJsonIsOneObject()
    {
        var r = await Qwq("info", "--synthetic", "qwq-32b", "--json", "--max-context", "8192");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        Assert.That(doc.RootElement.GetProperty("parameters").GetInt64(), Is.EqualTo(32_763_876_352));
        Assert.That(doc.RootElement.GetProperty("kv_bytes_per_token").GetInt64(), Is.EqualTo(262_144));
        Assert.That(doc.RootElement.GetProperty("plan").GetProperty("max_context").GetInt32(), Is.LessThanOrEqualTo(8192));
    }

    [TestCase("24GB", 24L << 30)]
    [TestCase("24GiB", 24L << 30)]
    [TestCase("24gib", 24L << 30)]
    [TestCase("79.2GiB", 85_040_352_461L)]
    [TestCase("141GB", 141L << 30)]
    [TestCase("24 GB", 24L << 30)]   // as the label, the README's table and the help write it
    [TestCase("80 GiB", 80L << 30)]
    public void GpuMemoryTakesCardLabelsInGbOrGib(string text, long bytes)
    {
        var cards = InfoCommand.ParseGpuMemory(text);
        Assert.That(cards.Select(c => c.Bytes), Is.EqualTo(new[] { bytes }));
    }

    [Test]
    public void GpuMemoryTakesAListAndParsesTheSameUnderACommaLocale()
    {
        var saved = CultureInfo.CurrentCulture;
        CultureInfo.CurrentCulture = CommaCulture("de");
        try
        {
            var cards = InfoCommand.ParseGpuMemory("24GB, 48GiB,79.5GiB,141GB");
            Assert.That(cards.Select(c => c.Bytes), Is.EqualTo(new[] { 24L << 30, 48L << 30, 85_362_475_008L, 141L << 30 }));
        }
        finally { CultureInfo.CurrentCulture = saved; }
    }

    [TestCase("24", "'24' is not a card size")]
    [TestCase("24G", "'24G' is not a card size")]
    [TestCase("24MB", "'24MB' is not a card size")]
    [TestCase("1TB", "'1TB' is not a card size")]
    [TestCase("-24GB", "'-24GB' is not a card size")]
    [TestCase("1e2GB", "'1e2GB' is not a card size")]
    [TestCase("2 4GB", "'2 4GB' is not a card size")]
    [TestCase("24 G B", "'24 G B' is not a card size")]
    [TestCase("1,000GB", "'1' is not a card size")]
    [TestCase("24GB,", "'' is not a card size")]
    [TestCase("GB", "'GB' is not a card size")]
    [TestCase("0GB", "0GB is outside 1 GiB to 1024 TiB")]
    [TestCase("0.5GiB", "0.5GiB is outside 1 GiB to 1024 TiB")]
    [TestCase("99999999999999999999GB", "99999999999999999999GB is outside 1 GiB to 1024 TiB")]
    public async Task GpuMemoryRefusesAnythingElse(string value, string message)
    {
        var r = await Qwq("info", "--synthetic", "qwq-32b", "--gpu-memory", value);
        AssertOneCleanError(r, 2, $"--gpu-memory '{value}'", message, "24GB");
    }

    [Test]
    public async Task InfoGpuMemoryPrintsEveryKindForTheCard()
    {
        var r = await Qwq("info", "--synthetic", "qwq-32b", "--gpu-memory", "24GB");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("24GB card (assumed:"));
        var rows = r.Out.Split('\n').Select(l => l.Trim()).ToList();
        Assert.That(rows.Any(l => l.StartsWith("bf16 (checkpoint)", StringComparison.Ordinal) && l.Contains("61.0 GiB") && l.Contains("does not fit")), r.Out);
        Assert.That(rows.Any(l => l.StartsWith("fp8 ", StringComparison.Ordinal) && l.Contains("32.0 GiB") && l.Contains("does not fit")), r.Out);
        Assert.That(rows.Any(l => l.StartsWith("int4-awq ", StringComparison.Ordinal) && l.Contains("18.3 GiB") && l.Contains("yes (--quantize int4")), r.Out);
        Assert.That(r.Out, Does.Contain("not enough GPU memory"));
        Assert.That(r.Out, Does.Contain("weights").And.Contain("bf16 65.5 GB (61.0 GiB, the checkpoint's), fp8 34.3 GB (32.0 GiB), int4-awq 19.7 GB (18.3 GiB)"));
        Assert.That(r.Out, Does.Not.Contain("no usable GPU"), "cards asked about need no GPU here");
    }

    [Test]
    public async Task InfoGpuMemoryJsonHasATablePerCard()
    {
        var r = await Qwq("info", "--synthetic", "qwq-32b", "--gpu-memory", "24GiB,48GiB,80GiB,141GiB", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var root = doc.RootElement;
        Assert.That(root.TryGetProperty("plan", out _), Is.False, "no present-device plan when planning for other cards");
        Assert.That(root.GetProperty("checkpoint_kind").GetString(), Is.EqualTo("bf16"));
        Assert.That(root.GetProperty("device_weight_bytes").GetProperty("fp8").GetInt64(), Is.EqualTo(34_340_743_168));
        var tables = root.GetProperty("memory").EnumerateArray().ToList();
        Assert.That(tables.Select(t => t.GetProperty("card_bytes").GetInt64()), Is.EqualTo(new[] { 24L << 30, 48L << 30, 80L << 30, 141L << 30 }));
        JsonElement Row(int card, string kind) => tables[card].GetProperty("rows").EnumerateArray().Single(e => e.GetProperty("kind").GetString() == kind);
        Assert.That(Row(0, "bf16").GetProperty("fits").GetBoolean(), Is.False);
        Assert.That(Row(0, "bf16").GetProperty("reason").GetString(), Does.Contain("not enough GPU memory"));
        Assert.That(Row(0, "int4-awq").GetProperty("fits").GetBoolean(), Is.True);
        Assert.That(Row(0, "int4-awq").GetProperty("gpu").GetString(), Is.EqualTo("yes"));
        Assert.That(Row(1, "bf16").GetProperty("fits").GetBoolean(), Is.False);
        Assert.That(Row(1, "fp8").GetProperty("max_context").GetInt32(), Is.EqualTo(40_960));
        Assert.That(Row(2, "bf16").GetProperty("max_context").GetInt32(), Is.EqualTo(40_960));
        Assert.That(Row(2, "bf16").GetProperty("checkpoint").GetBoolean(), Is.True);
        Assert.That(Row(3, "bf16").GetProperty("kv_pool_positions").GetInt64(), Is.GreaterThan(200_000));
    }

    [Test]
    public async Task InfoTableOfThePresentDeviceHasEveryKind()
    {
        var r = await Qwq("info", "--synthetic", "qwq-32b", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        using var doc = JsonDocument.Parse(r.Out);
        var table = doc.RootElement.GetProperty("memory").EnumerateArray().Single();
        Assert.That(table.GetProperty("rows").EnumerateArray().Select(e => e.GetProperty("kind").GetString()), Is.EqualTo(new[] { "bf16", "fp8", "int4-awq" }));
        Assert.That(doc.RootElement.GetProperty("plan").GetProperty("kind").GetString(), Is.EqualTo("bf16"));
        if (!global::QwQ.Cuda.Native.Cuda.IsAvailable(out _))
            Assert.That(table.GetProperty("free_bytes").GetInt64(), Is.EqualTo(InfoCommand.H100FreeBytes));
    }

    // Without a GPU info plans for an H100 80GB: the same card as --gpu-memory 80GB, so the same free memory and pool
    // (it assumed 79.1 GiB free, ignoring the ~0.5 GiB a CUDA context takes, and answered 63,552 positions for bf16
    // beside the card table's and the README's 61,952).
    [Test]
    public async Task TheNoGpuPlanIsTheEightyGigabyteCardsPlan()
    {
        if (global::QwQ.Cuda.Native.Cuda.IsAvailable(out _)) Assert.Ignore("plans for the present GPU here");
        var assumed = await Qwq("info", "--synthetic", "qwq-32b", "--json");
        var card = await Qwq("info", "--synthetic", "qwq-32b", "--json", "--gpu-memory", "80GB");
        Assert.That(assumed.ExitCode, Is.Zero, assumed.Err);
        Assert.That(card.ExitCode, Is.Zero, card.Err);
        using var a = JsonDocument.Parse(assumed.Out);
        using var c = JsonDocument.Parse(card.Out);
        var at = a.RootElement.GetProperty("memory")[0];
        var ct = c.RootElement.GetProperty("memory")[0];
        Assert.That(at.GetProperty("free_bytes").GetInt64(), Is.EqualTo(ct.GetProperty("free_bytes").GetInt64()));
        static long[] Pools(JsonElement t) => t.GetProperty("rows").EnumerateArray().Select(r => r.GetProperty("kv_pool_positions").GetInt64()).ToArray();
        Assert.That(Pools(at), Is.EqualTo(Pools(ct)));
        Assert.That(a.RootElement.GetProperty("plan").GetProperty("kv_cache_bytes").GetInt64() / 262_144, Is.EqualTo(61_952), "README, \"Memory\"");
    }

    // ---- generate and chat on the CPU backend --------------------------------------------------

    [Test]
    public async Task GenerateStreamsAndPrintsAStatsLine()
    {
        var r = await Qwq(Gen(TinyModelDir));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("prompt ").And.Contain("generated ").And.Contain("TTFT").And.Contain("decode").And.Contain("GB/s"));
        // the tiny model's bandwidth depends on the machine (0.5 GB/s here, 17 on the GPU machine's CPU): either form
        Assert.That(r.Err, Does.Match(@" · (\d\.\d\d|[1-9]\d+) GB/s · "), "GB/s with two decimals under 10, whole above");
        Assert.That(r.Err, Does.Not.Contain("error"));
    }

    [TestCase(0.0042, "0.00")]
    [TestCase(0.512, "0.51")]
    [TestCase(9.994, "9.99")]
    [TestCase(17.4, "17")]
    [TestCase(2370.6, "2371")]
    public void StatsLineGbPerSecondHasTwoDecimalsUnderTen(double gbps, string expected) =>
        Assert.That(UpdateWriter.FormatGbPerSecond(gbps), Is.EqualTo(expected));

    [Test]
    public async Task GenerateJsonWritesOneObjectPerLineEndingWithDone()
    {
        var r = await Qwq(Gen(TinyModelDir, "--json", "--seed", "3", "--stop", "zz", "--stop", "qq"));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var lines = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var docs = lines.Select(l => JsonDocument.Parse(l)).ToList();
        var done = docs[^1].RootElement;
        Assert.That(done.GetProperty("type").GetString(), Is.EqualTo("done"));
        Assert.That(done.GetProperty("usage").GetProperty("generated_tokens").GetInt32(), Is.InRange(1, 4));
        Assert.That(done.GetProperty("finish_reason").GetString(), Is.Not.Empty);
        Assert.That(docs.Take(docs.Count - 1).All(d => d.RootElement.GetProperty("type").GetString() is "reasoning" or "answer" or "tool_call"));
    }

    [Test]
    public void JsonLinesKeepTextReadable()
    {
        // As --output, eval's files and the server write it: "<", accents and CJK as themselves, not \u escapes (a
        // terminal watching the stream shows them); control characters still escaped, and so are emoji (.NET's encoders
        // escape every character beyond the BMP).
        var stdout = new StringWriter();
        var writer = new UpdateWriter(new CliHost(stdout, new StringWriter()), weightBytesPerToken: 1, json: true, hideReasoning: false);
        writer.Write(new GenerationUpdate(GenerationUpdateKind.Reasoning, "x < y, \"caf\u00e9\" \u601D\u8003 \U0001F600\u001b[31m"));
        string line = stdout.ToString().TrimEnd('\n');
        Assert.That(line, Is.EqualTo("""{"type":"reasoning","text":"x < y, \"café\" 思考 \uD83D\uDE00\u001B[31m"}"""));
        Assert.That(JsonDocument.Parse(line).RootElement.GetProperty("text").GetString(), Is.EqualTo("x < y, \"caf\u00e9\" \u601D\u8003 \U0001F600\u001b[31m"));
    }

    [Test]
    public async Task TheBandwidthFigureCountsTheBytesTheBackendReads()
    {
        // The CPU reference reads its float32 weights, less the untied embedding table (one row a token); 2 bytes a
        // parameter (what the figure counted before) made fp8 and int4 runs report twice and 3.5 times their bandwidth.
        using var backend = TestModels.Backend(vocab: 512);
        var c = backend.Config;
        long embedding = c.TieWordEmbeddings ? 0 : (long)c.VocabSize * c.HiddenSize;
        Assert.That(UpdateWriter.DecodeWeightBytes(backend), Is.EqualTo((c.ParameterCount - embedding) * 4));

        var r = await Qwq(Gen(TinyModelDir, "--json"));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var usage = JsonDocument.Parse(r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries)[^1]).RootElement.GetProperty("usage");
        var tiny = ModelConfig.Load(Path.Combine(TinyModelDir, "config.json"));
        long tinyEmbedding = tiny.TieWordEmbeddings ? 0 : (long)tiny.VocabSize * tiny.HiddenSize;
        double want = (tiny.ParameterCount - tinyEmbedding) * 4.0 * usage.GetProperty("decode_tokens_per_second").GetDouble() / 1e9;
        Assert.That(usage.GetProperty("weight_gb_per_second").GetDouble(), Is.EqualTo(want).Within(1e-3 + 1e-6 * want));
    }

    [Test]
    public async Task GenerateHideReasoningPrintsNoReasoning()
    {
        var shown = await Qwq(Gen(TinyModelDir, "--json"));
        var hidden = await Qwq(Gen(TinyModelDir, "--json", "--hide-reasoning"));
        Assert.That(hidden.ExitCode, Is.Zero, hidden.Err);
        Assert.That(hidden.Out, Does.Not.Contain("\"reasoning\""));
        Assume.That(shown.Out, Does.Contain("\"type\":\"reasoning\""));
    }

    [Test]
    public async Task GeneratePromptFromStdin()
    {
        var r = await QwqWithInput("Hello from stdin", "generate", "--model", TinyModelDir, "--backend", "cpu", "--prompt", "-", "--max-tokens", "2", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Contain("\"type\":\"done\""));
    }

    [Test]
    public async Task ChatKeepsHistoryAndReusesTheCache()
    {
        var r = await QwqWithInput("Hello\nAnd again\n/exit\n", "chat", "--model", TinyModelDir, "--backend", "cpu", "--temperature", "0", "--max-tokens", "3", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var done = r.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement)
            .Where(e => e.GetProperty("type").GetString() == "done").ToList();
        Assert.That(done, Has.Count.EqualTo(2));
        Assert.That(done[1].GetProperty("usage").GetProperty("cached_prompt_tokens").GetInt32(), Is.GreaterThan(5));
    }

    // `qwq chat < questions.txt > answers.txt` wrote a "> " prompt per line into the answers (as text output, not --json).
    [Test]
    public async Task ChatFromPipedInputWritesOnlyTheAnswersToStdout()
    {
        var r = await QwqWithInput("Hello\n\n/reset\nAgain\n", "chat", "--model", TinyModelDir, "--backend", "cpu", "--temperature", "0", "--max-tokens", "3", "--hide-reasoning");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Out, Does.Not.Contain(">"), "no prompts in stdout");
        Assert.That(r.Err, Does.Not.Contain("> "), "and none on stderr: nobody types at a pipe");
    }

    [Test]
    public async Task ChatPromptsATypingUserOnStderr()
    {
        var o = new StringWriter();
        var e = new StringWriter();
        var host = new CliHost(o, e, new StringReader("Hello\n"), interactiveInput: true);
        int code = await Program.RunAsync(["chat", "--model", TinyModelDir, "--backend", "cpu", "--temperature", "0", "--max-tokens", "3", "--hide-reasoning"], host, default);
        Assert.That(code, Is.Zero, e.ToString());
        Assert.That(o.ToString(), Does.Not.Contain(">"), "stdout holds the answers only, also when redirected");
        Assert.That(e.ToString().Split('\n').Count(l => l.StartsWith("> ", StringComparison.Ordinal)), Is.EqualTo(2), e.ToString());
    }

    [Test]
    public async Task ChatReportsAnOverlongTurnAndContinues()
    {
        string longLine = string.Join(" ", Enumerable.Repeat("word", 100));
        var r = await QwqWithInput($"{longLine}\nHi\n", "chat", "--model", TinyModelDir, "--backend", "cpu", "--max-context", "40", "--max-tokens", "2", "--json");
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("context holds 40"));
        Assert.That(r.Out, Does.Contain("\"type\":\"done\""));
    }

    /// <summary>stdout that presses Ctrl+C (cancels the running operation) whenever something is written.</summary>
    private sealed class CtrlCOnWrite : StringWriter
    {
        public CliHost? Host;
        public override void Write(string? value) { base.Write(value); Host?.CancelOperation(); }
    }

    [Test]
    public async Task ChatSaysWhatAnInterruptedTurnLeavesInTheConversation()
    {
        var stdout = new CtrlCOnWrite();
        var err = new StringWriter();
        var host = new CliHost(stdout, err, new StringReader("Tell me a long story\n/exit\n"));
        stdout.Host = host;
        int code = await Program.RunAsync(["chat", "--model", TinyModelDir, "--backend", "cpu", "--temperature", "0", "--max-tokens", "200"], host, default);
        Assert.That(code, Is.Zero, err.ToString());
        Assert.That(err.ToString(), Does.Contain("cancelled").And.Contain("your message and the answer so far stay in the conversation"));
    }

    // ---- generate --input/--output: many prompts, one model load -------------------------------

    private static string[] Batch(string input, string output, params string[] more) =>
        ["generate", "--model", TinyModelDir, "--backend", "cpu", "--input", input, "--output", output, "--temperature", "0", "--max-tokens", "4", .. more];

    private static List<JsonElement> ResultLines(string path) =>
        [.. File.ReadAllText(path).Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonDocument.Parse(l).RootElement.Clone())];

    [Test]
    public async Task GenerateInputWritesEveryResultAndResumeAppendsOnlyTheRest()
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl"), output = dir.Combine("results.jsonl");
        File.WriteAllLines(input,
        [
            """{"id": "a", "prompt": "Hello"}""",
            "",
            """{"id": "b", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 2}""",
            """{"id": "c", "prompt": "Hello", "temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 3}""",
        ]);
        var r = await Qwq(Batch(input, output));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        var results = ResultLines(output);
        Assert.That(results.Select(e => e.GetProperty("id").GetString()), Is.EquivalentTo(new[] { "a", "b", "c" }));
        foreach (var e in results)
        {
            foreach (var f in new[] { "text", "reasoning", "answer", "finish_reason" }) Assert.That(e.GetProperty(f).ValueKind, Is.EqualTo(JsonValueKind.String), f);
            Assert.That(e.GetProperty("prompt_tokens").GetInt32(), Is.GreaterThan(3));
            Assert.That(e.GetProperty("seconds").GetDouble(), Is.GreaterThanOrEqualTo(0));
        }
        Assert.That(results.Single(e => e.GetProperty("id").GetString() == "b").GetProperty("completion_tokens").GetInt32(), Is.InRange(1, 2), "max_tokens of the line");
        Assert.That(results.Single(e => e.GetProperty("id").GetString() == "a").GetProperty("completion_tokens").GetInt32(), Is.InRange(1, 4), "--max-tokens");

        // The same prompt alone through `generate --prompt` gives the same text.
        var alone = await Qwq(Gen(TinyModelDir, "--json"));
        var aloneDone = JsonDocument.Parse(alone.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries)[^1]).RootElement;
        var a = results.Single(e => e.GetProperty("id").GetString() == "a");
        Assert.That((a.GetProperty("reasoning").GetString(), a.GetProperty("answer").GetString()),
            Is.EqualTo((aloneDone.GetProperty("reasoning").GetString(), aloneDone.GetProperty("answer").GetString())));

        var again = await Qwq(Batch(input, output));
        AssertOneCleanError(again, 2, "already has results", "--resume");

        string before = File.ReadAllText(output);
        File.AppendAllLines(input, ["""{"id": "d", "prompt": "More"}""", """{"id": "e", "prompt": "Again"}"""]);
        var resumed = await Qwq(Batch(input, output, "--resume"));
        Assert.That(resumed.ExitCode, Is.Zero, resumed.Err);
        Assert.That(resumed.Err, Does.Contain("3 of 5 prompts already in"));
        Assert.That(File.ReadAllText(output), Does.StartWith(before), "earlier results are kept as they were");
        Assert.That(ResultLines(output).Select(e => e.GetProperty("id").GetString()), Is.EquivalentTo(new[] { "a", "b", "c", "d", "e" }), "each id once");

        var nothingLeft = await Qwq(Batch(input, output, "--resume"));
        Assert.That(nothingLeft.ExitCode, Is.Zero, nothingLeft.Err);
        Assert.That(ResultLines(output), Has.Count.EqualTo(5));
    }

    [Test]
    public async Task InterruptedGenerateInputKeepsTheFinishedResultsAsValidJsonl()
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl"), output = dir.Combine("results.jsonl");
        File.WriteAllLines(input, Enumerable.Range(0, 4).Select(i =>
            $$"""{"id": "p{{i}}", "prompt": "Hello", "max_tokens": {{(i == 0 ? 1 : 400)}}}"""));
        using var ctrlC = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            // Ctrl+C once the first (one-token) result is on disk, while the others are mid-way. The run holds the file
            // (a .NET reader would be refused): its length tells, one short line flushed whole.
            while (!ctrlC.IsCancellationRequested && !(File.Exists(output) && new FileInfo(output).Length > 0)) await Task.Delay(5);
            ctrlC.Cancel();
        });
        var o = new StringWriter();
        var e = new StringWriter();
        int code = await Program.RunAsync(Batch(input, output), o, e, null, ctrlC.Token);
        await watcher;
        Assert.That(code, Is.EqualTo(130), e.ToString());
        Assert.That(File.ReadAllText(output), Does.EndWith("\n"));
        var kept = ResultLines(output);
        Assert.That(kept.Select(r => r.GetProperty("id").GetString()), Does.Contain("p0"));
        Assert.That(kept.All(r => r.GetProperty("finish_reason").GetString() != "cancelled"), "only finished results");
        Assert.That(kept.Where(r => r.GetProperty("id").GetString() != "p0").All(r => r.GetProperty("completion_tokens").GetInt32() == 400));

        File.WriteAllLines(input, Enumerable.Range(0, 4).Select(i => $$"""{"id": "p{{i}}", "prompt": "Hello", "max_tokens": 2}"""));
        var resumed = await Qwq(Batch(input, output, "--resume"));
        Assert.That(resumed.ExitCode, Is.Zero, resumed.Err);
        Assert.That(ResultLines(output).Select(r => r.GetProperty("id").GetString()), Is.EquivalentTo(new[] { "p0", "p1", "p2", "p3" }));
    }

    [Test]
    public async Task ResumeCutsOffAnIncompleteLastLine()
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl"), output = dir.Combine("results.jsonl");
        File.WriteAllLines(input, ["""{"id": "a", "prompt": "Hello"}""", """{"id": "b", "prompt": "Hi"}"""]);
        File.WriteAllText(output, "{\"id\":\"a\",\"text\":\"x\"}\n{\"id\":\"b\",\"te");
        var r = await Qwq(Batch(input, output, "--resume"));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(r.Err, Does.Contain("incomplete line"));
        var lines = ResultLines(output);
        Assert.That(lines.Select(l => l.GetProperty("id").GetString()), Is.EqualTo(new[] { "a", "b" }), "a kept, b generated again");
        Assert.That(lines[0].GetProperty("text").GetString(), Is.EqualTo("x"));
    }

    [TestCase("""{"id": "x", "prompt": "Hi", "temperature": "hot"}""", "line 2", "\"temperature\" must be a number")]
    [TestCase("""{"id": "x", "prompt": "Hi", "top_p": 1.5}""", "line 2", "\"top_p\" is 1.5; it must be in (0, 1]")]
    [TestCase("""{"id": "x", "prompt": "Hi", "max_token": 5}""", "line 2", "unknown field \"max_token\"")]
    [TestCase("""{"id": "1", "prompt": "Hi"}""", "line 2", "id \"1\" is already on line 1")]
    [TestCase("""{"id": "x"}""", "line 2", "give either \"prompt\"")]
    [TestCase("""{"id": 7, "prompt": "Hi"}""", "line 2", "\"id\" must be a non-empty string")]
    [TestCase("""{"id": "x", "messages": [{"role": "user"}]}""", "line 2", "\"messages\"[0] must be an object")]
    [TestCase("""{"id": "x", "prompt": "Hi", "seed": -1}""", "line 2", "\"seed\" must be a whole number")]
    [TestCase("not json", "line 2", "is not JSON")]
    public async Task BadInputLinesAreOneErrorNamingTheLineAndField(string line, string where, string message)
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl");
        File.WriteAllLines(input, ["""{"id": "1", "prompt": "Hello"}""", line]);
        var r = await Qwq(Batch(input, dir.Combine("out.jsonl")));
        AssertOneCleanError(r, 2, $"{input} {where}", message);
        Assert.That(File.Exists(dir.Combine("out.jsonl")), Is.False, "nothing is written before the input is valid");
    }

    // --output that cannot be written ended, after the model had loaded, as "internal error: UnauthorizedAccessException"
    // (exit 3); and two runs on one --output interleaved their lines. It is opened as eval opens --out, before the load
    // (here the model does not exist, so an error about the model would mean it was tried first).
    [TestCase("directory", "is a directory; name the results file")]
    [TestCase("under a file", "cannot be written")]
    [TestCase("/sys", "cannot be written")]
    [TestCase("held by another run", "Another run is writing --output")]
    public async Task GenerateOutputThatCannotBeWrittenIsOneClearErrorBeforeTheModelLoads(string where, string message)
    {
        if (where == "/sys" && !OperatingSystem.IsLinux()) Assert.Ignore("/sys is Linux's");
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl");
        File.WriteAllLines(input, ["""{"id": "a", "prompt": "Hello"}"""]);
        string output = where switch
        {
            "directory" => dir.Combine("out"),
            "under a file" => Path.Combine(input, "results.jsonl"),
            "/sys" => "/sys/qwq-results.jsonl",
            _ => dir.Combine("results.jsonl"),
        };
        if (where == "directory") Directory.CreateDirectory(output);
        using var held = where == "held by another run" ? QwQ.Cuda.Evaluation.ResultsFileStream.Open(output, "--output") : null;
        var r = await Qwq("generate", "--model", dir.Combine("no-model"), "--backend", "cpu", "--input", input, "--output", output, "--resume");
        AssertOneCleanError(r, 1, $"error: {(where == "held by another run" ? "Another run is writing --output " : "--output ")}{output}", message);
    }

    [Test]
    public async Task AFailedLoadLeavesNoEmptyOutputFile()
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl"), output = dir.Combine("results.jsonl");
        File.WriteAllLines(input, ["""{"id": "a", "prompt": "Hello"}"""]);
        var r = await Qwq("generate", "--model", dir.Combine("no-model"), "--backend", "cpu", "--input", input, "--output", output);
        Assert.That(r.ExitCode, Is.Not.Zero);
        Assert.That(File.Exists(output), Is.False, "the results file opened before the load, with nothing written");
        File.WriteAllText(output, "");
        r = await Qwq("generate", "--model", dir.Combine("no-model"), "--backend", "cpu", "--input", input, "--output", output, "--resume");
        Assert.That(r.ExitCode, Is.Not.Zero);
        Assert.That(File.Exists(output), Is.True, "a file that was there before the run stays");
    }

    [Test]
    public async Task GenerateOutputsFolderIsMadeAsEvalsIs()
    {
        using var dir = new TestModels.TempDir();
        string input = dir.Combine("prompts.jsonl"), output = dir.Combine("runs", "new", "results.jsonl");
        File.WriteAllLines(input, ["""{"id": "a", "prompt": "Hello"}"""]);
        var r = await Qwq(Batch(input, output));
        Assert.That(r.ExitCode, Is.Zero, r.Err);
        Assert.That(ResultLines(output).Select(e => e.GetProperty("id").GetString()), Is.EqualTo(new[] { "a" }));
    }

    [Test]
    public async Task InputAndPromptOptionsMustComeInTheirPairs()
    {
        AssertOneCleanError(await Qwq("generate", "--model", "x", "--input", "in.jsonl"), 2, "--input needs --output");
        AssertOneCleanError(await Qwq("generate", "--model", "x", "--output", "out.jsonl"), 2, "--output needs --input");
        AssertOneCleanError(await Qwq("generate", "--model", "x", "--input", "missing.jsonl", "--output", "o.jsonl"), 2, "--input missing.jsonl does not exist");
    }

    // ---- a stdout that cannot be written ------------------------------------------------------

    /// <summary>stdout whose writes fail as a closed pipe (errno 32) or a full disk (errno 28) do on Linux.</summary>
    private sealed class FailingWriter(int errno, string message) : StringWriter
    {
        public int Attempts;
        public override void Write(char value) => Fail();
        public override void Write(string? value) => Fail();
        public override void Write(char[] buffer, int index, int count) => Fail();
        public override void Write(ReadOnlySpan<char> buffer) => Fail();
        private void Fail()
        {
            Attempts++;
            throw new IOException(message, errno);
        }
    }

    [Test]
    public async Task ClosedStdoutStopsGenerationQuietly()
    {
        var stdout = new FailingWriter(32, "Broken pipe");
        var err = new StringWriter();
        int code = await Program.RunAsync(GenTokens(TinyModelDir, 200, "--json"), stdout, err);
        Assert.That(code, Is.EqualTo(141), err.ToString());
        Assert.That(err.ToString(), Is.Empty, "`| head` is not an error worth a message");
        Assert.That(stdout.Attempts, Is.EqualTo(1), "nothing more was written after the first failure");
    }

    [Test]
    public async Task FullStdoutIsOneClearError()
    {
        var stdout = new FailingWriter(28, "No space left on device");
        var err = new StringWriter();
        int code = await Program.RunAsync(Gen(TinyModelDir, "--json"), stdout, err);
        AssertOneCleanError(new Result(code, "", err.ToString()), 1, "error: cannot write to standard output: No space left on device");
        Assert.That(err.ToString(), Does.Not.Contain("internal error"));
    }

    [Test]
    public async Task ClosedStdoutInTokenizeIsQuietToo()
    {
        var stdout = new FailingWriter(32, "Broken pipe");
        var err = new StringWriter();
        int code = await Program.RunAsync(["tokenize", "--model", TestModels.QwqDir, "--text", "Hello"], stdout, err);
        Assert.That((code, err.ToString()), Is.EqualTo((141, "")));
    }

    /// <summary>The built qwq in a child process, stdout a pipe or a shell redirection (Linux: /dev/full, pipes).</summary>
    private static (int Code, string Err) RunQwqProcess(string shellRedirect, bool closeStdout, params string[] args)
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("needs Linux pipes and /dev/full");
        string qwq = Path.Combine(AppContext.BaseDirectory, "qwq.dll");
        string command = "exec dotnet " + string.Join(' ', new[] { qwq }.Concat(args).Select(a => "'" + a.Replace("'", "'\\''") + "'")) + shellRedirect;
        var psi = new System.Diagnostics.ProcessStartInfo("bash", ["-c", command])
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        using var process = System.Diagnostics.Process.Start(psi)!;
        if (closeStdout) process.StandardOutput.Close(); // before the child can have written anything: it starts a runtime first
        var err = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromSeconds(120)))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail("qwq did not exit within 120 s");
        }
        return (process.ExitCode, err.Result);
    }

    [Test]
    public void ClosedPipeEndsTheRealProcess()
    {
        // .NET's console stream ignores EPIPE: before, this generated all 300 tokens and exited 0.
        var (code, err) = RunQwqProcess("", closeStdout: true, GenTokens(TinyModelDir, 300, "--json"));
        Assert.That(code, Is.EqualTo(141), err);
        Assert.That(err, Does.Not.Contain("error"));
    }

    [Test]
    public void DevFullIsOneClearErrorInTheRealProcess()
    {
        var (code, err) = RunQwqProcess(" > /dev/full", closeStdout: false, Gen(TinyModelDir, "--json"));
        Assert.That(code, Is.EqualTo(1), err);
        Assert.That(err.Trim(), Is.EqualTo("error: cannot write to standard output: No space left on device"));
    }

    // ---- option binding ------------------------------------------------------------------------

    [Test]
    public void SamplingFlagsOverrideTheModelDefaults()
    {
        var opts = new SamplingCliOptions();
        var cmd = new Command("x");
        opts.AddTo(cmd);
        var p = cmd.Parse(["--temperature", "0.2", "--top-k", "5", "--min-p", "0.1", "--presence-penalty", "0.5",
            "--frequency-penalty", "0.25", "--repetition-penalty", "1.2", "--seed", "9", "--max-tokens", "12", "--stop", "A", "--stop", "B"]);
        Assert.That(p.Errors, Is.Empty);
        var g = opts.Bind(p, SamplingOptions.FromGenerationConfig());
        var s = g.Sampling!;
        Assert.That(s.Temperature, Is.EqualTo(0.2f));
        Assert.That(s.TopP, Is.EqualTo(0.95f), "not given: the model's default");
        Assert.That(s.TopK, Is.EqualTo(5));
        Assert.That((s.MinP, s.PresencePenalty, s.FrequencyPenalty, s.RepetitionPenalty, s.Seed), Is.EqualTo((0.1f, 0.5f, 0.25f, 1.2f, (ulong?)9)));
        Assert.That(g.MaxNewTokens, Is.EqualTo(12));
        Assert.That(g.StopStrings, Is.EqualTo(new[] { "A", "B" }));
    }

    [Test]
    public void ModelSourceFlagsBind()
    {
        var flags = new ModelFlags();
        var (opts, cmd) = (flags.Options, flags.Command);
        var p = cmd.Parse(["--synthetic", "qwq-32b", "--tokenizer", "/tok", "--backend", "cpu", "--max-context", "4096", "--device", "1"]);
        Assert.That(p.Errors, Is.Empty);
        var m = opts.Bind(p);
        Assert.That((m.Synthetic, m.TokenizerPath, m.Backend, m.Engine.MaxContext, m.Engine.Device), Is.EqualTo(("qwq-32b", "/tok", BackendKind.Cpu, (int?)4096, 1)));
        // the commands step through the scheduler: the workspace holds its largest step, not EngineOptions' 4096 rows
        Assert.That(m.Engine.PrefillChunk, Is.EqualTo(2048 + 128).And.LessThan(new EngineOptions().PrefillChunk));
        Assert.That(cmd.Parse(["--backend", "rocm"]).Errors, Is.Not.Empty);
    }
}
