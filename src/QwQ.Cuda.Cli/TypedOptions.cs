using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using System.Numerics;

namespace QwQ.Cuda.Cli;

/// <summary>
/// Options whose values are numbers (or enum names), parsed here in the invariant culture. System.CommandLine's own parser uses the
/// current culture, so under LC_ALL=de_DE.UTF-8 "--temperature 0.5" ran at temperature 5 ('.' is the German group
/// separator) and under fr_FR "0.6" was refused; and its error named the .NET type (System.Nullable`1[System.Double])
/// instead of saying what to write.
/// </summary>
internal static class TypedOptions
{
    /// <summary>A real number, e.g. <c>--top-p 0.95</c>; "1,5" is refused, not read as 15.</summary>
    public static Option<double?> Real(string name, string example, string description, params string[] aliases) =>
        Create<double>(name, aliases, description, NumberStyles.Float, $"a number such as {example}");

    /// <summary>A whole number, e.g. <c>--top-k 40</c>.</summary>
    public static Option<T?> Integer<T>(string name, string example, string description, params string[] aliases) where T : struct, INumberBase<T> =>
        Create<T>(name, aliases, description, NumberStyles.AllowLeadingSign, $"a whole number such as {example}");

    /// <summary>A whole number with a default, e.g. <c>--device 0</c>.</summary>
    public static Option<int> Integer(string name, int defaultValue, string description)
    {
        var option = new Option<int>(name) { DefaultValueFactory = _ => defaultValue, Description = description };
        option.CustomParser = r => Parse<int>(r, name, NumberStyles.AllowLeadingSign,
            string.Create(CultureInfo.InvariantCulture, $"a whole number such as {defaultValue}")) ?? defaultValue;
        return option;
    }

    /// <summary>
    /// One of an enum's names in any case, e.g. <c>--kv-cache fp8</c>; help and errors list them in lower case, as the
    /// README writes them (the error said "Bf16, Fp8" where the help said &lt;bf16|fp8&gt;).
    /// </summary>
    public static Option<T> OneOf<T>(string name, T defaultValue, string description) where T : struct, Enum
    {
        string[] names = [.. Enum.GetNames<T>().Select(n => n.ToLowerInvariant())];
        var option = new Option<T>(name) { DefaultValueFactory = _ => defaultValue, Description = description, HelpName = string.Join('|', names) };
        // By name only: Enum.TryParse would also take "7", which names no member.
        option.CustomParser = r => Choice(r, name, names) is { } match ? Enum.Parse<T>(match, ignoreCase: true) : defaultValue;
        return option;
    }

    /// <summary>
    /// Restricts a text option to <paramref name="values"/>, any case, as <see cref="OneOf{T}"/> does for enum names
    /// (System.CommandLine's AcceptOnlyFromAmong refused "CPU" and said "Argument 'gpu' not recognized" without the
    /// option's name, the choices on tab-indented lines). The value comes back spelled as in <paramref name="values"/>.
    /// </summary>
    public static void AcceptOnly(Option<string?> option, params string[] values)
    {
        option.HelpName = string.Join('|', values);
        option.CustomParser = r => Choice(r, option.Name, values);
    }

    /// <summary>The one of <paramref name="names"/> the argument spells, in any case, as spelled there; else an error naming the option and the choices, and null.</summary>
    private static string? Choice(ArgumentResult r, string option, string[] names)
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[^1].Value : "";
        string? match = names.FirstOrDefault(n => string.Equals(n, text, StringComparison.OrdinalIgnoreCase));
        if (match is null) r.AddError($"{option} expects one of {string.Join(", ", names)}, got '{text}'");
        return match;
    }

    private static Option<T?> Create<T>(string name, string[] aliases, string description, NumberStyles styles, string expects)
        where T : struct, INumberBase<T>
    {
        var option = new Option<T?>(name, aliases) { Description = description };
        option.CustomParser = r => Parse<T>(r, name, styles, expects);
        return option;
    }

    private static T? Parse<T>(ArgumentResult r, string name, NumberStyles styles, string expects) where T : struct, INumberBase<T>
    {
        string text = r.Tokens.Count > 0 ? r.Tokens[^1].Value : "";
        if (T.TryParse(text, styles, CultureInfo.InvariantCulture, out T value)) return value;
        r.AddError($"{name} expects {expects}, got '{text}'");
        return null;
    }
}
