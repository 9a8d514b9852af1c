using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace QwQ.Cuda.Text;

/// <summary>What kind of answer a prompt asks for, which decides how it is found in a response.</summary>
public enum AnswerKind
{
    /// <summary>The last <c>\boxed{...}</c>, compared as a number where both sides are numbers.</summary>
    Math,
    /// <summary>A choice letter from an <c>"answer": "C"</c> field (or a looser <c>answer: C</c>).</summary>
    Choice,
}

/// <summary>
/// Pulls the final answer out of a model response and decides whether two answers are the same, for scoring.
/// Normalization is deliberately conservative: it removes only presentation (spaces, <c>$</c>, <c>\text{}</c> units,
/// thousands separators, a trailing period, <c>\dfrac</c> vs <c>\frac</c>) so that a wrong answer is never made right.
/// </summary>
public static partial class AnswerExtractor
{
    /// <summary>The answer of <paramref name="kind"/> in <paramref name="text"/>; null when there is none.</summary>
    public static string? Extract(string? text, AnswerKind kind) => kind switch
    {
        AnswerKind.Math => ExtractBoxed(text),
        // A model asked for a JSON field sometimes boxes the letter instead; a boxed single letter still counts.
        AnswerKind.Choice => ExtractChoice(text) ?? (ExtractBoxed(text) is { } boxed && ChoiceLetter(boxed) is { } letter ? letter : null),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>
    /// The content of the last balanced, non-empty <c>\boxed{...}</c> (nested braces allowed, e.g. <c>\boxed{\frac{1}{2}}</c>
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
            // An empty box is no answer: the instruction "within \boxed{}" is often repeated after the real one.
            if (i < text.Length && text[i] == '{' && MatchingBrace(text, i) is int close && text.Substring(i + 1, close - i - 1).Trim() is { Length: > 0 } inner)
                return inner;
            searchEnd = at; // empty, unbalanced or not followed by '{': try an earlier one
        }
        return null;
    }

    /// <summary>Index of the '}' closing the '{' at <paramref name="open"/> (escaped <c>\{ \}</c> skipped); null if unbalanced.</summary>
    private static int? MatchingBrace(string text, int open)
    {
        int depth = 0;
        for (int j = open; j < text.Length; j++)
        {
            char c = text[j];
            if (c == '\\' && j + 1 < text.Length && (text[j + 1] == '{' || text[j + 1] == '}')) { j++; continue; }
            if (c == '{') depth++;
            else if (c == '}' && --depth == 0) return j;
        }
        return null;
    }

    /// <summary>Last occurrence of <paramref name="value"/> that ends before <paramref name="end"/>.</summary>
    private static int LastIndexOf(string text, string value, int end) =>
        end <= 0 ? -1 : text.LastIndexOf(value, end - 1, StringComparison.Ordinal);

    [GeneratedRegex("\"answer\"\\s*:\\s*(\"(?:[^\"\\\\]|\\\\.)*\")", RegexOptions.CultureInvariant)]
    private static partial Regex AnswerFieldRegex();

    // The loose forms models write when they do not quite follow the JSON instruction: 'answer': 'C', answer: C,
    // **Answer:** (C), "answer": C. Only a single letter is taken, so "answer: because ..." is not read as a choice.
    [GeneratedRegex("""(?i)\banswer\b['"*]*\s*(?:is\s*)?[:=]\s*[*'"(\[]*\s*([A-Za-z])\s*[)\]'"*]*(?![A-Za-z0-9])""", RegexOptions.CultureInvariant)]
    private static partial Regex LooseAnswerRegex();

    /// <summary>
    /// The value of the last non-empty <c>"answer": "X"</c> JSON field (string unescaped, trimmed), as QwQ's multiple-choice
    /// prompt asks for; failing that, the letter of the last loose form (<c>answer: C</c>, <c>'answer': 'C'</c>,
    /// <c>**Answer:** (C)</c>). Null when there is neither.
    /// </summary>
    public static string? ExtractChoice(string? text)
    {
        if (string.IsNullOrEmpty(text)) return null;
        var matches = AnswerFieldRegex().Matches(text);
        for (int m = matches.Count - 1; m >= 0; m--)
        {
            string literal = matches[m].Groups[1].Value;
            string? value;
            try
            {
                value = JsonSerializer.Deserialize<string>(literal, AnswerJsonContext.Default.String)?.Trim();
            }
            catch (JsonException)
            {
                value = literal[1..^1].Trim();
            }
            // An empty field ("answer": "") is no answer; it must neither vote nor hide an earlier one.
            if (!string.IsNullOrEmpty(value)) return value;
        }
        var loose = LooseAnswerRegex().Matches(text);
        return loose.Count > 0 ? loose[^1].Groups[1].Value.ToUpperInvariant() : null;
    }

    /// <summary>The letter of a choice answer written as <c>C</c>, <c>(c)</c>, <c>C.</c> or <c>\text{C}</c>; null otherwise.</summary>
    public static string? ChoiceLetter(string? answer)
    {
        if (answer is null) return null;
        string s = Normalize(answer).Trim('(', ')', '[', ']', '.', ':');
        return s.Length == 1 && char.IsAsciiLetter(s[0]) ? s.ToUpperInvariant() : null;
    }

    /// <summary>
    /// Whether <paramref name="predicted"/> (an extracted answer) matches <paramref name="expected"/>. Choices
    /// compare letters, case-insensitively; math answers compare as numbers when both are one (0.5 = 1/2 =
    /// <c>\frac{1}{2}</c>; percent and degree signs are dropped, so 50\% = 50), otherwise as normalized text.
    /// </summary>
    public static bool IsCorrect(string? predicted, string expected, AnswerKind kind)
    {
        if (predicted is null) return false;
        if (kind == AnswerKind.Choice)
            return ChoiceLetter(predicted) is { } p && p == (ChoiceLetter(expected) ?? Normalize(expected).ToUpperInvariant());
        return SameMathAnswer(predicted, expected);
    }

    /// <summary>Math answers equal after normalization: numerically when both parse as numbers, else as text.</summary>
    public static bool SameMathAnswer(string a, string b)
    {
        string na = Normalize(a), nb = Normalize(b);
        if (TryParseNumber(na, out double x) && TryParseNumber(nb, out double y))
            return x == y || Math.Abs(x - y) <= 1e-9 * Math.Max(Math.Abs(x), Math.Abs(y));
        return na == nb;
    }

    /// <summary>
    /// A key under which equal answers group (majority voting): the number in invariant round-trip form when
    /// the answer is one, else the normalized text (a choice: its upper-case letter).
    /// </summary>
    public static string VoteKey(string answer, AnswerKind kind)
    {
        if (kind == AnswerKind.Choice) return ChoiceLetter(answer) ?? Normalize(answer).ToUpperInvariant();
        string n = Normalize(answer);
        // Rounded to 12 significant digits so that 1/3 and 0.333333333333 (equal by SameMathAnswer) share a key.
        return TryParseNumber(n, out double v) ? "#" + v.ToString("G12", CultureInfo.InvariantCulture) : n;
    }

    [GeneratedRegex(@"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{")]
    private static partial Regex TextCommandRegex();

    [GeneratedRegex(@"\G\s*(?:\^\s*(?:[23]|\{\s*[23]\s*\}))?\s*$")]
    private static partial Regex UnitTailRegex();

    [GeneratedRegex(@"^-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")]
    private static partial Regex LeadingNumberRegex();

    [GeneratedRegex(@"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")]
    private static partial Regex ThousandsRegex();

    [GeneratedRegex(@"^-?\d{1,3}(?:\s\d{3})+(?:\.\d+)?$")]
    private static partial Regex SpaceThousandsRegex();

    [GeneratedRegex(@"(?<=\d)\s+(?=\d)")]
    private static partial Regex DigitGapRegex();

    [GeneratedRegex(@"(?<!\d)\s+|\s+(?!\d)")]
    private static partial Regex SpacesRegex();

    [GeneratedRegex(@"\\[dt]frac")]
    private static partial Regex StyledFracRegex();

    [GeneratedRegex(@"\\frac(\d)(\d)")]
    private static partial Regex ShortFracRegex();

    [GeneratedRegex(@"^[A-Za-z]\s*=(?!=)")]
    private static partial Regex VariableAssignmentRegex();

    /// <summary>
    /// An answer with its presentation removed: surrounding <c>$</c> / <c>\( \)</c> / <c>\[ \]</c>, a leading
    /// <c>x =</c>, <c>\left</c>/<c>\right</c>, spacing commands and spaces (a space between two digits stays unless it
    /// groups thousands: 1 1/2 is not 11/2), thousands separators (1,234), degree and
    /// percent signs, <c>\dfrac</c>/<c>\tfrac</c> (as <c>\frac</c>, and <c>\frac12</c> as <c>\frac{1}{2}</c>),
    /// <c>\text{...}</c> units ending the answer after a number (a <c>\text{}</c> that is the whole answer keeps its content), and a
    /// trailing period.
    /// </summary>
    public static string Normalize(string answer)
    {
        string s = answer.Trim().TrimEnd('.').TrimEnd();
        s = StripDelimiters(s).Replace("\\$", "", StringComparison.Ordinal).Replace("$", "", StringComparison.Ordinal);
        s = VariableAssignmentRegex().Replace(s, "", 1).Trim();
        s = UnwrapTextCommands(s);
        s = s.Replace("\\left", "", StringComparison.Ordinal).Replace("\\right", "", StringComparison.Ordinal);
        foreach (string spacing in (string[])["\\!", "\\,", "\\;", "\\:", "\\ ", "~"])
            s = s.Replace(spacing, "", StringComparison.Ordinal);
        foreach (string unit in (string[])["^{\\circ}", "^\\circ", "\\circ", "°", "\\%", "%"])
            s = s.Replace(unit, "", StringComparison.Ordinal);
        s = StyledFracRegex().Replace(s, "\\frac");
        s = ShortFracRegex().Replace(s, "\\frac{$1}{$2}");
        // Spaces go, except between two digits ("1 1/2" is not 11/2, "2 3" not 23) unless they group thousands.
        s = s.Trim();
        s = SpaceThousandsRegex().IsMatch(s) ? string.Concat(s.Where(c => !char.IsWhiteSpace(c)))
            : SpacesRegex().Replace(DigitGapRegex().Replace(s, " "), "");
        s = s.TrimEnd('.');
        if (ThousandsRegex().IsMatch(s)) s = s.Replace(",", "", StringComparison.Ordinal);
        return s;
    }

    private static string StripDelimiters(string s)
    {
        while (true)
        {
            string before = s;
            if (s.Length >= 2 && s[0] == '$' && s[^1] == '$') s = s.Trim('$').Trim();
            else if (s.StartsWith("\\(", StringComparison.Ordinal) && s.EndsWith("\\)", StringComparison.Ordinal)) s = s[2..^2].Trim();
            else if (s.StartsWith("\\[", StringComparison.Ordinal) && s.EndsWith("\\]", StringComparison.Ordinal)) s = s[2..^2].Trim();
            if (s == before) return s;
        }
    }

    /// <summary>
    /// <c>\text{...}</c> (and <c>\mathrm</c>, <c>\mbox</c>, ...): dropped after a number when it ends the answer (units:
    /// <c>5\text{ cm}</c> and <c>5\text{ cm}^2</c> are 5), unwrapped elsewhere (<c>\text{Tuesday}</c> is Tuesday).
    /// </summary>
    private static string UnwrapTextCommands(string s)
    {
        var sb = new StringBuilder();
        int at = 0;
        while (TextCommandRegex().Match(s, at) is { Success: true } m)
        {
            int open = m.Index + m.Length - 1;
            if (MatchingBrace(s, open) is not int close) break;
            string before = s[at..m.Index];
            sb.Append(before);
            string inner = s[(open + 1)..close];
            string trimmed = inner.Trim();
            // Units end the answer (an exponent such as cm^2 at most follows them): "2 \text{ and } 3" is not 2.
            var unitEnd = UnitTailRegex().Match(s, close + 1);
            bool unitsAfterNumber = trimmed.Length > 0 && char.IsLetter(trimmed[0]) && unitEnd.Success
                                    && TryParseNumber(Normalize(sb.ToString()), out _);
            if (!unitsAfterNumber) sb.Append(inner);
            at = unitsAfterNumber ? s.Length : close + 1;
        }
        sb.Append(s[at..]);
        return sb.ToString().Trim();
    }

    /// <summary>
    /// Reads a normalized answer as a number: an integer, a decimal, <c>a/b</c>, or <c>\frac{a}{b}</c> (with an
    /// optional sign before it or in the numerator). Anything else (an expression, a set, a letter) is not a number.
    /// </summary>
    public static bool TryParseNumber(string normalized, out double value)
    {
        value = 0;
        string s = normalized;
        if (s.Length == 0) return false;
        bool negative = false;
        if (s[0] == '-' && s.StartsWith("-\\frac", StringComparison.Ordinal)) { negative = true; s = s[1..]; }
        if (s.StartsWith("\\frac{", StringComparison.Ordinal))
        {
            int numClose = MatchingBrace(s, 5) ?? -1;
            if (numClose < 0 || numClose + 1 >= s.Length || s[numClose + 1] != '{') return false;
            int denClose = MatchingBrace(s, numClose + 1) ?? -1;
            if (denClose != s.Length - 1) return false;
            if (!TryParseNumber(s[6..numClose], out double num) || !TryParseNumber(s[(numClose + 2)..denClose], out double den) || den == 0)
                return false;
            value = (negative ? -1 : 1) * num / den;
            return true;
        }
        int slash = s.IndexOf('/');
        if (slash > 0)
        {
            if (!TryParsePlain(s[..slash], out double num) || !TryParsePlain(s[(slash + 1)..], out double den) || den == 0) return false;
            value = num / den;
            return true;
        }
        return TryParsePlain(s, out value);
    }

    private static bool TryParsePlain(string s, out double value)
    {
        value = 0;
        // Only digits, a sign, one point and an exponent: double.TryParse alone would also take "Infinity" and "1_000".
        return s.Length > 0 && LeadingNumberRegex().Match(s) is { Success: true } m && m.Length == s.Length
               && double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out value);
    }
}

[System.Text.Json.Serialization.JsonSerializable(typeof(string))]
internal sealed partial class AnswerJsonContext : System.Text.Json.Serialization.JsonSerializerContext;
