using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace QwQ.Cuda.Tests.Server;

/// <summary>What a load run saw. Every request ends as completed, rejected (a designed 429) or failed (anything else).</summary>
internal sealed record LoadReport(int Completed, int Rejected, IReadOnlyList<string> Failures, long CompletionTokens,
    double Seconds, double P50Ms, double P99Ms)
{
    public double TokensPerSecond => CompletionTokens / Seconds;

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Completed} completed, {Rejected} rejected (429), {Failures.Count} failed in {Seconds:F1} s; latency p50 {P50Ms:F0} ms, p99 {P99Ms:F0} ms; {CompletionTokens} tokens, {TokensPerSecond:F0} tok/s aggregate");
}

/// <summary>
/// Streaming chat clients that send requests back to back until a deadline, against any OpenAI-compatible server.
/// A request counts as completed only when its stream is well framed: chunks, a finish_reason, a usage chunk, [DONE].
/// </summary>
internal static class LoadGenerator
{
    public static async Task<LoadReport> RunAsync(Uri baseAddress, int clients, TimeSpan duration, int maxTokens, string? apiKey = null)
    {
        using var http = new HttpClient { BaseAddress = baseAddress, Timeout = TimeSpan.FromMinutes(5) };
        if (apiKey is not null) http.DefaultRequestHeaders.Authorization = new("Bearer", apiKey);
        var latencies = new List<double>();
        var failures = new List<string>();
        int rejected = 0;
        long tokens = 0;
        var clock = Stopwatch.StartNew();
        string body = JsonSerializer.Serialize(new
        {
            messages = new[] { new { role = "user", content = "How many r's are in strawberry?" } },
            max_tokens = maxTokens,
            stream = true,
            stream_options = new { include_usage = true },
        });

        async Task Client(int index)
        {
            while (clock.Elapsed < duration)
            {
                long start = Stopwatch.GetTimestamp();
                try
                {
                    using var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
                    using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
                    if (response.StatusCode == HttpStatusCode.TooManyRequests)
                    {
                        Interlocked.Increment(ref rejected);
                        await Task.Delay(50 + index % 7 * 10); // shorter than Retry-After: keeps the queue full on purpose
                        continue;
                    }
                    string text = await response.Content.ReadAsStringAsync();
                    if (response.StatusCode != HttpStatusCode.OK) throw new InvalidOperationException($"HTTP {(int)response.StatusCode}: {text}");
                    int used = CheckStream(text);
                    Interlocked.Add(ref tokens, used);
                    lock (latencies) latencies.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                }
                catch (Exception e)
                {
                    lock (failures) failures.Add($"client {index}: {e.GetType().Name}: {e.Message}");
                }
            }
        }

        await Task.WhenAll(Enumerable.Range(0, clients).Select(i => Task.Run(() => Client(i))));
        double seconds = clock.Elapsed.TotalSeconds;
        latencies.Sort();
        double Percentile(double p) => latencies.Count == 0 ? double.NaN : latencies[Math.Min(latencies.Count - 1, (int)Math.Ceiling(p * latencies.Count) - 1)];
        return new LoadReport(latencies.Count, rejected, failures, tokens, seconds, Percentile(0.50), Percentile(0.99));
    }

    /// <summary>Checks SSE framing; returns the usage chunk's completion_tokens.</summary>
    public static int CheckStream(string text)
    {
        var events = text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries);
        if (events.Length < 3 || events[^1] != "data: [DONE]")
            throw new InvalidOperationException($"stream does not end with data: [DONE]: ...{text[^Math.Min(200, text.Length)..]}");
        bool finished = false;
        int? usage = null;
        foreach (var e in events[..^1])
        {
            if (!e.StartsWith("data: ", StringComparison.Ordinal)) throw new InvalidOperationException($"not an SSE data event: {e}");
            using var doc = JsonDocument.Parse(e["data: ".Length..]);
            var root = doc.RootElement;
            if (root.TryGetProperty("error", out var error)) throw new InvalidOperationException($"error event: {error}");
            if (root.GetProperty("object").GetString() != "chat.completion.chunk") throw new InvalidOperationException($"not a chunk: {e}");
            foreach (var c in root.GetProperty("choices").EnumerateArray())
                if (c.TryGetProperty("finish_reason", out var f) && f.ValueKind == JsonValueKind.String) finished = true;
            if (root.TryGetProperty("usage", out var u)) usage = u.GetProperty("completion_tokens").GetInt32();
        }
        if (!finished) throw new InvalidOperationException("no chunk carried a finish_reason");
        return usage ?? throw new InvalidOperationException("no usage chunk although stream_options.include_usage was set");
    }
}
