"""`CLIPTokenizer`: OpenAI CLIP's byte-level BPE as a Keras layer.

Eager calls (Python strings, lists, NumPy arrays) run in pure Python and
return NumPy arrays, so they work on every Keras backend and without
TensorFlow. Calls on `tf.string` tensors, e.g. inside `tf.data.Dataset.map`,
run as TensorFlow ops (imported only then). Both give the same ids.
"""

import gzip
import importlib.util
import os
import sys
import warnings

import keras
import numpy as np

from keras_clip.text import bpe

_VOCABULARY_FILE = "vocabulary.txt"
_MERGES_FILE = "merges.txt"
_OPENAI_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# OpenAI's file holds more merge lines than CLIP uses: CLIP keeps the first
# 49152 - 256 - 2 = 48894 after the header (49408 tokens in all).
_OPENAI_NUM_MERGES = 49152 - 256 - 2


class _TrainOnClassOnly:
    """`CLIPTokenizer.train(captions, ...)` on the class learns a vocabulary.

    On an instance `train` stays the parent's: under the torch backend every
    Keras layer is a `torch.nn.Module`, and Keras's torch trainer calls
    `module.train(True)` / `.eval()` on each sublayer of a model, a
    tokenizer included. A plain classmethod named `train` would hijack those
    calls and break `fit` for any model carrying a tokenizer.
    """

    def __get__(self, instance, owner):
        if instance is None:
            return owner.train_from_captions
        return super(CLIPTokenizer, instance).train


def _is_tf_tensor(inputs):
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return False
    return isinstance(inputs, (tf.Tensor, tf.RaggedTensor)) or (
        not tf.executing_eagerly()
    )


def _find_openai_vocab():
    for package in ("open_clip", "clip"):
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, _OPENAI_BPE_FILE)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"Could not find OpenAI's BPE vocabulary `{_OPENAI_BPE_FILE}`. "
        "Pass its path as `CLIPTokenizer.from_openai_vocab(path)`, or "
        "install a package that ships it: `pip install open-clip-torch` "
        "(or OpenAI's `clip`). keras_clip never downloads it."
    )


def _read_lines(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8").split("\n")


def _parse_merges(merges):
    parsed = []
    for merge in merges:
        pair = tuple(merge.split(" ")) if isinstance(merge, str) else merge
        if len(pair) != 2 or not all(isinstance(s, str) and s for s in pair):
            raise ValueError(
                "Each merge must be a pair of non-empty tokens, given as "
                "'left right' or (left, right). Received: "
                f"{merge!r}"
            )
        parsed.append(tuple(pair))
    return parsed


@keras.saving.register_keras_serializable(package="keras_clip")
class CLIPTokenizer(keras.layers.Layer):
    """OpenAI CLIP's byte-level BPE tokenizer (Radford et al., 2021).

    Text is cleaned (`ftfy.fix_text`, HTML unescape, whitespace collapse,
    lower-case), split with CLIP's pattern (every digit is its own word),
    byte-encoded and merged with BPE (`</w>` ends each word). The ids are
    framed by the start and end tokens, truncated to `context_length` with
    the end token kept last, and padded with 0. Matches
    `open_clip.tokenize` token for token, including open_clip's reading of
    the literal text `<start_of_text>` / `<end_of_text>` in a caption as
    the special tokens (`parse_special_tokens=False` turns that off).

    The vocabulary is 256 byte tokens, the same 256 ending a word, one token
    per merge, then `<start_of_text>` and `<end_of_text>`. It is saved as
    plain-text assets inside a `.keras` file, so a model that holds the
    tokenizer (e.g. as `model.tokenizer`) can tokenize after
    `keras.saving.load_model`, safe mode included.

    Calling the layer on Python strings, a list of them or a NumPy string
    array runs in pure Python and returns a NumPy int32 array; calling it on
    a `tf.string` tensor (eagerly or inside `tf.data.Dataset.map`) runs
    TensorFlow ops and returns a `tf.int32` tensor. A scalar input gives
    shape `(context_length,)`, a 1-D input `(batch, context_length)`. The
    few rows the ops cannot clean exactly (mojibake that ftfy repairs, see
    `text_cleaning_graph`) are cleaned by the eager code through a
    `tf.numpy_function`, so the ids are the same on every string and a
    pipeline must run where Python does (not in `tf.data` service).

    Args:
        vocabulary: list of token strings, index = id. `None` builds it from
            `merges` in CLIP's layout.
        merges: list of merges, each "left right" or `(left, right)`, in
            order of priority. `None` leaves the tokenizer empty until
            `set_vocabulary` or `load_assets` is called.
        context_length: int, length of every output row, at least 2.
            Defaults to 77 (CLIP).
        parse_special_tokens: bool, whether the literal special-token text
            in an input becomes the special id, as in open_clip. Defaults
            to `True`.
        **kwargs: standard `keras.layers.Layer` arguments.

    Example:

    ```python
    tokenizer = keras_clip.CLIPTokenizer.from_openai_vocab()
    tokenizer(["a photo of a cat"])[0, :7]
    # array([49406, 320, 1125, 539, 320, 2368, 49407], dtype=int32)
    tokenizer.detokenize(tokenizer(["a photo of a cat"]))
    # ['a photo of a cat']
    ds = tf.data.Dataset.from_tensor_slices(["a cat", "a dog"])
    ds = ds.map(tokenizer)  # elements: int32 (77,)
    ```
    """

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        context_length=77,
        parse_special_tokens=True,
        **kwargs,
    ):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if (
            isinstance(context_length, bool)
            or not isinstance(context_length, (int, np.integer))
            or context_length < 2
        ):
            raise ValueError(
                "`context_length` must be an integer >= 2 (room for the "
                f"start and end tokens). Received: context_length="
                f"{context_length!r}"
            )
        self._context_length = int(context_length)
        self.parse_special_tokens = bool(parse_special_tokens)
        self._encoder = None
        self._graph = None
        if merges is not None:
            self.set_vocabulary(vocabulary, merges)
        elif vocabulary is not None:
            raise ValueError(
                "`vocabulary` needs `merges` too. Received: merges=None"
            )
        self.built = True

    # Construction ------------------------------------------------------
    @classmethod
    def from_openai_vocab(cls, path=None, context_length=77, **kwargs):
        """Builds the tokenizer of OpenAI's CLIP models (49,408 tokens).

        Args:
            path: path of OpenAI's `bpe_simple_vocab_16e6.txt.gz` (gzipped
                or not). `None` looks for it in an installed `open_clip`
                or `clip` package; it is never downloaded.
            context_length: int. Defaults to 77.
            **kwargs: further `CLIPTokenizer` arguments.
        """
        path = _find_openai_vocab() if path is None else os.fspath(path)
        lines = _read_lines(path)
        merges = _parse_merges(lines[1 : _OPENAI_NUM_MERGES + 1])
        if len(merges) != _OPENAI_NUM_MERGES:
            raise ValueError(
                f"Expected {_OPENAI_NUM_MERGES} merges in OpenAI's BPE file. "
                f"Received: {len(merges)} in {path}"
            )
        return cls(merges=merges, context_length=context_length, **kwargs)

    @classmethod
    def train_from_captions(
        cls, captions, vocabulary_size=8192, context_length=77, **kwargs
    ):
        """Learns a CLIP-format BPE vocabulary from captions.

        Also reachable as `CLIPTokenizer.train(captions, ...)` on the class.

        Args:
            captions: iterable of str.
            vocabulary_size: int, total size: 512 byte tokens + merges + 2
                special tokens, so at least 514. If the captions run out of
                pairs to merge first, the vocabulary is smaller (check
                `vocabulary_size` on the result).
            context_length: int. Defaults to 77.
            **kwargs: further `CLIPTokenizer` arguments.
        """
        from keras_clip.text import bpe_training

        base = len(bpe.base_vocabulary()) + 2
        if isinstance(vocabulary_size, bool) or not isinstance(
            vocabulary_size, (int, np.integer)
        ) or vocabulary_size < base:
            raise ValueError(
                f"`vocabulary_size` must be an integer >= {base} (256 bytes, "
                "256 word-final bytes, 2 special tokens). Received: "
                f"vocabulary_size={vocabulary_size!r}"
            )
        if isinstance(captions, str):
            raise ValueError(
                "`captions` must be an iterable of strings, not one string. "
                f"Received: {captions[:40]!r}"
            )
        captions = list(captions)
        for caption in captions:
            if not isinstance(caption, str):
                raise ValueError(
                    "`captions` must contain only str. Received an element "
                    f"of type {type(caption).__name__}: {caption!r}"
                )
        counts = bpe_training.count_words(
            captions, kwargs.get("parse_special_tokens", True)
        )
        merges = bpe_training.learn_merges(counts, vocabulary_size - base)
        if len(merges) < vocabulary_size - base:
            warnings.warn(
                f"The captions support only {len(merges) + base} tokens "
                "(every word is then a single token); returning that "
                f"vocabulary instead of vocabulary_size={vocabulary_size}.",
                stacklevel=2,
            )
        return cls(merges=merges, context_length=context_length, **kwargs)

    train = _TrainOnClassOnly()

    def set_vocabulary(self, vocabulary, merges):
        """Sets the vocabulary (list or `None` for CLIP's layout) and merges."""
        merges = _parse_merges(merges)
        if vocabulary is None:
            vocabulary = bpe.vocabulary_from_merges(merges)
        vocabulary = list(vocabulary)
        for token in vocabulary:
            if not isinstance(token, str) or not token or any(
                c.isspace() for c in token
            ):
                raise ValueError(
                    "Vocabulary tokens must be non-empty str without "
                    f"whitespace. Received: {token!r}"
                )
        self._encoder = bpe.BytePairEncoder(
            vocabulary, merges, self.parse_special_tokens
        )
        self._graph = None

    # Properties ----------------------------------------------------------
    def _require_vocabulary(self):
        if self._encoder is None:
            raise ValueError(
                "This CLIPTokenizer has no vocabulary yet. Build it with "
                "`CLIPTokenizer.from_openai_vocab()` or "
                "`CLIPTokenizer.train(captions)`, or call `load_assets`."
            )
        return self._encoder

    @property
    def context_length(self):
        return self._context_length

    @property
    def vocabulary_size(self):
        return len(self._require_vocabulary().vocabulary)

    @property
    def vocabulary(self):
        return list(self._require_vocabulary().vocabulary)

    @property
    def merges(self):
        return [f"{a} {b}" for a, b in self._require_vocabulary().merges]

    @property
    def sot_token_id(self):
        return self._require_vocabulary().sot_token_id

    @property
    def eot_token_id(self):
        return self._require_vocabulary().eot_token_id

    @property
    def pad_token_id(self):
        return 0

    # Calling ---------------------------------------------------------------
    def __call__(self, inputs, *args, **kwargs):
        # Strings are not backend tensors: skip Keras's input conversion.
        return self.call(inputs)

    def call(self, inputs):
        encoder = self._require_vocabulary()
        if _is_tf_tensor(inputs):
            return self._call_graph(inputs)
        texts, scalar = self._as_text_list(inputs)
        out = np.zeros((len(texts), self._context_length), dtype=np.int32)
        limit = self._context_length - 2
        for row, text in enumerate(texts):
            ids = encoder.encode(text)[:limit]
            out[row, 0] = encoder.sot_token_id
            out[row, 1 : len(ids) + 1] = ids
            out[row, len(ids) + 1] = encoder.eot_token_id
        return out[0] if scalar else out

    def tokenize(self, inputs):
        """Same as calling the layer."""
        return self.call(inputs)

    def _as_text_list(self, inputs):
        if isinstance(inputs, (str, bytes, np.str_, np.bytes_)):
            return [self._as_text(inputs)], True
        if isinstance(inputs, np.ndarray):
            if inputs.ndim > 1 or inputs.dtype.kind not in "USO":
                raise ValueError(
                    "Expected a string, a list of strings, or a 0-D / 1-D "
                    "string array. Received: array of dtype "
                    f"{inputs.dtype} and shape {inputs.shape}"
                )
            if inputs.ndim == 0:
                return [self._as_text(inputs.item())], True
            return [self._as_text(x) for x in inputs.tolist()], False
        if isinstance(inputs, (list, tuple)):
            return [self._as_text(x) for x in inputs], False
        raise ValueError(
            "Expected a string, a list of strings, a NumPy string array or "
            f"a tf.string tensor. Received: {type(inputs).__name__}"
        )

    @staticmethod
    def _as_text(x):
        if isinstance(x, str):
            return x
        if isinstance(x, bytes):
            return x.decode("utf-8", errors="replace")
        raise ValueError(
            "Expected every input to be a string. Received an element of "
            f"type {type(x).__name__}: {x!r}"
        )

    def _call_graph(self, inputs):
        import tensorflow as tf

        if isinstance(inputs, tf.RaggedTensor) or not isinstance(
            inputs, tf.Tensor
        ):
            inputs = tf.convert_to_tensor(inputs)
        if inputs.dtype != tf.string or inputs.shape.rank not in (0, 1):
            raise ValueError(
                "Expected a scalar or 1-D tf.string tensor. Received: "
                f"dtype={inputs.dtype.name}, shape={inputs.shape}"
            )
        if self._graph is None:
            from keras_clip.text.tokenizer_graph import GraphTokenizer

            self._graph = GraphTokenizer(
                self._encoder, self._context_length,
                self.parse_special_tokens,
            )
        return self._graph(inputs)

    def detokenize(self, ids):
        """Text of token ids.

        Start / end tokens and everything after the first end token
        (padding) are dropped; `</w>` becomes a space; the result is
        stripped. BPE keeps no record of spaces before punctuation, so
        "hi, you" comes back as "hi , you".

        Args:
            ids: int array-like (NumPy, any backend tensor, `tf.Tensor`) of
                shape `(context_length,)` or `(batch, context_length)`.

        Returns:
            A str for 1-D `ids`, else a list of str.
        """
        encoder = self._require_vocabulary()
        if hasattr(ids, "detach"):  # torch, possibly on a GPU
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or ids.dtype.kind not in "iu":
            raise ValueError(
                "Expected integer ids of shape (length,) or (batch, length). "
                f"Received: dtype={ids.dtype}, shape={ids.shape}"
            )
        if ids.ndim == 1:
            return encoder.decode(ids.tolist())
        return [encoder.decode(row) for row in ids.tolist()]

    # Saving ----------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "context_length": self._context_length,
                "parse_special_tokens": self.parse_special_tokens,
            }
        )
        return config

    def save_assets(self, dir_path):
        encoder = self._require_vocabulary()
        with open(
            os.path.join(dir_path, _VOCABULARY_FILE), "w", encoding="utf-8"
        ) as f:
            f.write("\n".join(encoder.vocabulary))
        with open(
            os.path.join(dir_path, _MERGES_FILE), "w", encoding="utf-8"
        ) as f:
            f.write("\n".join(f"{a} {b}" for a, b in encoder.merges))

    def load_assets(self, dir_path):
        with open(
            os.path.join(dir_path, _VOCABULARY_FILE), encoding="utf-8"
        ) as f:
            vocabulary = f.read().split("\n")
        with open(os.path.join(dir_path, _MERGES_FILE), encoding="utf-8") as f:
            text = f.read()
        merges = text.split("\n") if text else []
        self.set_vocabulary(vocabulary, merges)
