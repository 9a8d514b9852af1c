using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using QwQ.Cuda.Chat;
using QwQ.Cuda.Tests.Cli;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Chat;

/// <summary>
/// QwqChatClient inside Microsoft.Extensions.AI's pipeline, as README shows it (package Microsoft.Extensions.AI, which
/// the library does not reference: only these tests do).
/// </summary>
public class ChatClientPipelineTests
{
    private const string ToolAnswer = "Let me check.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

    [Test]
    public async Task FunctionInvocationRunsTheModelsToolCallAndSendsTheResultBack()
    {
        using var model = ScriptedModels.TinyChat(ToolAnswer);
        var cities = new List<string>();
        string GetWeather(string city) { cities.Add(city); return $"sunny in {city}"; }

        // README: "Using it", the pipeline.
        IChatClient agent = new ChatClientBuilder(new QwqChatClient(model)).UseFunctionInvocation().Build();
        var answer = await agent.GetResponseAsync("Weather in Paris?", new ChatOptions { Tools = [AIFunctionFactory.Create(GetWeather, "get_weather")] });

        Assert.That(cities, Is.EqualTo(new[] { "Paris" }), "the model's call ran once, with its argument");
        var contents = answer.Messages.SelectMany(m => m.Contents).ToList();
        var call = contents.OfType<FunctionCallContent>().Single();
        var result = contents.OfType<FunctionResultContent>().Single();
        Assert.That(result.CallId, Is.EqualTo(call.CallId), "the result answers that call");
        Assert.That(result.Result?.ToString(), Does.Contain("sunny in Paris"));
        // The second request carried the call and its result: the scripted model, its script spent, then ends at once.
        Assert.That(answer.FinishReason, Is.EqualTo(ChatFinishReason.Stop));
    }

    [Test]
    public async Task AChatClientBuilderOverTheRegisteredModelIsTheResolvedClient()
    {
        var services = new ServiceCollection();
        // README: "With dependency injection", the pipeline.
        services.AddQwqChatClient(TinyChatFixtureTests.Dir, new QwqModelOptions { Backend = BackendKind.Cpu });
        services.AddChatClient(sp => new QwqChatClient(sp.GetRequiredService<QwqModel>())).UseFunctionInvocation();

        QwqModel model;
        using (var provider = services.BuildServiceProvider())
        {
            var client = provider.GetRequiredService<IChatClient>();
            Assert.That(client.GetService<FunctionInvokingChatClient>(), Is.Not.Null, "the later registration is the one resolved");
            model = provider.GetRequiredService<QwqModel>();
            Assert.That(client.GetService<QwqModel>(), Is.SameAs(model), "over the one registered model");
            var r = await client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { Temperature = 0, MaxOutputTokens = 3 });
            Assert.That(r.Usage!.OutputTokenCount, Is.InRange(1, 3));
        }
        Assert.Throws<ObjectDisposedException>(() => model.CreateSession(), "the container still disposes the model");
    }
}
