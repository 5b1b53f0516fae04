"""CLIP's text cleaning as TensorFlow string ops, for `tf.data` pipelines.

OpenAI CLIP cleans text with `ftfy.fix_text`, `html.unescape` (twice), a
whitespace collapse and `str.lower`. This module rebuilds those steps from
TensorFlow / tensorflow-text ops. Every table (ftfy's character maps, HTML
entities, Unicode case mappings, character classes) is read from the running
Python, ftfy and `regex` at build time, so the graph follows the same library
versions as the eager path.

Two parts of `fix_text` are not rebuilt as ops; the rows they could touch
are found in graph and cleaned by the eager Python code instead (one
`tf.numpy_function` call per batch that has such rows, on those rows only):

- ftfy's mojibake repair (`fix_encoding`). ftfy leaves a text alone unless
  its heuristic `badness.is_bad` fires; that heuristic is one regular
  expression, translated here to RE2 and tested at the same point of every
  `fix_text` round as ftfy tests it.
- NFC where ICU (tensorflow-text) and Python's `unicodedata` know different
  Unicode versions: the characters whose normalisation differs are found
  at build time by probing every code point through both.

Rows that still change after the graph's last `fix_text` round, hold a NUL
or are not valid UTF-8 take the same route. So ids match the eager path on
every string; with typical captions the callback gets no row at all. The
callback ties a pipeline to this Python process (no `tf.data` service, no
SavedModel export of the map).

Imported lazily: only the in-graph tokenizer imports this module.
"""

import functools
import html
import html.entities

import regex
import tensorflow as tf
import tensorflow_text as tf_text
from ftfy import badness
from ftfy import chardata
from ftfy import fixes

from keras_clip.text.cleaning_python_rows import (
    _all_characters,
    _char_class,
    clean_in_python,
    nfc_suspects,
    re2_search_superset,
)

# Returned by a table lookup on a miss. No mapped value contains it.
_MISS = "\x00\x01miss"

# Python's `html.unescape` character-reference pattern.
_HTML_CHARREF = (
    r"&(?:#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)"
)
# ftfy's pattern for entities it decodes (`chardata.HTML_ENTITY_RE`).
_FTFY_ENTITY = r"&#?[0-9A-Za-z]{1,24};"
_NUMERIC_REF = r"&#[0-9]+;?|&#[xX][0-9a-fA-F]+;?"
# Rounds of `fix_text` in graph; rows still changing then go to Python.
_MAX_ROUNDS = 32
# ftfy's `remove_terminal_escapes` (its `\d` is Unicode: `\p{Nd}`).
_ANSI_ESCAPE = r"\x1b\[(?:\p{Nd}|;)*[a-zA-Z]"



@functools.lru_cache(maxsize=None)
def _unicode_tables():
    """Python's lower-case map; cased / case-ignorable sets (Final_Sigma)."""
    text = _all_characters()
    candidates = "".join(
        regex.findall(r"[\p{Changes_When_Lowercased}\p{Lu}\p{Lt}]+", text)
    )
    lower = {}
    for c in candidates:
        if ord(c) > 0x7F and c.lower() != c and c != "\u03a3":
            lower[c] = c.lower()
    lower["\u03a3"] = "\u03c3"
    cased = "".join(regex.findall(r"\p{Cased}+", text))
    ignorable = "".join(regex.findall(r"\p{Case_Ignorable}+", text))
    return lower, cased, ignorable


@functools.lru_cache(maxsize=None)
def _whitespace():
    """Characters `str.split()` splits on."""
    return [c for c in map(chr, range(0x3001)) if c.isspace()]


@functools.lru_cache(maxsize=None)
def word_pattern_classes():
    """RE2 classes equal to how `regex` (IGNORECASE) reads CLIP's pattern."""
    text = _all_characters()
    flags = regex.IGNORECASE
    sets = []
    for pattern in (r"[\p{L}]+", r"[\p{N}]+", r"[^\s\p{L}\p{N}]+"):
        sets.append("".join(regex.findall(pattern, text, flags)))
    letters, numbers, others = sets
    space = _char_class(letters + numbers + others, negate=True) + "+"
    return _char_class(letters), _char_class(numbers), _char_class(others), space


@functools.lru_cache(maxsize=None)
def _ftfy_char_maps():
    """ftfy's character-local fixes, composed in ftfy's order."""
    keys = set(map(chr, range(0x80, 0xA0)))
    keys.update(map(chr, chardata.LIGATURES))
    keys.update(map(chr, chardata.WIDTH_MAP))
    keys.update("\u02bc\u2018\u2019\u201a\u201b\u201c\u201d\u201e\u201f")
    keys.update("\r\x85\u2028\u2029")
    steps = (
        fixes.fix_c1_controls,
        fixes.fix_latin_ligatures,
        fixes.fix_character_width,
        fixes.uncurl_quotes,
        fixes.fix_line_breaks,
    )
    first = {}
    for key in keys:
        value = key
        for step in steps:
            value = step(value)
        if value != key:
            first[key] = value
    control = {chr(c): "" for c in chardata.CONTROL_CHARS}
    return first, control



def _string_table(mapping, default=_MISS):
    keys = list(mapping)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, tf.string),
            tf.constant([mapping[k] for k in keys], tf.string),
        ),
        default_value=default,
    )


def apply_to_rows(text, mask, fn):
    """Runs `fn` only on the rows of a 1-D string tensor where `mask`.

    No `tf.cond`: `fn` on zero rows costs little, and conditionals make the
    graph slow to trace and to instantiate.
    """
    index = tf.where(mask)
    updated = fn(tf.gather(text, index[:, 0]))
    return tf.tensor_scatter_nd_update(text, index, updated)


class CharacterMap:
    """`str.translate` for TF strings: a char -> string table with a gate."""

    def __init__(self, mapping):
        self.table = _string_table(mapping)
        self.gate = "(?s).*" + _char_class(mapping) + ".*"

    def __call__(self, text):
        mask = tf.strings.regex_full_match(text, self.gate)
        return apply_to_rows(text, mask, self._translate)

    def _translate(self, text):
        chars = tf.strings.unicode_split(text, "UTF-8")
        values = chars.flat_values
        mapped = self.table.lookup(values)
        mapped = tf.where(tf.equal(mapped, _MISS), values, mapped)
        return tf.strings.reduce_join(chars.with_flat_values(mapped), axis=1)


@functools.lru_cache(maxsize=None)
def shared_cleaner():
    """The process's `GraphTextCleaner`: cleaning needs no vocabulary, so
    one set of tables and one traced function serve every tokenizer."""
    with tf.init_scope():
        return GraphTextCleaner()


class GraphTextCleaner:
    """Builds the TF tables once; `__call__` cleans a 1-D string tensor.

    `function` is `clean_or_flag` as a `tf.function`: the graph-cleaned
    text and the mask of rows that `__call__` cleans in Python instead.
    """

    def __init__(self):
        first, control = _ftfy_char_maps()
        lower, cased, ignorable = _unicode_tables()
        self.ftfy_map = CharacterMap(first)
        self.control_map = CharacterMap(control)
        self.lower_map = CharacterMap(lower)
        c, i = _char_class(cased), _char_class(ignorable)
        # Python lower-cases a final capital sigma to "ς" (Final_Sigma).
        self.final_sigma = (
            f"({c}{i}*)\u03a3({i}*)([^{c[1:-1]}{i[1:-1]}]|$)"
        )
        self.whitespace = _char_class(_whitespace()) + "+"
        html5 = html.entities.html5
        self.html5 = _string_table(html5)
        legacy = {k: v for k, v in html5.items() if not k.endswith(";")}
        self.legacy_max = max(len(k) for k in legacy)
        self.html5_legacy = _string_table(legacy)
        self.ftfy_entities = _string_table(chardata.HTML_ENTITIES)
        special = {k: "" for k in html._invalid_codepoints}
        special.update(html._invalid_charrefs)
        keys = sorted(special)
        self.charref_special = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(keys, tf.int64),
                tf.constant([special[k] for k in keys], tf.string),
            ),
            default_value=_MISS,
        )
        digits = [0] * 256
        for k, ch in enumerate("0123456789abcdef"):
            digits[ord(ch)] = k
            digits[ord(ch.upper())] = k
        self.digit_values = tf.constant(digits, tf.int64)
        # Rows that go to Python: ftfy's mojibake heuristic could fire, or
        # they hold a character whose NFC is suspect (or that ftfy's maps,
        # applied before NFC, turn into one).
        suspects = set(nfc_suspects())
        suspects |= {k for k, v in first.items() if suspects & set(v)}
        pattern = re2_search_superset(badness.BADNESS_RE)
        if suspects:
            pattern += "|" + _char_class(suspects)
        self.eager_pattern = f"(?s).*(?:{pattern}).*"
        self.function = tf.function(
            self.clean_or_flag,
            input_signature=[tf.TensorSpec([None], tf.string)],
            autograph=False,
        )

    def __call__(self, text):
        """Cleaned text: `bpe.clean_text` of each row of a 1-D tensor."""
        cleaned, eager = self.function(text)

        def python_rows():
            # The flagged rows, cleaned from the input by the eager code.
            index = tf.where(eager)
            fixed = tf.numpy_function(
                clean_in_python, [tf.gather(text, index[:, 0])],
                tf.string, stateful=False,
            )
            fixed = tf.ensure_shape(fixed, [None])
            return tf.tensor_scatter_nd_update(cleaned, index, fixed)

        # Batches with no flagged row (most) never enter Python.
        return tf.cond(tf.reduce_any(eager), python_rows, lambda: cleaned)

    def clean_or_flag(self, text):
        """Graph-cleaned text, and a mask of rows it may get wrong.

        Where the mask is False the text equals `bpe.clean_text`; where it
        is True, `__call__` cleans the row in Python instead.
        """
        # ftfy drops NUL anyway; tensorflow-text's regex_split stops at it.
        valid = tf.strings.regex_replace(text, "\x00", "")
        valid = tf.strings.unicode_transcode(
            valid, "UTF-8", "UTF-8", errors="replace",
            replace_control_characters=False,
        )
        # NUL or invalid UTF-8: the rounds below would not see ftfy's text.
        eager = tf.not_equal(valid, text)
        text, flagged = self.fix_text(valid)
        # `html.unescape` twice, as a loop so the graph holds one copy.
        text = tf.while_loop(
            lambda t: True, lambda t: (self.html_unescape(t),), (text,),
            maximum_iterations=2,
        )[0]
        text = tf.strings.regex_replace(text, self.whitespace, " ")
        text = tf.strings.regex_replace(text, "^ | $", "")
        return self.lower(text), eager | flagged

    # ftfy.fix_text -----------------------------------------------------
    def fix_text(self, text):
        """ftfy's `fix_text` but `fix_encoding`, and the rows that need it.

        A row is flagged where ftfy's mojibake heuristic could fire at the
        start of a round (after HTML unescaping, where `fix_encoding`
        runs), where ICU's NFC could differ from Python's, or where the
        text still changes after the last round.
        """
        # ftfy only decodes HTML entities in lines before the first line
        # that contains "<" (its `unescape_html="auto"`).
        has_tag = tf.strings.regex_full_match(text, "(?s).*<.*")
        head = tf.strings.regex_replace(
            text, r"(?s)^((?:[^<\n]*\n)*).*$", r"\1", replace_global=False
        )
        head = tf.where(has_tag, head, text)
        tail = tf.strings.regex_replace(
            text, r"(?s)^(?:[^<\n]*\n)*", "", replace_global=False
        )
        tail = tf.where(has_tag, tail, tf.zeros_like(text))

        def step(head, tail, flagged, _):
            unescaped = self.ftfy_unescape(head)
            # Where ftfy runs `fix_encoding` (and just before NFC).
            flagged |= tf.strings.regex_full_match(
                unescaped, self.eager_pattern
            ) | tf.strings.regex_full_match(tail, self.eager_pattern)
            new_head = self._fix_once(unescaped)
            new_tail = self._fix_once(tail)
            changed = tf.not_equal(new_head, head) | tf.not_equal(
                new_tail, tail
            )
            return new_head, new_tail, flagged, changed

        head, tail, flagged, changed = tf.while_loop(
            lambda h, t, f, changed: tf.reduce_any(changed),
            step,
            (head, tail, tf.zeros_like(has_tag), tf.ones_like(has_tag)),
            maximum_iterations=_MAX_ROUNDS,
        )
        return tf.strings.join([head, tail]), flagged | changed

    def _fix_once(self, text):
        text = tf.strings.regex_replace(text, "\r\n", "\n")
        text = self.ftfy_map(text)
        text = tf.strings.regex_replace(text, _ANSI_ESCAPE, "")
        text = self.control_map(text)
        return tf_text.normalize_utf8(text, "NFC")

    # HTML ----------------------------------------------------------------
    def _numeric_charref(self, refs):
        """Python's `html.unescape` of "&#...;" / "&#x...;" references."""
        is_hex = tf.strings.regex_full_match(refs, "&#[xX].*")
        digits = tf.strings.regex_replace(refs, "^&#[xX]?0*|;$", "")
        too_long = tf.strings.length(digits) > tf.where(is_hex, 6, 7)
        digits = tf.where(too_long, tf.zeros_like(digits), digits)
        padded = tf.strings.join(["0000000", digits])
        padded = tf.strings.substr(
            padded, tf.strings.length(padded) - 7, tf.fill(tf.shape(refs), 7)
        )
        raw = tf.reshape(tf.io.decode_raw(padded, tf.uint8), [-1, 7])
        raw = tf.cast(raw, tf.int64)
        values = tf.gather(self.digit_values, raw)  # (n, 7)
        base = tf.where(is_hex, tf.constant(16, tf.int64), 10)
        number = tf.zeros_like(base)
        for k in range(7):
            number = number * base + values[:, k]
        bad = too_long | (number > 0x10FFFF) | (
            (number >= 0xD800) & (number <= 0xDFFF)
        )
        special = self.charref_special.lookup(number)
        safe = tf.where(bad, tf.constant(0x20, tf.int64), number)
        encoded = tf.strings.unicode_encode(
            tf.RaggedTensor.from_tensor(tf.cast(safe[:, None], tf.int32)),
            "UTF-8",
        )
        out = tf.where(tf.equal(special, _MISS), encoded, special)
        return tf.where(bad, tf.fill(tf.shape(refs), "\ufffd"), out)

    def _named_charref(self, refs):
        """Python's `html.unescape` of "&name;" references, prefix rule too."""
        name = tf.strings.substr(refs, 1, 64, unit="UTF8_CHAR")
        length = tf.strings.length(name, unit="UTF8_CHAR")
        result = tf.strings.join(["&", name])
        # Longest legacy name (no ";") that is a proper prefix of `name`.
        for size in range(2, self.legacy_max + 1):
            prefix = tf.strings.substr(name, 0, size, unit="UTF8_CHAR")
            value = self.html5_legacy.lookup(prefix)
            found = tf.not_equal(value, _MISS) & (size <= length - 1)
            rest = tf.strings.substr(
                name, tf.minimum(size, length), tf.fill(tf.shape(length), 64),
                unit="UTF8_CHAR",
            )
            result = tf.where(found, tf.strings.join([value, rest]), result)
        exact = self.html5.lookup(name)
        return tf.where(tf.equal(exact, _MISS), result, exact)

    def _replace_pieces(self, text, pattern, replace):
        pieces = tf_text.regex_split(text, pattern, pattern)
        values = pieces.flat_values
        is_ref = tf.strings.regex_full_match(values, pattern)
        values = apply_to_rows(values, is_ref, replace)
        return tf.strings.reduce_join(pieces.with_flat_values(values), axis=1)

    def html_unescape(self, text):
        def replace(refs):
            numeric = tf.strings.regex_full_match(refs, _NUMERIC_REF)
            out = apply_to_rows(refs, numeric, self._numeric_charref)
            return apply_to_rows(out, ~numeric, self._named_charref)

        mask = tf.strings.regex_full_match(text, "(?s).*&.*")
        return apply_to_rows(
            text, mask,
            lambda t: self._replace_pieces(t, _HTML_CHARREF, replace),
        )

    def ftfy_unescape(self, text):
        def replace(refs):
            named = self.ftfy_entities.lookup(refs)
            numeric = tf.strings.regex_full_match(
                refs, "&#[0-9]+;|&#[xX][0-9a-fA-F]+;"
            )
            decoded = apply_to_rows(refs, numeric, self._numeric_charref)
            # ftfy keeps a reference whose decoding contains ";".
            decoded = tf.where(
                numeric & tf.not_equal(decoded, ";"), decoded, refs
            )
            return tf.where(tf.equal(named, _MISS), decoded, named)

        mask = tf.strings.regex_full_match(text, "(?s).*&.*")
        return apply_to_rows(
            text, mask,
            lambda t: self._replace_pieces(t, _FTFY_ENTITY, replace),
        )

    # Lower-casing --------------------------------------------------------
    def lower(self, text):
        sigma = tf.strings.regex_full_match(text, "(?s).*\u03a3.*")
        text = apply_to_rows(
            text, sigma,
            lambda t: tf.strings.regex_replace(
                t, self.final_sigma, "\\1\u03c2\\2\\3"
            ),
        )
        text = tf.strings.lower(text)  # ASCII only
        return self.lower_map(text)
