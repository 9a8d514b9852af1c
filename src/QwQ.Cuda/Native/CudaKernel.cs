namespace QwQ.Cuda.Native;

/// <summary>
/// A kernel (CUfunction) resolved from a loaded module. Valid while its module is loaded. A plain value:
/// op classes resolve it once and launch it many times without allocating.
/// </summary>
internal readonly struct CudaKernel
{
    internal CudaKernel(IntPtr handle, string name, bool programmaticLaunch = false)
    {
        Handle = handle;
        Name = name;
        ProgrammaticLaunch = programmaticLaunch;
    }

    /// <summary>The CUfunction.</summary>
    public IntPtr Handle { get; }

    /// <summary>The entry name, for error messages.</summary>
    public string Name { get; }

    /// <summary>
    /// Launched with programmatic stream serialization: the kernel may be scheduled while the one before it in the
    /// stream finishes (programmatic dependent launch, sm_90+). Only for kernels that begin with
    /// <c>kernel_entry_barrier</c> (kernels/common.cuh), which waits for that kernel before touching memory: the
    /// compute_90 build of our kernels (<see cref="PtxLibrary"/>).
    /// </summary>
    public bool ProgrammaticLaunch { get; }

    /// <summary>
    /// Queues the kernel on <paramref name="stream"/>. <paramref name="args"/> points to one pointer per kernel
    /// parameter, each pointing at the argument value (typically a stack-allocated <c>void**</c> filled with
    /// addresses of locals). Launch-configuration errors throw naming the kernel; faults inside the kernel
    /// surface later, at the next synchronizing call.
    /// </summary>
    public unsafe void Launch(Dim3 grid, Dim3 block, int sharedBytes, CudaStream stream, void** args)
    {
        if (Handle == IntPtr.Zero) throw new InvalidOperationException("Launch of an unresolved (default) CudaKernel.");
        LaunchTimer? timer = stream.Timer;
        timer?.Before(Name, grid, stream);
        int rc;
        if (ProgrammaticLaunch)
        {
            // On the stack: a launch allocates nothing.
            CudaDriverApi.LaunchAttribute attribute = default;
            attribute.Id = CudaDriverApi.CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
            attribute.Value = 1;
            var config = new CudaDriverApi.LaunchConfig
            {
                GridX = grid.X, GridY = grid.Y, GridZ = grid.Z, BlockX = block.X, BlockY = block.Y, BlockZ = block.Z,
                SharedBytes = (uint)sharedBytes, Stream = stream.Handle, Attributes = &attribute, AttributeCount = 1,
            };
            rc = CudaDriverApi.cuLaunchKernelEx(&config, Handle, args, null);
        }
        else
        {
            rc = CudaDriverApi.cuLaunchKernel(Handle, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z,
                (uint)sharedBytes, stream.Handle, args, null);
        }
        if (rc != CudaErrors.CudaSuccess) ThrowLaunch(rc, grid, block, sharedBytes);
        timer?.After(stream);
        GC.KeepAlive(stream);
    }

    private void ThrowLaunch(int rc, Dim3 grid, Dim3 block, int sharedBytes) =>
        CudaErrors.Throw(ProgrammaticLaunch ? "cuLaunchKernelEx" : "cuLaunchKernel", rc,
            $"kernel '{Name}' grid={grid} block={block} sharedBytes={sharedBytes}");

    /// <summary>Allows up to <paramref name="bytes"/> of dynamic shared memory (needed above 48 KiB).</summary>
    public void SetMaxDynamicSharedMemory(int bytes)
    {
        if (Handle == IntPtr.Zero) throw new InvalidOperationException("SetMaxDynamicSharedMemory on an unresolved (default) CudaKernel.");
        int rc = CudaDriverApi.cuFuncSetAttribute(Handle, CudaDriverApi.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, bytes);
        if (rc != CudaErrors.CudaSuccess)
            CudaErrors.Throw("cuFuncSetAttribute", rc, $"kernel '{Name}' MAX_DYNAMIC_SHARED_SIZE_BYTES={bytes}");
    }

    /// <summary>
    /// How many blocks of <paramref name="blockThreads"/> threads and <paramref name="dynamicSharedBytes"/> of dynamic
    /// shared memory one multiprocessor of the current context's GPU holds at once: the driver's answer for this
    /// build of the kernel, which counts its registers as well as its shared memory.
    /// </summary>
    public int MaxActiveBlocksPerMultiprocessor(int blockThreads, int dynamicSharedBytes)
    {
        if (Handle == IntPtr.Zero) throw new InvalidOperationException("MaxActiveBlocksPerMultiprocessor on an unresolved (default) CudaKernel.");
        int rc = CudaDriverApi.cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, Handle, blockThreads, (nuint)dynamicSharedBytes);
        if (rc != CudaErrors.CudaSuccess)
            CudaErrors.Throw("cuOccupancyMaxActiveBlocksPerMultiprocessor", rc, $"kernel '{Name}' block={blockThreads} sharedBytes={dynamicSharedBytes}");
        return blocks;
    }

    public override string ToString() => $"CudaKernel({Name})";
}
