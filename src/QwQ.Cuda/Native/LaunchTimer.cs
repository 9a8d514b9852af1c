namespace QwQ.Cuda.Native;

/// <summary>
/// Times every kernel launched on one stream while attached to it (<see cref="CudaStream.Timer"/>): an event pair
/// around each launch, for a diagnostic profile of one step (<c>qwq bench --profile-step</c>). The events serialise
/// the kernels and cost a few µs each, so a profiled step is slower than a graph replay: a kernel's own time is right,
/// the time between kernels is an upper bound. Our cuBLAS and cuBLASLt products are timed as one launch each (named by
/// the call, with m, n, k in the grid field); NCCL work is not timed and shows as time between the timed kernels. The events are created up front, in the stream's context, so a launch allocates nothing.
/// </summary>
internal sealed class LaunchTimer : IDisposable
{
    /// <summary>One launch: its kernel and grid, when it started after the first timed launch, and how long it ran.</summary>
    public readonly record struct Launch(string Kernel, Dim3 Grid, float StartUs, float Us);

    private readonly CudaEvent[] _events;    // [capacity, 2]: before and after each launch
    private readonly string[] _kernels;
    private readonly Dim3[] _grids;
    private int _count;

    /// <summary>Creates <paramref name="capacity"/> event pairs in the current context; later launches are not timed.</summary>
    public LaunchTimer(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _events = new CudaEvent[2 * capacity];
        _kernels = new string[capacity];
        _grids = new Dim3[capacity];
        try
        {
            for (int i = 0; i < _events.Length; i++) _events[i] = CudaEvent.Create();
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Launches past the capacity, not timed.</summary>
    public int Dropped { get; private set; }

    internal void Before(string kernel, Dim3 grid, CudaStream s)
    {
        if (_count == _kernels.Length)
        {
            Dropped++;
            return;
        }
        (_kernels[_count], _grids[_count]) = (kernel, grid);
        _events[2 * _count].Record(s);
    }

    internal void After(CudaStream s)
    {
        if (_count == _kernels.Length) return;
        _events[2 * _count + 1].Record(s);
        _count++;
    }

    /// <summary>Every timed launch in order. Waits for the last one to finish.</summary>
    public Launch[] Read()
    {
        if (_count == 0) return [];
        _events[2 * _count - 1].Synchronize();
        var launches = new Launch[_count];
        for (int i = 0; i < _count; i++)
            launches[i] = new Launch(_kernels[i], _grids[i],
                1e3f * CudaEvent.ElapsedMilliseconds(_events[0], _events[2 * i]),
                1e3f * CudaEvent.ElapsedMilliseconds(_events[2 * i], _events[2 * i + 1]));
        return launches;
    }

    public void Dispose()
    {
        foreach (var e in _events) e?.Dispose();
    }
}
