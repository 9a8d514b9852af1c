using System.Text;

namespace QwQ.Cuda.Generation;

/// <summary>
/// Finds stop strings in streamed text, also when one spans several tokens. Text that could still be the
/// start of a stop string is held back until the next delta shows whether it is one; a stop string is never
/// released. Not thread-safe (one generation at a time).
/// </summary>
public sealed class StopStringMatcher
{
    private readonly string[] _stops;
    private readonly StringBuilder _pending = new();

    public StopStringMatcher(IEnumerable<string>? stopStrings)
    {
        _stops = (stopStrings ?? []).Where(s => !string.IsNullOrEmpty(s)).Distinct(StringComparer.Ordinal).ToArray();
    }

    public bool HasStops => _stops.Length > 0;

    /// <summary>The stop string that ended the text, after <see cref="Push"/> returned true.</summary>
    public string? Matched { get; private set; }

    /// <summary>Forgets held-back text (start of a new generation).</summary>
    public void Reset()
    {
        _pending.Clear();
        Matched = null;
    }

    /// <summary>
    /// Adds <paramref name="delta"/>. Returns true when a stop string is complete; <paramref name="released"/> is
    /// then the text before it (the rest is dropped). Otherwise <paramref name="released"/> is the text that can no
    /// longer be part of a stop string (possibly empty).
    /// </summary>
    public bool Push(string delta, out string released)
    {
        if (_stops.Length == 0)
        {
            released = delta;
            return false;
        }

        _pending.Append(delta);
        string text = _pending.ToString();

        int best = -1;
        foreach (string stop in _stops)
        {
            int at = text.IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (best < 0 || at < best))
            {
                best = at;
                Matched = stop;
            }
        }
        if (best >= 0)
        {
            released = text[..best];
            _pending.Clear();
            return true;
        }

        int hold = HeldSuffixLength(text);
        released = text[..(text.Length - hold)];
        _pending.Clear();
        _pending.Append(text, text.Length - hold, hold);
        return false;
    }

    /// <summary>End of generation without a stop string: releases what was held back.</summary>
    public string Flush()
    {
        string rest = _pending.ToString();
        _pending.Clear();
        return rest;
    }

    // The longest suffix of text that is a proper prefix of some stop string.
    private int HeldSuffixLength(string text)
    {
        int hold = 0;
        foreach (string stop in _stops)
        {
            for (int len = Math.Min(stop.Length - 1, text.Length); len > hold; len--)
            {
                if (text.AsSpan(text.Length - len).SequenceEqual(stop.AsSpan(0, len)))
                {
                    hold = len;
                    break;
                }
            }
        }
        return hold;
    }
}
