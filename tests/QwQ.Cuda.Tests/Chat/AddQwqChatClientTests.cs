using Microsoft.Extensions.AI;
using Microsoft.Extensions.DependencyInjection;
using QwQ.Cuda.Chat;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Tests.Cli;

namespace QwQ.Cuda.Tests.Chat;

public class AddQwqChatClientTests
{
    [Test]
    public async Task OneModelPerContainerServesTheClientAndIsDisposedWithIt()
    {
        var services = new ServiceCollection().AddQwqChatClient(TinyChatFixtureTests.Dir, new QwqModelOptions { Backend = BackendKind.Cpu }, modelId: "tiny-chat");
        QwqModel model;
        using (var provider = services.BuildServiceProvider())
        {
            var client = provider.GetRequiredService<IChatClient>();
            Assert.That(provider.GetRequiredService<IChatClient>(), Is.SameAs(client));
            model = provider.GetRequiredService<QwqModel>();
            Assert.That(client.GetService<QwqModel>(), Is.SameAs(model), "the client runs on the registered model, loaded once");
            var r = await client.GetResponseAsync([new(ChatRole.User, "Hi")], new ChatOptions { Temperature = 0, MaxOutputTokens = 3 });
            Assert.That(r.ModelId, Is.EqualTo("tiny-chat"));
            Assert.That(r.Usage!.OutputTokenCount, Is.InRange(1, 3));
        }
        Assert.Throws<ObjectDisposedException>(() => model.CreateSession(), "disposing the container disposes the model");
    }

    [Test]
    public void TheModelLoadsOnFirstResolveNotAtRegistration()
    {
        string missing = Path.Combine(Path.GetTempPath(), "qwq-no-such-model-" + Guid.NewGuid().ToString("N"));
        using var provider = new ServiceCollection().AddQwqChatClient(missing, new QwqModelOptions { Backend = BackendKind.Cpu }).BuildServiceProvider();
        // Registration and building succeeded with a path that does not exist: nothing was loaded yet.
        Assert.Throws<QwqException>(() => provider.GetRequiredService<IChatClient>());
    }
}
