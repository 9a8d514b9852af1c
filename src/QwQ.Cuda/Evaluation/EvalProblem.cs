using System.Text;
using System.Text.Json;
using QwQ.Cuda.Errors;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Evaluation;

/// <summary>One problem of an evaluation set: the user message sent to the model and the answer it should reach.</summary>
/// <param name="Id">Unique within the set; results are keyed by it (and the sample index).</param>
/// <param name="Prompt">The user message, instruction included (see <see cref="EvalPrompts"/>).</param>
/// <param name="Expected">The reference answer (math: any form <see cref="AnswerExtractor.Normalize"/> reads; choice: a letter).</param>
public sealed record EvalProblem(string Id, string Prompt, string Expected, AnswerKind Kind);

/// <summary>The instructions QwQ-32B's model card prescribes for benchmarking ("Usage Guidelines", point 4).</summary>
public static class EvalPrompts
{
    /// <summary>Appended to math problems.</summary>
    public const string Math = "Please reason step by step, and put your final answer within \\boxed{}.";

    /// <summary>
    /// Appended to multiple-choice questions. The card writes the example as <c>`\"answer\": \"C\"`</c>, quotes
    /// escaped as in a string literal; the model is shown the unescaped JSON, which is what it is asked to write.
    /// </summary>
    public const string Choice = "Please show your choice in the `answer` field with only the choice letter, e.g.,`\"answer\": \"C\"`.";

    /// <summary>The user message: the problem, then the kind's instruction on its own line.</summary>
    public static string Build(string problem, AnswerKind kind) =>
        problem.TrimEnd() + "\n" + (kind == AnswerKind.Math ? Math : Choice);

    /// <summary>A question followed by its choices, one per line: <c>A. text</c>.</summary>
    public static string FormatChoices(string question, IEnumerable<KeyValuePair<string, string>> choices)
    {
        var sb = new StringBuilder(question.TrimEnd()).Append('\n');
        foreach (var (letter, text) in choices) sb.Append('\n').Append(letter).Append(". ").Append(text.Trim());
        return sb.ToString();
    }
}

/// <summary>Reads an evaluation set from JSON lines (format in docs/EVAL.md).</summary>
public static class EvalProblems
{
    /// <summary>
    /// Loads <paramref name="path"/>: math lines are <c>{"id", "problem", "answer"}</c>; choice lines are
    /// <c>{"id", "question", "choices": {"A": ..} or [..], "answer": "C"}</c>, or without "choices" when the question
    /// already lists them. Blank lines are skipped. Throws <see cref="QwqException"/> naming the line and the field.
    /// </summary>
    public static IReadOnlyList<EvalProblem> Load(string path, AnswerKind kind)
    {
        if (Directory.Exists(path))
            throw new QwqException($"--data {path} is a directory; pass a problems .jsonl file (one JSON object per line, see docs/EVAL.md).");
        if (!File.Exists(path))
            throw new QwqException($"The problems file '{path}' does not exist (expected JSON lines, see docs/EVAL.md).");
        var problems = new List<EvalProblem>();
        var ids = new HashSet<string>(StringComparer.Ordinal);
        int lineNo = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNo++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            string where = $"{path} line {lineNo}";
            EvalProblem problem;
            try
            {
                using var doc = JsonDocument.Parse(line);
                problem = Parse(doc.RootElement, kind, where, lineNo);
            }
            catch (JsonException e)
            {
                throw new QwqException($"{where} is not a JSON object: {e.Message}", e);
            }
            if (!ids.Add(problem.Id))
                throw new QwqException($"{where}: id \"{problem.Id}\" is used twice; results are keyed by id, so give each problem its own.");
            problems.Add(problem);
        }
        if (problems.Count == 0)
            throw new QwqException($"The problems file '{path}' holds no problems (one JSON object per line, see docs/EVAL.md).");
        return problems;
    }

    /// <summary>One line's object as a problem of <paramref name="kind"/>; the id defaults to the line number.</summary>
    public static EvalProblem Parse(JsonElement o, AnswerKind kind, string where, int lineNo)
    {
        if (o.ValueKind != JsonValueKind.Object)
            throw new QwqException($"{where}: expected a JSON object, got {o.ValueKind}.");
        string id = NotEmpty(OptionalScalar(o, "id", where), "id", where) ?? lineNo.ToString(System.Globalization.CultureInfo.InvariantCulture);
        string expected = NotEmpty(OptionalScalar(o, "answer", where), "answer", where)
                          ?? throw new QwqException($"{where}: no \"answer\" field; every problem needs its reference answer.");
        if (kind == AnswerKind.Math)
        {
            string text = NotEmpty(OptionalScalar(o, "problem", where), "problem", where)
                          ?? throw new QwqException(o.TryGetProperty("question", out _)
                              ? $"{where}: no \"problem\" field, but a \"question\": is this a multiple-choice set? Pass --kind choice."
                              : $"{where}: no \"problem\" field; math lines are {{\"id\", \"problem\", \"answer\"}}.");
            return new EvalProblem(id, EvalPrompts.Build(text, kind), expected, kind);
        }

        string question = NotEmpty(OptionalScalar(o, "question", where), "question", where)
                          ?? throw new QwqException(o.TryGetProperty("problem", out _)
                              ? $"{where}: no \"question\" field, but a \"problem\": is this a math set? Pass --kind math."
                              : $"{where}: no \"question\" field; choice lines are {{\"id\", \"question\", \"choices\", \"answer\"}}.");
        if (AnswerExtractor.ChoiceLetter(expected) is not { } letter)
            throw new QwqException($"{where}: \"answer\" is \"{expected}\"; a multiple-choice answer is one letter such as \"C\".");
        if (o.TryGetProperty("choices", out var choices) && choices.ValueKind != JsonValueKind.Null)
        {
            var list = Choices(choices, where);
            // An answer that is none of the listed letters can never be matched: every sample would score 0.
            if (!list.Any(c => AnswerExtractor.ChoiceLetter(c.Key) == letter))
                throw new QwqException($"{where}: \"answer\" is \"{expected}\", but the choices are {string.Join(", ", list.Select(c => c.Key))}.");
            question = EvalPrompts.FormatChoices(question, list);
        }
        return new EvalProblem(id, EvalPrompts.Build(question, kind), expected, kind);
    }

    /// <summary>An empty or blank field is a mistake in the set (a problem without text, an answer nothing matches).</summary>
    private static string? NotEmpty(string? value, string name, string where) =>
        value is not null && string.IsNullOrWhiteSpace(value) ? throw new QwqException($"{where}: \"{name}\" is empty.") : value;

    private static List<KeyValuePair<string, string>> Choices(JsonElement choices, string where)
    {
        var list = new List<KeyValuePair<string, string>>();
        if (choices.ValueKind == JsonValueKind.Object)
        {
            foreach (var p in choices.EnumerateObject())
                list.Add(new(p.Name, Scalar(p.Value, $"{where}: choice \"{p.Name}\"")));
        }
        else if (choices.ValueKind == JsonValueKind.Array)
        {
            int i = 0;
            foreach (var c in choices.EnumerateArray())
            {
                if (i >= 26) throw new QwqException($"{where}: more than 26 choices; letters run out at Z.");
                list.Add(new(((char)('A' + i)).ToString(), Scalar(c, $"{where}: choice {i + 1}")));
                i++;
            }
        }
        else throw new QwqException($"{where}: \"choices\" must be an object {{\"A\": \"...\"}} or an array of strings.");
        if (list.Count < 2) throw new QwqException($"{where}: \"choices\" needs at least two entries.");
        return list;
    }

    private static string? OptionalScalar(JsonElement o, string name, string where) =>
        o.TryGetProperty(name, out var v) && v.ValueKind != JsonValueKind.Null ? Scalar(v, $"{where}: \"{name}\"") : null;

    /// <summary>A string or a number (ids and answers are often written as numbers), as text.</summary>
    private static string Scalar(JsonElement v, string what) => v.ValueKind switch
    {
        JsonValueKind.String => v.GetString()!,
        JsonValueKind.Number => v.GetRawText(),
        _ => throw new QwqException($"{what} must be a string or a number, got {v.ValueKind}."),
    };
}
