namespace QwQ.Cuda.Server;

/// <summary>
/// A request the server refuses, answered as OpenAI's error object
/// <c>{"error":{"message","type","param","code"}}</c> with <see cref="StatusCode"/>.
/// </summary>
internal sealed class ApiException(int statusCode, string message, string? param = null, string type = ApiException.InvalidRequest, string? code = null)
    : Exception(message)
{
    public const string InvalidRequest = "invalid_request_error";

    public int StatusCode { get; } = statusCode;

    /// <summary>The request field at fault (e.g. "temperature", "messages[1].content"), or null.</summary>
    public string? Param { get; } = param;

    public string Type { get; } = type;

    /// <summary>OpenAI's machine-readable code where it has one (e.g. "context_length_exceeded"), or null.</summary>
    public string? Code { get; } = code;

    public static ApiException BadField(string param, string message) => new(400, message, param);
}
