namespace QwQ.Cuda.Errors;

/// <summary>
/// An error a user can act on: bad input, a missing file, an unsupported config, no GPU.
/// The message names the thing that is wrong and, where there is one, the fix. Front ends
/// (the CLI) print <see cref="Exception.Message"/> alone, without a stack trace, and exit non-zero.
/// Programming errors are not QwqExceptions and keep their stack traces.
/// </summary>
public class QwqException : Exception
{
    public QwqException(string message) : base(message) { }
    public QwqException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>config.json (or a preset) names a value we cannot run; the message names the field.</summary>
public sealed class ConfigException(string message) : QwqException(message);

/// <summary>A checkpoint file or tensor is missing, truncated, or has the wrong dtype or shape.</summary>
public sealed class WeightsException(string message) : QwqException(message);

/// <summary>An option value is out of range (sampling, context length, ...).</summary>
public sealed class OptionException(string message) : QwqException(message);
