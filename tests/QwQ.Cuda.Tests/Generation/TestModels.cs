using QwQ.Cuda.Tests.Weights;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Config;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Text;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>Tiny random Qwen2 models for CPU tests, the QwQ tokenizer fixture, and model directories on disk.</summary>
internal static class TestModels
{
    public static string FixturesDir => Path.Combine(AppContext.BaseDirectory, "fixtures");

    /// <summary>tokenizer.json.gz, tokenizer_config.json, generation_config.json, config.json of QwQ-32B.</summary>
    public static string QwqDir => Path.Combine(FixturesDir, "qwq-32b");

    public static string GoldenModelDir(string name) => Path.Combine(FixturesDir, "models", name);

    private static readonly Lazy<QwenTokenizer> LazyTokenizer = new(() => QwenTokenizer.Load(QwqDir));

    public static QwenTokenizer Tokenizer => LazyTokenizer.Value;

    /// <summary>A tiny config; vocab 151936 covers the QwQ tokenizer (151669 ids) so chat prompts run through it.</summary>
    public static string ConfigJson(int vocab = 151936, int maxPositions = 1024, int hidden = 32, int layers = 2) => $$"""
        {
          "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
          "hidden_size": {{hidden}}, "intermediate_size": 64, "num_hidden_layers": {{layers}},
          "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": {{vocab}},
          "max_position_embeddings": {{maxPositions}}, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
          "tie_word_embeddings": false, "torch_dtype": "float32", "use_sliding_window": false
        }
        """;

    public static ModelConfig Config(int vocab = 151936, int maxPositions = 1024) =>
        ModelConfig.Parse(ConfigJson(vocab, maxPositions), "test config");

    private static readonly Dictionary<(int, int, int, int), CpuWeights> WeightCache = [];

    public static CpuWeights Weights(ModelConfig config, int seed = 7)
    {
        lock (WeightCache)
        {
            var key = (config.VocabSize, config.MaxPositionEmbeddings, config.HiddenSize, seed);
            if (!WeightCache.TryGetValue(key, out var w)) WeightCache[key] = w = CpuWeights.Random(config, seed);
            return w;
        }
    }

    public static CpuReferenceBackend Backend(int vocab = 151936, int maxPositions = 1024, int? maxContext = null, int? validVocab = null)
    {
        var c = Config(vocab, maxPositions);
        return new(c, Weights(c), maxContext, validVocab, samplerSeed: 1);
    }

    /// <summary>A QwqModel over a tiny random CPU model and the real QwQ tokenizer.</summary>
    public static QwqModel ChatModel(int maxContext = 1024, IModelBackend? backend = null) =>
        QwqModel.Create(backend ?? Backend(maxPositions: Math.Max(1024, maxContext), maxContext: maxContext, validVocab: Tokenizer.VocabSize),
            Tokenizer, GenerationConfig.Load(Path.Combine(QwqDir, "generation_config.json")));

    /// <summary>
    /// Writes a Hugging Face style model directory: config.json, model.safetensors (F32, from <paramref name="weights"/>),
    /// and, when asked, the QwQ tokenizer and generation config. <paramref name="skipTensor"/> leaves one tensor out.
    /// </summary>
    public static string WriteModelDir(string dir, string configJson, bool tokenizer = true, string? skipTensor = null, int seed = 7)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), configJson);
        var config = ModelConfig.Parse(configJson, "config.json");
        WriteSafetensors(Path.Combine(dir, "model.safetensors"), config, Weights(config, seed), skipTensor);
        if (tokenizer)
        {
            foreach (var f in new[] { "tokenizer.json.gz", "tokenizer_config.json", "generation_config.json" })
                File.Copy(Path.Combine(QwqDir, f), Path.Combine(dir, f), overwrite: true);
        }
        return dir;
    }

    /// <summary>model.safetensors (F32) from <paramref name="w"/>; <paramref name="skipTensor"/> leaves one tensor out.</summary>
    public static void WriteSafetensors(string path, ModelConfig config, CpuWeights w, string? skipTensor = null) =>
        SafetensorsTestFiles.Write(path, TensorNames.Expected(config)
            .Where(e => e.Name != skipTensor)
            .Select(e => SafetensorsTestFiles.F32(e.Name, e.Shape, Lookup(w, e.Name))));

    private static float[] Lookup(CpuWeights w, string name)
    {
        if (name == TensorNames.Embedding) return w.Embedding;
        if (name == TensorNames.FinalNorm) return w.FinalNorm;
        if (name == TensorNames.LmHead) return w.LmHead;
        for (int i = 0; i < w.Layers.Length; i++)
        {
            var l = w.Layers[i];
            if (name == TensorNames.InputNorm(i)) return l.InputNorm;
            if (name == TensorNames.QWeight(i)) return l.QWeight;
            if (name == TensorNames.QBias(i)) return l.QBias;
            if (name == TensorNames.KWeight(i)) return l.KWeight;
            if (name == TensorNames.KBias(i)) return l.KBias;
            if (name == TensorNames.VWeight(i)) return l.VWeight;
            if (name == TensorNames.VBias(i)) return l.VBias;
            if (name == TensorNames.OWeight(i)) return l.OWeight;
            if (name == TensorNames.PostAttentionNorm(i)) return l.PostAttentionNorm;
            if (name == TensorNames.GateWeight(i)) return l.GateWeight;
            if (name == TensorNames.UpWeight(i)) return l.UpWeight;
            if (name == TensorNames.DownWeight(i)) return l.DownWeight;
        }
        throw new ArgumentException($"unknown tensor {name}");
    }

    /// <summary>A temporary directory removed on dispose.</summary>
    public sealed class TempDir : IDisposable
    {
        public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "qwq-test-" + Guid.NewGuid().ToString("N")[..12]);
        public TempDir() => Directory.CreateDirectory(Path);
        public string Combine(params string[] parts) => System.IO.Path.Combine([Path, .. parts]);
        public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
    }
}

/// <summary>Wraps a backend so tests can count the tokens each sequence appends.</summary>
internal sealed class CountingBackend(IModelBackend inner) : IModelBackend
{
    public List<CountingSequence> Sequences { get; } = [];
    public ModelConfig Config => inner.Config;
    public string DeviceDescription => inner.DeviceDescription;
    public int MaxContext => inner.MaxContext;
    public QwQ.Cuda.Batching.KvBlockPool KvPool => inner.KvPool;
    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
    {
        foreach (var item in items) item.Sequence.Append(item.Tokens.Span, ct);
    }
    public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens)
    {
        for (int i = 0; i < requests.Length; i++) tokens[i] = requests[i].Sequence.Sample(requests[i].Options, requests[i].Step);
    }
    public ISequence CreateSequence(int? maxContext = null)
    {
        var s = new CountingSequence(inner.CreateSequence(maxContext));
        Sequences.Add(s);
        return s;
    }
    public void Dispose() => inner.Dispose();
}

internal sealed class CountingSequence(ISequence inner) : ISequence
{
    public int Appended;
    public int Length => inner.Length;
    public int Capacity => inner.Capacity;
    public IReadOnlyList<int> Tokens => inner.Tokens;
    public int AttachCachedPrefix(ReadOnlySpan<int> tokens) => inner.AttachCachedPrefix(tokens);
    public ISequence Fork() => new CountingSequence(inner.Fork());
    public Action? BeforeAppend;
    public void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default)
    {
        BeforeAppend?.Invoke();
        int before = inner.Length;
        try { inner.Append(tokens, cancellationToken); }
        finally { Appended += inner.Length - before; }
    }
    public void Truncate(int length) => inner.Truncate(length);
    public bool RecomputesAt(int length) => inner.RecomputesAt(length);
    public void ResetPenalties() => inner.ResetPenalties();
    public void RecordForPenalties(ReadOnlySpan<int> tokens) => inner.RecordForPenalties(tokens);
    public int Sample(SamplingOptions options, long step) => inner.Sample(options, step);
    public void CopyLastLogits(Span<float> destination) => inner.CopyLastLogits(destination);
    public void Dispose() => inner.Dispose();
}

/// <summary>A sequence that "samples" a scripted list of tokens: exact control over the loop in unit tests.</summary>
internal sealed class ScriptedSequence(int capacity, params int[] script) : ISequence
{
    private int _next;
    public List<int> Tokens { get; } = [];
    IReadOnlyList<int> ISequence.Tokens => Tokens;
    public int Length => Tokens.Count;
    public int Capacity => capacity;
    public int AttachCachedPrefix(ReadOnlySpan<int> tokens) => 0;
    public ISequence Fork() => throw new NotSupportedException("scripted sequences do not fork");
    /// <summary>Tokens appended per "forward pass", with cancellation checked before each, as the real backends do.</summary>
    public int Chunk { get; init; } = int.MaxValue;
    /// <summary>Called after each chunk (tests cancel from here).</summary>
    public Action? AfterChunk { get; init; }
    public void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default)
    {
        if (Tokens.Count + tokens.Length > capacity) throw new QwQ.Cuda.Errors.OptionException("full");
        for (int start = 0; start < tokens.Length; start += Chunk)
        {
            cancellationToken.ThrowIfCancellationRequested();
            Tokens.AddRange(tokens.Slice(start, Math.Min(Chunk, tokens.Length - start)).ToArray());
            AfterChunk?.Invoke();
        }
    }
    public void Truncate(int length) => Tokens.RemoveRange(length, Tokens.Count - length);
    public bool RecomputesAt(int length) => false; // no rope: nothing to recompute
    public void ResetPenalties() { }
    public void RecordForPenalties(ReadOnlySpan<int> tokens) { }
    public int Sample(SamplingOptions options, long step) => script[_next++ % script.Length];
    public void CopyLastLogits(Span<float> destination) => destination.Clear();
    public void Dispose() { }
}

/// <summary>Token id → fixed text (e.g. one character per id) for stop-string tests.</summary>
internal sealed class MapDecoder(Func<int, string> map) : QwQ.Cuda.Generation.ITokenTextDecoder
{
    public string Push(int tokenId) => map(tokenId);
    public string Flush() => "";
}

/// <summary>
/// The inner backend with a pause after each step: concurrent callers then overlap for sure (each of their turns
/// spans several steps), so tests that check batching do not depend on thread timing.
/// </summary>
internal sealed class SlowStepBackend(IModelBackend inner, TimeSpan delay) : IModelBackend
{
    public ModelConfig Config => inner.Config;
    public string DeviceDescription => inner.DeviceDescription;
    public int MaxContext => inner.MaxContext;
    public QwQ.Cuda.Batching.KvBlockPool KvPool => inner.KvPool;
    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
    {
        inner.Step(items, ct);
        Thread.Sleep(delay);
    }
    public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens) => inner.Sample(requests, tokens);
    public ISequence CreateSequence(int? maxContext = null) => inner.CreateSequence(maxContext);
    public void Dispose() => inner.Dispose();
}
