using QwQ.Cuda.Kernels;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Native;

namespace QwQ.Cuda.Tests.Kernels;

/// <summary>
/// qkv_bias_rope_paged against <see cref="CpuOps.ApplyRope"/> / plain copies. Each row's K/V slot comes from a block
/// table that is a random permutation of the pool's blocks (never the identity), so a slot computed with the wrong
/// block, head or offset lands somewhere else. The pool is poisoned and downloaded whole, so a write to a wrong slot
/// or head fails as well as a missing one.
/// </summary>
public sealed class RopeKernelTests : KernelTestBase
{
    private const int Block = AttentionOps.KvBlockSize;

    private RopeOps _rope = null!;

    protected override void CreateOps() => _rope = new RopeOps(Lib);

    /// <summary>Default (non-YaRN) inv_freq as transformers computes it, fp32: 1 / theta^(2i/D).</summary>
    private static float[] InvFreq(int headDim, double theta)
    {
        var r = new float[headDim / 2];
        for (int i = 0; i < r.Length; i++) r[i] = 1.0f / (float)Math.Pow((float)theta, (float)(2 * i) / headDim);
        return r;
    }

    private sealed record Expected(float[] Q, float[] K, float[] V); // q [rows, nq, D]; k, v [rows, nkv, D]

    /// <summary>Row t at position <paramref name="positions"/>[t]: q and k rotated there, v only biased.</summary>
    private static Expected Reference(float[] qkv, float[] bias, int[] positions, int nq, int nkv, int d, float[] invFreq, float factor)
    {
        int rows = positions.Length, width = (nq + 2 * nkv) * d;
        var q = new float[rows * nq * d];
        var k = new float[rows * nkv * d];
        var v = new float[rows * nkv * d];
        for (int t = 0; t < rows; t++)
        for (int c = 0; c < width; c++)
        {
            float x = qkv[t * width + c] + bias[c];
            if (c < nq * d) q[t * nq * d + c] = x;
            else if (c < (nq + nkv) * d) k[t * nkv * d + c - nq * d] = x;
            else v[t * nkv * d + c - (nq + nkv) * d] = x;
        }
        for (int t = 0; t < rows; t++)
        {
            CpuOps.ApplyRope(q.AsSpan(t * nq * d, nq * d), 1, nq, d, positions[t], invFreq, factor);
            CpuOps.ApplyRope(k.AsSpan(t * nkv * d, nkv * d), 1, nkv, d, positions[t], invFreq, factor);
        }
        return new Expected(q, k, v);
    }

    /// <summary>
    /// Block tables for sequences of <paramref name="blocksPerSequence"/> blocks, dealt from one random permutation of
    /// <paramref name="poolBlocks"/> blocks (disjoint; the first table is never the identity).
    /// </summary>
    private int[][] ShuffledTables(int poolBlocks, params int[] blocksPerSequence)
    {
        Assert.That(blocksPerSequence.Sum(), Is.LessThan(poolBlocks), "keep a spare block so no table can be the identity by force");
        int[] perm;
        do
        {
            perm = Enumerable.Range(0, poolBlocks).ToArray();
            Rng.Shuffle(perm);
        } while (perm.AsSpan(0, blocksPerSequence[0]).SequenceEqual(Enumerable.Range(0, blocksPerSequence[0]).ToArray()));
        var tables = new int[blocksPerSequence.Length][];
        int next = 0;
        for (int i = 0; i < tables.Length; i++)
        {
            tables[i] = perm[next..(next + blocksPerSequence[i])];
            next += blocksPerSequence[i];
        }
        return tables;
    }

    /// <summary>The rows of one sequence at positions start .. start+count-1: their positions and pool slots.</summary>
    private static (int[] Positions, int[] Slots) SequenceRows(int[] table, int start, int count)
    {
        var positions = Enumerable.Range(start, count).ToArray();
        return (positions, positions.Select(p => table[p / Block] * Block + p % Block).ToArray());
    }

    /// <summary>
    /// Pool [blocks, nkv, 64, D]: the slot of every row with slot ≥ 0 holds that row's expected [rows, nkv, D] values,
    /// every other element is still poison.
    /// </summary>
    private static void AssertPool(ushort[] poolBits, float[] expected, int[] slots, int nkv, int d, int poolBlocks, double tolerance, string what)
    {
        var rowOfSlot = new int[poolBlocks * Block];
        Array.Fill(rowOfSlot, -1);
        for (int t = 0; t < slots.Length; t++)
            if (slots[t] >= 0) rowOfSlot[slots[t]] = t;
        var written = Enumerable.Range(0, slots.Length).Where(t => slots[t] >= 0).ToArray();
        var compact = new int[slots.Length];
        for (int i = 0; i < written.Length; i++) compact[written[i]] = i;
        var got = new float[written.Length * nkv * d];
        var want = new float[got.Length];
        for (int b = 0; b < poolBlocks; b++)
        for (int h = 0; h < nkv; h++)
        for (int o = 0; o < Block; o++)
        {
            long at = (((long)b * nkv + h) * Block + o) * d;
            int t = rowOfSlot[b * Block + o];
            if (t >= 0)
            {
                int r = compact[t];
                for (int i = 0; i < d; i++)
                {
                    got[(r * nkv + h) * d + i] = Bf16.ToFloat(poolBits[at + i]);
                    want[(r * nkv + h) * d + i] = expected[(t * nkv + h) * d + i];
                }
            }
            else
            {
                for (int i = 0; i < d; i++)
                    if (poolBits[at + i] != Bf16Poison)
                        Assert.Fail($"{what}: block {b} head {h} offset {o} element {i} was written (no row has slot {b * Block + o})");
            }
        }
        if (written.Length > 0) AssertClose(got, want, tolerance, what);
    }

    /// <summary>Launches over the given rows and checks q (every row; padding rows at position 0) and both pools.</summary>
    /// <paramref name="qkvBf16"/>: the product as a prefill chunk on cuBLAS writes it, bf16 (values exact in bf16, so the
    /// reference is the same; the _bf16_ entry must read them as bf16, not as half as many fp32).
    private void RunRows(int nq, int nkv, int d, int[] positions, int[] slots, int poolBlocks, float factor, int headsPerBlock = 0,
        bool mixedRopes = false, bool qkvBf16 = false, bool vectorised = true)
    {
        int rows = positions.Length, width = (nq + 2 * nkv) * d;
        float[] qkv = qkvBf16 ? NormalBf16((long)rows * width, 2f) : Normal((long)rows * width, 2f);
        float[] bias = NormalBf16(width, 0.5f);
        float[] invFreq = InvFreq(d, 1_000_000.0);

        var dQkv = qkvBf16 ? UploadBf16(qkv) : Upload<float>(qkv);
        var dBias = UploadBf16(bias);
        var dInv = Upload<float>(invFreq);
        var dPositions = Upload<int>(positions);
        var dSlots = Upload<int>(slots);
        var dQ = PoisonedBf16((long)rows * nq * d);
        var dK = PoisonedBf16((long)poolBlocks * nkv * Block * d);
        var dV = PoisonedBf16((long)poolBlocks * nkv * Block * d);

        // Mixed: every row picks one of two ropes (adaptive YaRN: sequences on either side of the switch in one step).
        float[] invAlt = InvFreq(d, 10_000.0);
        const float factorAlt = 1.3f;
        int[] ropeRows = [.. Enumerable.Range(0, rows).Select(_ => mixedRopes ? Rng.Next(2) : 0)];
        _rope.QkvBiasRopePaged(Stream, dQkv.Ptr, dBias.Ptr, dInv.Ptr, factor, dPositions.Ptr, dSlots.Ptr, rows, nq, nkv, d,
            dQ.Ptr, KvLayer.Bf16(dK.Ptr, dV.Ptr), headsPerBlock,
            invFreqAlt: mixedRopes ? Upload<float>(invAlt).Ptr : 0, factorAlt: factorAlt, ropeRows: mixedRopes ? Upload<int>(ropeRows).Ptr : 0,
            qkvBf16: qkvBf16, vectorised: vectorised);
        Stream.Synchronize();

        // A padding row (slot −1) is computed at position 0, whatever its position entry says.
        int[] effective = positions.Select((p, t) => slots[t] < 0 ? 0 : p).ToArray();
        var exp = Reference(qkv, bias, effective, nq, nkv, d, invFreq, factor);
        if (mixedRopes)
        {
            var alt = Reference(qkv, bias, effective, nq, nkv, d, invAlt, factorAlt);
            for (int t = 0; t < rows; t++)
                if (ropeRows[t] == 1)
                {
                    Array.Copy(alt.Q, (long)t * nq * d, exp.Q, (long)t * nq * d, nq * d);
                    Array.Copy(alt.K, (long)t * nkv * d, exp.K, (long)t * nkv * d, nkv * d);
                    Array.Copy(alt.V, (long)t * nkv * d, exp.V, (long)t * nkv * d, nkv * d);
                }
            Assert.That(ropeRows.Distinct().Count(), Is.EqualTo(2), "both ropes present");
        }
        AssertClose(DownloadBf16(dQ), exp.Q, 1e-2, "q");
        AssertPool(dK.ToArray<ushort>(), exp.K, slots, nkv, d, poolBlocks, 1e-2, "k pool");
        AssertPool(dV.ToArray<ushort>(), exp.V, slots, nkv, d, poolBlocks, 1e-2, "v pool");
    }

    /// <summary>One sequence of <paramref name="seqPositions"/> positions (spare blocks in the pool), rows start .. start+tokens-1.</summary>
    private void RunOneSequence(int tokens, int startPos, int seqPositions, int nq, int nkv, int d, float factor, int headsPerBlock = 0,
        bool qkvBf16 = false, bool vectorised = true)
    {
        int blocks = (seqPositions + Block - 1) / Block, poolBlocks = blocks + 3;
        var table = ShuffledTables(poolBlocks, blocks)[0];
        var (positions, slots) = SequenceRows(table, startPos, tokens);
        RunRows(nq, nkv, d, positions, slots, poolBlocks, factor, headsPerBlock, qkvBf16: qkvBf16, vectorised: vectorised);
    }

    // Every way a block can split a row's heads: one head, fewer than the 4 slots, a count that leaves the last block
    // short (5 of 56, 3 of 10), all of them in one block (what a prefill chunk of 512+ rows gets), and head_dim 36
    // (lanes past D/2 idle).
    [TestCase(40, 8, 128, 1)]
    [TestCase(40, 8, 128, 3)]
    [TestCase(40, 8, 128, 5)]
    [TestCase(40, 8, 128, 56)]
    [TestCase(4, 2, 36, 3)]
    [TestCase(4, 2, 36, 8)]
    public void EverySplitOfARowsHeadsOverBlocksMatchesCpu(int nq, int nkv, int d, int headsPerBlock) =>
        RunOneSequence(70, Rng.Next(0, 200), 300, nq, nkv, d, 1.1f, headsPerBlock);

    /// <summary>Rows of two ropes in one launch (adaptive YaRN's mixed batches), decode-sized and prefill-sized.</summary>
    [TestCase(40, 8, 128, 4, 40)]
    [TestCase(40, 8, 128, 56, 600)]
    public void EachRowRunsItsOwnRope(int nq, int nkv, int d, int headsPerBlock, int tokens)
    {
        int blocks = (tokens + 200 + Block - 1) / Block, poolBlocks = blocks + 3;
        var table = ShuffledTables(poolBlocks, blocks)[0];
        var (positions, slots) = SequenceRows(table, Rng.Next(0, 200), tokens);
        RunRows(nq, nkv, d, positions, slots, poolBlocks, 1.1f, headsPerBlock, mixedRopes: true);
    }

    [Test]
    public void APrefillChunkOf600RowsTakesAllHeadsInABlockAndMatchesCpu()
    {
        Assert.That(RopeOps.HeadsPerBlock(600, 56), Is.EqualTo(56), "the automatic choice this test covers");
        Assert.That(RopeOps.HeadsPerBlock(32, 56), Is.EqualTo(4));
        RunOneSequence(600, Rng.Next(0, 1000), 2000, 40, 8, 128, 1.0f);
    }

    // The bf16-product entry (prefill chunks on cuBLAS): all heads a block as a chunk runs, a short split, head_dim 36.
    // Each case on the vectorised entry (where head_dim allows: not 36) and on the scalar one; head_dim 16 and 512 are
    // the vectorised entry's smallest and largest (one 8-pair chunk a half; its shared cos/sin full).
    [TestCase(600, 40, 8, 128, 0, true)]
    [TestCase(600, 40, 8, 128, 0, false)]
    [TestCase(130, 40, 8, 128, 5, true)]
    [TestCase(130, 40, 8, 128, 5, false)]
    [TestCase(200, 4, 2, 36, 3, true)]
    [TestCase(200, 4, 2, 36, 3, false)]
    [TestCase(150, 6, 2, 16, 0, true)]
    [TestCase(140, 4, 2, 512, 0, true)]
    [TestCase(140, 4, 2, 512, 3, false)]
    public void ABf16ProductMatchesCpu(int tokens, int nq, int nkv, int d, int headsPerBlock, bool vectorised) =>
        RunOneSequence(tokens, Rng.Next(0, 1000), tokens + 1100, nq, nkv, d, 1.1f, headsPerBlock, qkvBf16: true, vectorised: vectorised);

    [Test]
    public void TheVectorisedEntryServesQwqsShapeOnAlignedBuffers()
    {
        Assert.That(RopeOps.Vectorises(128, 0x1000, 0x2000, 0x3000), Is.True);
        Assert.That(RopeOps.Vectorises(36, 0x1000), Is.False, "head_dim not a multiple of 16");
        Assert.That(RopeOps.Vectorises(1024, 0x1000), Is.False, "past its shared cos/sin");
        Assert.That(RopeOps.Vectorises(128, 0x1000, 0x2008), Is.False, "a pointer off a 16-byte boundary");
    }

    [Test]
    public void PaddingRowsOnTheVectorisedEntryWriteOnlyQ() =>
        RunRows(40, 8, 128, [5, 70, 3, 9], [-1, 64, -1, 65], 3, 1f, headsPerBlock: 56, qkvBf16: true);

    [TestCase(1, 8190, 8192, 1.0f, TestName = "Rope_Decode_QwQ_NearPos8192")]
    [TestCase(7, 0, 64, 1.0f, TestName = "Rope_Prefill_QwQ_FromZero")]
    [TestCase(5, -1, 9000, 1.0f, TestName = "Rope_Prefill_QwQ_RandomStart")]
    [TestCase(3, 32760, 32768, 1.2f, TestName = "Rope_QwQ_Pos32K_AttentionFactor")]
    [TestCase(70, 30, 200, 1.0f, TestName = "Rope_Prefill_QwQ_CrossesBlocks")]
    public void QkvBiasRopePagedMatchesCpu(int tokens, int startPos, int seqPositions, float factor)
    {
        if (startPos < 0) startPos = Rng.Next(0, seqPositions - tokens + 1);
        TestContext.Out.WriteLine($"startPos {startPos}");
        RunOneSequence(tokens, startPos, seqPositions, 40, 8, 128, factor);
    }

    [Test]
    public void RandomDecodePositionMatchesCpu()
    {
        int seqPositions = 8300;
        int startPos = Rng.Next(0, seqPositions);
        TestContext.Out.WriteLine($"startPos {startPos}");
        RunOneSequence(1, startPos, seqPositions, 40, 8, 128, 1.0f);
    }

    [Test]
    public void SmallHeadDimAndGroups() => RunOneSequence(4, Rng.Next(0, 100), 128, 6, 2, 32, 1.0f);

    [Test]
    public void HeadDimThatIsNotAWarpMultiple() => RunOneSequence(3, Rng.Next(0, 200), 256, 4, 2, 36, 1.0f);

    [TestCase(0)]
    [TestCase(56)] // all heads of a row in one block, as prefill chunks run: the padding rows stop after the q heads
    public void ManySequencesAndPaddingRowsInOneLaunch(int headsPerBlock)
    {
        // As the engine lays out a step: decode rows of three sequences, a prefill chunk of a fourth that crosses a
        // block boundary, then padding rows (slot −1) up to a captured batch size. Disjoint shuffled tables, one pool.
        int[] lengths = [3000, 65, 64, 100];
        var tables = ShuffledTables(90, lengths.Select(n => (n + Block - 1) / Block).ToArray());
        var parts = new List<(int[] Positions, int[] Slots)>
        {
            SequenceRows(tables[0], 2999, 1),
            SequenceRows(tables[1], 64, 1),
            SequenceRows(tables[2], 63, 1),
            SequenceRows(tables[3], 30, 70),
            ([12345, -7], [-1, -1]), // padding: the position entries are garbage and must not matter
        };
        int[] positions = [.. parts.SelectMany(p => p.Positions)];
        int[] slots = [.. parts.SelectMany(p => p.Slots)];
        RunRows(40, 8, 128, positions, slots, 90, 1.0f, headsPerBlock);
    }

    [TestCase(0)]
    [TestCase(8)]
    public void PaddingRowsWriteNothingToThePool(int headsPerBlock)
    {
        const int nq = 4, nkv = 2, d = 64, poolBlocks = 2;
        RunRows(nq, nkv, d, [5, 70, int.MaxValue], [-1, -1, -1], poolBlocks, 1f, headsPerBlock);
    }

    [Test]
    public void RejectsBadArguments()
    {
        var b = Alloc(1 << 16);
        ulong p = b.Ptr;
        Assert.Multiple(() =>
        {
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, p, 1, 4, 2, 15, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("headDim"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, p, 1, 4, 2, 16, p, p, p, headsPerBlock: 9),
                Throws.InstanceOf<ArgumentOutOfRangeException>().With.Property("ParamName").EqualTo("headsPerBlock"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, p, 1, 5, 2, 16, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("nq"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, p, 0, 4, 2, 16, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("rows"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p + 2, p, 1, 4, 2, 16, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("positions"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, 0, 1, 4, 2, 16, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("slots"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, 1f, p, p, 1, 4, 2, 16, p, p + 1, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("kPool"));
            Assert.That(() => _rope.QkvBiasRopePaged(Stream, p, p, p, float.NaN, p, p, 1, 4, 2, 16, p, p, p),
                Throws.ArgumentException.With.Property("ParamName").EqualTo("attentionFactor"));
        });
    }
}
