namespace QwQ.Cuda.Server;

/// <summary>How <see cref="QwqServer"/> listens and what it admits. Every field has a safe default.</summary>
public sealed record ServerOptions
{
    /// <summary>IP address to bind; loopback unless told otherwise, so a model is never exposed by accident.</summary>
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>TCP port; 0 picks a free one (tests), see <see cref="QwqServer.BaseAddress"/>.</summary>
    public int Port { get; init; } = 8000;

    /// <summary>When set, /v1/* requests need <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Generation requests admitted at once (running and waiting for the model); more get 429.</summary>
    public int MaxQueue { get; init; } = 256;

    /// <summary>Largest request body; bigger ones get 413 before they are read.</summary>
    public long MaxBodyBytes { get; init; } = 4L << 20;

    /// <summary>The id /v1/models lists and responses carry; requests may name any model (there is one).</summary>
    public string ModelName { get; init; } = "QwQ-32B";

    /// <summary>KV positions each request's session may use (null: the backend's maximum).</summary>
    public int? MaxContext { get; init; }

    /// <summary>Seconds a 429 asks the client to wait (Retry-After).</summary>
    public int RetryAfterSeconds { get; init; } = 1;

    /// <summary>Throws <see cref="Errors.OptionException"/> naming the first bad value.</summary>
    public void Validate()
    {
        if (!System.Net.IPAddress.TryParse(Host, out _) && Host != "localhost")
            throw new Errors.OptionException($"--host '{Host}' is not an IP address: give one such as 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)");
        if (Port is < 0 or > 65535)
            throw new Errors.OptionException($"--port {Port} must be in 0..65535");
        if (MaxQueue < 1)
            throw new Errors.OptionException($"--max-queue {MaxQueue} must be at least 1");
        if (ApiKey is { Length: 0 })
            throw new Errors.OptionException("--api-key is empty: give a key, or leave the option out to serve without one");
        if (MaxBodyBytes < 1024)
            throw new Errors.OptionException($"a request body limit of {MaxBodyBytes} bytes is too small (at least 1024)");
    }
}
