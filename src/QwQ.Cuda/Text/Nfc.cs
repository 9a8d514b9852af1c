using System.Runtime.CompilerServices;
using System.Text;

namespace QwQ.Cuda.Text;

/// <summary>
/// Unicode Normalization Form C, implemented over generated tables (<see cref="UnicodeNfcData"/>).
/// The solution runs with InvariantGlobalization, where <see cref="string.Normalize()"/> leaves
/// non-ASCII text unchanged, so the tokenizer's NFC normalizer cannot rely on it.
/// </summary>
public static class Nfc
{
    private const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
    private const int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    private static readonly Dictionary<int, byte> Ccc;
    private static readonly Dictionary<int, int[]> Decomp;
    private static readonly Dictionary<long, int> Comp;
    // Quick-check: true where a BMP code point might change under NFC or affect its neighbours.
    private static readonly bool[] BmpUnstable = new bool[0x10000];
    private static readonly HashSet<int> AstralUnstable = [];

    static Nfc()
    {
        var ccc = UnicodeNfcData.CombiningClasses;
        Ccc = new Dictionary<int, byte>(ccc.Length / 2);
        for (int i = 0; i < ccc.Length; i += 2) { Ccc[ccc[i]] = (byte)ccc[i + 1]; MarkUnstable(ccc[i]); }

        var d = UnicodeNfcData.Decompositions;
        Decomp = new Dictionary<int, int[]>(2100);
        for (int i = 0; i < d.Length;)
        {
            int cp = d[i], n = d[i + 1];
            Decomp[cp] = d.Slice(i + 2, n).ToArray();
            i += 2 + n;
        }

        var c = UnicodeNfcData.Compositions;
        Comp = new Dictionary<long, int>(c.Length / 3);
        var composites = new HashSet<int>();
        for (int i = 0; i < c.Length; i += 3)
        {
            Comp[Key(c[i], c[i + 1])] = c[i + 2];
            composites.Add(c[i + 2]);
            MarkUnstable(c[i + 1]); // can combine with what precedes it (NFC_QC=Maybe)
        }
        // Decomposable characters that do not come back as themselves (singletons, exclusions).
        foreach (var (cp, _) in Decomp)
            if (!composites.Contains(cp)) MarkUnstable(cp);
        // Hangul jamo V and T compose with a preceding L or LV syllable.
        for (int v = VBase; v < VBase + VCount; v++) MarkUnstable(v);
        for (int t = TBase + 1; t < TBase + TCount; t++) MarkUnstable(t);
    }

    private static void MarkUnstable(int cp)
    {
        if (cp < 0x10000) BmpUnstable[cp] = true; else AstralUnstable.Add(cp);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Key(int a, int b) => ((long)a << 21) | (uint)b;

    private static int CombiningClass(int cp) => cp < 0x300 ? 0 : Ccc.TryGetValue(cp, out var v) ? v : 0;

    /// <summary>True when <paramref name="s"/> is certainly already in NFC (a quick check; false means "maybe not").</summary>
    public static bool IsQuickNormalized(ReadOnlySpan<char> s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            char ch = s[i];
            if (ch < 0x300) continue;
            if (char.IsHighSurrogate(ch) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                if (AstralUnstable.Contains(char.ConvertToUtf32(ch, s[i + 1]))) return false;
                i++;
                continue;
            }
            if (BmpUnstable[ch]) return false;
        }
        return true;
    }

    /// <summary>Returns the NFC form of <paramref name="s"/> (the same instance when it is already normalized).</summary>
    public static string Normalize(string s)
    {
        if (IsQuickNormalized(s)) return s;

        // 1. Full canonical decomposition.
        var cps = new List<int>(s.Length + 8);
        for (int i = 0; i < s.Length; i++)
        {
            int cp = s[i];
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
                cp = char.ConvertToUtf32(s[i], s[++i]);
            Decompose(cp, cps);
        }

        // 2. Canonical ordering: stable sort of each run of non-starters by combining class.
        for (int i = 1; i < cps.Count; i++)
        {
            int c = CombiningClass(cps[i]);
            if (c == 0) continue;
            int j = i;
            while (j > 0)
            {
                int pc = CombiningClass(cps[j - 1]);
                if (pc == 0 || pc <= c) break;
                (cps[j - 1], cps[j]) = (cps[j], cps[j - 1]);
                j--;
            }
        }

        // 3. Canonical composition.
        var result = new List<int>(cps.Count);
        int starter = -1, lastCcc = 0;
        foreach (int cp in cps)
        {
            int c = CombiningClass(cp);
            if (starter >= 0)
            {
                bool adjacent = result.Count - 1 == starter;
                if (adjacent || (lastCcc != 0 && lastCcc < c))
                {
                    if (TryCompose(result[starter], cp, out int composite))
                    {
                        result[starter] = composite;
                        continue;
                    }
                }
            }
            if (c == 0) starter = result.Count;
            lastCcc = c;
            result.Add(cp);
        }

        var sb = new StringBuilder(result.Count + 4);
        foreach (int cp in result)
        {
            if (cp < 0x10000) sb.Append((char)cp);
            else sb.Append(char.ConvertFromUtf32(cp));
        }
        return sb.ToString();
    }

    private static void Decompose(int cp, List<int> into)
    {
        int si = cp - SBase;
        if ((uint)si < SCount)
        {
            into.Add(LBase + si / NCount);
            into.Add(VBase + si % NCount / TCount);
            int t = si % TCount;
            if (t != 0) into.Add(TBase + t);
            return;
        }
        if (cp >= 0xC0 && Decomp.TryGetValue(cp, out var d)) into.AddRange(d);
        else into.Add(cp);
    }

    private static bool TryCompose(int a, int b, out int composite)
    {
        int li = a - LBase, vi = b - VBase;
        if ((uint)li < LCount && (uint)vi < VCount)
        {
            composite = SBase + (li * VCount + vi) * TCount;
            return true;
        }
        int si = a - SBase, ti = b - TBase;
        if ((uint)si < SCount && si % TCount == 0 && ti > 0 && ti < TCount)
        {
            composite = a + ti;
            return true;
        }
        return Comp.TryGetValue(Key(a, b), out composite);
    }
}
