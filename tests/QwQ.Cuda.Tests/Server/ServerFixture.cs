using QwQ.Cuda.Server;
using QwQ.Cuda.Tests.Cli;
using QwQ.Cuda.Tests.Generation;

namespace QwQ.Cuda.Tests.Server;

/// <summary>The tiny-chat model on the CPU backend, and servers over it on loopback ports.</summary>
internal static class ServerFixture
{
    public static Task<QwqModel> LoadTinyChatAsync() =>
        QwqModel.LoadAsync(TinyChatFixtureTests.Dir, new QwqModelOptions { Backend = BackendKind.Cpu });

    public static Task<QwqServer> StartAsync(QwqModel model, ServerOptions? options = null) =>
        QwqServer.StartAsync(model, (options ?? new ServerOptions()) with { Port = 0, ModelName = "tiny-chat" });

    /// <summary>tiny-chat that "samples" <paramref name="answer"/>: see <see cref="ScriptedModels.TinyChat"/>.</summary>
    public static QwqModel ScriptedTinyChat(string answer) => ScriptedModels.TinyChat(answer);
}
