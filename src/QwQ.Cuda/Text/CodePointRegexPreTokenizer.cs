using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace QwQ.Cuda.Text;

/// <summary>
/// Splits text with a tokenizer.json pre-tokenizer regex, with code-point semantics like Hugging Face's
/// (Oniguruma) engine. .NET regexes see UTF-16 units, so a character outside the BMP (𝟙, 𠀀, 😀) would not
/// match <c>\p{L}</c>/<c>\p{N}</c> and pieces could differ. When the text has surrogate pairs, the regex runs
/// on a shadow string in which each such character is one BMP stand-in of the same class (letter, number or
/// other), and the piece offsets are mapped back. Exact for patterns whose only character tests on non-BMP
/// text are Unicode categories and whitespace, as in Qwen2/QwQ's.
/// </summary>
internal sealed class CodePointRegexPreTokenizer : PreTokenizer
{
    private const char LetterStandIn = '\u4E00';   // Lo
    private const char NumberStandIn = '\u0660';   // Nd (ARABIC-INDIC DIGIT ZERO)
    private const char OtherStandIn = '\u00A7';    // Po, not whitespace

    private readonly Regex _regex;

    public CodePointRegexPreTokenizer(Regex regex) => _regex = regex;

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text)
    {
        if (string.IsNullOrEmpty(text)) return [];
        return PreTokenize(text.AsSpan());
    }

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text)
    {
        var pieces = new List<(int, int)>();
        if (text.IsEmpty) return pieces;

        int firstSurrogate = text.IndexOfAnyInRange('\uD800', '\uDFFF');
        if (firstSurrogate < 0)
        {
            foreach (var m in _regex.EnumerateMatches(text))
                if (m.Length > 0) pieces.Add((m.Index, m.Length));
            return pieces;
        }

        // Shadow string: one char per code point; map[i] = offset in text of shadow char i (map[n] = text.Length).
        var shadow = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length; i++)
        {
            map.Add(i);
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int cp = char.ConvertToUtf32(c, text[i + 1]);
                shadow.Append(StandIn(CharUnicodeInfo.GetUnicodeCategory(cp)));
                i++;
            }
            else shadow.Append(c);
        }
        map.Add(text.Length);

        string s = shadow.ToString();
        foreach (var m in _regex.EnumerateMatches(s))
        {
            if (m.Length == 0) continue;
            int start = map[m.Index], end = map[m.Index + m.Length];
            pieces.Add((start, end - start));
        }
        return pieces;
    }

    private static char StandIn(UnicodeCategory cat) => cat switch
    {
        UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
            or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => LetterStandIn,
        UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => NumberStandIn,
        _ => OtherStandIn,
    };
}
