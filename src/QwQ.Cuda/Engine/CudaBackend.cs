using QwQ.Cuda.Config;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model;
using QwQ.Cuda.Native;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Engine;

/// <summary>
/// The CUDA engine: owns the context, the weights on the device, the kernels, cuBLAS, the activation workspace
/// and the sampler; sequences own their KV caches. One stream: every launch is ordered, and a decode step needs
/// no host synchronisation until its sampled token is read.
/// </summary>
/// <remarks>
/// Thread safety: all device work goes through <see cref="Gate"/>, so sequences may be used from different
/// threads, but one forward pass runs at a time (batch 1). Dispose frees all device memory.
/// </remarks>
public sealed class CudaBackend : IModelBackend
{
    private readonly List<IDisposable> _owned = [];
    private bool _disposed;

    internal object Gate { get; } = new();
    internal CudaContext Context { get; }
    internal CudaStream Stream { get; }
    internal Workspace Workspace { get; }
    internal Qwen2Forward Forward { get; }
    internal GpuSampler Sampler { get; }
    internal EngineOptions Options { get; }
    internal ModelWeights Weights { get; }

    public ModelConfig Config { get; }
    public MemoryPlan Plan { get; }
    public string DeviceDescription { get; }
    public int MaxContext => Plan.MaxContext;

    // Bookkeeping only until the paged GPU engine lands: sequences still own contiguous KV caches.
    private Batching.KvBlockPool? _kvPool;
    public Batching.KvBlockPool KvPool => _kvPool ??= new(Math.Max(1, MaxContext / Batching.KvBlockPool.DefaultBlockSize));

    /// <summary>One sequence at a time until the batched GPU step lands.</summary>
    public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
    {
        foreach (var item in items)
        {
            ct.ThrowIfCancellationRequested();
            item.Sequence.Append(item.Tokens.Span);
        }
    }

    private CudaBackend(ModelConfig config, string? checkpointDir, EngineOptions options,
        IProgress<LoadProgress>? progress, CancellationToken ct)
    {
        Config = config;
        Options = options;
        try
        {
            // Check the checkpoint before touching the GPU: a missing tensor is reported in a second, not after minutes.
            SafetensorsCheckpoint? checkpoint = null;
            if (checkpointDir is not null)
            {
                checkpoint = Own(SafetensorsCheckpoint.Open(checkpointDir));
                CheckpointValidator.Validate(checkpoint, config);
            }
            if (!Native.Cuda.IsAvailable(out string reason))
                throw new CudaUnavailableException(reason);

            Context = Own(CudaContext.Create(options.Device));
            var (free, total) = Context.GetMemoryInfo();
            Plan = MemoryPlan.Create(config, free, options);
            DeviceDescription = $"{Context.DeviceName}, {MemoryPlan.Gib(free)} free of {MemoryPlan.Gib(total)}";

            Stream = Own(CudaStream.Create());
            var lib = Own(PtxLibrary.Load());
            var blas = Own(Cublas.Create(Stream));
            var lt = options.PrefillGemm == PrefillGemm.CublasLt ? Own(CublasLt.Create()) : null;
            Weights = Own(ModelWeights.Allocate(config));
            if (checkpoint is not null)
                WeightUploader.Upload(checkpoint, config, Weights, Stream, progress, ct);
            else
                SyntheticWeights.Fill(Weights, config, new InitOps(lib), Stream, options.SyntheticSeed, progress, ct);
            checkpoint?.Dispose();

            Workspace = Own(new Workspace(config, Math.Min(options.PrefillChunk, Plan.MaxContext), Plan.MaxContext));
            var invFreq = Own(DeviceBuffer.FromHost<float>(Rope.InverseFrequencies(config)));
            Sampler = Own(new GpuSampler(lib, config.VocabSize, options.SampleableVocab ?? config.VocabSize));
            Forward = new Qwen2Forward(config, Weights, Workspace, new KernelSet(lib, Context.MultiprocessorCount), blas, lt,
                invFreq.Ptr, Rope.AttentionFactor(config));
            Stream.Synchronize();
        }
        catch
        {
            DisposeOwned(); // nothing stays allocated when loading fails or is cancelled
            throw;
        }
    }

    /// <summary>
    /// Loads <paramref name="checkpointDir"/> (HF safetensors layout) onto the GPU, or random weights generated on
    /// the GPU when it is null. Nothing stays allocated if loading fails or is cancelled.
    /// </summary>
    public static CudaBackend Load(ModelConfig config, string? checkpointDir, EngineOptions options,
        IProgress<LoadProgress>? progress = null, CancellationToken ct = default) =>
        new(config, checkpointDir, options, progress, ct);

    private T Own<T>(T resource) where T : IDisposable
    {
        _owned.Add(resource);
        return resource;
    }

    public ISequence CreateSequence(int? maxContext = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int capacity = maxContext ?? MaxContext;
        if (capacity < 1 || capacity > MaxContext)
            throw new Errors.OptionException($"a sequence of {capacity} positions does not fit: this GPU holds at most {MaxContext}");
        lock (Gate)
        {
            Context.MakeCurrent();
            return new CudaSequence(this, capacity);
        }
    }

    private void DisposeOwned()
    {
        for (int i = _owned.Count - 1; i >= 0; i--)
        {
            try { _owned[i].Dispose(); } catch (CudaException) { /* best effort while unwinding */ }
        }
        _owned.Clear();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (Gate)
        {
            Context.MakeCurrent();
            Stream.Synchronize();
            DisposeOwned();
        }
    }
}
