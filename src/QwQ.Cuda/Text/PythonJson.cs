using System.Globalization;
using System.Text;
using System.Text.Json;

namespace QwQ.Cuda.Text;

/// <summary>
/// Serialises JSON the way Python's <c>json.dumps(x, ensure_ascii=False)</c> does after <c>json.loads</c>:
/// separators <c>", "</c> and <c>": "</c>, key order kept, non-ASCII kept, control characters escaped
/// (<c>\n \r \t \b \f</c>, others <c>\u00XX</c>), integers verbatim, floats as Python's <c>repr</c>
/// (<c>100.0</c>, <c>1e-07</c>, <c>1e+21</c>). This is what transformers' chat-template <c>tojson</c> filter prints.
/// </summary>
public static class PythonJson
{
    public static string Dumps(JsonElement element)
    {
        var sb = new StringBuilder();
        Write(sb, element);
        return sb.ToString();
    }

    /// <summary>Parses <paramref name="json"/> and re-serialises it Python-style.</summary>
    /// <exception cref="JsonException">Not valid JSON.</exception>
    public static string Dumps(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return Dumps(doc.RootElement);
    }

    public static void Write(StringBuilder sb, JsonElement e)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
            {
                sb.Append('{');
                bool first = true;
                foreach (var p in e.EnumerateObject())
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    WriteString(sb, p.Name);
                    sb.Append(": ");
                    Write(sb, p.Value);
                }
                sb.Append('}');
                break;
            }
            case JsonValueKind.Array:
            {
                sb.Append('[');
                bool first = true;
                foreach (var v in e.EnumerateArray())
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    Write(sb, v);
                }
                sb.Append(']');
                break;
            }
            case JsonValueKind.String: WriteString(sb, e.GetString()!); break;
            case JsonValueKind.Number: sb.Append(FormatNumber(e.GetRawText())); break;
            case JsonValueKind.True: sb.Append("true"); break;
            case JsonValueKind.False: sb.Append("false"); break;
            case JsonValueKind.Null: sb.Append("null"); break;
            default: throw new ArgumentException($"Cannot serialise a JSON value of kind {e.ValueKind}.");
        }
    }

    public static void WriteString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }

    /// <summary>A JSON number literal as Python prints it after <c>json.loads</c>.</summary>
    public static string FormatNumber(string raw)
    {
        bool isFloat = raw.AsSpan().IndexOfAny('.', 'e', 'E') >= 0;
        if (!isFloat)
        {
            // Python int: arbitrary precision, printed verbatim ("-0" becomes "0").
            return raw == "-0" ? "0" : raw;
        }
        double d = double.Parse(raw, NumberStyles.Float, CultureInfo.InvariantCulture);
        return FloatRepr(d);
    }

    /// <summary>Python's <c>repr(float)</c>: shortest round-trip digits; exponent form when the decimal
    /// exponent is below -4 or at least 16.</summary>
    public static string FloatRepr(double d)
    {
        if (double.IsNaN(d)) return "NaN";
        if (double.IsPositiveInfinity(d)) return "Infinity";
        if (double.IsNegativeInfinity(d)) return "-Infinity";
        bool negative = d < 0 || (d == 0 && double.IsNegative(d));
        string sign = negative ? "-" : "";
        if (d == 0) return sign + "0.0";

        // "R" gives the shortest round-trip digits, e.g. "1.5", "1E+16", "1.2345E-05".
        string shortest = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        // Extract digits and decimal exponent from the shortest form.
        string mantissa = shortest;
        int exp10 = 0;
        int ePos = shortest.IndexOfAny(['E', 'e']);
        if (ePos >= 0)
        {
            mantissa = shortest[..ePos];
            exp10 = int.Parse(shortest[(ePos + 1)..], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        }
        int dot = mantissa.IndexOf('.');
        string intPart = dot >= 0 ? mantissa[..dot] : mantissa;
        string fracPart = dot >= 0 ? mantissa[(dot + 1)..] : "";
        string digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - digits.Length;
        // decpt: position of the decimal point relative to the first significant digit.
        int decpt = intPart.Length - leadingZeros + exp10;
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";

        if (decpt <= -4 || decpt > 16)
        {
            string m = digits.Length > 1 ? digits[0] + "." + digits[1..] : digits;
            int e = decpt - 1;
            return sign + m + "e" + (e < 0 ? "-" : "+") + Math.Abs(e).ToString("00", CultureInfo.InvariantCulture);
        }
        if (decpt <= 0) return sign + "0." + new string('0', -decpt) + digits;
        if (decpt >= digits.Length) return sign + digits + new string('0', decpt - digits.Length) + ".0";
        return sign + digits[..decpt] + "." + digits[decpt..];
    }
}
