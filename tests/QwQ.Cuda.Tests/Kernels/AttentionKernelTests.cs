using QwQ.Cuda.Engine;
using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// The paged attention kernels against the CPU reference (<see cref="CpuOps.CausalAttention"/>) on fresh random
/// inputs. Every run draws a new seed (printed; set QWQ_TEST_SEED to replay one). Outputs are poisoned with NaN before
/// the launch, so a row the kernel forgets to write fails the finiteness check; pool slots past the visible context,
/// pool blocks no table names and block-table entries past a sequence's blocks (which name an all-NaN block) hold NaN
/// too, so a kernel that reads (or multiplies by zero) anything it should not fails as well. Block tables are random
/// permutations of the pool's blocks, never the identity, so a kernel that ignores or misreads its table fails.
/// Note the layouts: the reference takes K/V as [S, nkv, D], the pool is [blocks, nkv, 64, D].
/// </summary>
[TestFixture]
public sealed class AttentionKernelTests
{
    private const ushort Bf16NaN = 0x7FC0;
    private const uint Bf16NaNPair = 0x7FC07FC0;
    private const int Block = AttentionOps.KvBlockSize;
    internal const double GlobalTolerance = 1e-2; // ‖Δ‖/‖ref‖ over the whole output
    internal const double RowTolerance = 3e-2;    // per (token, head) row, so one bad row cannot hide in the norm

    private CudaContext? _context;
    private PtxLibrary? _library;
    private CudaStream? _stream;
    private AttentionOps? _ops;
    private AttentionOps? _portable; // the portable prefill kernel everywhere, to compare the sm_90a one with
    private AttentionOps? _cpAsync;  // the sm_90a kernel's cp.async entry (the fallback where the PTX lacks the TMA one)
    private AttentionOps? _plainTma; // its plain TMA entry (the fallback where the PTX lacks the ping-pong one)
    private string _unavailable = "";

    [OneTimeSetUp]
    public void SetUp()
    {
        if (!QwQ.Cuda.Native.Cuda.IsAvailable(out _unavailable)) return;
        _context = CudaContext.Create();
        _library = PtxLibrary.Load(_context);
        _stream = CudaStream.Create();
        _ops = new AttentionOps(_library, _context.MultiprocessorCount);
        _portable = new AttentionOps(_library, _context.MultiprocessorCount, hopperPrefill: false);
        _cpAsync = new AttentionOps(_library, _context.MultiprocessorCount, hopperTma: false);
        _plainTma = new AttentionOps(_library, _context.MultiprocessorCount, hopperPingPong: false);
    }

    [OneTimeTearDown]
    public void TearDown()
    {
        _stream?.Dispose();
        _library?.Dispose();
        _context?.Dispose();
    }

    private (AttentionOps Ops, CudaStream Stream) Gpu()
    {
        if (_ops is null || _stream is null) Assert.Ignore($"no CUDA device ({_unavailable})");
        _context!.MakeCurrent(); // NUnit may run a test on another thread than the one-time setup
        return (_ops!, _stream!);
    }

    private int Multiprocessors => _context!.MultiprocessorCount;

    // ---------------------------------------------------------------- CPU-only checks

    [Test]
    public void KernelNamesAreEntriesOfTheEmbeddedPtx()
    {
        var entries = PtxLibrary.EmbeddedEntries();
        string[] names =
        [
            AttentionOps.PrefillPagedD32, AttentionOps.PrefillPagedD64, AttentionOps.PrefillPagedD128,
            AttentionOps.DecodePagedD32, AttentionOps.DecodePagedD64, AttentionOps.DecodePagedD128,
            AttentionOps.DecodeCombine,
        ];
        foreach (var n in names) Assert.That(entries, Does.Contain(n), $"'{n}' missing from kernels/ptx/attention_*.ptx");
    }

    [Test]
    public void PrefillLaunchPicksTheHopperKernelForBf16HeadDim128Only()
    {
        // kernels/sm90a/attention_prefill_sm90a.cu: the cp.async entry is one warpgroup, 64 query rows per block, Q
        // [64, 128] + 2 stages of K and V [64, 128] bf16 + 1 KiB of alignment slack; the TMA entry two warpgroups, 128
        // rows, Q [128, 128] + 3 stages; the ping-pong entry the same rows, a producer warpgroup and 3 stages of
        // 128-key tiles (their static_asserts hold the same numbers).
        Assert.That(AttentionOps.HopperPrefillSmemBytes, Is.EqualTo(82_944));
        Assert.That(AttentionOps.HopperPrefillTmaSmemBytes, Is.EqualTo(132_096));
        var hopper = AttentionOps.PrefillLaunchFor(AttentionOps.PrefillKernel.Hopper, KvCacheKind.Bf16, 128);
        Assert.That(hopper, Is.EqualTo(new AttentionOps.PrefillLaunch(AttentionOps.PrefillKernel.Hopper, 64, 128, 82_944)));
        Assert.That(hopper.Path, Is.EqualTo("wgmma sm_90a"));
        var tma = AttentionOps.PrefillLaunchFor(AttentionOps.PrefillKernel.HopperTma, KvCacheKind.Bf16, 128);
        Assert.That(tma, Is.EqualTo(new AttentionOps.PrefillLaunch(AttentionOps.PrefillKernel.HopperTma, 128, 256, 132_096)));
        Assert.That(tma.Path, Is.EqualTo("wgmma+TMA sm_90a"));
        var pingPong = AttentionOps.PrefillLaunchFor(AttentionOps.PrefillKernel.HopperPingPong, KvCacheKind.Bf16, 128);
        Assert.That(AttentionOps.HopperPrefillPingPongSmemBytes, Is.EqualTo(230_400));
        // Compute capability 9.0 lets a block opt into 227 KiB of shared memory; the entry's static part comes on top
        // of the dynamic part: 1,024 B as ptxas reports it (the 2 × 3 mbarriers, placed by the 1024-byte alignment of
        // the dynamic buffer; session 19's build).
        Assert.That(AttentionOps.HopperPrefillPingPongSmemBytes + 1024, Is.LessThanOrEqualTo(227 * 1024));
        Assert.That(pingPong, Is.EqualTo(new AttentionOps.PrefillLaunch(AttentionOps.PrefillKernel.HopperPingPong, 128, 384, 230_400)));
        Assert.That(pingPong.Path, Is.EqualTo("wgmma+TMA ping-pong sm_90a"));
        // Everything else, and everything when no sm_90a entry is loaded, keeps the portable kernel: 8 warps, 128 rows
        // per block, its own shared memory.
        foreach (var loaded in new[] { AttentionOps.PrefillKernel.Hopper, AttentionOps.PrefillKernel.HopperTma, AttentionOps.PrefillKernel.HopperPingPong })
            foreach (var (kind, d) in new[] { (KvCacheKind.Fp8, 128), (KvCacheKind.Bf16, 64), (KvCacheKind.Bf16, 32), (KvCacheKind.Fp8, 64) })
                Assert.That(AttentionOps.PrefillLaunchFor(loaded, kind, d),
                    Is.EqualTo(new AttentionOps.PrefillLaunch(AttentionOps.PrefillKernel.Portable, 128, 256, AttentionOps.PrefillSmemBytes(d, kind))), $"{loaded} {kind} d{d}");
        var portable = AttentionOps.PrefillLaunchFor(AttentionOps.PrefillKernel.Portable, KvCacheKind.Bf16, 128);
        Assert.That(portable, Is.EqualTo(new AttentionOps.PrefillLaunch(AttentionOps.PrefillKernel.Portable, 128, 256, 2 * 2 * 64 * (128 + 8) * 2)));
        Assert.That(portable.Path, Is.EqualTo("mma.sync"));
    }

    [Test]
    public void DecodeWorkspaceCoversThePartialsOfTheLargestBatch()
    {
        // QwQ on an H100 (132 SMs, 8 KV heads), sized for the kind with the most slots (4 blocks a multiprocessor, one
        // wave rounded down): 4 * 132 / 8 = 66 slots per KV head, partials fp32 [slots, nq, D] and (max, sum) [slots, nq, 2].
        Assert.That(AttentionOps.DecodePagedWorkspaceBytes(132, 40, 8, 128, 1), Is.EqualTo(40L * 66 * 128 * 4 + 40L * 66 * 8));
        Assert.That(AttentionOps.DecodePagedWorkspaceBytes(132, 40, 8, 128, 64), Is.EqualTo(40L * 66 * 128 * 4 + 40L * 66 * 8));
        // More rows than one wave of slots: one slot each.
        Assert.That(AttentionOps.DecodePagedWorkspaceBytes(132, 40, 8, 128, 128), Is.EqualTo(40L * 128 * 128 * 4 + 40L * 128 * 8));
        // One KV head: at most MaxDecodeSplits slots.
        Assert.That(AttentionOps.DecodePagedWorkspaceBytes(132, 4, 1, 32, 1), Is.EqualTo(4L * 256 * 32 * 4 + 4L * 256 * 8));
        // One multiprocessor: 4 slots.
        Assert.That(AttentionOps.DecodePagedWorkspaceBytes(1, 1, 1, 32, 1), Is.EqualTo(4L * 1 * 4 * 32 + 8L * 1 * 4));
    }

    // ---------------------------------------------------------------- pools and tables

    /// <summary>A layer's K and V pools, their block count, the all-NaN block that pads tables, and the free blocks left.</summary>
    private sealed class Pool(int blocks, int nkv, int d)
    {
        public int Blocks { get; } = blocks;
        public ushort[] K { get; } = Poisoned((long)blocks * nkv * Block * d);
        public ushort[] V { get; } = Poisoned((long)blocks * nkv * Block * d);
        public int NaNBlock { get; set; }
        public Queue<int> Free { get; } = new();

        private static ushort[] Poisoned(long n)
        {
            var a = new ushort[n];
            Array.Fill(a, Bf16NaN);
            return a;
        }

        /// <summary>Writes [S, nkv, D] keys/values of one sequence at its table's slots.</summary>
        public void Write(float[] k, float[] v, int s, int[] table)
        {
            for (int pos = 0; pos < s; pos++)
                for (int h = 0; h < nkv; h++)
                {
                    long dst = (((long)table[pos / Block] * nkv + h) * Block + pos % Block) * d;
                    for (int i = 0; i < d; i++)
                    {
                        K[dst + i] = Bf16.FromFloat(k[((long)pos * nkv + h) * d + i]);
                        V[dst + i] = Bf16.FromFloat(v[((long)pos * nkv + h) * d + i]);
                    }
                }
        }
    }

    /// <summary>
    /// A pool of <paramref name="usedBlocks"/> + 2 blocks in random order: one kept all-NaN for table padding, one
    /// never handed out; the rest are dealt by <see cref="Table"/>. The first table dealt is never the identity.
    /// </summary>
    private static Pool NewPool(Random rng, int usedBlocks, int nkv, int d)
    {
        var pool = new Pool(usedBlocks + 2, nkv, d);
        int[] perm;
        do
        {
            perm = Enumerable.Range(0, pool.Blocks).ToArray();
            rng.Shuffle(perm);
        } while (perm[0] == 0 && (usedBlocks == 1 || perm[1] == 1)); // not an identity start
        pool.NaNBlock = perm[^1];
        foreach (int b in perm[..^1]) pool.Free.Enqueue(b);
        return pool;
    }

    /// <summary>
    /// Block table row of <paramref name="maxBlocks"/> entries for a sequence of <paramref name="positions"/>
    /// positions: <paramref name="shared"/> blocks first (a prefix shared with another sequence), then fresh blocks
    /// from the pool; entries past the sequence name the all-NaN block.
    /// </summary>
    private static int[] Table(Pool pool, int positions, int maxBlocks, int[]? shared = null)
    {
        int blocks = (positions + Block - 1) / Block;
        Assert.That(blocks, Is.LessThanOrEqualTo(maxBlocks));
        var table = new int[maxBlocks];
        Array.Fill(table, pool.NaNBlock);
        int i = 0;
        for (; shared is not null && i < shared.Length && i < blocks; i++) table[i] = shared[i];
        for (; i < blocks; i++) table[i] = pool.Free.Dequeue();
        return table;
    }

    // ---------------------------------------------------------------- prefill

    private static IEnumerable<TestCaseData> PrefillCases()
    {
        (int Nq, int Nkv, int D, string Name)[] shapes = [(40, 8, 128, "qwq"), (10, 2, 32, "tiny")];
        foreach (var s in shapes)
            foreach (int t in new[] { 1, 7, 64, 130, 1000 })
                foreach (int start in new[] { 0, 37 })
                    yield return new TestCaseData(s.Nq, s.Nkv, s.D, t, start).SetName($"PrefillPaged_{s.Name}_T{t}_start{start}");
        // Other head_dim / GQA ratios: D = 64 with a group of 7, a group of 16 (the widest the decode tile allows),
        // plain MHA, and a long chunk on top of a long cache.
        yield return new TestCaseData(14, 2, 64, 130, 37).SetName("PrefillPaged_d64_g7_T130_start37");
        yield return new TestCaseData(16, 1, 64, 200, 0).SetName("PrefillPaged_d64_g16_T200_start0");
        yield return new TestCaseData(4, 4, 32, 300, 5).SetName("PrefillPaged_d32_mha_T300_start5");
        yield return new TestCaseData(40, 8, 128, 129, 2000).SetName("PrefillPaged_qwq_T129_start2000");
    }

    [TestCaseSource(nameof(PrefillCases))]
    public void PrefillPagedMatchesCpuReference(int nq, int nkv, int d, int tokens, int startPos) =>
        RunPrefill(nq, nkv, d, [(tokens, startPos, 0)]);

    [Test]
    public void PrefillPagedManySequencesInOneLaunch_QwqShape() =>
        // Chunks of several sizes on top of several cache lengths; the fourth shares its first two blocks with the
        // first (a cached prompt prefix), and the second is a lone row.
        RunPrefill(40, 8, 128, [(130, 37, 0), (1, 2000, 0), (7, 0, 0), (129, 64, 2)]);

    [Test]
    public void PrefillPagedManySequencesInOneLaunch_Tiny() =>
        RunPrefill(10, 2, 32, [(1000, 0, 0), (64, 37, 0), (300, 5, 0), (65, 130, 2), (1, 0, 0)]);

    /// <summary>
    /// One launch over <paramref name="seqs"/> (query rows T at positions start .. start+T-1 each; SharedBlocks: how
    /// many leading blocks it shares with sequence 0, whose keys and values it then has there too), every sequence's
    /// rows laid end to end in q and out, as the engine does.
    /// </summary>
    private void RunPrefill(int nq, int nkv, int d, (int T, int Start, int SharedBlocks)[] seqs)
    {
        var (ops, stream) = Gpu();
        var p = NewPrefillProblem(NewRng(), nq, nkv, d, seqs);
        float[] got = LaunchPrefill(ops, stream, p);

        AssertAllFinite(got, d, "prefill");
        for (int z = 0, first = 0; z < seqs.Length; first += seqs[z].T, z++)
        {
            var (t, start, _) = seqs[z];
            int s = p.Lengths[z];
            long at = (long)first * nq * d, n = (long)t * nq * d;
            // The CPU reference is O(T*S*nq*D): for big cases check the first and last KV-head groups only
            // (the kernel treats every head alike; the finiteness check above still covers every row).
            int[] kvHeads = (long)t * s * nq > 4_000_000 ? [0, nkv - 1] : Enumerable.Range(0, nkv).ToArray();
            CompareWithReference(got.AsSpan((int)at, (int)n).ToArray(), p.Q.AsSpan((int)at, (int)n).ToArray(), p.Ks[z], p.Vs[z],
                t, start, nq, nkv, d, p.Scale, kvHeads, $"prefill seq {z} T={t} start={start}");
        }
    }

    /// <summary>
    /// One prefill launch's inputs on the host: q [rows, nq, D] (every sequence's rows end to end), each sequence's
    /// K and V [S, nkv, D] (for the reference), the pool they were written into, the block tables
    /// [sequences][maxBlocks] and seq_info [sequences, 4].
    /// </summary>
    private sealed record PrefillProblem(int Nq, int Nkv, int D, (int T, int Start, int SharedBlocks)[] Seqs, int[] Lengths,
        float Scale, float[] Q, float[][] Ks, float[][] Vs, Pool Pool, int[][] Tables, int MaxBlocks, int[] Info);

    private static PrefillProblem NewPrefillProblem(Random rng, int nq, int nkv, int d, (int T, int Start, int SharedBlocks)[] seqs)
    {
        float scale = 1f / MathF.Sqrt(d);
        int[] lengths = seqs.Select(z => z.Start + z.T).ToArray();
        int maxBlocks = lengths.Max() / Block + 2; // spare entries, which name the NaN block
        int ownBlocks = seqs.Select((z, i) => (lengths[i] + Block - 1) / Block - Math.Min(z.SharedBlocks, (lengths[i] + Block - 1) / Block)).Sum();
        var pool = NewPool(rng, ownBlocks, nkv, d);

        var ks = new float[seqs.Length][];
        var vs = new float[seqs.Length][];
        var tables = new int[seqs.Length][];
        for (int z = 0; z < seqs.Length; z++)
        {
            int s = lengths[z];
            ks[z] = RandomBf16(rng, (long)s * nkv * d, 1f); // [S, nkv, D]
            vs[z] = RandomBf16(rng, (long)s * nkv * d, 1f);
            int shared = seqs[z].SharedBlocks;
            if (shared > 0)
            {
                Assert.That(lengths[0], Is.GreaterThanOrEqualTo(shared * Block), "sequence 0 must hold the shared blocks");
                Array.Copy(ks[0], ks[z], Math.Min((long)shared * Block, s) * nkv * d);
                Array.Copy(vs[0], vs[z], Math.Min((long)shared * Block, s) * nkv * d);
            }
            tables[z] = Table(pool, s, maxBlocks, shared > 0 ? tables[0][..shared] : null);
            pool.Write(ks[z], vs[z], s, tables[z]);
        }

        int rows = seqs.Sum(z => z.T);
        float[] q = RandomBf16(rng, (long)rows * nq * d, 1.5f); // [rows, nq, D]
        var info = new int[seqs.Length * 4];
        for (int z = 0, first = 0; z < seqs.Length; first += seqs[z].T, z++)
            (info[4 * z], info[4 * z + 1], info[4 * z + 2]) = (first, seqs[z].T, seqs[z].Start);
        return new PrefillProblem(nq, nkv, d, seqs, lengths, scale, q, ks, vs, pool, tables, maxBlocks, info);
    }

    /// <summary>One <see cref="AttentionOps.PrefillPaged(CudaStream, ulong, ulong, ulong, ulong, ulong, ulong, int, int, int, int, int, int, float)"/> launch of <paramref name="ops"/> over <paramref name="p"/>, output poisoned with NaN first; returns out [rows, nq, D].</summary>
    private static float[] LaunchPrefill(AttentionOps ops, CudaStream stream, PrefillProblem p)
    {
        int rows = p.Seqs.Sum(z => z.T);
        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(p.Q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(p.Pool.K);
        using var vBuf = DeviceBuffer.FromHost<ushort>(p.Pool.V);
        using var infoBuf = DeviceBuffer.FromHost<int>(p.Info);
        using var tableBuf = DeviceBuffer.FromHost<int>(p.Tables.SelectMany(t => t).ToArray());
        using var outBuf = DeviceBuffer.Allocate(2L * rows * p.Nq * p.D);
        outBuf.Memset32(Bf16NaNPair);

        ops.PrefillPaged(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, infoBuf.Ptr, tableBuf.Ptr, p.Seqs.Length,
            p.Seqs.Max(z => z.T), p.MaxBlocks, p.Nq, p.Nkv, p.D, p.Scale);
        stream.Synchronize();
        return FromBf16(outBuf.ToArray<ushort>());
    }

    // ---------------------------------------------------------------- prefill: the sm_90a kernel

    private static IEnumerable<TestCaseData> HopperPrefillCases()
    {
        (int T, int Start, int SharedBlocks)[][] cases =
        [
            [(256, 0, 0)],                  // whole tiles from position 0
            [(256, 100, 0)],                // chunked prefill: the diagonal is not on a tile boundary
            [(200, 37, 0)],                 // a partial last query tile on top of a partial KV block
            [(1, 2000, 0)],                 // one row on top of a long cache
            [(2048, 0, 0)],                 // many m-tiles: the heaviest-first order and the ring over 32 key tiles
            [(32768, 0, 0)],                // QwQ's longest prompt without YaRN in one launch (issue: equal up to 32k)
            [(4096, 28672, 0)],             // the last chunk of a chunked 32k prefill: 512 key tiles behind the diagonal
            // several sequences in one launch: rows end to end in q/out, one launch over the longest; the fourth
            // shares its first two blocks with the first, the fifth has fewer m-tiles than the grid
            [(130, 37, 0), (1, 2000, 0), (7, 0, 0), (129, 64, 2), (65, 63, 0), (300, 5, 0)],
        ];
        // the entry by name (the kernel enum is internal; a public test method cannot take it)
        foreach (string entry in new[] { "PingPong", "Tma", "" })
            foreach (var c in cases)
                yield return new TestCaseData(c, entry).SetName($"Hopper{entry}PrefillEqualsPortable_" + string.Join("_", c.Select(z => $"T{z.T}s{z.Start}")));
    }

    /// <summary>
    /// The sm_90a wgmma kernel (kernels/sm90a) by its entry (<paramref name="entryName"/>: ping-pong, TMA or cp.async), against the
    /// portable kernel on the same launch at QwQ's shape (nq 40, nkv 8, D 128): unwritten pool slots, spare table
    /// entries and the output hold NaN as in every prefill test here (the TMA entry zeroes V rows past the keys in
    /// shared memory; a NaN slot it read unzeroed would poison P V).
    /// The 64-key entries (TMA, cp.async) give the portable kernel's output bit for bit; the ping-pong entry's 128-key
    /// tiles take each row's running maximum over 128 keys, so P rounds differently (H200, session 19: 6e-4 to 1.2e-3
    /// overall, rows to 4e-3): its bound is the prefill tests' ‖Δ‖/‖ref‖ ≤ 1e-2 (and no NaN), the measured difference
    /// printed; the 64-key entries must differ in no bit. Ignored unless the device is compute capability 9.0 and the
    /// sm_90a PTX is embedded.
    /// </summary>
    [TestCaseSource(nameof(HopperPrefillCases))]
    public void HopperPrefillEqualsPortableKernel((int T, int Start, int SharedBlocks)[] seqs, string entryName)
    {
        var entry = entryName switch
        {
            "PingPong" => AttentionOps.PrefillKernel.HopperPingPong,
            "Tma" => AttentionOps.PrefillKernel.HopperTma,
            _ => AttentionOps.PrefillKernel.Hopper,
        };
        var (defaultOps, stream) = Gpu();
        if (_context!.ComputeCapability != PtxLibrary.ArchSpecificCapability)
            Assert.Ignore($"the sm_90a kernel runs on compute capability 9.0 only; this is {_context.DeviceName} (sm_{_context.ComputeCapability.Major}{_context.ComputeCapability.Minor})");
        if (!_library!.ArchSpecific)
            Assert.Ignore("kernels/ptx/sm90a is not embedded (build it with ./build.sh where nvcc is, then rebuild)");
        Assert.That(defaultOps.HopperPrefill, Is.True, "the default ops run the sm_90a kernel on 9.0");
        Assert.That(_portable!.HopperPrefill, Is.False);
        bool hasTma = _library.Has(AttentionOps.PrefillPagedD128Sm90aTma), hasPingPong = hasTma && _library.Has(AttentionOps.PrefillPagedD128Sm90aPingPong);
        if (entry == AttentionOps.PrefillKernel.HopperTma && !hasTma || entry == AttentionOps.PrefillKernel.HopperPingPong && !hasPingPong)
            Assert.Ignore($"the embedded sm_90a PTX has no {entry} entry (an older build: ./build.sh --kernels-only)");
        Assert.That(defaultOps.LoadedPrefill, Is.EqualTo(hasPingPong ? AttentionOps.PrefillKernel.HopperPingPong
            : hasTma ? AttentionOps.PrefillKernel.HopperTma : AttentionOps.PrefillKernel.Hopper), "the default ops prefer ping-pong, then TMA");
        AttentionOps ops = entry switch
        {
            AttentionOps.PrefillKernel.HopperPingPong => defaultOps,
            AttentionOps.PrefillKernel.HopperTma => _plainTma!,
            _ => _cpAsync!,
        };
        Assert.That(ops.LoadedPrefill, Is.EqualTo(entry));
        const int nq = 40, nkv = 8, d = 128;
        var p = NewPrefillProblem(NewRng(), nq, nkv, d, seqs);
        float[] got = LaunchPrefill(ops, stream, p);
        float[] expected = LaunchPrefill(_portable, stream, p);
        AssertAllFinite(expected, d, "portable prefill");
        AssertAllFinite(got, d, "sm_90a prefill");
        int rows = seqs.Sum(z => z.T);
        int differing = got.Where((x, i) => BitConverter.SingleToInt32Bits(x) != BitConverter.SingleToInt32Bits(expected[i])).Count();
        TestContext.Out.WriteLine($"sm_90a vs portable: {differing} of {got.Length} outputs differ in any bit");
        double rel = RelativeError(got, expected, rows * nq, d, "sm_90a vs portable");
        Assert.That(rel, Is.LessThanOrEqualTo(GlobalTolerance), "‖sm_90a − portable‖/‖portable‖");
        if (entry != AttentionOps.PrefillKernel.HopperPingPong)
            Assert.That(differing, Is.Zero, $"the 64-key {entry} entry gives the portable kernel's output bit for bit");
    }

    // ---------------------------------------------------------------- decode

    [Test]
    public void DecodePagedMatchesCpuReferenceAsContextChanges_QwqShape() =>
        DecodeSweep(40, 8, 128, maxCtx: 20480, contexts: [1, 17, 1000, 8192, 20000, 63, 64, 65, 1000]);

    [Test]
    public void DecodePagedMatchesCpuReferenceAsContextChanges_Tiny() =>
        DecodeSweep(10, 2, 32, maxCtx: 3000, contexts: [1, 17, 100, 2999, 3000, 129]);

    [Test]
    public void DecodePagedMatchesCpuReferenceAsContextChanges_Group16_D64() =>
        DecodeSweep(16, 1, 64, maxCtx: 5000, contexts: [1, 200, 4999]);

    [Test]
    public void DecodePagedMatchesCpuReferenceAsContextChanges_Mha_D64() =>
        DecodeSweep(4, 4, 64, maxCtx: 777, contexts: [700, 3, 777]);

    /// <summary>
    /// One row, one set of buffers and one fixed argument list (as a captured CUDA graph would have); only the int at
    /// the split plan's device buffers (the context length with it) and the contents of q change between launches.
    /// </summary>
    private void DecodeSweep(int nq, int nkv, int d, int maxCtx, int[] contexts)
    {
        var (ops, stream) = Gpu();
        var rng = NewRng();
        int filled = contexts.Max();
        int maxBlocks = (maxCtx + Block - 1) / Block;
        float scale = 1f / MathF.Sqrt(d);
        float[] k = RandomBf16(rng, (long)filled * nkv * d, 1f); // [S, nkv, D]
        float[] v = RandomBf16(rng, (long)filled * nkv * d, 1f);
        var pool = NewPool(rng, maxBlocks, nkv, d);
        int[] table = Table(pool, maxCtx, maxBlocks);
        pool.Write(k, v, filled, table);

        using var kBuf = DeviceBuffer.FromHost<ushort>(pool.K);
        using var vBuf = DeviceBuffer.FromHost<ushort>(pool.V);
        using var tableBuf = DeviceBuffer.FromHost<int>(table);
        using var qBuf = DeviceBuffer.Allocate(2L * nq * d);
        using var outBuf = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodePagedWorkspaceBytes(Multiprocessors, nq, nkv, d, 1));
        using var plan = new DecodeSplitPlanBuffers(1);
        ws.Memset32(0x7FC00000); // fp32 NaN: the combine must read only partials written in this launch

        foreach (int ctx in contexts)
        {
            float[] q = RandomBf16(rng, (long)nq * d, 1.5f);
            qBuf.CopyFromHost<ushort>(ToBf16(q));
            plan.Plan(ops, [ctx], maxBlocks, nkv, d, KvCacheKind.Bf16); // as the engine writes it with each step's inputs
            outBuf.Memset32(Bf16NaNPair, stream);

            ops.DecodePaged(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, ws.Ptr, tableBuf.Ptr, plan.Rows, plan.Work, 1, maxBlocks, nq, nkv, d, scale);
            stream.Synchronize();
            float[] got = FromBf16(outBuf.ToArray<ushort>());

            AssertAllFinite(got, d, $"decode ctx={ctx}");
            CompareWithReference(got, q, k.AsSpan(0, ctx * nkv * d).ToArray(), v.AsSpan(0, ctx * nkv * d).ToArray(),
                1, ctx - 1, nq, nkv, d, scale, Enumerable.Range(0, nkv).ToArray(), $"decode ctx={ctx}");
        }
    }

    [Test]
    public void DecodePagedBatchOfSequencesMatchesCpuReference()
    {
        // One row per sequence, as a decode step batches them: contexts of one key, a block edge either side, a long
        // one, a padding row (ctx 0: zeros), and one sharing its first 40 blocks with the long one.
        var (ops, stream) = Gpu();
        var rng = NewRng();
        const int nq = 40, nkv = 8, d = 128, maxBlocks = 64;
        int[] contexts = [1, 64, 65, 3001, 0, 2600];
        const int longRow = 3, sharingRow = 5, sharedBlocks = 40;
        float scale = 1f / MathF.Sqrt(d);
        int batch = contexts.Length;
        int ownBlocks = contexts.Select((c, b) => (c + Block - 1) / Block - (b == sharingRow ? sharedBlocks : 0)).Sum();
        var pool = NewPool(rng, ownBlocks, nkv, d);

        var ks = new float[batch][];
        var vs = new float[batch][];
        var tables = new int[batch][];
        foreach (int b in new[] { longRow }.Concat(Enumerable.Range(0, batch).Where(b => b != longRow)))
        {
            int c = contexts[b];
            ks[b] = RandomBf16(rng, (long)c * nkv * d, 1f);
            vs[b] = RandomBf16(rng, (long)c * nkv * d, 1f);
            if (b == sharingRow)
            {
                Array.Copy(ks[longRow], ks[b], (long)sharedBlocks * Block * nkv * d);
                Array.Copy(vs[longRow], vs[b], (long)sharedBlocks * Block * nkv * d);
            }
            tables[b] = Table(pool, c, maxBlocks, b == sharingRow ? tables[longRow][..sharedBlocks] : null);
            pool.Write(ks[b], vs[b], c, tables[b]);
        }
        float[] q = RandomBf16(rng, (long)batch * nq * d, 1.5f); // [batch, nq, D]

        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(pool.K);
        using var vBuf = DeviceBuffer.FromHost<ushort>(pool.V);
        using var tableBuf = DeviceBuffer.FromHost<int>(tables.SelectMany(t => t).ToArray());
        using var outBuf = DeviceBuffer.Allocate(2L * batch * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodePagedWorkspaceBytes(Multiprocessors, nq, nkv, d, batch));
        using var plan = new DecodeSplitPlanBuffers(batch);
        plan.Plan(ops, contexts, maxBlocks, nkv, d, KvCacheKind.Bf16);
        ws.Memset32(0x7FC00000);
        outBuf.Memset32(Bf16NaNPair);

        ops.DecodePaged(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outBuf.Ptr, ws.Ptr, tableBuf.Ptr, plan.Rows, plan.Work, batch, maxBlocks, nq, nkv, d, scale);
        stream.Synchronize();
        float[] got = FromBf16(outBuf.ToArray<ushort>());

        AssertAllFinite(got, d, "decode batch");
        for (int b = 0; b < batch; b++)
        {
            int at = b * nq * d, n = nq * d;
            if (contexts[b] == 0)
            {
                Assert.That(got.AsSpan(at, n).ToArray(), Is.All.Zero, $"padding row {b} outputs zeros");
                continue;
            }
            CompareWithReference(got.AsSpan(at, n).ToArray(), q.AsSpan(at, n).ToArray(), ks[b], vs[b], 1, contexts[b] - 1,
                nq, nkv, d, scale, Enumerable.Range(0, nkv).ToArray(), $"decode row {b} ctx={contexts[b]}");
        }
    }

    [Test]
    public void DecodeAgreesWithPrefillOfOneToken()
    {
        // The two kernels take different routes (split + merge vs one block); for T = 1 they must agree.
        var (ops, stream) = Gpu();
        var rng = NewRng();
        const int nq = 40, nkv = 8, d = 128, ctx = 8500, maxBlocks = (9000 + Block - 1) / Block;
        float scale = 1f / MathF.Sqrt(d);
        float[] q = RandomBf16(rng, nq * d, 1.5f);
        float[] k = RandomBf16(rng, (long)ctx * nkv * d, 1f);
        float[] v = RandomBf16(rng, (long)ctx * nkv * d, 1f);
        var pool = NewPool(rng, (ctx + Block - 1) / Block, nkv, d);
        int[] table = Table(pool, ctx, maxBlocks);
        pool.Write(k, v, ctx, table);
        using var qBuf = DeviceBuffer.FromHost<ushort>(ToBf16(q));
        using var kBuf = DeviceBuffer.FromHost<ushort>(pool.K);
        using var vBuf = DeviceBuffer.FromHost<ushort>(pool.V);
        using var tableBuf = DeviceBuffer.FromHost<int>(table);
        using var infoBuf = DeviceBuffer.FromHost<int>([0, 1, ctx - 1, 0]);
        using var outA = DeviceBuffer.Allocate(2L * nq * d);
        using var outB = DeviceBuffer.Allocate(2L * nq * d);
        using var ws = DeviceBuffer.Allocate(AttentionOps.DecodePagedWorkspaceBytes(Multiprocessors, nq, nkv, d, 1));
        using var plan = new DecodeSplitPlanBuffers(1);
        plan.Plan(ops, [ctx], maxBlocks, nkv, d, KvCacheKind.Bf16);
        outA.Memset32(Bf16NaNPair);
        outB.Memset32(Bf16NaNPair);

        ops.DecodePaged(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outA.Ptr, ws.Ptr, tableBuf.Ptr, plan.Rows, plan.Work, 1, maxBlocks, nq, nkv, d, scale);
        ops.PrefillPaged(stream, qBuf.Ptr, kBuf.Ptr, vBuf.Ptr, outB.Ptr, infoBuf.Ptr, tableBuf.Ptr, 1, 1, maxBlocks, nq, nkv, d, scale);
        stream.Synchronize();
        float[] a = FromBf16(outA.ToArray<ushort>());
        float[] b = FromBf16(outB.ToArray<ushort>());
        AssertAllFinite(a, d, "decode");
        AssertAllFinite(b, d, "prefill");
        AssertClose(a, b, nq, d, "decode vs prefill");
    }

    [Test]
    public void RejectsUnsupportedShapes()
    {
        var (ops, stream) = Gpu();
        using var buf = DeviceBuffer.Allocate(1 << 16);
        ulong p = buf.Ptr;
        Assert.Throws<ArgumentException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 1, 1, 2, 40, 7, 128, 0.1f)); // nq % nkv
        Assert.Throws<ArgumentException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 1, 1, 2, 40, 8, 96, 0.1f));  // head_dim
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 0, 1, 2, 40, 8, 128, 0.1f)); // sequences
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 1, 0, 2, 40, 8, 128, 0.1f)); // query rows
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 1, 1, 0, 40, 8, 128, 0.1f)); // table width
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.PrefillPaged(stream, p, p, p, p, p, p, 1, 1, 2, 40, 8, 128, 0f));   // scale
        Assert.Throws<ArgumentException>(() => ops.PrefillPaged(stream, p, p + 8, p, p, p, p, 1, 1, 2, 40, 8, 128, 0.1f)); // K alignment
        Assert.Throws<ArgumentException>(() => ops.PrefillPaged(stream, p, p, p, p, p + 4, p, 1, 1, 2, 40, 8, 128, 0.1f)); // seqInfo alignment
        Assert.Throws<ArgumentException>(() => ops.PrefillPaged(stream, p, p, p, p, p, 0, 1, 1, 2, 40, 8, 128, 0.1f));     // no tables
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p, p, p, p, 1, 2, 34, 2, 128, 0.1f));      // group 17
        Assert.Throws<ArgumentOutOfRangeException>(() => ops.DecodePaged(stream, p, p, p, p, p, p, p, p, 0, 2, 40, 8, 128, 0.1f)); // batch
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p + 4, p, p, p, 1, 2, 40, 8, 128, 0.1f));  // workspace alignment
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p, 0, p, p, 1, 2, 40, 8, 128, 0.1f));      // no tables
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p, p, p + 4, p, 1, 2, 40, 8, 128, 0.1f));  // plan rows alignment (int4)
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p, p, p, p + 4, 1, 2, 40, 8, 128, 0.1f));  // plan slots alignment (int4)
        Assert.Throws<ArgumentException>(() => ops.DecodePaged(stream, p, p, p, p, p, p, p, 0, 1, 2, 40, 8, 128, 0.1f));      // no plan
    }

    // Throughput is measured by the micro-benchmarks (bench/micro/attention_prefill_sm90.cu, attention_decode.cu) and
    // `qwq bench --profile-step`, not here.

    // ---------------------------------------------------------------- helpers

    private static Random NewRng()
    {
        int seed = int.TryParse(Environment.GetEnvironmentVariable("QWQ_TEST_SEED"), out int fixedSeed)
            ? fixedSeed
            : Random.Shared.Next();
        TestContext.Out.WriteLine($"seed {seed} (set QWQ_TEST_SEED={seed} to replay)");
        return new Random(seed);
    }

    /// <summary>Gaussian values with standard deviation <paramref name="std"/>, already rounded to bf16.</summary>
    private static float[] RandomBf16(Random rng, long count, float std)
    {
        var a = new float[count];
        for (long i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = Bf16.Round((float)(std * Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2)));
        }
        return a;
    }

    private static ushort[] ToBf16(float[] a) => Bf16.FromFloat(a);
    private static float[] FromBf16(ushort[] a) => Bf16.ToFloat(a);

    private static void AssertAllFinite(float[] got, int d, string what)
    {
        for (int i = 0; i < got.Length; i++)
            if (!float.IsFinite(got[i]))
                Assert.Fail($"{what}: output row {i / d} dim {i % d} is {got[i]} (never written, or NaN from masked pool slots)");
    }

    /// <summary>
    /// Runs the CPU reference on the query heads of <paramref name="kvHeads"/> (sliced out of q/k/v) and compares
    /// them with the matching rows of the GPU output [tokens, nq, D].
    /// </summary>
    private static void CompareWithReference(float[] got, float[] q, float[] k, float[] v, int tokens, int startPos,
        int nq, int nkv, int d, float scale, int[] kvHeads, string what)
    {
        int group = nq / nkv;
        int subNkv = kvHeads.Length, subNq = subNkv * group;
        int s = k.Length / (nkv * d);
        var qs = new float[(long)tokens * subNq * d];
        var ks = new float[(long)s * subNkv * d];
        var vs = new float[(long)s * subNkv * d];
        var gs = new float[qs.Length];
        for (int j = 0; j < subNkv; j++)
        {
            int h = kvHeads[j];
            for (int pos = 0; pos < s; pos++)
            {
                Array.Copy(k, ((long)pos * nkv + h) * d, ks, ((long)pos * subNkv + j) * d, d);
                Array.Copy(v, ((long)pos * nkv + h) * d, vs, ((long)pos * subNkv + j) * d, d);
            }
            for (int t = 0; t < tokens; t++)
                for (int r = 0; r < group; r++)
                {
                    long src = ((long)t * nq + h * group + r) * d, dst = ((long)t * subNq + j * group + r) * d;
                    Array.Copy(q, src, qs, dst, d);
                    Array.Copy(got, src, gs, dst, d);
                }
        }
        var expected = new float[qs.Length];
        CpuOps.CausalAttention(qs, ks, vs, expected, tokens, startPos, subNq, subNkv, d, scale);
        AssertClose(gs, expected, tokens * subNq, d, what);
    }

    /// <summary>
    /// ‖Δ‖/‖ref‖ of <paramref name="got"/> against <paramref name="expected"/> (both <paramref name="rows"/> rows of
    /// <paramref name="d"/>) within <see cref="GlobalTolerance"/> overall and <see cref="RowTolerance"/> for every row
    /// (the fp8 KV kernels' tests use the same bounds: Fp8KvKernelTests). Returns the overall error.
    /// </summary>
    internal static double AssertClose(float[] got, float[] expected, int rows, int d, string what)
    {
        var (global, worst, worstRow) = Errors(got, expected, rows, d, what);
        Assert.That(global, Is.LessThanOrEqualTo(GlobalTolerance), $"{what}: ‖Δ‖/‖ref‖");
        Assert.That(worst, Is.LessThanOrEqualTo(RowTolerance), $"{what}: row {worstRow} (in checked-head order) ‖Δ‖/‖ref‖");
        return global;
    }

    /// <summary>‖got − expected‖/‖expected‖ overall, printed with the worst row's, and no bound checked (NaN fails).</summary>
    internal static double RelativeError(float[] got, float[] expected, int rows, int d, string what)
    {
        var (global, _, _) = Errors(got, expected, rows, d, what);
        Assert.That(double.IsFinite(global), $"{what}: not finite");
        return global;
    }

    private static (double Global, double Worst, int WorstRow) Errors(float[] got, float[] expected, int rows, int d, string what)
    {
        double num = 0, den = 0, worst = 0;
        int worstRow = -1;
        for (int r = 0; r < rows; r++)
        {
            double rn = 0, rd = 0;
            for (int i = 0; i < d; i++)
            {
                double e = expected[(long)r * d + i], g = got[(long)r * d + i];
                rn += (g - e) * (g - e);
                rd += e * e;
            }
            num += rn;
            den += rd;
            double rel = Math.Sqrt(rn) / (Math.Sqrt(rd) + 1e-6);
            if (rel > worst) (worst, worstRow) = (rel, r);
        }
        double global = Math.Sqrt(num) / (Math.Sqrt(den) + 1e-12);
        TestContext.Out.WriteLine($"{what}: rel error {global:E2} overall, worst row {worstRow} {worst:E2}");
        return (global, worst, worstRow);
    }
}
