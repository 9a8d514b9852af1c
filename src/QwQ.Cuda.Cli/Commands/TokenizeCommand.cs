using System.CommandLine;
using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq tokenize --model DIR|HF_ID|--synthetic PRESET [--text TEXT]</c>: encodes with the model's tokenizer (needs only tokenizer.json
/// and tokenizer_config.json). Without <c>--text</c>, reads one JSON string per line on stdin; prints one JSON array
/// of ids per line. Added tokens written in the text (<c>&lt;|im_start|&gt;</c>) become their ids.
/// </summary>
public static class TokenizeCommand
{
    /// <param name="environment">Reads environment variables (HF_HUB_CACHE, HF_HOME); null: the process's.</param>
    public static Command Create(Func<string, string?>? environment = null)
    {
        var source = new TokenizerSourceOptions("Model directory holding tokenizer.json and tokenizer_config.json, or a Hugging Face id in the local cache", environment);
        var text = new Option<string?>("--text", "-t") { Description = "Text to encode (otherwise one JSON string per line on stdin)" };
        var command = new Command("tokenize", "Encode text to token ids: one JSON string per stdin line in, one JSON array of ids per line out");
        source.AddTo(command);
        command.Add(text);
        command.SetAction(p => Run(source.Resolve(p), p.GetValue(text), Console.In,
            p.InvocationConfiguration.Output, p.InvocationConfiguration.Error));
        return command;
    }

    /// <summary>Runs the command; returns the exit code (0 ok, 1 error, with one message on <paramref name="stderr"/>).</summary>
    public static int Run(string modelDir, string? text, TextReader stdin, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            var tokenizer = QwenTokenizer.Load(modelDir);
            if (text is not null)
            {
                WriteIds(stdout, tokenizer.Encode(text));
                return 0;
            }
            int lineNo = 0;
            while (stdin.ReadLine() is { } line)
            {
                lineNo++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                string value;
                try
                {
                    using var doc = JsonDocument.Parse(line);
                    if (doc.RootElement.ValueKind != JsonValueKind.String)
                        throw new QwqException($"stdin line {lineNo}: expected a JSON string such as \"Hello\\n\", got {doc.RootElement.ValueKind}.");
                    value = doc.RootElement.GetString()!;
                }
                catch (JsonException e)
                {
                    throw new QwqException($"stdin line {lineNo} is not a JSON string: {e.Message}", e);
                }
                WriteIds(stdout, tokenizer.Encode(value));
            }
            return 0;
        }
        catch (QwqException e) when (e is not Output.OutputClosedException) // a closed stdout is the entry point's to report
        {
            stdout.Flush();
            stderr.WriteLine("error: " + e.Message);
            return 1;
        }
        finally
        {
            stdout.Flush();
        }
    }

    private static void WriteIds(TextWriter stdout, int[] ids)
    {
        var sb = new StringBuilder(ids.Length * 7 + 2);
        sb.Append('[');
        for (int i = 0; i < ids.Length; i++)
        {
            if (i > 0) sb.Append(',');
            sb.Append(ids[i]);
        }
        sb.Append("]\n");
        stdout.Write(sb.ToString());
    }
}
