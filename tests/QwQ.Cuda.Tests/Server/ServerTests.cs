using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Models;
using QwqServer = QwQ.Cuda.Server.QwqServer;
using ServerOptions = QwQ.Cuda.Server.ServerOptions;
using AI = Microsoft.Extensions.AI;

namespace QwQ.Cuda.Tests.Server;

/// <summary>qwq serve's HTTP API in-process on loopback, with the tiny-chat model on the CPU backend.</summary>
[NonParallelizable]
public class ServerTests
{
    private const string ToolAnswer = "Let me check.\n</think>\n\nI'll look it up.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    private const string WeatherSchema = """{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}""";

    private QwqModel _model = null!;
    private QwqServer _server = null!;
    private QwqModel _scripted = null!;
    private QwqServer _toolServer = null!;
    private HttpClient _http = null!;

    [OneTimeSetUp]
    public async Task Start()
    {
        _model = await ServerFixture.LoadTinyChatAsync();
        _server = await ServerFixture.StartAsync(_model);
        _scripted = ServerFixture.ScriptedTinyChat(ToolAnswer);
        _toolServer = await ServerFixture.StartAsync(_scripted);
        _http = new HttpClient { BaseAddress = _server.BaseAddress };
    }

    [OneTimeTearDown]
    public async Task Stop()
    {
        _http.Dispose();
        await _server.DisposeAsync();
        await _toolServer.DisposeAsync();
        _model.Dispose();
        _scripted.Dispose();
    }

    private static ChatClient OpenAiChat(QwqServer server, string key = "unused") =>
        new("tiny-chat", new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = new Uri(server.BaseAddress, "v1") });

    private static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    private async Task<string> MetricsAsync() => await _http.GetStringAsync("metrics");

    private static double Metric(string text, string name) =>
        text.Split('\n').Where(l => l.StartsWith(name + " ", StringComparison.Ordinal) || l.StartsWith(name + "{", StringComparison.Ordinal))
            .Sum(l => double.Parse(l[(l.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture));

    // ---- the official OpenAI client --------------------------------------------------------------------------------

    [Test]
    public async Task OpenAiClientChats()
    {
        ChatCompletion c = (await OpenAiChat(_server).CompleteChatAsync([new UserChatMessage("Hi")],
            new ChatCompletionOptions { MaxOutputTokenCount = 8, Temperature = 0 })).Value;
        Assert.That(c.FinishReason, Is.AnyOf(ChatFinishReason.Stop, ChatFinishReason.Length));
        Assert.That(c.Usage.OutputTokenCount, Is.InRange(1, 8));
        Assert.That(c.Usage.InputTokenCount, Is.GreaterThan(5));
        // The prompt ends inside <think>, and random weights rarely close it: reasoning is counted up to </think>.
        Assert.That(c.Usage.OutputTokenDetails.ReasoningTokenCount, Is.InRange(0, c.Usage.OutputTokenCount));
        Assert.That(c.Model, Is.EqualTo("tiny-chat"));
    }

    [Test]
    public async Task OpenAiClientStreams()
    {
        int updates = 0;
        ChatFinishReason? finish = null;
        ChatTokenUsage? usage = null;
        await foreach (var u in OpenAiChat(_server).CompleteChatStreamingAsync([new UserChatMessage("Hi")],
                           new ChatCompletionOptions { MaxOutputTokenCount = 6 }))
        {
            updates++;
            finish ??= u.FinishReason;
            usage ??= u.Usage;
        }
        Assert.That(updates, Is.GreaterThanOrEqualTo(2));
        Assert.That(finish, Is.AnyOf(ChatFinishReason.Stop, ChatFinishReason.Length));
        Assert.That(usage, Is.Not.Null, "the client asks for include_usage; the last chunk carries it");
        Assert.That(usage!.OutputTokenCount, Is.InRange(1, 6));
    }

    [Test]
    public async Task OpenAiClientGetsToolCallsAndReasoningIsSeparate()
    {
        var tool = ChatTool.CreateFunctionTool("get_weather", "Current weather in a city", BinaryData.FromString(WeatherSchema));
        ChatCompletion c = (await OpenAiChat(_toolServer).CompleteChatAsync([new UserChatMessage("Weather in Paris?")],
            new ChatCompletionOptions { Tools = { tool } })).Value;
        Assert.That(c.FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
        Assert.That(c.ToolCalls, Has.Count.EqualTo(1));
        Assert.That(c.ToolCalls[0].FunctionName, Is.EqualTo("get_weather"));
        Assert.That(JsonDocument.Parse(c.ToolCalls[0].FunctionArguments).RootElement.GetProperty("city").GetString(), Is.EqualTo("Paris"));
        Assert.That(c.Content.Single().Text, Is.EqualTo("I'll look it up.\n"));
        Assert.That(c.Usage.OutputTokenDetails.ReasoningTokenCount, Is.GreaterThan(0).And.LessThan(c.Usage.OutputTokenCount));
    }

    [Test]
    public async Task ToolChoiceNoneOffersNoToolsAndReportsNoCalls()
    {
        var body = $$$"""{"messages":[{"role":"user","content":"Weather?"}],"tools":[{"type":"function","function":{"name":"get_weather","parameters":{{{WeatherSchema}}}}}],"tool_choice":"none"}""";
        using var http = new HttpClient { BaseAddress = _toolServer.BaseAddress };
        using var r = await http.PostAsync("v1/chat/completions", Json(body));
        var root = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
        var choice = root.GetProperty("choices")[0];
        Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("stop"));
        Assert.That(choice.GetProperty("message").TryGetProperty("tool_calls", out _), Is.False);
        Assert.That(choice.GetProperty("message").GetProperty("reasoning_content").GetString(), Is.EqualTo("Let me check.\n"));
    }

    [TestCase(",\"tool_choice\":\"none\"")]
    [TestCase(null)]
    public async Task WithoutToolsOfferedAToolCallBlockIsAnsweredAsText(string? toolChoice)
    {
        // The block was parsed out of the answer and, not being reported, lost: content was "I'll look it up.\n" alone.
        string tools = toolChoice is null ? "" : $$$""","tools":[{"type":"function","function":{"name":"get_weather","parameters":{{{WeatherSchema}}}}}]{{{toolChoice}}}""";
        string body = $$"""{"messages":[{"role":"user","content":"Weather?"}]{{tools}}""";
        string answer = ToolAnswer[(ToolAnswer.IndexOf("</think>\n\n", StringComparison.Ordinal) + 10)..];
        using var http = new HttpClient { BaseAddress = _toolServer.BaseAddress };

        using (var r = await http.PostAsync("v1/chat/completions", Json(body + "}")))
        {
            var message = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("message");
            Assert.That(message.GetProperty("content").GetString(), Is.EqualTo(answer));
            Assert.That(message.TryGetProperty("tool_calls", out _), Is.False);
        }
        using (var r = await http.PostAsync("v1/chat/completions", Json(body + ""","stream":true}""")))
        {
            var deltas = (await r.Content.ReadAsStringAsync()).Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal))
                .Select(l => JsonDocument.Parse(l[6..]).RootElement.GetProperty("choices")).Where(c => c.GetArrayLength() > 0).Select(c => c[0].GetProperty("delta")).ToList();
            Assert.That(string.Concat(deltas.Select(d => d.TryGetProperty("content", out var c) ? c.GetString() : "")), Is.EqualTo(answer));
            Assert.That(deltas.Any(d => d.TryGetProperty("tool_calls", out _)), Is.False);
        }
    }

    [Test]
    public async Task ToolChoiceRequiredOrNamedTellsTheModelACallIsRequired()
    {
        // "required" offered the tools exactly as "auto" does, so the model never heard that a call was required (the
        // library's ChatToolMode.RequireAny adds the instruction); the prompt is now the library's.
        string tool = $$$"""{"type":"function","function":{"name":"get_weather","parameters":{{{WeatherSchema}}}}}""";
        async Task<int> PromptTokens(string choice, string messages = """[{"role":"user","content":"Weather?"}]""")
        {
            using var r = await _http.PostAsync("v1/chat/completions", Json($$"""{"messages":{{messages}},"tools":[{{tool}}],"tool_choice":{{choice}},"max_tokens":1}"""));
            var root = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), root.ToString());
            return root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        }
        int Rendered(string instruction, string? system = null) => _model.Tokenizer.Encode(_model.Template.Apply(
            [QwQ.Cuda.Text.ChatMessage.System(system is null ? instruction : instruction + "\n\n" + system), QwQ.Cuda.Text.ChatMessage.User("Weather?")],
            [JsonDocument.Parse(tool).RootElement])).Length;

        var lib = new AI.ChatOptions { Tools = [AI.AIFunctionFactory.Create((string city) => "sunny", "get_weather")] };
        lib.ToolMode = AI.ChatToolMode.RequireAny;
        string any = QwQ.Cuda.Chat.QwqChatClient.RequiredToolInstruction(lib)!;
        lib.ToolMode = AI.ChatToolMode.RequireSpecific("get_weather");
        string named = QwQ.Cuda.Chat.QwqChatClient.RequiredToolInstruction(lib)!;

        Assert.That(await PromptTokens("\"required\""), Is.EqualTo(Rendered(any)));
        Assert.That(await PromptTokens("""{"type":"function","function":{"name":"get_weather"}}"""), Is.EqualTo(Rendered(named)));
        Assert.That(await PromptTokens("""{"type":"function","function":{"name":"get_weather"}}""", """[{"role":"system","content":"Be brief."},{"role":"user","content":"Weather?"}]"""),
            Is.EqualTo(Rendered(named, "Be brief.")), "joined to the caller's system message, ahead of it");
        int auto = await PromptTokens("\"auto\"");
        Assert.That(auto, Is.EqualTo(_model.Tokenizer.Encode(_model.Template.Apply([QwQ.Cuda.Text.ChatMessage.User("Weather?")], [JsonDocument.Parse(tool).RootElement])).Length),
            "auto adds nothing");
    }

    private const string TwoCalls = "Both.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n" +
                                    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}\n</tool_call>";

    [Test]
    public async Task ParallelToolCallsFalseAnswersWithTheFirstCallOnly()
    {
        // parallel_tool_calls was ignored (an unknown field): both calls came back.
        using var scripted = ServerFixture.ScriptedTinyChat(TwoCalls);
        await using var server = await ServerFixture.StartAsync(scripted);
        var tool = ChatTool.CreateFunctionTool("get_weather", "Current weather in a city", BinaryData.FromString(WeatherSchema));
        static string City(BinaryData arguments) => JsonDocument.Parse(arguments.ToMemory()).RootElement.GetProperty("city").GetString()!;
        ChatCompletionOptions Options(bool? parallel) => new() { Tools = { tool }, AllowParallelToolCalls = parallel };

        ChatCompletion one = (await OpenAiChat(server).CompleteChatAsync([new UserChatMessage("Weather in Paris and Oslo?")], Options(false))).Value;
        Assert.That(one.ToolCalls.Select(c => City(c.FunctionArguments)), Is.EqualTo(new[] { "Paris" }));
        Assert.That(one.FinishReason, Is.EqualTo(ChatFinishReason.ToolCalls));
        Assert.That(one.Content, Is.Empty, "no text beside the call");

        var streamed = new List<StreamingChatToolCallUpdate>();
        ChatFinishReason? finish = null;
        await foreach (var u in OpenAiChat(server).CompleteChatStreamingAsync([new UserChatMessage("Weather in Paris and Oslo?")], Options(false)))
        {
            streamed.AddRange(u.ToolCallUpdates);
            finish ??= u.FinishReason;
        }
        Assert.That(streamed.Select(c => c.Index), Is.EqualTo(new[] { 0 }), "one call's delta, nothing of the second");
        Assert.That(City(streamed[0].FunctionArgumentsUpdate), Is.EqualTo("Paris"));
        Assert.That(finish, Is.EqualTo(ChatFinishReason.ToolCalls));

        // Left out (the default) or true: both, with their own ids.
        foreach (bool? parallel in new bool?[] { null, true })
        {
            ChatCompletion both = (await OpenAiChat(server).CompleteChatAsync([new UserChatMessage("Weather in Paris and Oslo?")], Options(parallel))).Value;
            Assert.That(both.ToolCalls.Select(c => City(c.FunctionArguments)), Is.EqualTo(new[] { "Paris", "Oslo" }));
            Assert.That(both.ToolCalls.Select(c => c.Id).Distinct().Count(), Is.EqualTo(2));
            Assert.That(both.Content, Is.Empty, "the newline between the calls is no answer (content was \"\\n\"; OpenAI gives null)");
        }
    }

    // ---- Microsoft.Extensions.AI over the OpenAI adapter ---------------------------------------------------------

    [Test]
    public async Task ExtensionsAiClientChatsThroughTheOpenAiAdapter()
    {
        AI.IChatClient chat = AI.OpenAIClientExtensions.AsIChatClient(OpenAiChat(_server));
        var response = await chat.GetResponseAsync([new AI.ChatMessage(AI.ChatRole.User, "Hi")], new AI.ChatOptions { MaxOutputTokens = 5, Temperature = 0 });
        Assert.That(response.Usage?.OutputTokenCount, Is.InRange(1, 5));
        Assert.That(response.FinishReason, Is.AnyOf(AI.ChatFinishReason.Stop, AI.ChatFinishReason.Length));
    }

    [Test]
    public async Task ExtensionsAiClientStreamsToolCalls()
    {
        AI.IChatClient chat = AI.OpenAIClientExtensions.AsIChatClient(OpenAiChat(_toolServer));
        var tool = AI.AIFunctionFactory.Create((string city) => "sunny", "get_weather", "Current weather in a city");
        var updates = new List<AI.ChatResponseUpdate>();
        await foreach (var u in chat.GetStreamingResponseAsync([new AI.ChatMessage(AI.ChatRole.User, "Weather in Paris?")], new AI.ChatOptions { Tools = [tool] }))
            updates.Add(u);
        var call = updates.SelectMany(u => u.Contents).OfType<AI.FunctionCallContent>().Single();
        Assert.That(call.Name, Is.EqualTo("get_weather"));
        Assert.That(call.Arguments!["city"]?.ToString(), Is.EqualTo("Paris"));
        Assert.That(updates.Select(u => u.FinishReason).Last(f => f is not null), Is.EqualTo(AI.ChatFinishReason.ToolCalls));
    }

    // ---- raw HTTP: framing, errors, limits -------------------------------------------------------------------------

    [Test]
    public async Task StreamIsServerSentEventsEndingWithDone()
    {
        using var r = await _http.PostAsync("v1/chat/completions",
            Json("""{"messages":[{"role":"user","content":"Hi"}],"max_tokens":5,"stream":true,"stream_options":{"include_usage":true}}"""));
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(r.Content.Headers.ContentType?.MediaType, Is.EqualTo("text/event-stream"));
        string text = await r.Content.ReadAsStringAsync();
        Assert.That(LoadGenerator.CheckStream(text), Is.InRange(1, 5));
        Assert.That(text, Does.StartWith("data: {"));
    }

    [Test]
    public async Task CompletionsTakeARawPrompt()
    {
        using var r = await _http.PostAsync("v1/completions", Json("""{"prompt":"Once upon a time","max_tokens":4,"ignore_eos":true,"temperature":0}"""));
        var root = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), root.ToString());
        Assert.That(root.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        Assert.That(root.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"), "ignore_eos: exactly max_tokens");
        Assert.That(root.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(4));
        Assert.That(root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(_model.Tokenizer.Encode("Once upon a time").Length));
    }

    [Test]
    public async Task CompletionsTakeAPromptInAOneElementArray()
    {
        // LangChain's OpenAI LLM and other clients send the batch form, "prompt": ["text"], for one prompt.
        string ids = string.Join(",", _model.Tokenizer.Encode("Once upon a time"));
        async Task<(int PromptTokens, string Text)> Complete(string prompt)
        {
            using var r = await _http.PostAsync("v1/completions", Json($$"""{"prompt":{{prompt}},"max_tokens":4,"ignore_eos":true,"temperature":0}"""));
            var root = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement;
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), $"{prompt}: {root}");
            return (root.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), root.GetProperty("choices")[0].GetProperty("text").GetString()!);
        }
        var expected = await Complete("\"Once upon a time\"");
        Assert.That(await Complete("[\"Once upon a time\"]"), Is.EqualTo(expected));
        Assert.That(await Complete($"[{ids}]"), Is.EqualTo(expected));
        Assert.That(await Complete($"[[{ids}]]"), Is.EqualTo(expected));
    }

    [Test]
    public async Task StreamedChunksAddUpToTheWholeResponse()
    {
        // tiny-chat's vocabulary spells the emoji and the CJK characters one byte a token, so each is split across tokens;
        // the tool-call block is not offered as a call (no tools), and "</think>" is one token.
        const string answer = "Hmm \U0001F600.\n</think>\n\n\u6674\u308C \U0001F389\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
        using var model = ServerFixture.ScriptedTinyChat(answer);
        await using var server = await ServerFixture.StartAsync(model);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        async Task<(JsonElement Whole, List<JsonElement> Chunks)> Both(string path, Dictionary<string, object> body)
        {
            using var whole = await http.PostAsync(path, Json(JsonSerializer.Serialize(body)));
            body["stream"] = true;
            body["stream_options"] = new { include_usage = true };
            using var streamed = await http.PostAsync(path, Json(JsonSerializer.Serialize(body)));
            var chunks = (await streamed.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries)
                .Where(e => e != "data: [DONE]").Select(e => JsonDocument.Parse(e["data: ".Length..]).RootElement).ToList();
            return (JsonDocument.Parse(await whole.Content.ReadAsStringAsync()).RootElement, chunks);
        }
        static string Concat(IEnumerable<JsonElement> chunks, Func<JsonElement, JsonElement?> field) => string.Concat(chunks
            .Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => field(c.GetProperty("choices")[0]))
            .Where(v => v is { ValueKind: JsonValueKind.String }).Select(v => v!.Value.GetString()));
        static JsonElement? Field(JsonElement e, string name) => e.TryGetProperty(name, out var v) ? v : null;

        // /v1/completions: the text as generated, </think> and the tool-call block included, streamed or not.
        var (whole, chunks) = await Both("v1/completions", new() { ["prompt"] = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n" });
        Assert.That(whole.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(answer));
        Assert.That(Concat(chunks, c => Field(c, "text")), Is.EqualTo(answer));
        Assert.That(chunks[^1].GetProperty("usage").GetRawText(), Is.EqualTo(whole.GetProperty("usage").GetRawText()));

        // /v1/chat/completions: reasoning_content and content, each the non-streamed one.
        (whole, chunks) = await Both("v1/chat/completions", new() { ["messages"] = new[] { new { role = "user", content = "Hi" } } });
        var message = whole.GetProperty("choices")[0].GetProperty("message");
        Assert.That(message.GetProperty("reasoning_content").GetString(), Is.EqualTo("Hmm \U0001F600.\n"));
        Assert.That(Concat(chunks, c => Field(c.GetProperty("delta"), "reasoning_content")), Is.EqualTo(message.GetProperty("reasoning_content").GetString()));
        Assert.That(Concat(chunks, c => Field(c.GetProperty("delta"), "content")), Is.EqualTo(message.GetProperty("content").GetString()));
        Assert.That(Concat(chunks, c => Field(c, "finish_reason")), Is.EqualTo(whole.GetProperty("choices")[0].GetProperty("finish_reason").GetString()));
        Assert.That(chunks[^1].GetProperty("usage").GetRawText(), Is.EqualTo(whole.GetProperty("usage").GetRawText()));
    }

    [TestCase("""["Hi","there","you"]""", 3)]
    [TestCase("""[[9,10],[11]]""", 2)]
    public async Task ABatchOfPromptsIs400AskingForOneRequestPerPrompt(string prompt, int count)
    {
        using var r = await _http.PostAsync("v1/completions", Json($$"""{"prompt":{{prompt}},"max_tokens":1}"""));
        await AssertBadFieldAsync(r, "prompt");
        Assert.That(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("message").GetString(),
            Does.Contain($"{count} prompts").And.Contain("one prompt per request; send one request per prompt"));
    }

    [Test]
    public async Task PromptTokensFromThePrefixCacheAreReportedAsCachedTokens()
    {
        // Each request runs on a fresh session: a prompt start seen before comes from the model's prefix cache, in
        // whole 64-token KV blocks, and usage says so as OpenAI does (prompt_tokens_details.cached_tokens). The GUID
        // starts every prompt, so no other test's requests can have cached it.
        int block = _model.Backend.KvPool.BlockSize;
        static string Message() => Guid.NewGuid().ToString("N") + " " + string.Join(" ", Enumerable.Range(0, 40).Select(i => $"line {i} of the story"));
        static string Body(string message, bool stream) => JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["messages"] = new[] { new { role = "user", content = message } },
            ["max_tokens"] = 2,
            ["temperature"] = 0,
            ["stream"] = stream,
            ["stream_options"] = new { include_usage = stream },
        });
        async Task<(int Prompt, int Cached)> Usage(string message, bool stream = false)
        {
            using var r = await _http.PostAsync("v1/chat/completions", Json(Body(message, stream)));
            string text = await r.Content.ReadAsStringAsync();
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), text);
            // Streaming: the usage rides on the last chunk before [DONE].
            string json = stream ? text.Split('\n').Where(l => l.StartsWith("data: {", StringComparison.Ordinal)).Last()[6..] : text;
            var usage = JsonDocument.Parse(json).RootElement.GetProperty("usage");
            return (usage.GetProperty("prompt_tokens").GetInt32(), usage.GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32());
        }

        string message = Message();
        var first = await Usage(message);
        Assert.That(first.Prompt, Is.GreaterThan(2 * block), "long enough to fill KV blocks");
        Assert.That(first.Cached, Is.Zero, "nothing cached yet");

        var second = await Usage(message);
        Assert.That(second.Prompt, Is.EqualTo(first.Prompt));
        Assert.That(second.Cached, Is.EqualTo((second.Prompt - 1) / block * block), "every full block but the one holding the last token");
        Assert.That(second.Cached, Is.GreaterThan(0).And.LessThan(second.Prompt));

        Assert.That(await Usage(message, stream: true), Is.EqualTo(second), "the streamed usage chunk carries it too");
        Assert.That((await Usage(Message())).Cached, Is.Zero, "a different prompt reuses nothing");

        // The official client reads it where OpenAI puts it.
        ChatCompletion c = (await OpenAiChat(_server).CompleteChatAsync([new UserChatMessage(message)],
            new ChatCompletionOptions { MaxOutputTokenCount = 2, Temperature = 0 })).Value;
        Assert.That(c.Usage.InputTokenDetails.CachedTokenCount, Is.EqualTo(second.Cached));
        // And so does Microsoft.Extensions.AI's adapter.
        AI.IChatClient chat = AI.OpenAIClientExtensions.AsIChatClient(OpenAiChat(_server));
        var response = await chat.GetResponseAsync([new AI.ChatMessage(AI.ChatRole.User, message)], new AI.ChatOptions { MaxOutputTokens = 2, Temperature = 0 });
        Assert.That(response.Usage?.CachedInputTokenCount, Is.EqualTo(second.Cached));
    }

    [Test]
    public async Task SameSeedSameText()
    {
        const string body = """{"prompt":"Hello","max_tokens":12,"seed":7,"temperature":1.0,"top_k":0,"ignore_eos":true}""";
        async Task<string> Text()
        {
            using var r = await _http.PostAsync("v1/completions", Json(body));
            return JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()!;
        }
        string first = await Text(), second = await Text();
        Assert.That(second, Is.EqualTo(first));
        Assert.That(first, Is.Not.Empty);
    }

    [Test]
    public async Task ModelsHealthAndMetrics()
    {
        var models = JsonDocument.Parse(await _http.GetStringAsync("v1/models")).RootElement;
        Assert.That(models.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("tiny-chat"));
        Assert.That((await _http.GetAsync("health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        using (await _http.PostAsync("v1/completions", Json("""{"prompt":"Hi","max_tokens":3,"ignore_eos":true}"""))) { }
        string metrics = await MetricsAsync();
        Assert.That(Metric(metrics, "qwq_requests_total"), Is.GreaterThanOrEqualTo(1));
        Assert.That(Metric(metrics, "qwq_generation_tokens_total"), Is.GreaterThanOrEqualTo(3));
        Assert.That(Metric(metrics, "qwq_kv_blocks_total"), Is.EqualTo(_model.Backend.KvPool.TotalBlocks));
        Assert.That(metrics, Does.Contain("qwq_kv_blocks_used").And.Contain("qwq_requests_in_queue").And.Contain("qwq_generation_tokens_per_second"));
        Assert.That(Metric(metrics, "qwq_scheduler_steps_total"), Is.EqualTo(_model.Scheduler.Counters.Steps).And.GreaterThanOrEqualTo(3));
        Assert.That(Metric(metrics, "qwq_scheduler_preemptions_total"), Is.EqualTo(_model.Scheduler.Counters.Preemptions));
        Assert.That(Metric(metrics, "qwq_rope_recomputes_total"), Is.EqualTo(_model.Scheduler.Counters.RopeRecomputes));
    }

    [Test]
    public async Task ModelsRetrieveAnswersTheServedModelAndA404ForAnyOther()
    {
        // The official client's models.retrieve(id). Served ids are often Hugging Face ids or paths: slashes, sent raw or escaped.
        await using var server = await QwqServer.StartAsync(_model, new ServerOptions { Port = 0, ModelName = "Qwen/QwQ-32B", ApiKey = "s3cret" });
        var client = new OpenAIModelClient(new ApiKeyCredential("s3cret"), new OpenAIClientOptions { Endpoint = new Uri(server.BaseAddress, "v1") });
        OpenAIModel model = (await client.GetModelAsync("Qwen/QwQ-32B")).Value;
        Assert.That(model.Id, Is.EqualTo("Qwen/QwQ-32B"));
        Assert.That(model.OwnedBy, Is.EqualTo("qwq.cuda"));
        var e = Assert.ThrowsAsync<ClientResultException>(() => client.GetModelAsync("gpt-4o"));
        Assert.That(e!.Status, Is.EqualTo(404));

        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        http.DefaultRequestHeaders.Authorization = new("Bearer", "s3cret");
        string listed = JsonDocument.Parse(await http.GetStringAsync("v1/models")).RootElement.GetProperty("data")[0].GetRawText();
        Assert.That(await http.GetStringAsync("v1/models/Qwen/QwQ-32B"), Is.EqualTo(listed), "the list's entry");
        Assert.That(await http.GetStringAsync("v1/models/Qwen%2FQwQ-32B"), Is.EqualTo(listed));
        using (var r = await http.GetAsync("v1/models/gpt-4o"))
        {
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
            Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("model_not_found"));
            Assert.That(error.GetProperty("message").GetString(), Does.Contain("'gpt-4o'").And.Contain("'Qwen/QwQ-32B'"));
        }
        using var noKey = new HttpClient { BaseAddress = server.BaseAddress };
        using (var r = await noKey.GetAsync("v1/models/Qwen/QwQ-32B"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        using (var r = await noKey.GetAsync("v1/models/gpt-4o"))
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized), "no key, no hint at which ids exist");
    }

    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"temperature":-1}""", "temperature")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"top_p":1.5}""", "top_p")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"max_tokens":0}""", "max_tokens")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"max_completion_tokens":-3}""", "max_completion_tokens")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"min_p":2}""", "min_p")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"repetition_penalty":0}""", "repetition_penalty")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"n":2}""", "n")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"stop":5}""", "stop")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"temperature":"hot"}""", "temperature")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"logit_bias":{"99999":1}}""", "logit_bias")]
    [TestCase("""{"messages":[]}""", "messages")]
    [TestCase("""{"model":"x"}""", "messages")]
    [TestCase("""{"messages":[{"role":"robot","content":"Hi"}]}""", "messages[0].role")]
    [TestCase("""{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}""", "messages[0].content[0]")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{}}]}""", "tools[0].function.name")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"a"}}],"tool_choice":{"type":"function","function":{"name":"b"}}}""", "tool_choice")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"tool_choice":"required"}""", "tool_choice")]
    // Unsupported, and the answer would silently differ from what was asked (no logprobs, no JSON mode).
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"logprobs":true}""", "logprobs")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"top_logprobs":2}""", "top_logprobs")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_object"}}""", "response_format")]
    [TestCase("""{"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{}}}}""", "response_format")]
    // A client error in the history, not the server's: 400 naming it, not 500.
    [TestCase("""{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"not json"}}]},{"role":"tool","content":"1"}]}""", "messages[1].tool_calls[0].function.arguments")]
    public async Task InvalidRequestsNameTheField(string body, string param)
    {
        using var r = await _http.PostAsync("v1/chat/completions", Json(body));
        await AssertBadFieldAsync(r, param);
    }

    [TestCase("""{"prompt":"Hi","max_tokens":1,"echo":true}""", "echo")]
    [TestCase("""{"prompt":"Hi","max_tokens":1,"logprobs":0}""", "logprobs")]
    [TestCase("""{"prompt":"Hi","max_tokens":1,"best_of":3}""", "best_of")]
    [TestCase("""{"prompt":"Hi","max_tokens":1,"suffix":"end"}""", "suffix")]
    [TestCase("""{"prompt":["Hi","there"]}""", "prompt")]
    [TestCase("""{"prompt":[]}""", "prompt")]
    [TestCase("""{"prompt":[""]}""", "prompt")]
    [TestCase("""{"prompt":[[]]}""", "prompt")]
    [TestCase("""{"prompt":[["Hi"]]}""", "prompt")]
    [TestCase("""{"prompt":["Hi",[9]]}""", "prompt")]
    public async Task InvalidCompletionRequestsNameTheField(string body, string param)
    {
        using var r = await _http.PostAsync("v1/completions", Json(body));
        await AssertBadFieldAsync(r, param);
    }

    [TestCase("v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1,"logprobs":false,"top_logprobs":0,"response_format":{"type":"text"}}""")]
    // Valid tool-call arguments in the history pass the check that refuses invalid ones.
    [TestCase("v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"},{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\": 1}"}}]},{"role":"tool","content":"1"}],"max_tokens":1}""")]
    [TestCase("v1/completions", """{"prompt":"Hi","max_tokens":1,"echo":false,"logprobs":null,"best_of":1,"suffix":""}""")]
    public async Task NeutralValuesOfUnsupportedFieldsAreAccepted(string path, string body)
    {
        using var r = await _http.PostAsync(path, Json(body));
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), await r.Content.ReadAsStringAsync());
    }

    private static async Task AssertBadFieldAsync(HttpResponseMessage r, string param)
    {
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("param").GetString(), Is.EqualTo(param));
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        Assert.That(error.GetProperty("code").ValueKind, Is.EqualTo(JsonValueKind.Null));
        Assert.That(error.GetProperty("message").GetString(), Does.Not.Contain("System."), "no .NET type names");
    }

    // Valid JSON but not text: a lone UTF-16 surrogate escape, as a client sends that cut an emoji in half.
    [TestCase("v1/chat/completions", """{"messages":[{"role":"user","content":"Hi \ud83d"}],"max_tokens":1}""", "messages[0].content")]
    [TestCase("v1/chat/completions", """{"messages":[{"role":"user","content":[{"type":"text","text":"\ude00"}]}],"max_tokens":1}""", "messages[0].content[0].text")]
    [TestCase("v1/chat/completions", """{"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f","description":"x\ud83d"}}],"max_tokens":1}""", "tools[0].function.description")]
    [TestCase("v1/completions", """{"prompt":"a\udc80b","max_tokens":1}""", "prompt")]
    [TestCase("v1/completions", """{"prompt":"ab","stop":["x","\ud83d"],"max_tokens":1}""", "stop[1]")]
    public async Task LoneSurrogateInAStringIs400NamingTheField(string path, string body, string param)
    {
        using var r = await _http.PostAsync(path, Json(body));
        await AssertBadFieldAsync(r, param);
    }

    [TestCase("{not json")]
    [TestCase("null")]
    public async Task MalformedBodyIs400(string body)
    {
        using var r = await _http.PostAsync("v1/completions", Json(body));
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("type").GetString(),
            Is.EqualTo("invalid_request_error"));
    }

    [Test]
    public async Task WrongUrlOrMethodGetsAnErrorObject()
    {
        // The commonest client mistake: a base URL without /v1. OpenAI clients show the error object's message.
        using (var r = await _http.PostAsync("chat/completions", Json("""{"messages":[{"role":"user","content":"Hi"}]}""")))
        {
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
            var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
            Assert.That(error.GetProperty("message").GetString(), Does.Contain("POST /chat/completions").And.Contain("/v1"));
            Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        }
        using (var r = await _http.GetAsync("v1/chat/completions"))
        {
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.MethodNotAllowed));
            Assert.That(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("message").GetString(),
                Does.Contain("GET").And.Contain("POST"));
        }
    }

    [TestCase("v1/completions", false, "prompt")]
    [TestCase("v1/chat/completions", false, "messages")]
    [TestCase("v1/chat/completions", true, "messages")]
    public async Task PromptLongerThanTheContextIs400WithOpenAisCode(string path, bool stream, string param)
    {
        string huge = string.Join(' ', Enumerable.Repeat("strawberry", 5000));
        object body = path == "v1/completions"
            ? new { prompt = huge, max_tokens = 1, stream }
            : new { messages = new[] { new { role = "user", content = huge } }, max_tokens = 1, stream };
        using var r = await _http.PostAsync(path, Json(JsonSerializer.Serialize(body)));
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.BadRequest));
        var error = JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("param").GetString(), Is.EqualTo(param));
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("invalid_request_error"));
        // OpenAI's code, which clients test for to trim the conversation and retry.
        Assert.That(error.GetProperty("code").GetString(), Is.EqualTo("context_length_exceeded"));
        Assert.That(error.GetProperty("message").GetString(), Does.Contain("context holds").And.Contain("shorten the prompt"));
    }

    [Test]
    public async Task BodyOverTheLimitIs413()
    {
        string big = new('a', 5 << 20);
        // Expect: 100-continue, as curl sends for big bodies: the server refuses before the body is sent (otherwise it
        // answers and closes mid-upload, and the client sees a broken pipe instead of the answer).
        using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = Json(JsonSerializer.Serialize(new { prompt = big })) };
        request.Headers.ExpectContinue = true;
        using var r = await _http.SendAsync(request);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        Assert.That(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("message").GetString(),
            Does.Contain("4194304 bytes"));
    }

    [Test]
    public async Task ApiKeyIsRequiredOnV1Only()
    {
        await using var server = await ServerFixture.StartAsync(_model, new ServerOptions { ApiKey = "s3cret" });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using (var none = await http.GetAsync("v1/models"))
        {
            Assert.That(none.StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
            Assert.That(none.Headers.WwwAuthenticate.ToString(), Is.EqualTo("Bearer"));
        }
        using (var wrong = new HttpRequestMessage(HttpMethod.Get, "v1/models") { Headers = { Authorization = new("Bearer", "s3cret-not") } })
            Assert.That((await http.SendAsync(wrong)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        using (var right = new HttpRequestMessage(HttpMethod.Get, "v1/models") { Headers = { Authorization = new("Bearer", "s3cret") } })
            Assert.That((await http.SendAsync(right)).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await http.GetAsync("health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        var ok = await OpenAiChat(server, "s3cret").CompleteChatAsync([new UserChatMessage("Hi")], new ChatCompletionOptions { MaxOutputTokenCount = 2 });
        Assert.That(ok.Value.Usage.OutputTokenCount, Is.InRange(1, 2));
    }

    /// <summary>A long stream, read until its first text chunk; the caller owns (and may abandon) the response.</summary>
    private static async Task<(HttpResponseMessage Response, Stream Body)> StartLongStreamAsync(HttpClient http)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, "v1/chat/completions")
        {
            Content = Json("""{"messages":[{"role":"user","content":"Hi"}],"max_tokens":100000,"ignore_eos":true,"stream":true}"""),
        };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.That(response.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        var body = await response.Content.ReadAsStreamAsync();
        var buffer = new byte[4096];
        int total = 0;
        while (Encoding.UTF8.GetString(buffer, 0, total).Split("\n\n").Length < 4) // the role chunk and two more
            total += await body.ReadAsync(buffer.AsMemory(total));
        return (response, body);
    }

    [Test]
    public async Task FullQueueAnswers429WithRetryAfter()
    {
        await using var server = await ServerFixture.StartAsync(_model, new ServerOptions { MaxQueue = 1 });
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (first, body) = await StartLongStreamAsync(http);
        using (first)
        {
            using var second = await http.PostAsync("v1/completions", Json("""{"prompt":"Hi","max_tokens":1}"""));
            Assert.That(second.StatusCode, Is.EqualTo(HttpStatusCode.TooManyRequests));
            Assert.That(second.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(1)));
            Assert.That(JsonDocument.Parse(await second.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("type").GetString(),
                Is.EqualTo("rate_limit_error"));
        }
        body.Dispose();
        await WaitUntil(() => server.Admitted == 0, "the abandoned stream leaves the queue");
        using var third = await http.PostAsync("v1/completions", Json("""{"prompt":"Hi","max_tokens":1}"""));
        Assert.That(third.StatusCode, Is.EqualTo(HttpStatusCode.OK), "room again once the first client left");
    }

    [Test]
    public async Task ClientDisconnectCancelsTheGenerationAndFreesItsKv()
    {
        double cancelledBefore = Metric(await MetricsAsync(), "qwq_requests_total{endpoint=\"chat\",outcome=\"cancelled\"}");
        var (response, body) = await StartLongStreamAsync(_http);
        Assert.That(_model.Backend.KvPool.UsedBlocks, Is.GreaterThan(0), "the running stream holds KV blocks");
        body.Dispose();
        response.Dispose();
        await WaitUntil(() => _server.Admitted == 0 && _model.Backend.KvPool.UsedBlocks == 0, "generation stopped and its blocks returned");
        string metrics = await MetricsAsync();
        Assert.That(Metric(metrics, "qwq_requests_total{endpoint=\"chat\",outcome=\"cancelled\"}"), Is.EqualTo(cancelledBefore + 1));
        Assert.That(Metric(metrics, "qwq_kv_blocks_used"), Is.Zero);
    }

    [Test]
    public async Task ShutdownStopsRunningGenerationsAndTellsTheirClientsWhy()
    {
        var server = await ServerFixture.StartAsync(_model);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (streamed, body) = await StartLongStreamAsync(http);
        var whole = http.PostAsync("v1/chat/completions", Json("""{"messages":[{"role":"user","content":"Hi"}],"max_tokens":100000,"ignore_eos":true}"""));
        await WaitUntil(() => server.Admitted == 2, "both requests run");

        // Both generations ran on to the end of the context (or until the host's shutdown timeout cut them off) while
        // DisposeAsync waited, and the stream then ended as if it had finished ("length").
        await server.DisposeAsync();
        using (streamed)
        {
            string rest = await new StreamReader(body).ReadToEndAsync();
            Assert.That(rest, Does.Contain("shutting down").And.EndsWith("data: [DONE]\n\n"));
            Assert.That(rest, Does.Not.Contain("finish_reason"));
        }
        using var answer = await whole;
        Assert.That(answer.StatusCode, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        Assert.That(JsonDocument.Parse(await answer.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("message").GetString(),
            Does.Contain("shutting down"));
        Assert.That(_model.Backend.KvPool.UsedBlocks, Is.Zero, "both sessions gave their KV blocks back");
    }

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) Assert.Fail($"timed out waiting: {what}");
            await Task.Delay(20);
        }
    }

    // ---- load ----------------------------------------------------------------------------------------------------

    /// <summary>
    /// 32 streaming clients for 4 s against a queue of 16: every request completes, well framed, or is a designed 429;
    /// nothing else. Bounded in clients and time, so it stops by itself in CI.
    /// </summary>
    [Test]
    public async Task LoadManyStreamingClientsLoseNothing()
    {
        await using var server = await ServerFixture.StartAsync(_model, new ServerOptions { MaxQueue = 16 });
        var report = await LoadGenerator.RunAsync(server.BaseAddress, clients: 32, TimeSpan.FromSeconds(4), maxTokens: 16);
        TestContext.Out.WriteLine("load (CPU, tiny-chat): " + report);
        Assert.That(report.Failures, Is.Empty);
        Assert.That(report.Completed, Is.GreaterThan(32));
        Assert.That(report.Rejected, Is.GreaterThan(0), "32 clients against a queue of 16 must see 429s");
        Assert.That(server.Admitted, Is.Zero);
        Assert.That(_model.Backend.KvPool.UsedBlocks, Is.Zero, "every finished request gave its KV blocks back");
    }

    /// <summary>
    /// The same load against any running server, for long runs (e.g. qwq serve on the H100):
    /// QWQ_LOAD_URL=http://127.0.0.1:8000 QWQ_LOAD_CLIENTS=64 QWQ_LOAD_SECONDS=60 QWQ_LOAD_MAX_TOKENS=256 [QWQ_API_KEY=...].
    /// </summary>
    [Test, Explicit("long load run against a running server; set QWQ_LOAD_URL")]
    public async Task LoadAgainstARunningServer()
    {
        string url = Environment.GetEnvironmentVariable("QWQ_LOAD_URL") ?? throw new InconclusiveException("set QWQ_LOAD_URL");
        int Env(string name, int fallback) => int.TryParse(Environment.GetEnvironmentVariable(name), System.Globalization.NumberStyles.None,
            System.Globalization.CultureInfo.InvariantCulture, out int v) ? v : fallback;
        var report = await LoadGenerator.RunAsync(new Uri(url), Env("QWQ_LOAD_CLIENTS", 64), TimeSpan.FromSeconds(Env("QWQ_LOAD_SECONDS", 60)),
            Env("QWQ_LOAD_MAX_TOKENS", 256), Environment.GetEnvironmentVariable("QWQ_API_KEY"));
        TestContext.Out.WriteLine(report);
        Assert.That(report.Failures, Is.Empty);
        Assert.That(report.Completed, Is.GreaterThan(0), "no request completed (every one rejected?)");
    }
}
