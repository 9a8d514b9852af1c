namespace QwQ.Cuda.Native;

/// <summary>
/// Marks a <c>const string</c> field holding a kernel entry name, so a CPU test can check every such name is an
/// <c>.entry</c> in the embedded PTX (a rename in a .cu file then fails the build's tests, not a run on the GPU).
/// </summary>
[AttributeUsage(AttributeTargets.Field)]
internal sealed class KernelEntryAttribute : Attribute;
