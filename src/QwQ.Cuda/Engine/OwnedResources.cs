using QwQ.Cuda.Native;

namespace QwQ.Cuda.Engine;

/// <summary>
/// What an engine part allocated, freed together: last acquired first (a stream after the handles that use it), best
/// effort (a CUDA error freeing one, e.g. while unwinding a failed load, does not keep the others allocated).
/// </summary>
internal sealed class OwnedResources
{
    private readonly List<IDisposable> _items = [];

    /// <summary>Takes <paramref name="resource"/> into the set and returns it.</summary>
    public T Add<T>(T resource) where T : IDisposable
    {
        _items.Add(resource);
        return resource;
    }

    public void DisposeAll()
    {
        for (int i = _items.Count - 1; i >= 0; i--)
        {
            try { _items[i].Dispose(); } catch (CudaException) { /* best effort while unwinding */ }
        }
        _items.Clear();
    }
}
