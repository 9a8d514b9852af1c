using System.Runtime.InteropServices;

namespace QwQ.Cuda.Native;

/// <summary>
/// A driver object owned by the context that was current when it was created. Release pushes that context
/// around the destroy call (so finalizers and other threads destroy it in the right context) and ignores errors:
/// there is nothing useful to do with a failed free while tearing down, and a sticky device error would
/// otherwise make every later Dispose throw too.
/// </summary>
internal abstract class ContextOwnedHandle : SafeHandle
{
    protected ContextOwnedHandle() : base(IntPtr.Zero, ownsHandle: true) { }

    /// <summary>The CUcontext the handle belongs to.</summary>
    internal IntPtr Context { get; private set; }

    public override bool IsInvalid => handle == IntPtr.Zero;

    internal void Initialize(IntPtr value, IntPtr context)
    {
        Context = context;
        SetHandle(value);
    }

    protected sealed override bool ReleaseHandle()
    {
        if (!CudaDriverApi.PushContext(Context)) return true; // context gone: the driver already freed it
        try { Destroy(handle); }
        finally { CudaDriverApi.PopContext(); }
        return true;
    }

    /// <summary>The destroy call (result ignored, see class remarks).</summary>
    protected abstract void Destroy(IntPtr value);
}

internal sealed class DeviceMemoryHandle : ContextOwnedHandle
{
    internal ulong Ptr => (ulong)handle;
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuMemFree_v2((ulong)value);
}

internal sealed class HostMemoryHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuMemFreeHost(value);
}

internal sealed class StreamHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuStreamDestroy_v2(value);
}

internal sealed class EventHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuEventDestroy_v2(value);
}

internal sealed class ModuleHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuModuleUnload(value);
}

internal sealed class GraphHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuGraphDestroy(value);
}

internal sealed class GraphExecHandle : ContextOwnedHandle
{
    protected override void Destroy(IntPtr value) => CudaDriverApi.cuGraphExecDestroy(value);
}
