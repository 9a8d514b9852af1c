using QwQ.Cuda.Generation;
using QwQ.Cuda.Text;

namespace QwQ.Cuda.Server;

// OpenAI's response shapes (serialised snake_case, nulls left out). reasoning_content is vLLM's field for the thinking part.

internal sealed record ChatCompletion(string Id, long Created, string Model, IReadOnlyList<ChatChoice> Choices, Usage Usage)
{
    public string Object => "chat.completion";
}

internal sealed record ChatChoice(int Index, AssistantMessage Message, string FinishReason);

internal sealed record AssistantMessage(string? Content, string? ReasoningContent, IReadOnlyList<ToolCallOut>? ToolCalls)
{
    public string Role => "assistant";
}

internal sealed record ToolCallOut(string Id, FunctionOut Function, int? Index = null)
{
    public string Type => "function";

    public static ToolCallOut From(ToolCall call, int? index = null) =>
        new("call_" + Guid.NewGuid().ToString("N")[..24], new FunctionOut(call.Name, call.ArgumentsJson), index);
}

internal sealed record FunctionOut(string Name, string Arguments);

internal sealed record ChatChunk(string Id, long Created, string Model, IReadOnlyList<ChunkChoice> Choices, Usage? Usage = null)
{
    public string Object => "chat.completion.chunk";
}

internal sealed record ChunkChoice(int Index, Delta Delta, string? FinishReason = null);

internal sealed record Delta(string? Role = null, string? Content = null, string? ReasoningContent = null, IReadOnlyList<ToolCallOut>? ToolCalls = null);

internal sealed record TextCompletion(string Id, long Created, string Model, IReadOnlyList<TextChoice> Choices, Usage? Usage)
{
    public string Object => "text_completion";
}

internal sealed record TextChoice(int Index, string Text, string? FinishReason);

internal sealed record Usage(int PromptTokens, int CompletionTokens, int TotalTokens, PromptDetails PromptTokensDetails, CompletionDetails CompletionTokensDetails)
{
    /// <param name="reasoningTokens">Generated tokens before <c>&lt;/think&gt;</c> (all of them when it never came).</param>
    public static Usage From(GenerationUsage u, int reasoningTokens) =>
        new(u.PromptTokens, u.GeneratedTokens, u.TotalTokens, new PromptDetails(u.CachedPromptTokens), new CompletionDetails(reasoningTokens));
}

internal sealed record PromptDetails(int CachedTokens);

internal sealed record CompletionDetails(int ReasoningTokens);

internal sealed record ModelList(IReadOnlyList<ModelCard> Data)
{
    public string Object => "list";
}

internal sealed record ModelCard(string Id, long Created, int MaxModelLen)
{
    public string Object => "model";
    public string OwnedBy => "qwq.cuda";
}

internal sealed record ErrorBody(ErrorDetail Error);

internal sealed record ErrorDetail(
    string Message,
    string Type,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.Never)] string? Param,
    [property: System.Text.Json.Serialization.JsonIgnore(Condition = System.Text.Json.Serialization.JsonIgnoreCondition.Never)] string? Code = null);
