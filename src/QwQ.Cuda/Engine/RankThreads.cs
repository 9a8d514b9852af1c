using System.Runtime.ExceptionServices;

namespace QwQ.Cuda.Engine;

/// <summary>
/// One thread per tensor-parallel rank, so every GPU's share of a step is enqueued at the same time: an NCCL collective
/// issued for one rank may wait on the host for the other ranks' calls (NCCL: one thread per device, or grouped calls),
/// and each rank captures its own CUDA graph (thread-local capture). Rank 0 runs on the caller's thread, the others on
/// long-lived background threads; <see cref="Run"/> returns when every rank's part has returned. With one rank it is a
/// plain call.
/// </summary>
internal sealed class RankThreads : IDisposable
{
    private readonly Thread[] _threads;
    private readonly SemaphoreSlim[] _start;
    private readonly CountdownEvent _done;
    private readonly Exception?[] _errors;
    private Action<int>? _work;
    private volatile bool _stopping;

    public RankThreads(int ranks)
    {
        Ranks = ranks;
        _errors = new Exception?[ranks];
        _start = Enumerable.Range(0, ranks).Select(_ => new SemaphoreSlim(0)).ToArray();
        _done = new CountdownEvent(0);
        _threads = Enumerable.Range(1, ranks - 1).Select(r => new Thread(() => Loop(r)) { IsBackground = true, Name = $"qwq rank {r}" }).ToArray();
        foreach (var t in _threads) t.Start();
    }

    public int Ranks { get; }

    /// <summary>Runs <paramref name="work"/>(rank) for every rank at once; rethrows the first rank's error, by rank order.</summary>
    public void Run(Action<int> work)
    {
        ObjectDisposedException.ThrowIf(_stopping, this);
        if (Ranks == 1)
        {
            work(0);
            return;
        }
        Array.Clear(_errors);
        _work = work;
        _done.Reset(Ranks - 1);
        for (int r = 1; r < Ranks; r++) _start[r].Release();
        try { work(0); }
        catch (Exception e) { _errors[0] = e; }
        _done.Wait();
        _work = null;
        if (_errors.FirstOrDefault(e => e is not null) is { } first) ExceptionDispatchInfo.Capture(first).Throw();
    }

    private void Loop(int rank)
    {
        while (true)
        {
            _start[rank].Wait();
            if (_stopping) return;
            try { _work!(rank); }
            catch (Exception e) { _errors[rank] = e; }
            finally { _done.Signal(); }
        }
    }

    public void Dispose()
    {
        if (_stopping) return;
        _stopping = true;
        for (int r = 1; r < Ranks; r++) _start[r].Release();
        foreach (var t in _threads) t.Join();
        foreach (var s in _start) s.Dispose();
        _done.Dispose();
    }
}
