"""Learning CLIP-format byte-level BPE merges from a caption corpus.

The classic algorithm of Sennrich et al. (2016) as GPT-2 / CLIP use it:
words (split with CLIP's pattern, after CLIP's cleaning) are sequences of
byte symbols with `</w>` on the last one; the most frequent adjacent pair is
merged, again and again. Pair counts are updated incrementally and kept in a
heap, so each merge only touches the words that contain the pair.
"""

import collections
import heapq

from keras_clip.text import bpe


def count_words(captions, parse_special_tokens=True):
    """Counts CLIP pre-tokenised words (byte-encoded) over captions."""
    pattern = bpe.compile_word_pattern(parse_special_tokens)
    specials = {bpe.START_TOKEN, bpe.END_TOKEN}
    counts = collections.Counter()
    for caption in captions:
        for word in pattern.findall(bpe.clean_text(caption)):
            if word not in specials:
                counts[bpe.byte_encode(word)] += 1
    return counts


def learn_merges(word_counts, num_merges):
    """Learns up to `num_merges` merges from byte-encoded word counts.

    Args:
        word_counts: dict mapping byte-encoded words to their frequency.
        num_merges: int, the number of merges wanted.

    Returns:
        A list of `(left, right)` symbol pairs, most frequent first. It is
        shorter than `num_merges` when every word is already a single
        symbol. Ties are broken by the pair's text, so the result is
        deterministic.
    """
    words = []
    freqs = []
    for word, freq in sorted(word_counts.items()):
        symbols = list(word)
        symbols[-1] += bpe.END_OF_WORD
        words.append(symbols)
        freqs.append(freq)

    pair_counts = collections.Counter()
    where = collections.defaultdict(set)
    for w, symbols in enumerate(words):
        for pair in zip(symbols, symbols[1:]):
            pair_counts[pair] += freqs[w]
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges = []
    tokens = set(bpe.base_vocabulary())
    while len(merges) < num_merges and heap:
        negative, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative or negative == 0:
            continue  # stale entry
        first, second = pair
        joined = first + second
        if joined in tokens:
            # ("a", "bc") after ("ab", "c"): the token exists already; a
            # second merge to it would duplicate a vocabulary entry.
            pair_counts.pop(pair)
            continue
        tokens.add(joined)
        merges.append(pair)
        touched = set()
        for w in sorted(where.pop(pair, ())):
            symbols = words[w]
            freq = freqs[w]
            for old in zip(symbols, symbols[1:]):
                pair_counts[old] -= freq
                touched.add(old)
            merged = []
            i = 0
            while i < len(symbols):
                if (
                    i < len(symbols) - 1
                    and symbols[i] == first
                    and symbols[i + 1] == second
                ):
                    merged.append(joined)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            words[w] = merged
            for new in zip(merged, merged[1:]):
                pair_counts[new] += freq
                where[new].add(w)
                touched.add(new)
        pair_counts.pop(pair, None)
        for other in touched:
            count = pair_counts.get(other, 0)
            if count > 0:
                heapq.heappush(heap, (-count, other))
            else:
                pair_counts.pop(other, None)
                where.pop(other, None)
    return merges
