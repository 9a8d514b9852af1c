using QwQ.Cuda.Native;

namespace QwQ.Cuda.Benchmarking;

/// <summary>One kernel over a profiled step on one GPU, named by its entry and grid (the grid tells the products apart).</summary>
public sealed record KernelTime(string Kernel, int Launches, double TotalUs, double MeanUs);

/// <summary>
/// One GPU's profiled step: from the first timed launch's start to the last one's end (<see cref="SpanUs"/>), the time
/// inside the timed kernels (<see cref="KernelUs"/>; the rest is launch gaps, event overhead and cuBLAS/NCCL work), and
/// the kernels by total time.
/// </summary>
public sealed record RankStepProfile(int Gpu, double SpanUs, double KernelUs, IReadOnlyList<KernelTime> Kernels);

/// <summary>
/// A decode step of <see cref="Batch"/> sequences at <see cref="Context"/> positions, kernel by kernel on every GPU
/// (<c>CudaBackend.ProfileStep</c>), beside what a graph replay of the same step takes (<see cref="GraphMsPerStep"/>).
/// Kernel times are right; the events around each kernel serialise the step, so its span is longer than a replay.
/// A prefill profile has <see cref="PrefillTokens"/> &gt; 0: one prompt of that many tokens from position
/// <see cref="Context"/>, and <see cref="GraphMsPerStep"/> is the prefill's own measured time (prefill runs eagerly).
/// cuBLAS and cuBLASLt products are timed too (named by their call, the grid field holding m, n, k).
/// </summary>
public sealed record StepProfile(int Batch, int Context, double GraphMsPerStep, IReadOnlyList<RankStepProfile> Gpus,
    int PrefillTokens = 0)
{
    /// <summary>Launches by kernel name alone, most time first: where a long prefill goes by family (all grids together).</summary>
    public IReadOnlyList<KernelTime> ByKernel(int gpu = 0) =>
        Gpus[gpu].Kernels.GroupBy(k => k.Kernel.Split(' ')[0])
            .Select(g => new KernelTime(g.Key, g.Sum(k => k.Launches), g.Sum(k => k.TotalUs), g.Sum(k => k.TotalUs) / g.Sum(k => k.Launches)))
            .OrderByDescending(k => k.TotalUs).ToList();

    internal static StepProfile Summarize(int batch, int context, double graphMs, LaunchTimer.Launch[][] perGpu, int prefillTokens = 0) =>
        new(batch, context, graphMs, perGpu.Select((launches, gpu) => new RankStepProfile(
            gpu,
            launches.Length == 0 ? 0 : launches.Max(l => (double)l.StartUs + l.Us) - launches.Min(l => (double)l.StartUs),
            launches.Sum(l => (double)l.Us),
            launches.GroupBy(l => $"{l.Kernel} {l.Grid}")
                .Select(g => new KernelTime(g.Key, g.Count(), g.Sum(l => (double)l.Us), g.Average(l => (double)l.Us)))
                .OrderByDescending(k => k.TotalUs).ToList())).ToList(), prefillTokens);
}
