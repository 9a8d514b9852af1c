using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Presets;

namespace QwQ.Cuda.Tests.Engine;

/// <summary>
/// The workspace's two product buffers hold fp32 for decode batches and bf16 for prefill chunks
/// (<see cref="LinearOps.TryApplyBf16Out"/> writes bf16 past <see cref="LinearOps.MaxFp32OutRows"/> rows on every GEMM),
/// and the gate_up buffer is also the decode tuner's fp32 output scratch for every product, lm_head included. CPU only.
/// </summary>
public sealed class WorkspaceSizeTests
{
    private static readonly ModelConfig Qwq = ModelPresets.Get("qwq-32b");

    private static long Bytes(ModelConfig c, int rows, string name, int? logitsWidth = null) =>
        Workspace.ArenaSizes(c, rows, maxBlocks: 64, multiprocessors: 132, logitsWidth ?? c.VocabSize, WeightKind.Bf16)
            .Single(s => s.Name == name).Bytes;

    [Test]
    public void PrefillChunksHoldQkvAndGateUpInBf16AndDecodeBatchesInFp32()
    {
        long qkv = Qwq.QkvDim, gateUp = 2L * Qwq.IntermediateSize;
        // 4096-row chunks: bf16 [4096, width], half of fp32's 117 MB and 906 MB
        Assert.That(Bytes(Qwq, 4096, nameof(Workspace.Qkv)), Is.EqualTo(2 * 4096 * qkv));
        Assert.That(Bytes(Qwq, 4096, nameof(Workspace.GateUp)), Is.EqualTo(2 * 4096 * gateUp));
        // up to 128 rows a step is a decode batch: fp32 for every row
        Assert.That(Bytes(Qwq, 128, nameof(Workspace.Qkv)), Is.EqualTo(4 * 128 * qkv));
        Assert.That(Bytes(Qwq, 100, nameof(Workspace.Qkv)), Is.EqualTo(4 * 100 * qkv));
        Assert.That(Bytes(Qwq, 100, nameof(Workspace.GateUp), logitsWidth: 1000), Is.EqualTo(4 * 100 * gateUp));
        // 200 rows: fp32 for a 128-row decode batch is larger than bf16 for 200 rows
        Assert.That(Bytes(Qwq, 200, nameof(Workspace.Qkv)), Is.EqualTo(4 * 128 * qkv));
        Assert.That(Bytes(Qwq, 300, nameof(Workspace.Qkv)), Is.EqualTo(2 * 300 * qkv));
    }

    [Test]
    public void GateUpHoldsTheDecodeTunersLmHeadOutput()
    {
        // 512-row chunks: bf16 gate_up [512, 55296] is 57 MB, the tuner's lm_head output fp32 [128, 152064] 78 MB
        Assert.That(Bytes(Qwq, 512, nameof(Workspace.GateUp)), Is.EqualTo(4L * 128 * Qwq.VocabSize));
        // with tensor parallel the lm_head output is this GPU's share of the vocabulary
        Assert.That(Bytes(Qwq, 512, nameof(Workspace.GateUp), logitsWidth: Qwq.VocabSize / 8),
            Is.EqualTo(2L * 512 * 2 * Qwq.IntermediateSize));
        // a small model whose vocabulary is far wider than its MLP
        ModelConfig tiny = Qwq with { HiddenSize = 64, IntermediateSize = 96, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16, VocabSize = 5000 };
        Assert.That(Bytes(tiny, 4096, nameof(Workspace.GateUp)), Is.EqualTo(4L * 128 * 5000));
    }

    [Test]
    public void WorkspaceShrinksByHalfOfTheFp32Products()
    {
        // against what fp32 at every row took before (session 23): qkv and gate_up, 4096 rows
        long fp32 = 4L * 4096 * (Qwq.QkvDim + 2L * Qwq.IntermediateSize);
        long now = Bytes(Qwq, 4096, nameof(Workspace.Qkv)) + Bytes(Qwq, 4096, nameof(Workspace.GateUp));
        Assert.That(fp32 - now, Is.EqualTo(fp32 / 2));
        TestContext.Out.WriteLine($"qkv + gate_up at 4096 rows: {now / 1e6:F0} MB (fp32: {fp32 / 1e6:F0} MB)");
    }
}
