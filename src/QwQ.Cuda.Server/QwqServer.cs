using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Prometheus;
using QwQ.Cuda.Batching;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Generation;

namespace QwQ.Cuda.Server;

/// <summary>
/// An OpenAI-compatible HTTP server over a <see cref="QwqModel"/> (ASP.NET Core minimal APIs on Kestrel):
/// POST /v1/chat/completions and /v1/completions (whole or as server-sent events), GET /v1/models[/{id}], /health, /metrics.
/// <para>
/// Each request gets its own <see cref="ChatSession"/>, so requests run concurrently as far as the model's backend
/// allows (the batching scheduler interleaves them); a client that disconnects cancels its generation and its session
/// is disposed, which gives its KV blocks back. At most <see cref="ServerOptions.MaxQueue"/> generation requests are
/// admitted at once; more are answered 429 with Retry-After. Shutdown (<see cref="DisposeAsync"/>, or the token given to
/// <see cref="WaitForShutdownAsync"/>) stops running generations: a stream ends with a 503 error event and [DONE], a
/// whole answer is a 503. The model is not owned: dispose it after the server.
/// </para>
/// </summary>
public sealed class QwqServer : IAsyncDisposable
{
    internal static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // An API answer, never embedded in HTML: keep text readable (quotes, <think>) instead of \u-escaping it.
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    private static readonly byte[] DoneEvent = "data: [DONE]\n\n"u8.ToArray();

    private readonly WebApplication _app;
    private readonly QwqModel _model;
    private readonly ServerOptions _options;
    private readonly ServerMetrics _metrics;
    private readonly byte[]? _apiKeyHash;
    private int _admitted;

    private QwqServer(QwqModel model, ServerOptions options)
    {
        _model = model;
        _options = options;
        // Hashes compared, not keys: FixedTimeEquals is constant-time only for equal lengths, and a hash hides the key's.
        _apiKeyHash = options.ApiKey is null ? null : SHA256.HashData(Encoding.UTF8.GetBytes(options.ApiKey));
        _metrics = new ServerMetrics(model.Backend, () => Volatile.Read(ref _admitted), () => model.Scheduler.Counters);

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [] });
        builder.Logging.ClearProviders(); // the CLI says what matters; errors go to clients as error objects
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            if (options.Host == "localhost") k.ListenLocalhost(options.Port);
            else k.Listen(IPAddress.Parse(options.Host), options.Port);
        });
        _app = builder.Build();
        // Routing answers a wrong path or method with an empty body; OpenAI clients show only the error object's message.
        _app.UseStatusCodePages(context => WrongUrlAsync(context.HttpContext));
        _app.Use(AuthorizeAsync);
        _app.MapPost("/v1/chat/completions", (HttpContext http) => GenerateAsync(http, "chat", PrepareChatAsync));
        _app.MapPost("/v1/completions", (HttpContext http) => GenerateAsync(http, "completions", PrepareCompletionAsync));
        var card = new ModelCard(options.ModelName, Started.ToUnixTimeSeconds(), model.Backend.MaxContext);
        _app.MapGet("/v1/models", (HttpContext http) => WriteJsonAsync(http, 200, new ModelList([card])));
        // OpenAI's models.retrieve(id). {**id}: a served id is often a Hugging Face id or a path, whose slashes come raw or as %2F.
        _app.MapGet("/v1/models/{**id}", (HttpContext http, string? id) =>
        {
            id = Uri.UnescapeDataString(id ?? "");
            return id == options.ModelName
                ? WriteJsonAsync(http, 200, card)
                : WriteErrorAsync(http, new ApiException(404, $"the model '{id}' does not exist: this server serves '{options.ModelName}'",
                    "model", code: "model_not_found"));
        });
        _app.MapGet("/health", (HttpContext http) => WriteJsonAsync(http, 200, new { status = "ok" }));
        _app.MapGet("/metrics", async (HttpContext http) =>
        {
            http.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await _metrics.Registry.CollectAndExportAsTextAsync(http.Response.Body, http.RequestAborted);
        });
    }

    private DateTimeOffset Started { get; } = DateTimeOffset.UtcNow;

    /// <summary>Where the server listens, e.g. http://127.0.0.1:8000 (the real port when <see cref="ServerOptions.Port"/> is 0).</summary>
    public Uri BaseAddress { get; private set; } = null!;

    /// <summary>Generation requests admitted and not yet finished.</summary>
    public int Admitted => Volatile.Read(ref _admitted);

    /// <summary>Binds and starts serving; returns once the port is open.</summary>
    /// <exception cref="OptionException">An option is invalid.</exception>
    /// <exception cref="QwqException">The address cannot be bound (e.g. the port is taken).</exception>
    public static async Task<QwqServer> StartAsync(QwqModel model, ServerOptions options, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var server = new QwqServer(model, options);
        try
        {
            await server._app.StartAsync(cancellationToken);
        }
        catch (IOException e)
        {
            await server._app.DisposeAsync();
            throw new QwqException($"cannot listen on {options.Host}:{options.Port}: {e.Message} (pick another --port, or stop the program using it)", e);
        }
        string address = server._app.Services.GetRequiredService<IServer>().Features.GetRequiredFeature<IServerAddressesFeature>().Addresses.First();
        server.BaseAddress = new Uri(address.Replace("[::1]", "127.0.0.1", StringComparison.Ordinal));
        return server;
    }

    /// <summary>Completes when the server stops (after <paramref name="cancellationToken"/> fires, it stops gracefully).</summary>
    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => _app.WaitForShutdownAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }

    // ---- pipeline --------------------------------------------------------------------------------------------------

    private async Task AuthorizeAsync(HttpContext http, RequestDelegate next)
    {
        if (_apiKeyHash is not null && http.Request.Path.StartsWithSegments("/v1") && !HasKey(http.Request))
        {
            http.Response.Headers.WWWAuthenticate = "Bearer";
            await WriteErrorAsync(http, new ApiException(401,
                "missing or wrong API key: send the key given to qwq serve --api-key as 'Authorization: Bearer KEY'",
                type: "authentication_error"));
            return;
        }
        await next(http);
    }

    private static Task WrongUrlAsync(HttpContext http)
    {
        var request = http.Request;
        string what = $"{request.Method} {request.Path}";
        string? message = http.Response.StatusCode switch
        {
            StatusCodes.Status404NotFound => $"no endpoint {what}: this server serves POST /v1/chat/completions, POST /v1/completions, " +
                                             "GET /v1/models, /health and /metrics (an OpenAI client's base URL ends in /v1)",
            StatusCodes.Status405MethodNotAllowed => $"{what} is not allowed: use {http.Response.Headers.Allow}",
            _ => null,
        };
        return message is null ? Task.CompletedTask : WriteErrorAsync(http, new ApiException(http.Response.StatusCode, message));
    }

    private bool HasKey(HttpRequest request)
    {
        string header = request.Headers.Authorization.ToString();
        const string scheme = "Bearer ";
        if (!header.StartsWith(scheme, StringComparison.OrdinalIgnoreCase)) return false;
        byte[] given = SHA256.HashData(Encoding.UTF8.GetBytes(header[scheme.Length..].Trim()));
        return CryptographicOperations.FixedTimeEquals(given, _apiKeyHash);
    }

    /// <summary>One generation request: what to run, how to answer, which field a prompt error names, the prompt's length in tokens.</summary>
    private sealed record Job(
        bool Stream,
        bool IncludeUsage,
        ResponseFormat Format,
        Func<ChatSession, CancellationToken, IAsyncEnumerable<GenerationUpdate>> Run,
        string PromptField,
        Func<ChatSession, int> PromptLength);

    private async Task<Job> PrepareChatAsync(HttpContext http)
    {
        var request = await ReadAsync<ChatCompletionRequest>(http);
        var messages = request.ToTemplateMessages();
        var tools = request.OfferedTools();
        Chat.QwqChatClient.PrependInstructions(messages, request.RequiredToolInstruction());
        // Without tools offered no call is reported, so a <tool_call> block the model writes stays in the answer's text.
        // parallel_tool_calls: false: at most one call, so the generation ends at the first one's </tool_call>.
        var options = request.ToGenerationOptions(_model) with
        {
            ParseToolCalls = tools is not null,
            StopAfterFirstToolCall = tools is not null && request.ParallelToolCalls == false,
        };
        var format = new ChatFormat("chatcmpl-" + NewId(), request.Model ?? _options.ModelName, reportToolCalls: tools is not null);
        return new Job(request.Stream, request.IncludeUsage, format,
            (session, ct) => session.StreamAsync(messages, options, tools, ct), "messages", session => session.Render(messages, tools).Length);
    }

    private async Task<Job> PrepareCompletionAsync(HttpContext http)
    {
        var request = await ReadAsync<CompletionRequest>(http);
        int[] prompt = request.PromptTokens(_model);
        var options = request.ToGenerationOptions(_model);
        var format = new CompletionFormat("cmpl-" + NewId(), request.Model ?? _options.ModelName);
        return new Job(request.Stream, request.IncludeUsage, format,
            (session, ct) => session.StreamRawTokensAsync(prompt, options, ct), "prompt", _ => prompt.Length);
    }

    private async Task GenerateAsync(HttpContext http, string endpoint, Func<HttpContext, Task<Job>> prepare)
    {
        if (Interlocked.Increment(ref _admitted) > _options.MaxQueue)
        {
            Interlocked.Decrement(ref _admitted);
            _metrics.Request(endpoint, "rejected");
            http.Response.Headers.RetryAfter = _options.RetryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await WriteErrorAsync(http, new ApiException(429,
                $"the server is at its limit of {_options.MaxQueue} requests (--max-queue); retry after {_options.RetryAfterSeconds} s",
                type: "rate_limit_error"));
            return;
        }
        var aborted = http.RequestAborted;
        // Shutdown stops generations too: Kestrel's graceful stop waits for running requests (up to the host's
        // shutdown timeout, then it cuts their connections), and a long generation would hold it that long.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(aborted, _app.Lifetime.ApplicationStopping);
        try
        {
            var job = await prepare(http);
            using var session = _model.CreateSession(_options.MaxContext);
            await using var updates = job.Run(session, stop.Token).GetAsyncEnumerator(stop.Token);
            bool more;
            try
            {
                more = await updates.MoveNextAsync(); // checks the prompt (length) before anything is sent
            }
            catch (OptionException e)
            {
                // OpenAI's code for a prompt over the context, which clients test for (e.g. to trim the conversation).
                // Measured again on this error path only, so that no other option error is labelled with it.
                string? code = job.PromptLength(session) > session.Capacity ? "context_length_exceeded" : null;
                throw new ApiException(400, e.Message, job.PromptField, code: code);
            }
            if (job.Stream) await StreamAsync(http, job, updates, more);
            else await AnswerAsync(http, job, updates, more);
            _metrics.Request(endpoint, aborted.IsCancellationRequested ? "cancelled" : "ok");
        }
        catch (Exception) when (aborted.IsCancellationRequested)
        {
            // The client went away: its generation stopped with the token, disposing the session gave back its KV blocks.
            _metrics.Request(endpoint, "cancelled");
        }
        catch (ApiException e)
        {
            _metrics.Request(endpoint, e.StatusCode >= 500 ? "error" : "invalid");
            await WriteErrorAsync(http, e);
        }
        catch (KvPoolExhaustedException e)
        {
            _metrics.Request(endpoint, "error");
            http.Response.Headers.RetryAfter = _options.RetryAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
            await WriteErrorAsync(http, new ApiException(503, $"the KV cache is full ({e.Message}); retry later", type: "server_error"));
        }
        catch (Exception e)
        {
            _metrics.Request(endpoint, "error");
            await WriteErrorAsync(http, new ApiException(500, $"internal error: {e.GetType().Name}: {e.Message}", type: "server_error"));
        }
        finally
        {
            Interlocked.Decrement(ref _admitted);
        }
    }

    private async Task AnswerAsync(HttpContext http, Job job, IAsyncEnumerator<GenerationUpdate> updates, bool more)
    {
        GenerationResult? result = null;
        for (; more; more = await updates.MoveNextAsync())
            if (updates.Current.Result is { } r) result = r;
        if (result is null || result.FinishReason == FinishReason.Cancelled)
        {
            if (http.RequestAborted.IsCancellationRequested) return; // the client is gone
            throw ShuttingDown();
        }
        _metrics.Finished(result.Usage.PromptTokens, result.Usage.GeneratedTokens);
        string finish = FinishReasonText(result.FinishReason, result.ToolCalls.Count > 0 && job.Format.ReportsToolCalls);
        await WriteJsonAsync(http, 200, job.Format.Whole(result, finish, UsageOf(result)));
    }

    private async Task StreamAsync(HttpContext http, Job job, IAsyncEnumerator<GenerationUpdate> updates, bool more)
    {
        var response = http.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        http.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        var ct = http.RequestAborted;
        if (job.Format.Start() is { } start) await SendAsync(response, start, ct);
        try
        {
            for (; more; more = await updates.MoveNextAsync())
            {
                var u = updates.Current;
                if (u.Result is { } result)
                {
                    if (result.FinishReason == FinishReason.Cancelled)
                    {
                        if (ct.IsCancellationRequested) return; // the client is gone
                        throw ShuttingDown(); // sent as an error event, then [DONE]: the client sees why the stream ended
                    }
                    _metrics.Finished(result.Usage.PromptTokens, result.Usage.GeneratedTokens);
                    await SendAsync(response, job.Format.Finish(FinishReasonText(result.FinishReason, job.Format.ReportedToolCalls)), ct);
                    if (job.IncludeUsage) await SendAsync(response, job.Format.UsageChunk(UsageOf(result)), ct);
                }
                else if (job.Format.Chunk(u) is { } chunk)
                {
                    await SendAsync(response, chunk, ct);
                }
            }
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            // Headers are out: the error travels as an event, as vLLM sends it.
            var error = e as ApiException ?? new ApiException(500, $"internal error: {e.GetType().Name}: {e.Message}", type: "server_error");
            await SendAsync(response, new ErrorBody(new ErrorDetail(error.Message, error.Type, error.Param, error.Code)), ct);
        }
        await response.Body.WriteAsync(DoneEvent, ct);
        await response.Body.FlushAsync(ct);
    }

    /// <summary>What a request cut short by the server's shutdown answers (503, as a stopping server answers new requests).</summary>
    private static ApiException ShuttingDown() =>
        new(503, "the server is shutting down: the generation was stopped; retry the request once the server is back (or on another)", type: "server_error");

    private static async Task SendAsync(HttpResponse response, object payload, CancellationToken ct)
    {
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(payload, payload.GetType(), Json);
        await response.Body.WriteAsync("data: "u8.ToArray(), ct);
        await response.Body.WriteAsync(json, ct);
        await response.Body.WriteAsync("\n\n"u8.ToArray(), ct);
        await response.Body.FlushAsync(ct);
    }

    private Usage UsageOf(GenerationResult r)
    {
        // Reasoning is what came before </think>; a prompt that opened <think> and an output that never closed it is all reasoning.
        int end = r.TokenIds is IList<int> ids ? ids.IndexOf(_model.Tokenizer.ThinkEndId) : r.TokenIds.ToList().IndexOf(_model.Tokenizer.ThinkEndId);
        int reasoning = r.Reasoning.Length == 0 ? 0 : end >= 0 ? end : r.Usage.GeneratedTokens;
        return Usage.From(r.Usage, reasoning);
    }

    internal static string FinishReasonText(FinishReason reason, bool toolCalls) => reason switch
    {
        FinishReason.MaxTokens or FinishReason.MaxContext => "length",
        _ when toolCalls => "tool_calls",
        _ => "stop",
    };

    private static async Task<T> ReadAsync<T>(HttpContext http) where T : class
    {
        byte[] body;
        try
        {
            using var buffer = new MemoryStream();
            await http.Request.Body.CopyToAsync(buffer, http.RequestAborted);
            body = buffer.ToArray();
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw new ApiException(413, $"the request body is larger than the server's limit of {http.Features.Get<IHttpMaxRequestBodySizeFeature>()?.MaxRequestBodySize} bytes");
        }
        T request;
        try
        {
            request = JsonSerializer.Deserialize<T>(body, Json) ?? throw new ApiException(400, "the request body must be a JSON object");
        }
        catch (JsonException e)
        {
            string? param = e.Path is { Length: > 2 } path ? path.TrimStart('$', '.') : null;
            // e.Message names .NET types; the field and the position are what a client can act on.
            throw new ApiException(400, param is null
                ? $"the request body is not valid JSON (byte {e.BytePositionInLine} of line {e.LineNumber + 1})"
                : $"{param} has the wrong type for this field, or the JSON is malformed there (byte {e.BytePositionInLine} of line {e.LineNumber + 1})", param);
        }
        // A lone surrogate can only be written as a \u escape; bodies without one need no second look.
        if (body.AsSpan().IndexOf("\\u"u8) >= 0)
        {
            using var document = JsonDocument.Parse(body);
            if (LoneSurrogateAt(document.RootElement, "") is { } field)
                throw ApiException.BadField(field, $"{field} is not valid text: it holds a lone UTF-16 surrogate escape (\\ud800 to \\udfff without its pair, e.g. an emoji cut in half)");
        }
        return request;
    }

    /// <summary>
    /// The field of the first string (or property name) that is valid JSON but not text: a lone surrogate escape.
    /// The serializer refuses one in a string field, but fields kept as JsonElement (content, prompt, stop, tools) are
    /// read later, where reading it throws InvalidOperationException, which would be a 500.
    /// </summary>
    private static string? LoneSurrogateAt(JsonElement element, string path)
    {
        switch (element.ValueKind)
        {
            case JsonValueKind.String:
                try
                {
                    element.GetString();
                    return null;
                }
                catch (InvalidOperationException)
                {
                    return path;
                }
            case JsonValueKind.Array:
                int i = 0;
                foreach (var item in element.EnumerateArray())
                    if (LoneSurrogateAt(item, $"{path}[{i++}]") is { } at) return at;
                return null;
            case JsonValueKind.Object:
                foreach (var property in element.EnumerateObject())
                {
                    string name;
                    try
                    {
                        name = property.Name;
                    }
                    catch (InvalidOperationException)
                    {
                        if (path.Length == 0) continue; // not a field of ours: ignored like any unknown field
                        return path;
                    }
                    if (LoneSurrogateAt(property.Value, path.Length == 0 ? name : $"{path}.{name}") is { } at) return at;
                }
                return null;
            default:
                return null;
        }
    }

    private static async Task WriteErrorAsync(HttpContext http, ApiException e)
    {
        if (http.Response.HasStarted) return;
        await WriteJsonAsync(http, e.StatusCode, new ErrorBody(new ErrorDetail(e.Message, e.Type, e.Param, e.Code)));
    }

    private static async Task WriteJsonAsync(HttpContext http, int status, object body)
    {
        http.Response.StatusCode = status;
        http.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(http.Response.Body, body, body.GetType(), Json, http.RequestAborted);
    }

    private static string NewId() => Guid.NewGuid().ToString("N")[..24];
}
