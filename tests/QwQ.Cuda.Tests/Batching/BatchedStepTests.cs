using QwQ.Cuda.Batching;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using static QwQ.Cuda.Tests.Batching.BatchingFixtures;

namespace QwQ.Cuda.Tests.Batching;

/// <summary>
/// IModelBackend.Step on the CPU reference: rows of many sequences in one pass over one paged pool must give each
/// sequence exactly what it gets alone, and fork / prefix reuse must share blocks without changing any result.
/// </summary>
public class BatchedStepTests
{
    private const double Tolerance = 1e-5;

    [Test]
    public void MixedPrefillChunksAndDecodeRowsEqualEachSequenceAlone()
    {
        using var batched = Backend();
        using var alone = Backend();
        int[] promptLengths = [3, 70, 129, 17, 64];
        int[][] streams = [.. promptLengths.Select((n, i) => Tokens(n + 12, seed: 100 + i))];
        var seqs = streams.Select(_ => batched.CreateSequence()).ToArray();
        var refs = streams.Select(_ => alone.CreateSequence()).ToArray();

        // Scripted first steps: prefill chunks of different lengths next to decode rows, at different context lengths.
        var script = new List<(int Seq, int Count)[]>
        {
            new[] { (0, 3), (1, 40), (2, 64), (4, 64) },
            new[] { (0, 1), (1, 30), (2, 65), (3, 17), (4, 1) },
            new[] { (0, 1), (1, 1), (2, 1), (3, 1), (4, 1) },
            new[] { (2, 1), (0, 5), (4, 7), (3, 1) },
        };
        var rng = new Random(5);
        while (true)
        {
            var step = script.Count > 0 ? script[0] : RandomStep();
            if (script.Count > 0) script.RemoveAt(0);
            if (step.Length == 0) break;
            var items = step.Select(x => new SequenceChunk(seqs[x.Seq], streams[x.Seq].AsMemory(seqs[x.Seq].Length, x.Count))).ToArray();
            batched.Step(items);
            foreach (var (s, n) in step)
            {
                refs[s].Append(streams[s].AsSpan(refs[s].Length, n));
                Assert.That(RelErr(Logits(seqs[s]), Logits(refs[s])), Is.LessThan(Tolerance), $"sequence {s} at {seqs[s].Length}");
            }
        }

        var model = CpuModel();
        int vocab = batched.Config.VocabSize;
        for (int s = 0; s < streams.Length; s++)
        {
            Assert.That(seqs[s].Tokens, Is.EqualTo(streams[s]));
            var full = model.Forward(streams[s]);
            Assert.That(RelErr(Logits(seqs[s]), full.AsSpan((streams[s].Length - 1) * vocab, vocab)), Is.LessThan(Tolerance),
                $"sequence {s} against a full recompute");
        }
        Assert.That(RelErr(Logits(seqs[0]), Logits(seqs[1])), Is.GreaterThan(1e-2), "different sequences must differ");

        (int Seq, int Count)[] RandomStep()
        {
            var open = Enumerable.Range(0, streams.Length).Where(s => seqs[s].Length < streams[s].Length).ToArray();
            if (open.Length == 0) return [];
            var chosen = open.Where(_ => rng.Next(3) > 0).ToArray();
            if (chosen.Length == 0) chosen = [open[0]];
            // A decode row or a short chunk each, never past the stream's end.
            return [.. chosen.Select(s => (s, Math.Min(streams[s].Length - seqs[s].Length, rng.Next(2) == 0 ? 1 : rng.Next(2, 9))))];
        }
    }

    [Test]
    public void RandomInterleavingOfAppendStepAndSampleEqualsEachAlone()
    {
        using var batched = Backend();
        const int count = 4;
        var rng = new Random(17);
        var seqs = Enumerable.Range(0, count).Select(_ => batched.CreateSequence()).ToArray();
        var logs = Enumerable.Range(0, count).Select(_ => new List<(int[] Appended, int? Sampled, float[] Logits)>()).ToArray();
        var options = Enumerable.Range(0, count).Select(i => new SamplingOptions
            { Temperature = 0.9f, TopK = 40, PresencePenalty = 0.5f, Seed = (ulong)(1000 + i) }).ToArray();
        var pending = new int?[count]; // a sampled token not yet appended
        var sampled = new long[count];
        foreach (var s in seqs) s.ResetPenalties();

        for (int op = 0; op < 160; op++)
        {
            int s = rng.Next(count);
            int kind = seqs[s].Length == 0 || pending[s] is not null ? rng.Next(2) : 2 + rng.Next(2);
            if (kind == 0 || kind == 3)
            {
                // Append on its own: the sampled token if there is one, else a random chunk.
                int[] tokens = pending[s] is int p ? [p] : Tokens(1 + rng.Next(12), seed: 7000 + op);
                if (seqs[s].Length + tokens.Length > seqs[s].Capacity) continue;
                seqs[s].Append(tokens);
                pending[s] = null;
                logs[s].Add((tokens, null, Logits(seqs[s])));
            }
            else if (kind == 1)
            {
                // One Step over several sequences at once.
                var chosen = Enumerable.Range(0, count).Where(i => i == s || rng.Next(2) == 0).ToArray();
                var chunks = chosen.Select(i => pending[i] is int p ? new[] { p } : Tokens(1 + rng.Next(8), seed: 9000 + op * count + i)).ToArray();
                if (chosen.Select((i, j) => seqs[i].Length + chunks[j].Length > seqs[i].Capacity).Any(x => x)) continue;
                batched.Step(chosen.Select((i, j) => new SequenceChunk(seqs[i], chunks[j])).ToArray());
                for (int j = 0; j < chosen.Length; j++)
                {
                    pending[chosen[j]] = null;
                    logs[chosen[j]].Add((chunks[j], null, Logits(seqs[chosen[j]])));
                }
            }
            else
            {
                int t = seqs[s].Sample(options[s], sampled[s]++);
                pending[s] = t;
                logs[s].Add(([], t, []));
            }
        }

        using var alone = Backend();
        for (int s = 0; s < count; s++)
        {
            Assert.That(logs[s].Count(e => e.Sampled is not null), Is.GreaterThan(2), $"sequence {s} must have sampled");
            using var seq = alone.CreateSequence();
            seq.ResetPenalties();
            long step = 0;
            foreach (var (appended, token, logits) in logs[s])
            {
                if (token is int t)
                {
                    Assert.That(seq.Sample(options[s], step++), Is.EqualTo(t), $"sequence {s}, sample {step}");
                    continue;
                }
                seq.Append(appended);
                Assert.That(RelErr(logits, Logits(seq)), Is.LessThan(Tolerance), $"sequence {s} at {seq.Length}");
            }
            Assert.That(seqs[s].Tokens, Is.EqualTo(seq.Tokens));
        }
    }

    [Test]
    public void ForkSharesBlocksAndDivergesByCopyOnWrite()
    {
        using var backend = Backend();
        var pool = backend.KvPool;
        int[] prompt = Tokens(100, seed: 21);
        using var a = backend.CreateSequence();
        a.ResetPenalties();
        a.Append(prompt);
        Assert.That(pool.UsedBlocks, Is.EqualTo(2));

        // The fork copies the penalty counts: with the top token recorded and a huge presence penalty, both avoid it.
        var top = QwQ.Cuda.Model.Reference.CpuOps.ArgMax(Logits(a));
        a.RecordForPenalties([top]);
        using var b = a.Fork();
        Assert.That(pool.UsedBlocks, Is.EqualTo(2), "a fork allocates nothing");
        Assert.That(b.Tokens, Is.EqualTo(prompt));
        Assert.That(Logits(b), Is.EqualTo(Logits(a)));
        var penalised = SamplingOptions.Greedy with { PresencePenalty = 1000f };
        int fromFork = b.Sample(penalised, 0);
        Assert.That(fromFork, Is.Not.EqualTo(top));
        Assert.That(a.Sample(penalised, 0), Is.EqualTo(fromFork));

        int[] x = Tokens(3, seed: 22), y = Tokens(1, seed: 23);
        a.Append(x);
        Assert.That(pool.UsedBlocks, Is.EqualTo(3), "a's write copied the shared partial block");
        b.Append(y);
        Assert.That(pool.UsedBlocks, Is.EqualTo(3), "b now owns the original partial block alone");

        using var alone = Backend();
        AssertSameAsAlone(alone, a, [.. prompt, .. x]);
        AssertSameAsAlone(alone, b, [.. prompt, .. y]);

        // b grows past the shared full block and stays right after a is gone.
        a.Dispose();
        Assert.That(pool.UsedBlocks, Is.EqualTo(2));
        int[] more = Tokens(40, seed: 24);
        b.Append(more);
        AssertSameAsAlone(alone, b, [.. prompt, .. y, .. more]);
    }

    [Test]
    public void SamePromptTwiceReusesTheCachedFullBlocks()
    {
        using var backend = Backend();
        var pool = backend.KvPool;
        int[] prompt = Tokens(130, seed: 31);
        using var first = backend.CreateSequence();
        first.Append(prompt);
        Assert.That(pool.UsedBlocks, Is.EqualTo(3));

        using var second = backend.CreateSequence();
        Assert.That(second.AttachCachedPrefix(prompt), Is.EqualTo(128));
        Assert.That((second.Length, pool.UsedBlocks), Is.EqualTo((128, 3)), "two full blocks shared");
        Assert.Throws<InvalidOperationException>(() => second.Sample(SamplingOptions.Greedy, 0), "no logits until the rest is appended");
        second.Append(prompt.AsSpan(128));
        Assert.That(pool.UsedBlocks, Is.EqualTo(4));
        Assert.That(second.Tokens, Is.EqualTo(prompt));
        Assert.That(RelErr(Logits(second), Logits(first)), Is.LessThan(Tolerance));

        // Diverge: both continue differently, each equal to a run of its own text.
        int[] x = Tokens(70, seed: 32), y = Tokens(2, seed: 33);
        first.Append(x);
        second.Append(y);
        using var alone = Backend();
        AssertSameAsAlone(alone, first, [.. prompt, .. x]);
        AssertSameAsAlone(alone, second, [.. prompt, .. y]);
    }

    [Test]
    public void PoolExhaustionThrowsBeforeAnythingRuns()
    {
        using var backend = Backend(kvPoolPositions: 128);
        using var s1 = backend.CreateSequence();
        using var s2 = backend.CreateSequence();
        var e = Assert.Throws<KvPoolExhaustedException>(() =>
            backend.Step([new(s1, Tokens(100, 41)), new(s2, Tokens(100, 42))]))!;
        Assert.That(e.Message, Does.Contain("needs 256 more positions").And.Contain("128 of its 128 positions are free"));
        Assert.That((s1.Length, s2.Length, backend.KvPool.FreeBlocks), Is.EqualTo((0, 0, 2)));
        Assert.That(s1.Tokens, Is.Empty);

        backend.Step([new(s1, Tokens(100, 41))]);
        Assert.That((s1.Length, backend.KvPool.FreeBlocks), Is.EqualTo((100, 0)));
        Assert.Throws<KvPoolExhaustedException>(() => s2.Append([1]));
        s1.Dispose();
        s2.Append([1]);
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(1));
    }

    [Test]
    public void StepRejectsBadItemsAndChangesNothing()
    {
        using var backend = Backend();
        using var other = Backend();
        using var s = backend.CreateSequence();
        using var foreign = other.CreateSequence();
        Assert.Throws<ArgumentException>(() => backend.Step([new(s, new[] { 1 }), new(s, new[] { 2 })]));
        Assert.Throws<ArgumentException>(() => backend.Step([new(s, new[] { 1 }), new(foreign, new[] { 2 })]));
        Assert.Throws<OptionException>(() => backend.Step([new(s, new[] { 1 }), new(backend.CreateSequence(4), new[] { 1, 2, 3, 4, 5 })]));
        Assert.Throws<OptionException>(() => backend.Step([new(s, new[] { 256 })]));
        Assert.Throws<ArgumentException>(() => backend.Step([]));
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        Assert.Throws<OperationCanceledException>(() => backend.Step([new(s, new[] { 1 })], cts.Token));
        Assert.That((s.Length, backend.KvPool.UsedBlocks), Is.EqualTo((0, 0)));
    }

    [Test]
    public void CreatingASequenceAllocatesNoKv()
    {
        using var backend = Backend(kvPoolPositions: 64);
        var seqs = Enumerable.Range(0, 10).Select(_ => backend.CreateSequence()).ToList();
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(0));
        seqs[3].Append([1, 2]);
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(1));
        seqs[3].Truncate(0);
        Assert.That(backend.KvPool.UsedBlocks, Is.EqualTo(0));
        seqs.ForEach(s => s.Dispose());
    }

    private static void AssertSameAsAlone(IModelBackend alone, ISequence seq, int[] text)
    {
        using var reference = alone.CreateSequence();
        reference.Append(text);
        Assert.That(seq.Tokens, Is.EqualTo(text));
        Assert.That(RelErr(Logits(seq), Logits(reference)), Is.LessThan(Tolerance), $"at {text.Length} tokens");
    }
}
