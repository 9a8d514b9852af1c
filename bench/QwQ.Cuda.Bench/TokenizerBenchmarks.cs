using System.Text;
using BenchmarkDotNet.Attributes;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Bench;

/// <summary>
/// Tokenizer throughput on one core. The target is ≥ 5 MB/s of English prose for <see cref="EncodeEnglishProse"/>:
/// it encodes <see cref="ProseBytes"/> (1 MiB of ASCII) per call, so MB/s = 1.048576 / Mean[s].
/// The tokenizer comes from $QWQ_TOKENIZER_DIR, else the qwq-32b preset's files embedded in the library.
/// </summary>
[MemoryDiagnoser]
public class TokenizerBenchmarks
{
    public const int ProseBytes = 1 << 20;

    private QwenTokenizer _tokenizer = null!;
    private string _prose = "";
    private string _mixed = "";
    private int[] _proseIds = [];

    [GlobalSetup]
    public void Setup()
    {
        _tokenizer = QwenTokenizer.Load(FindTokenizerDir());
        _prose = Repeat(Prose, ProseBytes);
        _mixed = Repeat(Mixed, ProseBytes / 4);
        _proseIds = _tokenizer.Encode(_prose);
    }

    [Benchmark(Description = "Encode 1 MiB English prose")]
    public int EncodeEnglishProse() => _tokenizer.Encode(_prose).Length;

    [Benchmark(Description = "Encode 256 KiB-char mixed scripts/emoji/code")]
    public int EncodeMixed() => _tokenizer.Encode(_mixed).Length;

    [Benchmark(Description = "Decode 1 MiB English prose")]
    public int DecodeEnglishProse() => _tokenizer.Decode(_proseIds).Length;

    [Benchmark(Description = "Stream-decode 1 MiB English prose")]
    public int StreamDecodeEnglishProse()
    {
        var detok = new StreamingDetokenizer(_tokenizer);
        int n = 0;
        foreach (int id in _proseIds) n += detok.Push(id).Length;
        return n + detok.Flush().Length;
    }

    private const string Prose =
        "It was a bright cold day in April, and the clocks were striking thirteen. The committee met on Tuesday " +
        "to discuss the budget for the coming year; several members argued that the library's opening hours should " +
        "be extended, while others worried about the cost of heating the old building through another winter. " +
        "Nobody could remember who had first proposed the idea, but everyone agreed it deserved a careful answer. " +
        "Meanwhile, the river kept rising: by Friday evening the lower fields were under water, and the farmers " +
        "who had planted early wondered aloud whether they'd ever see a harvest. \"We'll manage,\" said the mayor. ";

    private const string Mixed =
        "你好，世界！ Привет, мир! مرحبا नमस्ते สวัสดี 👨‍👩‍👧‍👦 👍🏽 café\u0301 " +
        "def f(x):\n    return {\"a\": [1, 2, 3]}\n\\frac{1}{2} <think>x</think> 12345 ";

    private static string Repeat(string unit, int chars)
    {
        var sb = new StringBuilder(chars + unit.Length);
        while (sb.Length < chars) sb.Append(unit);
        return sb.ToString(0, chars);
    }

    private static string FindTokenizerDir()
    {
        string? env = Environment.GetEnvironmentVariable("QWQ_TOKENIZER_DIR");
        return !string.IsNullOrEmpty(env) ? env : QwQ.Cuda.Presets.PresetFiles.Extract("qwq-32b")!;
    }
}
