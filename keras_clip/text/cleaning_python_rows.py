"""The rows that in-graph text cleaning hands to Python, and how it finds them.

`text_cleaning_graph` rebuilds CLIP's text cleaning from TensorFlow ops but
two parts of `ftfy.fix_text` are not rebuilt: the mojibake repair and NFC
where ICU and Python know different Unicode versions. This module finds the
rows either could touch (`re2_search_superset` of ftfy's own heuristic,
`nfc_suspects`) and cleans them with the eager code (`clean_in_python`,
for `tf.numpy_function`), plus the character-class helpers both modules use.

Imported lazily, with `text_cleaning_graph`.
"""

import functools
import re
import sys
import unicodedata
from re import _constants as sre_constants  # Python 3.11+: the regex parser,
from re import _parser as sre_parser  # read to translate ftfy's pattern.

import numpy as np
import tensorflow as tf
import tensorflow_text as tf_text

from keras_clip.text import bpe


def _char_class(chars, negate=False):
    """An RE2 character class for a set of characters, as ranges."""
    points = sorted(ord(c) for c in chars)
    parts = []
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        if i == j:
            parts.append(f"\\x{{{points[i]:x}}}")
        else:
            parts.append(f"\\x{{{points[i]:x}}}-\\x{{{points[j]:x}}}")
        i = j + 1
    return "[" + ("^" if negate else "") + "".join(parts) + "]"


@functools.lru_cache(maxsize=None)
def _all_characters():
    """Every Unicode scalar value (surrogates excluded) as one string."""
    return "".join(map(chr, range(0xD800))) + "".join(
        map(chr, range(0xE000, sys.maxunicode + 1))
    )


# `\s`, `\w`, ... inside a Python `re` class, as that flavour reads them.
_PYTHON_CATEGORIES = {
    sre_constants.CATEGORY_SPACE: r"\s",
    sre_constants.CATEGORY_NOT_SPACE: r"\S",
    sre_constants.CATEGORY_WORD: r"\w",
    sre_constants.CATEGORY_NOT_WORD: r"\W",
    sre_constants.CATEGORY_DIGIT: r"\d",
    sre_constants.CATEGORY_NOT_DIGIT: r"\D",
}


def re2_search_superset(compiled):
    """RE2 for a Python `re` pattern: it matches wherever `search` does.

    Translated from the parsed pattern, so it is exact (Python's Unicode
    `\\s` / `\\w` become explicit classes), except that `^` is dropped:
    ftfy searches each line on its own, the graph a whole text. Raises
    `NotImplementedError` on constructs this does not translate.
    """
    flags = compiled.flags
    if flags & (re.IGNORECASE | re.ASCII | re.LOCALE | re.MULTILINE):
        raise NotImplementedError(f"flags {flags} of {compiled.pattern!r}")
    text = _all_characters()

    def char_class(items):
        chars, negate = [], False
        for op, av in items:
            if op is sre_constants.NEGATE:
                negate = True
            elif op is sre_constants.LITERAL:
                chars.append(chr(av))
            elif op is sre_constants.RANGE:
                chars.extend(map(chr, range(av[0], av[1] + 1)))
            elif op is sre_constants.CATEGORY:
                chars.extend(re.findall(_PYTHON_CATEGORIES[av], text, flags))
            else:
                raise NotImplementedError(f"{op} in a class")
        return _char_class(set(chars), negate)

    def emit(sequence):
        out = []
        for op, av in sequence:
            if op is sre_constants.LITERAL:
                out.append(f"\\x{{{av:x}}}")
            elif op is sre_constants.IN:
                out.append(char_class(av))
            elif op is sre_constants.ANY:
                out.append("[^\\n]" if not flags & re.DOTALL else "(?s:.)")
            elif op is sre_constants.BRANCH:
                out.append("(?:" + "|".join(map(emit, av[1])) + ")")
            elif op is sre_constants.SUBPATTERN and not (av[1] or av[2]):
                out.append("(?:" + emit(av[3]) + ")")
            elif op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT):
                low, high, item = av
                high = "" if high is sre_constants.MAXREPEAT else high
                out.append(f"(?:{emit(item)}){{{low},{high}}}")
            elif op is sre_constants.AT and av is sre_constants.AT_BEGINNING:
                pass  # A superset: see the docstring.
            else:
                raise NotImplementedError(f"{op} {av}")
        return "".join(out)

    return emit(sre_parser.parse(compiled.pattern, flags))


@functools.lru_cache(maxsize=None)
def nfc_suspects():
    """Characters whose NFC may differ between ICU and Python, as a string.

    Every code point `c` is probed as NFD("a" U+0345 `c` U+0334) through
    both: the marks' order shows `c`'s combining class, the result `c`'s
    decomposition. A differing composite brings the characters it
    decomposes to that Python does not know (all of them if none).
    """
    chars = _all_characters()
    probes = ["a\u0345" + c + "\u0334" for c in chars]
    with tf.init_scope():
        probes_t = tf.constant(probes)
        icu = tf_text.normalize_utf8(probes_t, "NFD")
        moved = tf.where(tf.not_equal(icu, probes_t))[:, 0].numpy()
        # Only probes that either side changes can differ.
        index = sorted(set(moved.tolist()) | {
            i for i, probe in enumerate(probes)
            if not unicodedata.is_normalized("NFD", probe)
        })
        icu = tf.gather(icu, index).numpy().tolist()
    suspects = {
        chars[i] for i, out in zip(index, icu)
        if out.decode("utf-8") != unicodedata.normalize("NFD", probes[i])
    }
    if suspects:
        with tf.init_scope():
            icu = tf_text.normalize_utf8(tf.constant(sorted(suspects)), "NFD")
        for c, out in zip(sorted(suspects), icu.numpy().tolist()):
            parts = set(out.decode("utf-8")) | set(
                unicodedata.normalize("NFD", c)
            )
            parts.discard(c)
            unknown = {p for p in parts if unicodedata.category(p) == "Cn"}
            suspects |= unknown or parts
    return "".join(sorted(suspects))


def clean_in_python(texts):
    """`bpe.clean_text` of UTF-8 byte strings, for `tf.numpy_function`."""
    cleaned = [
        bpe.clean_text(t.decode("utf-8", errors="replace")).encode("utf-8")
        for t in texts.tolist()
    ]
    return np.array(cleaned, dtype=object).reshape([-1])
