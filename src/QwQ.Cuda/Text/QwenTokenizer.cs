using System.Buffers;
using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using QwQ.Cuda.Errors;

namespace QwQ.Cuda.Text;

/// <summary>A token that is matched whole in the input text and never produced by BPE merges.</summary>
/// <param name="Id">Its id.</param>
/// <param name="Content">Its text, e.g. <c>&lt;|im_start|&gt;</c>.</param>
/// <param name="Special">True for tokens flagged <c>special</c> in tokenizer.json; only these are dropped by
/// <see cref="QwenTokenizer.Decode"/> with <c>skipSpecialTokens</c> (as in Hugging Face tokenizers).
/// <c>&lt;think&gt;</c>, <c>&lt;/think&gt;</c> and <c>&lt;tool_call&gt;</c> are added but not special in QwQ.</param>
public sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>
/// QwQ's (Qwen2's) byte-level BPE tokenizer, loaded from a model directory's <c>tokenizer.json</c> and
/// <c>tokenizer_config.json</c>, producing the same ids as Hugging Face tokenizers:
/// added tokens are matched whole in the raw text first; every other piece is NFC-normalised, split by the
/// pre-tokenizer regex from tokenizer.json and BPE-encoded at byte level by Microsoft.ML.Tokenizers.
/// Thread-safe after construction.
/// </summary>
public sealed class QwenTokenizer
{
    public const string TokenizerFileName = "tokenizer.json";
    public const string TokenizerConfigFileName = "tokenizer_config.json";

    private readonly BpeTokenizer _bpe;
    private readonly bool _nfc;
    private readonly string?[] _idToToken;
    private readonly byte[][] _idToBytes;
    private readonly bool[] _isSpecial;
    private readonly Dictionary<string, int> _tokenToId;
    private readonly AddedToken[] _added;
    private readonly Dictionary<char, AddedToken[]> _addedByFirstChar; // each list longest first
    private readonly SearchValues<char> _addedFirstChars;

    private QwenTokenizer(BpeTokenizer bpe, bool nfc, Dictionary<string, int> vocab, AddedToken[] added, string pattern)
    {
        _bpe = bpe;
        _nfc = nfc;
        PreTokenizerPattern = pattern;
        _added = added;
        int size = 0;
        foreach (var (_, id) in vocab) size = Math.Max(size, id + 1);
        foreach (var a in added) size = Math.Max(size, a.Id + 1);
        VocabSize = size;

        _idToToken = new string?[size];
        _idToBytes = new byte[size][];
        _isSpecial = new bool[size];
        _tokenToId = new Dictionary<string, int>(vocab.Count + added.Length, StringComparer.Ordinal);
        foreach (var (token, id) in vocab)
        {
            _idToToken[id] = token;
            _idToBytes[id] = ByteLevel.ToBytes(token);
            _tokenToId[token] = id;
        }
        foreach (var a in added)
        {
            _idToToken[a.Id] = a.Content;
            _idToBytes[a.Id] = Encoding.UTF8.GetBytes(a.Content);
            _isSpecial[a.Id] = a.Special;
            _tokenToId[a.Content] = a.Id;
        }
        for (int i = 0; i < size; i++) _idToBytes[i] ??= [];

        _addedByFirstChar = added.Where(a => a.Content.Length > 0)
            .GroupBy(a => a.Content[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(a => a.Content.Length).ToArray());
        _addedFirstChars = SearchValues.Create(_addedByFirstChar.Keys.ToArray());

        ImStartId = RequireAdded("<|im_start|>");
        ImEndId = RequireAdded("<|im_end|>");
        EndOfTextId = RequireAdded("<|endoftext|>");
        ThinkId = RequireAdded("<think>");
        ThinkEndId = RequireAdded("</think>");
    }

    private int RequireAdded(string content) =>
        _tokenToId.TryGetValue(content, out int id)
            ? id
            : throw new QwqException($"{TokenizerFileName} has no token '{content}'; this is not a QwQ/Qwen2 tokenizer.");

    /// <summary>Number of ids the tokenizer can produce or decode: max id + 1 (151669 for QwQ-32B).
    /// The model's embedding table (config.json vocab_size) may be larger.</summary>
    public int VocabSize { get; }

    public int ImStartId { get; }
    public int ImEndId { get; }
    public int ThinkId { get; }
    public int ThinkEndId { get; }
    public int EndOfTextId { get; }

    /// <summary>The pre-tokenizer split regex taken from tokenizer.json.</summary>
    public string PreTokenizerPattern { get; }

    /// <summary>The added tokens (26 for QwQ), in id order.</summary>
    public IReadOnlyList<AddedToken> AddedTokens => _added;

    /// <summary>Loads <c>tokenizer.json</c> and <c>tokenizer_config.json</c> from <paramref name="modelDir"/>.</summary>
    /// <exception cref="QwqException">A file is missing, malformed, or describes an unsupported tokenizer.</exception>
    public static QwenTokenizer Load(string modelDir)
    {
        if (string.IsNullOrEmpty(modelDir) || !Directory.Exists(modelDir))
            throw new QwqException($"Model directory '{modelDir}' does not exist.");
        string tokPath = Path.Combine(modelDir, TokenizerFileName);
        string cfgPath = Path.Combine(modelDir, TokenizerConfigFileName);
        bool gzip = false;
        if (!File.Exists(tokPath) && File.Exists(tokPath + ".gz"))
        {
            tokPath += ".gz"; // a gzip-compressed copy (test fixtures) is accepted too
            gzip = true;
        }
        if (!File.Exists(tokPath))
            throw new QwqException($"'{tokPath}' is missing; the model directory must contain the Hugging Face tokenizer files.");
        if (!File.Exists(cfgPath))
            throw new QwqException($"'{cfgPath}' is missing; the model directory must contain the Hugging Face tokenizer files.");

        var cfgAdded = ReadConfigAddedTokens(cfgPath);
        try
        {
            using var file = File.OpenRead(tokPath);
            using Stream stream = gzip ? new GZipStream(file, CompressionMode.Decompress) : file;
            using var doc = JsonDocument.Parse(stream, new JsonDocumentOptions { MaxDepth = 256 });
            return FromTokenizerJson(doc.RootElement, tokPath, cfgAdded);
        }
        catch (JsonException e)
        {
            throw new QwqException($"'{tokPath}' is not valid JSON: {e.Message}", e);
        }
        catch (InvalidDataException e)
        {
            throw new QwqException($"'{tokPath}' is not a valid gzip file: {e.Message}", e);
        }
        catch (IOException e)
        {
            throw new QwqException($"'{tokPath}' could not be read: {e.Message}", e);
        }
        catch (Exception e) when (e is InvalidOperationException or KeyNotFoundException or FormatException or ArgumentException)
        {
            throw new QwqException($"'{tokPath}' is malformed: {e.Message}", e);
        }
    }

    private static Dictionary<int, string> ReadConfigAddedTokens(string cfgPath)
    {
        var result = new Dictionary<int, string>();
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(cfgPath));
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new QwqException($"'{cfgPath}' is malformed: expected a JSON object.");
            if (doc.RootElement.TryGetProperty("added_tokens_decoder", out var dec) && dec.ValueKind == JsonValueKind.Object)
                foreach (var p in dec.EnumerateObject())
                {
                    if (!int.TryParse(p.Name, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= Config.ModelConfig.MaxVocabSize)
                        throw new QwqException($"'{cfgPath}' is malformed: added_tokens_decoder key {Config.JsonFields.Quote(p.Name)} is not a token id " +
                                               $"(an integer from 0 to {Config.ModelConfig.MaxVocabSize - 1}).");
                    if (p.Value.ValueKind != JsonValueKind.Object)
                        throw new QwqException($"'{cfgPath}' is malformed: added_tokens_decoder[{Config.JsonFields.Quote(p.Name)}] is " +
                                               $"{p.Value.ValueKind.ToString().ToLowerInvariant()}, not an object with the token's \"content\".");
                    if (p.Value.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String)
                        result[id] = c.GetString()!;
                }
        }
        catch (JsonException e)
        {
            throw new QwqException($"'{cfgPath}' is not valid JSON: {e.Message}", e);
        }
        return result;
    }

    /// <summary>
    /// A token id from tokenizer.json: an integer in [0, <see cref="Config.ModelConfig.MaxVocabSize"/>). Ids index the
    /// tables built from them, so a negative one crashed and a huge one allocated gigabytes.
    /// </summary>
    private static int TokenId(JsonElement e, string path, string what)
    {
        if (e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int id) && id >= 0 && id < Config.ModelConfig.MaxVocabSize) return id;
        string got = e.ValueKind == JsonValueKind.Number ? e.GetRawText() : e.ValueKind.ToString().ToLowerInvariant();
        throw new QwqException($"'{path}' is malformed: {what} is {(got.Length > 40 ? got[..40] + "..." : got)}, " +
                               $"but token ids are integers from 0 to {Config.ModelConfig.MaxVocabSize - 1}.");
    }

    private static QwenTokenizer FromTokenizerJson(JsonElement root, string path, Dictionary<int, string> cfgAdded)
    {
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new QwqException($"'{path}' is malformed: no \"model\" object.");
        string? type = model.TryGetProperty("type", out var t) ? t.GetString() : null;
        if (type != "BPE")
            throw new QwqException($"'{path}': model type '{type}' is not supported; expected a byte-level BPE (Qwen2) tokenizer.");
        if (!model.TryGetProperty("vocab", out var vocabEl) || vocabEl.ValueKind != JsonValueKind.Object)
            throw new QwqException($"'{path}' is malformed: model.vocab is missing.");
        if (!model.TryGetProperty("merges", out var mergesEl) || mergesEl.ValueKind != JsonValueKind.Array)
            throw new QwqException($"'{path}' is malformed: model.merges is missing.");

        var vocab = new Dictionary<string, int>(160_000, StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject())
            vocab[p.Name] = TokenId(p.Value, path, $"model.vocab[{Config.JsonFields.Quote(p.Name)}]");

        var merges = new List<string>(mergesEl.GetArrayLength());
        foreach (var m in mergesEl.EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.String) merges.Add(m.GetString()!);
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2)
            {
                string a = m[0].GetString()!, b = m[1].GetString()!;
                if (a.Contains(' ') || b.Contains(' '))
                    throw new QwqException($"'{path}': merge [\"{a}\", \"{b}\"] contains a space; not a byte-level vocabulary.");
                merges.Add(a + " " + b);
            }
            else throw new QwqException($"'{path}' is malformed: model.merges entries must be strings or pairs.");
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedEl) && addedEl.ValueKind == JsonValueKind.Array)
            foreach (var a in addedEl.EnumerateArray())
                added.Add(new AddedToken(TokenId(a.GetProperty("id"), path, "an added_tokens id"), a.GetProperty("content").GetString()!,
                    a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True));
        foreach (var (id, content) in cfgAdded)
        {
            var existing = added.FirstOrDefault(a => a.Id == id);
            if (existing is null) added.Add(new AddedToken(id, content, false));
            else if (existing.Content != content)
                throw new QwqException($"Token {id} is '{existing.Content}' in {TokenizerFileName} but '{content}' in {TokenizerConfigFileName}.");
        }
        added.Sort((x, y) => x.Id.CompareTo(y.Id));

        bool nfc = ReadNormalizer(root, path);
        string pattern = ReadSplitPattern(root, path);
        if (!(root.TryGetProperty("decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object &&
              decoder.TryGetProperty("type", out var dt) && dt.GetString() == "ByteLevel"))
            throw new QwqException($"'{path}': decoder is not ByteLevel; only byte-level BPE tokenizers are supported.");

        Regex regex;
        try
        {
            regex = new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
        }
        catch (ArgumentException e)
        {
            throw new QwqException($"'{path}': the pre-tokenizer regex is not supported by .NET: {e.Message}", e);
        }

        var options = new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = new CodePointRegexPreTokenizer(regex),
            Normalizer = null,
        };
        var bpe = BpeTokenizer.Create(options);
        return new QwenTokenizer(bpe, nfc, vocab, added.ToArray(), pattern);
    }

    private static bool ReadNormalizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("normalizer", out var n) || n.ValueKind == JsonValueKind.Null) return false;
        string? type = n.TryGetProperty("type", out var t) ? t.GetString() : null;
        if (type == "NFC") return true;
        if (type == "Sequence" && n.TryGetProperty("normalizers", out var seq) && seq.ValueKind == JsonValueKind.Array)
        {
            var types = seq.EnumerateArray().Select(x => x.TryGetProperty("type", out var tt) ? tt.GetString() : null).ToList();
            if (types.Count == 0) return false;
            if (types.All(x => x == "NFC")) return true;
        }
        throw new QwqException($"'{path}': normalizer '{type}' is not supported (only NFC or none).");
    }

    private static string ReadSplitPattern(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pt) || pt.ValueKind != JsonValueKind.Object)
            throw new QwqException($"'{path}': no pre_tokenizer; expected a Split regex followed by ByteLevel.");
        var list = new List<JsonElement>();
        if (pt.TryGetProperty("type", out var t) && t.GetString() == "Sequence" && pt.TryGetProperty("pretokenizers", out var seq))
            list.AddRange(seq.EnumerateArray());
        else list.Add(pt);

        string? pattern = null;
        foreach (var p in list)
        {
            string? type = p.TryGetProperty("type", out var tt) ? tt.GetString() : null;
            if (type == "Split")
            {
                if (pattern is not null || !p.TryGetProperty("pattern", out var pat) || !pat.TryGetProperty("Regex", out var rx))
                    throw new QwqException($"'{path}': unsupported Split pre-tokenizer (need exactly one, with a Regex pattern).");
                string behavior = p.TryGetProperty("behavior", out var b) ? b.GetString() ?? "" : "";
                bool invert = p.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True;
                if (behavior != "Isolated" || invert)
                    throw new QwqException($"'{path}': Split behavior '{behavior}' (invert={invert}) is not supported; expected Isolated.");
                pattern = rx.GetString();
            }
            else if (type == "ByteLevel")
            {
                bool useRegex = p.TryGetProperty("use_regex", out var ur) && ur.ValueKind == JsonValueKind.True;
                bool prefix = p.TryGetProperty("add_prefix_space", out var ap) && ap.ValueKind == JsonValueKind.True;
                if (useRegex || prefix)
                    throw new QwqException($"'{path}': ByteLevel pre-tokenizer with use_regex/add_prefix_space is not supported.");
            }
            else throw new QwqException($"'{path}': pre-tokenizer '{type}' is not supported.");
        }
        return pattern ?? throw new QwqException($"'{path}': no Split regex in pre_tokenizer.");
    }

    /// <summary>Encodes <paramref name="text"/>; added tokens written in the text (e.g. <c>&lt;|im_start|&gt;</c>)
    /// become their single ids. No BOS/EOS is added.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 4 + 4);
        Encode(text, ids);
        return ids.ToArray();
    }

    /// <summary>Encodes <paramref name="text"/>, appending the ids to <paramref name="ids"/>.</summary>
    public void Encode(string text, List<int> ids)
    {
        int pos = 0;
        while (pos < text.Length)
        {
            int at = FindAdded(text, pos, out var token);
            if (at < 0)
            {
                EncodeOrdinary(pos == 0 ? text : text.Substring(pos), ids);
                break;
            }
            if (at > pos) EncodeOrdinary(text.Substring(pos, at - pos), ids);
            ids.Add(token!.Id);
            pos = at + token.Content.Length;
        }
    }

    /// <summary>Leftmost, then longest, added token at or after <paramref name="start"/>; -1 if none.</summary>
    private int FindAdded(string text, int start, out AddedToken? token)
    {
        var span = text.AsSpan();
        int i = start;
        while (i < text.Length)
        {
            int rel = span.Slice(i).IndexOfAny(_addedFirstChars);
            if (rel < 0) break;
            i += rel;
            foreach (var cand in _addedByFirstChar[text[i]])
                if (span.Slice(i).StartsWith(cand.Content, StringComparison.Ordinal))
                {
                    token = cand;
                    return i;
                }
            i++;
        }
        token = null;
        return -1;
    }

    private void EncodeOrdinary(string piece, List<int> ids)
    {
        if (piece.Length == 0) return;
        if (_nfc) piece = Nfc.Normalize(piece);
        ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: true, considerNormalization: false));
    }

    /// <summary>Decodes ids to text like Hugging Face <c>decode(ids, skip_special_tokens, clean_up_tokenization_spaces=False)</c>:
    /// token bytes are concatenated and read as UTF-8, invalid sequences becoming U+FFFD. Ids outside the vocabulary are ignored.
    /// With <paramref name="skipSpecialTokens"/>, tokens flagged special (e.g. <c>&lt;|im_end|&gt;</c>, not <c>&lt;think&gt;</c>) are dropped.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        if (ids.IsEmpty) return "";
        var buffer = new ArrayBufferWriter<byte>(ids.Length * 4);
        foreach (int id in ids)
        {
            if ((uint)id >= (uint)VocabSize) continue;
            if (skipSpecialTokens && _isSpecial[id]) continue;
            buffer.Write(_idToBytes[id]);
        }
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>The raw bytes a token stands for (empty for an unknown id).</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)VocabSize ? _idToBytes[id] : [];

    /// <summary>True for added tokens flagged special (skipped by <c>skipSpecialTokens</c>).</summary>
    public bool IsSpecial(int id) => (uint)id < (uint)VocabSize && _isSpecial[id];

    /// <summary>True for any added token (special or not), e.g. <c>&lt;think&gt;</c>.</summary>
    public bool IsAdded(int id) => Array.Exists(_added, a => a.Id == id);

    /// <summary>The id of a vocabulary token (in its byte-level form, e.g. "Ġthe") or an added token; null if none.</summary>
    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>The token string of an id (byte-level form for vocabulary tokens); null if unknown.</summary>
    public string? IdToToken(int id) => (uint)id < (uint)VocabSize ? _idToToken[id] : null;

    /// <summary>GPT-2 byte-level alphabet: every byte maps to a printable character.</summary>
    internal static class ByteLevel
    {
        public static readonly char[] ByteToChar = BuildByteToChar();
        private static readonly Dictionary<char, byte> CharToByte =
            Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

        private static char[] BuildByteToChar()
        {
            var map = new char[256];
            int n = 0;
            for (int b = 0; b < 256; b++)
            {
                bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
                map[b] = printable ? (char)b : (char)(256 + n++);
            }
            return map;
        }

        /// <summary>Bytes of a byte-level token string; characters outside the alphabet are taken as UTF-8.</summary>
        public static byte[] ToBytes(string token)
        {
            var bytes = new List<byte>(token.Length);
            foreach (char c in token)
            {
                if (CharToByte.TryGetValue(c, out byte b)) bytes.Add(b);
                else bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
            }
            return bytes.ToArray();
        }
    }
}
