using QwQ.Cuda.Engine;

namespace QwQ.Cuda.Kernels;

/// <summary>
/// One layer of the paged KV pool as the kernels see it (docs/ENGINE_V2.md, docs/KV_CACHE.md). bf16: K and V
/// [blocks, nkv, 64, D]. fp8: K and V e4m3 codes [blocks, nkv, 64, D] (one byte each) and one fp32 scale per slot and
/// head, <see cref="KScales"/> and <see cref="VScales"/> [blocks, nkv, 64]. The rope kernel writes it, the attention
/// kernels read it, each picking its variant by <see cref="Kind"/>, so the forward pass passes a layer along without
/// knowing how it is stored.
/// </summary>
internal readonly record struct KvLayer(KvCacheKind Kind, ulong K, ulong V, ulong KScales, ulong VScales)
{
    public static KvLayer Bf16(ulong k, ulong v) => new(KvCacheKind.Bf16, k, v, 0, 0);

    public static KvLayer Fp8(ulong kCodes, ulong vCodes, ulong kScales, ulong vScales) => new(KvCacheKind.Fp8, kCodes, vCodes, kScales, vScales);

    /// <summary>
    /// Host checks shared by the ops: K/V tiles are copied in 16-byte chunks (bf16 rows or code rows); fp8 scale planes
    /// are required 16-byte aligned too (the attention kernels copy one 4-byte scale per row, the pool allocates them
    /// aligned).
    /// </summary>
    public void Check()
    {
        if (K == 0 || (K & 15) != 0) throw new ArgumentException($"K pool pointer 0x{K:x} must be non-null and 16-byte aligned.", "kPool");
        if (V == 0 || (V & 15) != 0) throw new ArgumentException($"V pool pointer 0x{V:x} must be non-null and 16-byte aligned.", "vPool");
        switch (Kind)
        {
            case KvCacheKind.Bf16:
                return;
            case KvCacheKind.Fp8:
                if (KScales == 0 || (KScales & 15) != 0) throw new ArgumentException($"K scales pointer 0x{KScales:x} must be non-null and 16-byte aligned.", "kScales");
                if (VScales == 0 || (VScales & 15) != 0) throw new ArgumentException($"V scales pointer 0x{VScales:x} must be non-null and 16-byte aligned.", "vScales");
                return;
            default:
                throw new ArgumentOutOfRangeException(nameof(Kind), Kind, "bf16 or fp8");
        }
    }
}
