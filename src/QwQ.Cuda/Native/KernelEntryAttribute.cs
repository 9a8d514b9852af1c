namespace QwQ.Cuda.Native;

/// <summary>
/// Marks a <c>const string</c> field holding a kernel entry name, so a CPU test can check every such name is an
/// <c>.entry</c> in the embedded PTX (a rename in a .cu file then fails the build's tests, not a run on the GPU).
/// </summary>
[AttributeUsage(AttributeTargets.Field)]
internal sealed class KernelEntryAttribute : Attribute
{
    /// <summary>
    /// An entry of the sm_90a kernels (kernels/sm90a/*.cu, <see cref="PtxLibrary.ArchSpecific"/>): checked against that
    /// PTX when it is embedded, and against the declarations in kernels/sm90a/*.cu until it is.
    /// </summary>
    public bool ArchSpecific { get; set; }
}
