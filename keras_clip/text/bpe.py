"""CLIP's byte-level BPE in pure Python: text cleaning, pre-tokenisation,
merges, and the vocabulary format.

This module is the eager (NumPy) half of `keras_clip.CLIPTokenizer` and has
no TensorFlow dependency. The in-graph half lives in `tokenizer_graph.py` and
must give the same ids; both follow OpenAI CLIP's `SimpleTokenizer` as
open_clip (3.x) ships it.
"""

import functools
import html

import ftfy
import regex

# Special tokens as open_clip names them. They end the vocabulary (ids
# `vocabulary_size - 2` and `vocabulary_size - 1`) and, like in open_clip,
# the same literal text in a caption is read as the special token.
START_TOKEN = "<start_of_text>"
END_TOKEN = "<end_of_text>"
END_OF_WORD = "</w>"

# CLIP's pre-tokeniser (Radford et al. 2021, OpenAI's `simple_tokenizer.py`):
# contractions, letter runs, single digits, runs of other non-space
# characters. open_clip compiles it case-insensitively, which matters for
# the rare characters that case-fold onto ASCII letters (e.g. "ſ" -> "s").
WORD_PATTERN = (
    r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)


@functools.lru_cache(maxsize=None)
def bytes_to_unicode():
    """Returns GPT-2/CLIP's reversible map from byte values to characters.

    Printable Latin-1 bytes map to themselves; the others (controls, space,
    soft hyphen, ...) to code points from U+0100 on, so that no token
    contains whitespace.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping  # insertion order = vocabulary order


def base_vocabulary():
    """The 512 base tokens: every byte, then every byte ending a word."""
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + END_OF_WORD for s in symbols]


def vocabulary_from_merges(merges):
    """Builds CLIP's vocabulary (a list, index = id) from merge pairs."""
    vocabulary = base_vocabulary()
    vocabulary.extend(a + b for a, b in merges)
    vocabulary.extend([START_TOKEN, END_TOKEN])
    return vocabulary


def clean_text(text):
    """OpenAI CLIP's text cleaning, as open_clip's `_clean_lower` does it.

    `ftfy.fix_text`, HTML-unescape twice, collapse whitespace, strip,
    lower-case.
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def compile_word_pattern(parse_special_tokens=True):
    special = ""
    if parse_special_tokens:
        special = (
            regex.escape(START_TOKEN) + "|" + regex.escape(END_TOKEN) + "|"
        )
    return regex.compile(special + WORD_PATTERN, regex.IGNORECASE)


def byte_encode(word):
    """Maps a word to the byte-level symbols BPE works on."""
    table = bytes_to_unicode()
    return "".join(table[b] for b in word.encode("utf-8"))


def apply_merges(symbols, ranks):
    """Applies BPE merges to a list of symbols, lowest rank first.

    Every occurrence of the chosen pair is merged, left to right, without
    overlap; this is the rule OpenAI's `bpe()` uses.
    """
    while len(symbols) > 1:
        best_rank, best = None, None
        for pair in zip(symbols, symbols[1:]):
            rank = ranks.get(pair)
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best = rank, pair
        if best is None:
            break
        first, second = best
        merged = []
        i = 0
        n = len(symbols)
        while i < n:
            if i < n - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


class BytePairEncoder:
    """Plain-Python CLIP BPE over a vocabulary and merges, with a word cache.

    Kept out of Keras attribute tracking on purpose (a plain object): its
    big lists and dicts must not be wrapped by Keras or `tf.Module`.
    """

    def __init__(self, vocabulary, merges, parse_special_tokens=True):
        self.vocabulary = list(vocabulary)
        self.merges = [tuple(m) for m in merges]
        # Like open_clip, a token listed twice maps to its last id.
        self.encoder = {token: i for i, token in enumerate(self.vocabulary)}
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}
        for token in (START_TOKEN, END_TOKEN):
            if token not in self.encoder:
                raise ValueError(
                    f"The vocabulary must contain the special token {token!r}."
                )
        for a, b in self.merges:
            if a + b not in self.encoder:
                raise ValueError(
                    "Every merge must produce a vocabulary token. Received "
                    f"merge {a!r} + {b!r}, whose result is not in the "
                    "vocabulary."
                )
        self.sot_token_id = self.encoder[START_TOKEN]
        self.eot_token_id = self.encoder[END_TOKEN]
        self.pattern = compile_word_pattern(parse_special_tokens)
        self.cache = {}
        if parse_special_tokens:
            self.cache[START_TOKEN] = (self.sot_token_id,)
            self.cache[END_TOKEN] = (self.eot_token_id,)

    def encode_word(self, word):
        ids = self.cache.get(word)
        if ids is None:
            symbols = list(byte_encode(word))
            symbols[-1] += END_OF_WORD
            symbols = apply_merges(symbols, self.ranks)
            ids = tuple(self.encoder[s] for s in symbols)
            if len(self.cache) < 1_000_000:
                self.cache[word] = ids
        return ids

    def encode(self, text):
        """Token ids of one string, without SOT/EOT."""
        ids = []
        for word in self.pattern.findall(clean_text(text)):
            ids.extend(self.encode_word(word))
        return ids

    def decode(self, ids):
        """Text of token ids; SOT, EOT and padding (0 after EOT) dropped."""
        byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.eot_token_id:
                break
            if i == self.sot_token_id:
                continue
            if not 0 <= i < len(self.vocabulary):
                raise ValueError(
                    f"Token ids must lie in [0, {len(self.vocabulary)}). "
                    f"Received: {i}"
                )
            pieces.append(self.vocabulary[i])
        text = "".join(pieces).replace(END_OF_WORD, " ")
        data = bytes(32 if c == " " else byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").strip()
