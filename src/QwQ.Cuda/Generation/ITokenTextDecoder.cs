namespace QwQ.Cuda.Generation;

/// <summary>
/// Turns generated token ids into text incrementally. A token that ends inside a UTF-8 character gives "",
/// and the character comes out with the token that completes it.
/// </summary>
public interface ITokenTextDecoder
{
    /// <summary>The text this token completes (may be empty).</summary>
    string Push(int tokenId);

    /// <summary>Whatever is still buffered at the end of generation.</summary>
    string Flush();
}
