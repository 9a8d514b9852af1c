using Microsoft.Extensions.AI;
using QwQ.Cuda;
using QwQ.Cuda.Chat;
using QwQ.Cuda.Errors;

// The conventional namespace for Add* registrations, so they show up wherever services are configured.
namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers QwQ.Cuda with a dependency-injection container.</summary>
public static class QwqServiceCollectionExtensions
{
    /// <summary>
    /// Registers a singleton <see cref="QwqModel"/> loaded from <paramref name="model"/> and a singleton
    /// <see cref="IChatClient"/> (<see cref="QwqChatClient"/>) over it.
    /// <para>
    /// The model loads lazily, once, on the first resolve of either service (on the resolving thread, which blocks
    /// until the weights are in memory): building the container stays cheap, and an app that never asks for the
    /// client never takes the GPU. Resolve it at startup to load eagerly and fail fast. A load error surfaces as the
    /// <see cref="QwqException"/> from that resolve. The container disposes both (the client first) when it is
    /// disposed, which frees the model's GPU memory.
    /// </para>
    /// </summary>
    /// <param name="model">A model directory or a Hugging Face id in the local cache (as for <c>QwqModel.LoadAsync</c>).</param>
    /// <param name="services">The container to add the model and the client to.</param>
    /// <param name="options">Backend, engine and scheduler settings (null: defaults, the CUDA backend).</param>
    /// <param name="modelId">Reported as the responses' ModelId (null: "QwQ-32B").</param>
    public static IServiceCollection AddQwqChatClient(this IServiceCollection services, string model, QwqModelOptions? options = null, string? modelId = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        services.AddSingleton(_ => QwqModel.Load(model, options ?? new QwqModelOptions(), progress: null, CancellationToken.None));
        services.AddSingleton<IChatClient>(sp => new QwqChatClient(sp.GetRequiredService<QwqModel>(), modelId));
        return services;
    }
}
