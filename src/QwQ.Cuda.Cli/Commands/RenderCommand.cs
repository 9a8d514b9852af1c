using System.CommandLine;
using System.Text.Json;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Cli.Commands;

/// <summary>
/// <c>qwq render --model DIR|HF_ID|--synthetic PRESET --messages FILE.json [--tools FILE.json] [--no-generation-prompt]</c>: prints the exact
/// prompt QwQ's chat template produces, with nothing added (no trailing newline). The messages file holds a JSON
/// array of <c>{"role", "content", "tool_calls"?}</c> (or an object with "messages" and optional "tools"); "-" reads
/// stdin. Needs only tokenizer_config.json in DIR; a template other than QwQ's there is reported on stderr.
/// </summary>
public static class RenderCommand
{
    /// <param name="environment">Reads environment variables (HF_HUB_CACHE, HF_HOME); null: the process's.</param>
    public static Command Create(Func<string, string?>? environment = null)
    {
        var source = new TokenizerSourceOptions("Model directory or Hugging Face id (its tokenizer_config.json is checked for QwQ's chat template)", environment);
        var messages = new Option<string>("--messages") { Description = "JSON file with the messages array ('-' for stdin)", Required = true };
        var tools = new Option<string?>("--tools") { Description = "JSON file with an array of tool definitions" };
        var noGen = new Option<bool>("--no-generation-prompt") { Description = "Do not append '<|im_start|>assistant\\n<think>\\n'" };
        var command = new Command("render", "Print the prompt the chat template makes from a messages file (exactly, no trailing newline)");
        source.AddTo(command);
        command.Add(messages);
        command.Add(tools);
        command.Add(noGen);
        command.SetAction(p => Run(source.Resolve(p), p.GetValue(messages)!, p.GetValue(tools), !p.GetValue(noGen),
            Console.In, p.InvocationConfiguration.Output, p.InvocationConfiguration.Error));
        return command;
    }

    /// <summary>Runs the command; returns the exit code (0 ok, 1 error, with one message on <paramref name="stderr"/>).</summary>
    public static int Run(string modelDir, string messagesFile, string? toolsFile, bool addGenerationPrompt,
        TextReader stdin, TextWriter stdout, TextWriter stderr)
    {
        try
        {
            var template = ChatTemplate.Load(modelDir, out string? warning);
            if (warning is not null) stderr.WriteLine("warning: " + warning);

            using var messagesDoc = ReadJson(messagesFile, "messages", stdin);
            var root = messagesDoc.RootElement;
            JsonElement messagesEl = root;
            IReadOnlyList<JsonElement>? toolList = null;
            if (root.ValueKind == JsonValueKind.Object)
            {
                if (!root.TryGetProperty("messages", out messagesEl))
                    throw new QwqException($"{Named(messagesFile, "messages")} must hold a JSON array, or an object with a \"messages\" array.");
                if (root.TryGetProperty("tools", out var t) && t.ValueKind != JsonValueKind.Null)
                    toolList = ChatTemplate.ParseTools(t);
            }
            var parsed = ChatTemplate.ParseMessages(messagesEl);

            JsonDocument? toolsDoc = null;
            try
            {
                if (toolsFile is not null)
                {
                    toolsDoc = ReadJson(toolsFile, "tools", stdin);
                    toolList = toolsDoc.RootElement.ValueKind == JsonValueKind.Null ? null : ChatTemplate.ParseTools(toolsDoc.RootElement);
                }
                string prompt = template.Apply(parsed, toolList, addGenerationPrompt);
                stdout.Write(prompt);
            }
            finally
            {
                toolsDoc?.Dispose();
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

    private static JsonDocument ReadJson(string path, string what, TextReader stdin)
    {
        string text;
        if (path == "-") text = stdin.ReadToEnd();
        else if (Directory.Exists(path)) throw new QwqException($"The {what} file '{path}' is a directory; pass a JSON file.");
        else if (!File.Exists(path)) throw new QwqException($"The {what} file '{path}' does not exist.");
        else text = File.ReadAllText(path);
        try
        {
            return JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new QwqException($"{Named(path, what)} is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>Where the JSON came from, for messages: "-" is standard input, not a file named '-'.</summary>
    private static string Named(string path, string what) => path == "-" ? $"standard input (--{what} -)" : $"The {what} file '{path}'";
}
