"""In-graph CLIP tokenization (TensorFlow + tensorflow-text ops).

`GraphTokenizer` mirrors `bpe.BytePairEncoder` op for op: clean the text
(`text_cleaning_graph`, which hands the few rows it cannot clean exactly,
such as mojibake, to the eager Python code), split it with CLIP's pattern,
byte-encode each word, apply the BPE merges in a `tf.while_loop`, add
SOT / EOT, truncate and pad. Words already seen are served from a
`MutableHashTable` cache, as OpenAI's Python tokenizer caches them in a dict.

Imported lazily: `keras_clip` works without TensorFlow installed.
"""

import tensorflow as tf

from keras_clip.text import bpe
from keras_clip.text.cleaning_graph import shared_cleaner
from keras_clip.text.cleaning_graph import word_pattern_classes

_NO_MERGE = 2**30
_MAX_CACHED_WORDS = 2_000_000


def _word_pattern(parse_special_tokens):
    letters, numbers, others, space = word_pattern_classes()
    literal = "'s|'t|'re|'ve|'m|'ll|'d"
    if parse_special_tokens:
        literal = f"{bpe.START_TOKEN}|{bpe.END_TOKEN}|{literal}"
    keep = f"(?i:{literal})|{letters}+|{numbers}|{others}+"
    return keep, f"{keep}|{space}"


def _fingerprint(strings):
    return tf.bitcast(tf.fingerprint(strings), tf.int64)


class GraphTokenizer:
    """TF tables and functions for one `BytePairEncoder`.

    Build it outside `tf.data` / `tf.function` or inside: the tables are
    created in the eager context (`tf.init_scope`) either way, so one
    instance serves every pipeline.
    """

    def __init__(self, encoder, context_length, parse_special_tokens):
        self.context_length = context_length
        self.sot = encoder.sot_token_id
        self.eot = encoder.eot_token_id
        self.keep_pattern, self.split_pattern = _word_pattern(
            parse_special_tokens
        )
        with tf.init_scope():
            self.cleaner = shared_cleaner()
            byte_map = bpe.bytes_to_unicode()
            self.byte_to_symbol = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant([bytes([b]) for b in byte_map]),
                    tf.constant(list(byte_map.values())),
                ),
                default_value="",
            )
            pairs = list(encoder.ranks)
            self.ranks = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant([f"{a} {b}" for a, b in pairs]),
                    tf.constant([encoder.ranks[p] for p in pairs], tf.int32),
                ),
                default_value=_NO_MERGE,
            )
            self.token_ids = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(encoder.encoder)),
                    tf.constant(list(encoder.encoder.values()), tf.int64),
                ),
                default_value=-1,
            )
            self.cache = tf.lookup.experimental.MutableHashTable(
                tf.int64, tf.string, default_value=""
            )
            if parse_special_tokens:
                self.cache.insert(
                    _fingerprint([bpe.START_TOKEN, bpe.END_TOKEN]),
                    tf.constant([str(self.sot), str(self.eot)]),
                )
            self.function = tf.function(
                self._tokenize,
                input_signature=[tf.TensorSpec([None], tf.string)],
                autograph=False,
            )

    def __call__(self, inputs):
        """Token ids of a scalar or 1-D string tensor, dense int32."""
        if inputs.shape.rank == 0:
            return self.function(inputs[None])[0]
        return self.function(inputs)

    def _tokenize(self, texts):
        texts = self.cleaner(texts)
        # Cleaned text holds no "\x01" (ftfy drops it) and no whitespace
        # but " ": mark word ends, split there, drop the empty pieces.
        marked = tf.strings.regex_replace(texts, self.keep_pattern, "\\0\x01")
        marked = tf.strings.regex_replace(marked, " ", "\x01")
        words = tf.strings.split(marked, "\x01")
        words = tf.ragged.boolean_mask(words, tf.strings.length(words) > 0)
        unique, index = tf.unique(words.flat_values)
        ids = tf.strings.split(self._encode_words(unique), " ")
        ids = tf.strings.to_number(ids, tf.int32)
        word_ids = tf.gather(ids, index)  # (W, None)
        ids = tf.RaggedTensor.from_row_splits(word_ids, words.row_splits)
        ids = ids.merge_dims(1, 2)[:, : self.context_length - 2]  # (B, None)
        batch = tf.shape(texts)[:1]
        sot = tf.fill(tf.concat([batch, [1]], 0), self.sot)
        eot = tf.fill(tf.concat([batch, [1]], 0), self.eot)
        ids = tf.concat([sot, ids, eot], axis=1)
        return ids.to_tensor(0, shape=[None, self.context_length])

    def _encode_words(self, words):
        """Space-separated ids of each word, through the cache."""
        keys = _fingerprint(words)
        cached = self.cache.lookup(keys)
        missing = tf.where(tf.equal(cached, ""))
        new = self._bpe(tf.gather(words, missing[:, 0]))
        new_keys = tf.gather(keys, missing[:, 0])
        # Stop growing the cache past a bound (no tf.cond: see apply_to_rows).
        room = tf.cast(self.cache.size() < _MAX_CACHED_WORDS, tf.int32)
        count = tf.size(new_keys) * room
        insert = self.cache.insert(new_keys[:count], new[:count])
        with tf.control_dependencies([insert]):
            return tf.tensor_scatter_nd_update(cached, missing, new)

    def _bpe(self, words):
        """BPE of each (non-empty) word; ids joined by spaces."""
        pieces = tf.strings.bytes_split(words)
        symbols = self.byte_to_symbol.lookup(pieces.flat_values)
        last = pieces.row_splits[1:, None] - 1
        symbols = tf.tensor_scatter_nd_update(
            symbols, last,
            tf.strings.join([tf.gather_nd(symbols, last), bpe.END_OF_WORD]),
        )
        rows = pieces.value_rowids()
        num_words = tf.shape(words, out_type=tf.int64)[0]

        def merge_step(symbols, rows, _):
            left, right = symbols[:-1], symbols[1:]
            pair_rows = rows[:-1]
            rank = self.ranks.lookup(tf.strings.join([left, right], " "))
            rank = tf.where(tf.equal(pair_rows, rows[1:]), rank, _NO_MERGE)
            best = tf.math.unsorted_segment_min(rank, pair_rows, num_words)
            hit = tf.equal(rank, tf.gather(best, pair_rows)) & (
                rank < _NO_MERGE
            )
            # Runs of hits only happen for pairs like ("a", "a"); OpenAI
            # merges them left to right without overlap: every 2nd hit.
            start = hit & ~tf.concat([[False], hit[:-1]], 0)
            count = tf.cumsum(tf.cast(hit, tf.int32))
            run = tf.maximum(tf.cumsum(tf.cast(start, tf.int32)) - 1, 0)
            base = tf.concat([tf.boolean_mask(count, start) - 1, [0]], 0)
            offset = count - 1 - tf.gather(base, run)
            take = hit & tf.equal(offset % 2, 0)
            take_here = tf.concat([take, [False]], 0)
            merged = tf.strings.join(
                [symbols, tf.concat([symbols, [""]], 0)[1:]]
            )
            symbols = tf.where(take_here, merged, symbols)
            keep = ~tf.concat([[False], take], 0)
            return (
                tf.boolean_mask(symbols, keep),
                tf.boolean_mask(rows, keep),
                tf.reduce_any(take),
            )

        symbols, rows, _ = tf.while_loop(
            lambda s, r, changed: changed,
            merge_step,
            (symbols, rows, tf.size(symbols) > 0),
            shape_invariants=(
                tf.TensorShape([None]),
                tf.TensorShape([None]),
                tf.TensorShape([]),
            ),
        )
        ids = self.token_ids.lookup(symbols)
        ids = tf.RaggedTensor.from_value_rowids(
            tf.strings.as_string(ids), rows, nrows=num_words
        )
        return tf.strings.reduce_join(ids, axis=1, separator=" ")
