using QwQ.Cuda.Config;
using QwQ.Cuda.Engine;
using QwQ.Cuda.Inference;
using QwQ.Cuda.Sampling;
using QwQ.Cuda.Tests.Cli;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Tests.Generation;

/// <summary>
/// Models that replay scripted text. Outside Server/ because the device build leaves that folder out and the
/// chat-client tests need them too.
/// </summary>
internal static class ScriptedModels
{
    /// <summary>
    /// tiny-chat whose every sequence "samples" <paramref name="answer"/> (then &lt;|im_end|&gt;) while the real CPU forward
    /// pass runs: output the random weights would never produce, e.g. a tool call.
    /// </summary>
    public static QwqModel TinyChat(string answer)
    {
        string dir = TinyChatFixtureTests.Dir;
        var tokenizer = QwenTokenizer.Load(dir);
        var config = ModelConfig.Load(Path.Combine(dir, "config.json"));
        int[] script = [.. tokenizer.Encode(answer), tokenizer.ImEndId];
        var backend = new ScriptedSamplingBackend(CpuReferenceBackend.Load(config, dir, new EngineOptions(), validVocab: tokenizer.VocabSize), script);
        return QwqModel.Create(backend, tokenizer, GenerationConfig.Load(Path.Combine(dir, "generation_config.json")));
    }

    private sealed class ScriptedSamplingBackend(IModelBackend inner, int[] script) : IModelBackend
    {
        public ModelConfig Config => inner.Config;
        public string DeviceDescription => inner.DeviceDescription;
        public int MaxContext => inner.MaxContext;
        public QwQ.Cuda.Batching.KvBlockPool KvPool => inner.KvPool;
        public ISequence CreateSequence(int? maxContext = null) => new Sequence(inner.CreateSequence(maxContext), script);
        public void Step(ReadOnlySpan<SequenceChunk> items, CancellationToken ct = default)
        {
            foreach (var item in items) item.Sequence.Append(item.Tokens.Span, ct);
        }
        public void Sample(ReadOnlySpan<SampleRequest> requests, Span<int> tokens)
        {
            for (int i = 0; i < requests.Length; i++) tokens[i] = requests[i].Sequence.Sample(requests[i].Options, requests[i].Step);
        }
        public void Dispose() => inner.Dispose();

        private sealed class Sequence(ISequence inner, int[] script) : ISequence
        {
            private int _next;
            public int Length => inner.Length;
            public int Capacity => inner.Capacity;
            public IReadOnlyList<int> Tokens => inner.Tokens;
            public void Append(ReadOnlySpan<int> tokens, CancellationToken cancellationToken = default) => inner.Append(tokens, cancellationToken);
            public void Truncate(int length) => inner.Truncate(length);
            public bool RecomputesAt(int length) => inner.RecomputesAt(length);
            public int AttachCachedPrefix(ReadOnlySpan<int> tokens) => inner.AttachCachedPrefix(tokens);
            public ISequence Fork() => new Sequence(inner.Fork(), script) { _next = _next };
            public void ResetPenalties() => inner.ResetPenalties();
            public void RecordForPenalties(ReadOnlySpan<int> tokens) => inner.RecordForPenalties(tokens);
            public int Sample(SamplingOptions options, long step) => script[Math.Min(_next++, script.Length - 1)];
            public void CopyLastLogits(Span<float> destination) => inner.CopyLastLogits(destination);
            public void Dispose() => inner.Dispose();
        }
    }
}
