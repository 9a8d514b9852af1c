using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Model.Reference;
using QwQ.Cuda.Sharding;
using QwQ.Cuda.Tests.Generation;
using QwQ.Cuda.Tests.Weights;
using QwQ.Cuda.Weights;

namespace QwQ.Cuda.Tests.Sharding;

/// <summary>
/// Tensor-parallel checkpoint loading, without a GPU: which slice of every checkpoint tensor each rank loads
/// (<see cref="WeightUploader.Placement(ModelConfig, ModelWeights, TensorParallelPlan?, int)"/>), how many elements it has
/// (<see cref="WeightUploader.SliceElements"/>), and that reading it in staging-buffer chunks
/// (<see cref="WeightUploader.ReadSliceAsBf16"/>) gives exactly the rank's shard of the CPU reference
/// (<see cref="CpuShardWeights"/>, which the sharded-forward tests check against the unsharded model). The host→device
/// copy itself is left to the GPU tests.
/// </summary>
public sealed class ShardedLoadTests
{
    /// <summary>How the test checkpoint stores its tensors: fp32 is converted to bf16 while read, bf16 read as it is.</summary>
    public enum Stored { F32, Bf16 }

    // 8 KV heads (N = 2 and 4 both shard it), 2 query heads per KV head; hidden 64 ≠ q 128, so rows and columns of
    // o_proj cannot be confused; a vocabulary of 51, which neither N divides (the last rank's lm_head slice is shorter).
    private static ModelConfig Config(bool tied) => ModelPresets.Get("qwq-32b") with
    {
        HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 16, NumKeyValueHeads = 8,
        HeadDim = 8, VocabSize = 51, MaxPositionEmbeddings = 128, TieWordEmbeddings = tied,
    };

    private const ushort Poison = 0x7FC1; // a bf16 NaN: a staging element the read did not write never equals a weight

    private TestModels.TempDir _dir = null!;
    private readonly Dictionary<bool, CpuWeights> _weights = [];

    [OneTimeSetUp]
    public void WriteCheckpoints()
    {
        _dir = new TestModels.TempDir();
        foreach (bool tied in new[] { false, true })
        {
            var config = Config(tied);
            // bf16-exact values: the bf16 the loader produces must equal the fp32 reference bit for bit.
            var weights = _weights[tied] = CpuWeights.Random(config, seed: tied ? 5 : 3, bf16Exact: true);
            string f32 = CheckpointDir(Stored.F32, tied), bf16 = CheckpointDir(Stored.Bf16, tied);
            Directory.CreateDirectory(f32);
            Directory.CreateDirectory(bf16);
            TestModels.WriteSafetensors(Path.Combine(f32, SafetensorsCheckpoint.SingleFileName), config, weights);
            using var source = SafetensorsCheckpoint.Open(f32);
            SafetensorsTestFiles.Write(Path.Combine(bf16, SafetensorsCheckpoint.SingleFileName), TensorNames.Expected(config)
                .Select(e => SafetensorsTestFiles.Bf16(e.Name, e.Shape, source.ReadFloat32(e.Name).Select(ElementConversion.FloatToBf16).ToArray())));
        }
    }

    [OneTimeTearDown]
    public void RemoveCheckpoints() => _dir.Dispose();

    private string CheckpointDir(Stored stored, bool tied) => _dir.Combine($"{stored}-{(tied ? "tied" : "untied")}");

    private SafetensorsCheckpoint Open(Stored stored, bool tied) => SafetensorsCheckpoint.Open(CheckpointDir(stored, tied));

    /// <summary>A checkpoint tensor, the slice of it a rank loads (null: all of it), and the rank's values of it.</summary>
    private sealed record RankTensor(string Name, WeightUploader.Slice? Slice, float[] Values);

    /// <summary>
    /// What rank <paramref name="rank"/> must load, in the uploader's order: q/k/v rows and bias entries of its heads,
    /// o_proj's columns of its query heads, gate/up rows and down_proj columns of its MLP slice, its vocabulary rows of
    /// lm_head (of the embedding, when tied), and the embedding and norms whole; the values from <see cref="CpuShardWeights"/>.
    /// </summary>
    private static List<RankTensor> RankTensors(CpuWeights full, TensorParallelPlan plan, int rank)
    {
        var shard = CpuShardWeights.Create(full, plan, rank);
        var q = new WeightUploader.Slice(plan.QRows(rank));
        var kv = new WeightUploader.Slice(plan.KvRows(rank));
        var mlp = new WeightUploader.Slice(plan.Intermediate(rank));
        var oColumns = new WeightUploader.Slice(plan.QRows(rank), Columns: true);
        var downColumns = new WeightUploader.Slice(plan.Intermediate(rank), Columns: true);
        var list = new List<RankTensor> { new(TensorNames.Embedding, null, full.Embedding) };
        for (int i = 0; i < shard.Layers.Length; i++)
        {
            var l = shard.Layers[i];
            list.Add(new(TensorNames.InputNorm(i), null, l.InputNorm));
            list.Add(new(TensorNames.QWeight(i), q, l.QWeight));
            list.Add(new(TensorNames.KWeight(i), kv, l.KWeight));
            list.Add(new(TensorNames.VWeight(i), kv, l.VWeight));
            list.Add(new(TensorNames.QBias(i), q, l.QBias));
            list.Add(new(TensorNames.KBias(i), kv, l.KBias));
            list.Add(new(TensorNames.VBias(i), kv, l.VBias));
            list.Add(new(TensorNames.OWeight(i), oColumns, l.OWeight));
            list.Add(new(TensorNames.PostAttentionNorm(i), null, l.PostAttentionNorm));
            list.Add(new(TensorNames.GateWeight(i), mlp, l.GateWeight));
            list.Add(new(TensorNames.UpWeight(i), mlp, l.UpWeight));
            list.Add(new(TensorNames.DownWeight(i), downColumns, l.DownWeight));
        }
        list.Add(new(TensorNames.FinalNorm, null, full.FinalNorm));
        list.Add(new(TensorNames.OutputProjection(full.Config), new WeightUploader.Slice(plan.Vocab(rank)), shard.LmHead));
        return list;
    }

    /// <summary>
    /// Reads a slice as <see cref="WeightUploader.Upload"/> does: chunk by chunk into one reused staging buffer (poisoned
    /// before each chunk, so an element left unwritten shows), a column slice whole rows at a time. Row slices and whole
    /// tensors go in chunks of 37 elements, which start and end in the middle of rows.
    /// </summary>
    private static float[] ReadInChunks(SafetensorsCheckpoint ck, TensorInfo t, WeightUploader.Slice? slice)
    {
        long total = WeightUploader.SliceElements(t, slice);
        const int rowsPerChunk = 3;
        bool columns = slice is { Columns: true };
        long step = columns ? rowsPerChunk * (long)slice!.Value.Range.Count : 37;
        var stage = new ushort[columns ? rowsPerChunk * t.Shape[1] : step]; // a column chunk's full rows land here first
        var values = new float[total];
        for (long off = 0; off < total; off += step)
        {
            int n = (int)Math.Min(step, total - off);
            stage.AsSpan().Fill(Poison);
            WeightUploader.ReadSliceAsBf16(ck, t, slice, off, stage, n);
            for (int i = 0; i < n; i++) values[off + i] = BitConverter.Int32BitsToSingle(stage[i] << 16);
        }
        return values;
    }

    // ---- reading each rank's slices ------------------------------------------------------------------------------

    [Test]
    public void EveryRanksSlicesReadInChunksAreExactlyItsCpuShard(
        [Values] Stored stored, [Values] bool tied, [Values(2, 4)] int ranks)
    {
        var full = _weights[tied];
        var plan = TensorParallelPlan.Create(full.Config, ranks);
        using var ck = Open(stored, tied);
        Assert.That(ck.Get(TensorNames.OWeight(0)).DType, Is.EqualTo(stored == Stored.Bf16 ? DType.BF16 : DType.F32),
            "the checkpoint stores what the test case says");
        Assert.Multiple(() =>
        {
            for (int r = 0; r < ranks; r++)
            {
                foreach (var (name, slice, expected) in RankTensors(full, plan, r))
                {
                    TensorInfo t = ck.Get(name);
                    Assert.That(WeightUploader.SliceElements(t, slice), Is.EqualTo(expected.Length), $"rank {r}: {name} {slice}");
                    Assert.That(ReadInChunks(ck, t, slice), Is.EqualTo(expected), $"rank {r}: {name} {slice}");
                }
            }
        });
    }

    [TestCase(2)]
    [TestCase(4)]
    public void TheRanksSlicesOfATensorTileIt(int ranks)
    {
        // Each rank's o_proj columns, put side by side, and each rank's q_proj rows, one after another, give back the
        // whole tensor: no column or row is read twice or left out.
        var full = _weights[false];
        var plan = TensorParallelPlan.Create(full.Config, ranks);
        using var ck = Open(Stored.Bf16, tied: false);
        TensorInfo o = ck.Get(TensorNames.OWeight(1)), q = ck.Get(TensorNames.QWeight(1));
        int rows = (int)o.Shape[0], cols = (int)o.Shape[1];
        var oJoined = new float[rows * cols];
        var qJoined = new List<float>();
        for (int r = 0; r < ranks; r++)
        {
            var range = plan.QRows(r);
            float[] part = ReadInChunks(ck, o, new WeightUploader.Slice(range, Columns: true));
            for (int row = 0; row < rows; row++) part.AsSpan(row * range.Count, range.Count).CopyTo(oJoined.AsSpan(row * cols + range.Start));
            qJoined.AddRange(ReadInChunks(ck, q, new WeightUploader.Slice(range)));
        }
        Assert.That(oJoined, Is.EqualTo(full.Layers[1].OWeight));
        Assert.That(qJoined, Is.EqualTo(full.Layers[1].QWeight));
    }

    // ---- slice sizes and refusals --------------------------------------------------------------------------------

    [Test]
    public void SliceElementsCountsARowSlicesRowsAndAColumnSlicesColumnsOfEveryRow()
    {
        using var ck = Open(Stored.F32, tied: false);
        TensorInfo o = ck.Get(TensorNames.OWeight(0)), bias = ck.Get(TensorNames.QBias(0));
        Assert.That(o.Shape, Is.EqualTo(new long[] { 64, 128 }));
        Assert.Multiple(() =>
        {
            Assert.That(WeightUploader.SliceElements(o, null), Is.EqualTo(64 * 128));
            Assert.That(WeightUploader.SliceElements(o, new(new ShardRange(8, 16))), Is.EqualTo(16 * 128), "16 rows of 128");
            Assert.That(WeightUploader.SliceElements(o, new(new ShardRange(8, 16), Columns: true)), Is.EqualTo(64 * 16), "16 columns of 64 rows");
            Assert.That(WeightUploader.SliceElements(bias, new(new ShardRange(8, 16))), Is.EqualTo(16), "a vector's entries");
            // slices that end exactly at the last row or column are whole
            Assert.That(WeightUploader.SliceElements(o, new(new ShardRange(48, 16))), Is.EqualTo(16 * 128));
            Assert.That(WeightUploader.SliceElements(o, new(new ShardRange(112, 16), Columns: true)), Is.EqualTo(64 * 16));
            Assert.That(WeightUploader.SliceElements(bias, new(new ShardRange(112, 16))), Is.EqualTo(16));
        });
    }

    [Test]
    public void ARowSlicePastTheTensorsEndIsRefusedNamingTheTensor()
    {
        using var ck = Open(Stored.F32, tied: false);
        TensorInfo q = ck.Get(TensorNames.QWeight(1)); // [128, 64]
        var e = Assert.Throws<WeightsException>(() => WeightUploader.SliceElements(q, new(new ShardRange(120, 16))))!;
        Assert.That(e.Message, Does.Contain(TensorNames.QWeight(1)).And.Contain("[120, 136)").And.Contain("[128, 64]"));
        var bias = ck.Get(TensorNames.KBias(1)); // [64]
        e = Assert.Throws<WeightsException>(() => WeightUploader.SliceElements(bias, new(new ShardRange(60, 8))))!;
        Assert.That(e.Message, Does.Contain(TensorNames.KBias(1)));
    }

    [Test]
    public void AColumnSlicePastTheLastColumnOrOfAVectorIsRefusedNamingTheTensor()
    {
        using var ck = Open(Stored.F32, tied: false);
        TensorInfo down = ck.Get(TensorNames.DownWeight(0)); // [64, 96]: 96 columns, though it has only 64 rows
        Assert.That(WeightUploader.SliceElements(down, new(new ShardRange(72, 24), Columns: true)), Is.EqualTo(64 * 24));
        var e = Assert.Throws<WeightsException>(() => WeightUploader.SliceElements(down, new(new ShardRange(88, 16), Columns: true)))!;
        Assert.That(e.Message, Does.Contain(TensorNames.DownWeight(0)).And.Contain("[88, 104)"));
        TensorInfo norm = ck.Get(TensorNames.FinalNorm);
        e = Assert.Throws<WeightsException>(() => WeightUploader.SliceElements(norm, new(new ShardRange(0, 8), Columns: true)))!;
        Assert.That(e.Message, Does.Contain(TensorNames.FinalNorm));
    }

    [Test]
    public void AColumnSliceChunkThatIsNotWholeRowsIsRefused()
    {
        // A chunk of a column slice is compacted row by row; a part row would leave the stage holding the wrong elements.
        using var ck = Open(Stored.Bf16, tied: false);
        TensorInfo o = ck.Get(TensorNames.OWeight(0));
        var slice = new WeightUploader.Slice(new ShardRange(32, 32), Columns: true);
        var stage = new ushort[4 * o.Shape[1]];
        var e = Assert.Throws<InvalidOperationException>(() => WeightUploader.ReadSliceAsBf16(ck, o, slice, 0, stage, 32 + 5))!;
        Assert.That(e.Message, Does.Contain(TensorNames.OWeight(0)).And.Contain("whole rows"));
        Assert.DoesNotThrow(() => WeightUploader.ReadSliceAsBf16(ck, o, slice, 0, stage, 2 * 32), "two whole rows");
    }

    // ---- Placement ---------------------------------------------------------------------------------------------

    /// <summary>The engine's own weight layout for <paramref name="shape"/>, with addresses but no device memory.</summary>
    private static ModelWeights DeviceFreeWeights(RankShape shape) => ModelWeights.LayoutOnly(shape);

    [Test]
    public void PlacementLoadsThePlansRowsAndColumnsOfEveryTensorOnEveryRank([Values] bool tied, [Values(2, 4)] int ranks)
    {
        var full = _weights[tied];
        var plan = TensorParallelPlan.Create(full.Config, ranks);
        var w = DeviceFreeWeights(plan.Shape);
        for (int r = 0; r < ranks; r++)
        {
            var placement = WeightUploader.Placement(full.Config, w, plan, r);
            Assert.That(placement.Select(p => (p.Name, p.Slice)), Is.EqualTo(RankTensors(full, plan, r).Select(t => (t.Name, t.Slice))), $"rank {r}");
        }
    }

    [TestCase(2)]
    [TestCase(4)]
    public void EachRanksSlicesFillItsFusedMatricesBackToBack(int ranks)
    {
        // The uploader writes a slice's elements from its place's address on: q, k and v rows must land one after
        // another in the rank's (smaller) fused qkv matrix and fill it, likewise their biases and gate/up, and o_proj's
        // and down_proj's column slices must fill the rank's matrices exactly.
        var config = Config(tied: false);
        var plan = TensorParallelPlan.Create(config, ranks);
        ModelConfig shard = plan.Shape.Config;
        var w = DeviceFreeWeights(plan.Shape);
        using var ck = Open(Stored.F32, tied: false);
        Assert.Multiple(() =>
        {
            for (int r = 0; r < ranks; r++)
            {
                var places = WeightUploader.Placement(config, w, plan, r).ToDictionary(p => p.Name);
                long Bytes(string name) => 2 * WeightUploader.SliceElements(ck.Get(name), places[name].Slice);
                ulong At(string name) => places[name].Dst;
                ulong End(string name) => At(name) + (ulong)Bytes(name);
                for (int i = 0; i < config.NumHiddenLayers; i++)
                {
                    LayerWeights l = w.Layers[i];
                    string where = $"rank {r}, layer {i}";
                    Assert.That(At(TensorNames.InputNorm(i)), Is.EqualTo(l.InputNorm), where);
                    Assert.That(Bytes(TensorNames.InputNorm(i)), Is.EqualTo(2L * config.HiddenSize), where);
                    Assert.That(At(TensorNames.QWeight(i)), Is.EqualTo(l.Qkv.Weight), where);
                    Assert.That(At(TensorNames.KWeight(i)), Is.EqualTo(End(TensorNames.QWeight(i))), where);
                    Assert.That(At(TensorNames.VWeight(i)), Is.EqualTo(End(TensorNames.KWeight(i))), where);
                    Assert.That(End(TensorNames.VWeight(i)), Is.EqualTo(l.Qkv.Weight + (ulong)l.Qkv.Bytes), where);
                    Assert.That(At(TensorNames.QBias(i)), Is.EqualTo(l.QkvBias), where);
                    Assert.That(At(TensorNames.KBias(i)), Is.EqualTo(End(TensorNames.QBias(i))), where);
                    Assert.That(At(TensorNames.VBias(i)), Is.EqualTo(End(TensorNames.KBias(i))), where);
                    Assert.That(End(TensorNames.VBias(i)), Is.EqualTo(l.QkvBias + 2UL * (ulong)shard.QkvDim), where);
                    Assert.That(At(TensorNames.OWeight(i)), Is.EqualTo(l.O.Weight), where);
                    Assert.That(Bytes(TensorNames.OWeight(i)), Is.EqualTo(l.O.Bytes), where);
                    Assert.That(At(TensorNames.PostAttentionNorm(i)), Is.EqualTo(l.PostNorm), where);
                    Assert.That(At(TensorNames.GateWeight(i)), Is.EqualTo(l.GateUp.Weight), where);
                    Assert.That(At(TensorNames.UpWeight(i)), Is.EqualTo(End(TensorNames.GateWeight(i))), where);
                    Assert.That(End(TensorNames.UpWeight(i)), Is.EqualTo(l.GateUp.Weight + (ulong)l.GateUp.Bytes), where);
                    Assert.That(At(TensorNames.DownWeight(i)), Is.EqualTo(l.Down.Weight), where);
                    Assert.That(Bytes(TensorNames.DownWeight(i)), Is.EqualTo(l.Down.Bytes), where);
                }
                Assert.That(At(TensorNames.Embedding), Is.EqualTo(w.Embedding));
                Assert.That(Bytes(TensorNames.Embedding), Is.EqualTo(2L * config.VocabSize * config.HiddenSize), "the embedding is replicated");
                Assert.That(At(TensorNames.FinalNorm), Is.EqualTo(w.FinalNorm));
                Assert.That(At(TensorNames.LmHead), Is.EqualTo(w.LmHead.Weight), $"rank {r}");
                // Every rank's lm_head holds ⌈V/N⌉ rows; the last rank's real rows may be fewer (its padding stays zero).
                long lmHeadBytes = 2L * plan.Vocab(r).Count * config.HiddenSize;
                Assert.That(Bytes(TensorNames.LmHead), Is.EqualTo(lmHeadBytes), $"rank {r}");
                if (r < ranks - 1) Assert.That(lmHeadBytes, Is.EqualTo(w.LmHead.Bytes), $"rank {r}");
                else Assert.That(lmHeadBytes, Is.LessThan(w.LmHead.Bytes), $"51 tokens do not divide by {ranks}");
            }
        });
    }

    [TestCase(false)]
    [TestCase(true)]
    public void WithoutAPlanEveryTensorIsLoadedOnceAndWhole(bool tied)
    {
        // One GPU: the checkpoint's tensors, each once (tied: lm_head is the embedding's rows, not a second copy).
        var config = Config(tied);
        var placement = WeightUploader.Placement(config, DeviceFreeWeights(RankShape.Whole(config)));
        Assert.That(placement.Select(p => p.Slice), Is.All.Null);
        Assert.That(placement.Select(p => p.Name), Is.EquivalentTo(TensorNames.Expected(config).Select(e => e.Name)));
    }
}
