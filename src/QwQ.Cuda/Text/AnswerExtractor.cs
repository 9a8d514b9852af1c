using System.Text.Json;
using System.Text.RegularExpressions;

namespace QwQ.Cuda.Text;

/// <summary>Pulls the final answer out of a model response for scoring.</summary>
public static partial class AnswerExtractor
{
    /// <summary>
    /// The content of the last balanced <c>\boxed{...}</c> (nested braces allowed, e.g. <c>\boxed{\frac{1}{2}}</c>
    /// gives <c>\frac{1}{2}</c>); <c>\fbox{...}</c> is accepted too. Null when there is none.
    /// </summary>
    public static string? ExtractBoxed(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        int searchEnd = text.Length;
        while (searchEnd > 0)
        {
            int boxed = LastIndexOf(text, "\\boxed", searchEnd);
            int fbox = LastIndexOf(text, "\\fbox", searchEnd);
            int at = Math.Max(boxed, fbox);
            if (at < 0) return null;
            int i = at + (at == boxed ? "\\boxed".Length : "\\fbox".Length);
            while (i < text.Length && text[i] == ' ') i++;
            if (i < text.Length && text[i] == '{')
            {
                int depth = 0;
                for (int j = i; j < text.Length; j++)
                {
                    char c = text[j];
                    if (c == '\\' && j + 1 < text.Length && (text[j + 1] == '{' || text[j + 1] == '}')) { j++; continue; }
                    if (c == '{') depth++;
                    else if (c == '}' && --depth == 0) return text.Substring(i + 1, j - i - 1).Trim();
                }
            }
            searchEnd = at; // unbalanced or not followed by '{': try an earlier one
        }
        return null;
    }

    /// <summary>Last occurrence of <paramref name="value"/> that ends before <paramref name="end"/>.</summary>
    private static int LastIndexOf(string text, string value, int end) =>
        end <= 0 ? -1 : text.LastIndexOf(value, end - 1, StringComparison.Ordinal);

    [GeneratedRegex("\"answer\"\\s*:\\s*(\"(?:[^\"\\\\]|\\\\.)*\")", RegexOptions.CultureInvariant)]
    private static partial Regex AnswerFieldRegex();

    /// <summary>The value of the last <c>"answer": "X"</c> field (JSON string unescaped, trimmed), for
    /// multiple-choice prompts; null when there is none.</summary>
    public static string? ExtractChoice(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        var matches = AnswerFieldRegex().Matches(text);
        if (matches.Count == 0) return null;
        string literal = matches[^1].Groups[1].Value;
        try
        {
            return JsonSerializer.Deserialize<string>(literal, AnswerJsonContext.Default.String)?.Trim();
        }
        catch (JsonException)
        {
            return literal[1..^1].Trim();
        }
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class AnswerJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
