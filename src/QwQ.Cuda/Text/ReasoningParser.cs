using System.Text;
using System.Text.Json;

namespace QwQ.Cuda.Text;

/// <summary>What one <see cref="ReasoningParser.Push"/> or <see cref="ReasoningParser.Flush"/> produced.</summary>
/// <param name="Reasoning">New text of the thinking part.</param>
/// <param name="Answer">New text of the answer part (outside tool-call blocks).</param>
/// <param name="ToolCalls">Tool calls completed by this delta.</param>
public sealed record ParsedDelta(string Reasoning, string Answer, IReadOnlyList<ToolCall> ToolCalls)
{
    public static ParsedDelta Empty { get; } = new("", "", []);
    public bool IsEmpty => Reasoning.Length == 0 && Answer.Length == 0 && ToolCalls.Count == 0;
}

/// <summary>
/// Splits QwQ's streamed output into reasoning, answer and tool calls. QwQ's prompt ends with
/// <c>&lt;think&gt;\n</c>, so generation starts inside the reasoning (<c>startInReasoning</c>, default true);
/// everything up to <c>&lt;/think&gt;</c> is reasoning. In the answer, leading newlines are dropped (as the
/// chat template does for history) and <c>&lt;tool_call&gt;{"name": ..., "arguments": {...}}&lt;/tool_call&gt;</c>
/// blocks become <see cref="ToolCall"/>s; a block whose JSON is not a call is kept as answer text.
/// Tags split across deltas are handled: a suffix that could start a tag is held back until it is decided.
/// If the output starts (after whitespace) with <c>&lt;think&gt;</c> while not in reasoning, reasoning begins there.
/// Not thread-safe.
/// </summary>
public sealed class ReasoningParser
{
    private const string ThinkOpen = "<think>";
    private const string ThinkClose = "</think>";
    private const string CallOpen = "<tool_call>";
    private const string CallClose = "</tool_call>";

    private enum State { Start, Reasoning, AnswerStart, Answer, ToolCall }

    private State _state;
    private readonly bool _parseToolCalls;
    private readonly StringBuilder _buffer = new();   // undecided text
    private readonly StringBuilder _reasoning = new();
    private readonly StringBuilder _answer = new();
    private readonly StringBuilder _call = new();
    private readonly List<ToolCall> _toolCalls = [];

    /// <param name="startInReasoning">Generation starts inside the thinking part (QwQ's prompt ends with <c>&lt;think&gt;\n</c>).</param>
    /// <param name="parseToolCalls">Turn <c>&lt;tool_call&gt;</c> blocks into <see cref="ToolCalls"/>; false keeps them as answer text
    /// (no tools were offered, so there is nobody to report a call to).</param>
    public ReasoningParser(bool startInReasoning = true, bool parseToolCalls = true)
    {
        _state = startInReasoning ? State.Reasoning : State.Start;
        _parseToolCalls = parseToolCalls;
    }

    /// <summary>All reasoning so far (without the think tags).</summary>
    public string Reasoning => _reasoning.ToString();
    /// <summary>All answer text so far (tool-call blocks removed).</summary>
    public string Answer => _answer.ToString();
    public IReadOnlyList<ToolCall> ToolCalls => _toolCalls;
    /// <summary>True while the parser is inside the thinking part.</summary>
    public bool InReasoning => _state == State.Reasoning;
    /// <summary>True once <c>&lt;/think&gt;</c> has been seen.</summary>
    public bool ReasoningDone { get; private set; }

    public ParsedDelta Push(string delta)
    {
        if (string.IsNullOrEmpty(delta)) return ParsedDelta.Empty;
        _buffer.Append(delta);
        return Process(final: false);
    }

    /// <summary>Ends the stream: emits anything held back (an unfinished tool call becomes answer text).</summary>
    public ParsedDelta Flush() => Process(final: true);

    private ParsedDelta Process(bool final)
    {
        var reasoning = new StringBuilder();
        var answer = new StringBuilder();
        var calls = new List<ToolCall>();

        while (true)
        {
            string buf = _buffer.ToString();
            if (buf.Length == 0) break;
            switch (_state)
            {
                case State.Start:
                {
                    string trimmed = buf.TrimStart();
                    if (trimmed.Length == 0 && !final) goto done; // only whitespace so far
                    if (trimmed.StartsWith(ThinkOpen, StringComparison.Ordinal))
                    {
                        Consume(buf.Length - trimmed.Length + ThinkOpen.Length);
                        _state = State.Reasoning;
                        continue;
                    }
                    if (!final && ThinkOpen.StartsWith(trimmed, StringComparison.Ordinal)) goto done;
                    _state = State.AnswerStart;
                    continue;
                }
                case State.Reasoning:
                {
                    int at = buf.IndexOf(ThinkClose, StringComparison.Ordinal);
                    if (at >= 0)
                    {
                        reasoning.Append(buf, 0, at);
                        Consume(at + ThinkClose.Length);
                        _state = State.AnswerStart;
                        ReasoningDone = true;
                        continue;
                    }
                    int keep = final ? 0 : PartialSuffix(buf, ThinkClose);
                    reasoning.Append(buf, 0, buf.Length - keep);
                    Consume(buf.Length - keep);
                    goto done;
                }
                case State.AnswerStart:
                {
                    int n = 0;
                    while (n < buf.Length && buf[n] == '\n') n++;
                    Consume(n);
                    if (n == buf.Length) goto done;
                    _state = State.Answer;
                    continue;
                }
                case State.Answer:
                {
                    if (!_parseToolCalls)
                    {
                        answer.Append(buf);
                        _buffer.Clear();
                        goto done;
                    }
                    int at = buf.IndexOf(CallOpen, StringComparison.Ordinal);
                    if (at >= 0)
                    {
                        answer.Append(buf, 0, at);
                        Consume(at + CallOpen.Length);
                        _call.Clear();
                        _state = State.ToolCall;
                        continue;
                    }
                    int keep = final ? 0 : PartialSuffix(buf, CallOpen);
                    answer.Append(buf, 0, buf.Length - keep);
                    Consume(buf.Length - keep);
                    goto done;
                }
                case State.ToolCall:
                {
                    int at = buf.IndexOf(CallClose, StringComparison.Ordinal);
                    if (at >= 0)
                    {
                        _call.Append(buf, 0, at);
                        Consume(at + CallClose.Length);
                        var call = TryParseCall(_call.ToString());
                        if (call is not null) calls.Add(call);
                        else answer.Append(CallOpen).Append(_call).Append(CallClose);
                        _call.Clear();
                        _state = State.Answer;
                        continue;
                    }
                    if (final)
                    {
                        answer.Append(CallOpen).Append(_call).Append(buf);
                        _call.Clear();
                        _buffer.Clear();
                        _state = State.Answer;
                        goto done;
                    }
                    int keep = PartialSuffix(buf, CallClose);
                    _call.Append(buf, 0, buf.Length - keep);
                    Consume(buf.Length - keep);
                    goto done;
                }
            }
        }
        done:
        if (final && _buffer.Length > 0)
        {
            // Held-back text that never became a tag.
            if (_state == State.Reasoning) reasoning.Append(_buffer);
            else answer.Append(_buffer);
            _buffer.Clear();
        }
        if (final && _state == State.ToolCall && _call.Length > 0)
        {
            answer.Append(CallOpen).Append(_call);
            _call.Clear();
            _state = State.Answer;
        }

        _reasoning.Append(reasoning);
        _answer.Append(answer);
        _toolCalls.AddRange(calls);
        if (reasoning.Length == 0 && answer.Length == 0 && calls.Count == 0) return ParsedDelta.Empty;
        return new ParsedDelta(reasoning.ToString(), answer.ToString(), calls);
    }

    private void Consume(int n) => _buffer.Remove(0, n);

    /// <summary>Length of the longest proper suffix of <paramref name="s"/> that is a prefix of <paramref name="tag"/>.</summary>
    private static int PartialSuffix(string s, string tag)
    {
        for (int len = Math.Min(tag.Length - 1, s.Length); len > 0; len--)
            if (string.CompareOrdinal(s, s.Length - len, tag, 0, len) == 0) return len;
        return 0;
    }

    /// <summary>Parses the JSON inside a <c>&lt;tool_call&gt;</c> block: <c>{"name": "...", "arguments": {...}}</c>.
    /// Returns null when it is not such an object. String arguments holding JSON are accepted.</summary>
    public static ToolCall? TryParseCall(string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json.Trim());
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object) return null;
            if (!root.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return null;
            string args = "{}";
            if (root.TryGetProperty("arguments", out var a) || root.TryGetProperty("parameters", out a))
            {
                if (a.ValueKind == JsonValueKind.String)
                {
                    string s = a.GetString()!;
                    try { using var _ = JsonDocument.Parse(s); args = s; }
                    catch (JsonException) { args = a.GetRawText(); }
                }
                else args = a.GetRawText();
            }
            return new ToolCall(name.GetString()!, args);
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
