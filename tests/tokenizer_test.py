"""Tests for `keras_clip.text.tokenizer`: open_clip parity (eager and in
`tf.data`, mojibake included), trained vocabularies, saving, bad input. Run
under every backend: `KERAS_BACKEND=jax pytest tests/tokenizer_test.py`.

The expensive pieces (open_clip's ids, one `tf.data` pass over the corpus,
the built graph tokenizer) are module-scoped fixtures shared by the tests."""

import os
import random
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test-only shim: PyPI's CUDA torchvision beside CPU torch (docs/testing.md).
sys.modules.setdefault(
    "torchvision._meta_registrations",
    types.ModuleType("torchvision._meta_registrations"),
)

import keras  # noqa: E402

from keras_clip.text import bpe  # noqa: E402
from keras_clip.text.tokenizer import CLIPTokenizer  # noqa: E402

_ADJECTIVES = [
    "red", "Small", "HAPPY", "fluffy", "old", "shiny", "blurry", "tiny",
    "black-and-white", "vintage", "smiling", "wet", "wooden", "neon",
]
_NOUNS = [
    "cat", "dog", "Car", "bicycle", "mountain", "pizza", "robot", "baby",
    "teapot", "skyscraper", "guitar", "owl", "sandwich", "T-shirt",
]
_PLACES = [
    "beach", "kitchen", "forest", "city at night", "snow", "desert",
    "Eiffel Tower", "office", "street in Tokyo", "garden",
]
_TEMPLATES = [
    "a photo of a {a} {n}.",
    "A {a} {n} on the {p}",
    "{n} in the {p}, {a} style",
    "there's a {n} and it's {a}!",
    "I'LL take the {a} {n} we'VE seen near the {p}",
    "a close-up photo of the {n} (very {a})",
    "{a} {n} #{n} @user",
]
_FRAGMENTS = [
    # digits and numbers
    "1234567890", "3.14159", "1,000,000", "2024-01-01", "$19.99", "50%",
    "v2.0.1", "0x1F", "10km/h", "½ ¼ ²³ ⅷ", "٣٤٥ ۷۸ १२३ ௧௨",
    # punctuation runs, contractions
    "!!!???...", "--==**", "a...b", "(hello)", "'s 't 're 've 'm 'll 'd",
    "don't", "It'S", "''quoted''", "«guillemets» „low“", "~~~", "___",
    # URLs, mail, code
    "https://www.example.com/path?q=1&x=2#frag", "mail me: a.b@c.org",
    "C:\\Users\\me", "<div class=\"x\">hi</div>", "f(x) = x^2 + 1;",
    # scripts
    "Ça va? Où est l'hôtel?", "Straße ẞ größer", "İstanbul ılık",
    "ΟΔΥΣΣΕΥΣ ΑΣ. Σ x ΣΑ", "日本語のテキストです", "中文字符测试", "한국어 문장",
    "Привет, мир!", "नमस्ते दुनिया", "مرحبا بالعالم", "שלום עולם",
    "ภาษาไทย", "Ελληνικά", "ǅemal ǈuka", "e\u0301 a\u0308 n\u0303",
    # emoji
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻",
    # HTML entities
    "&amp;", "&lt;b&gt;", "&quot;hi&quot;", "&#39;", "&#x27;", "&nbsp;",
    "&copy; 2020", "&eacute;t&eacute;", "&EACUTE;", "&amp;amp;amp;",
    "&#0;", "&#x110000;", "&#55296;", "&notit;", "&ampx", "AT&T",
    "&#128512;", "&#x1F600;", "&#59;", "&#65a;", "&hellip;", "&#150;",
    "& alone", "&zz;", "&#x;",
    # whitespace and controls
    "\t\ttabs", "new\nline", "  spaces  ", "\r\n", "\u3000wide", "\xa0nb",
    "\u2028sep", "\x85", "\x1c", "\x00nul", "\ufeffbom", "zero\u200bwidth",
    "\x1b[31mred\x1b[0m", "soft\xadhyphen",
    # literal special tokens
    "<|endoftext|>", "<|startoftext|>", "<end_of_text>", "<START_OF_TEXT>",
    "x<end_of_text>y",
    # width forms, ligatures, quotes, C1
    "ＡＢＣ１２３！", "ｶﾀｶﾅ", "ﬁsh ﬂow ﬀ ﬃ ﬄ ﬅ ﬆ", "Ĳssel ŉ",
    "“curly” ‘single’ ‚low‛", "\x93c1 quotes\x94", "\x80\x85\x99",
    # mojibake
    "cafÃ©", "Ã¼ber", "donâ€™t", "â€œquotedâ€\x9d", "Ã\xa0 la",
]
_SCRIPT_RANGES = [
    (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF),
    (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
    (0xAC00, 0xAD00), (0x1F300, 0x1F64F), (0x2000, 0x206F), (0xFF00, 0xFFEF),
]


def _random_unicode(rng):
    chars = []
    for _ in range(rng.randint(1, 12)):
        lo, hi = rng.choice(_SCRIPT_RANGES)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def _mixed_case(rng, text):
    return "".join(c.upper() if rng.random() < 0.3 else c for c in text)


def _caption(rng):
    return rng.choice(_TEMPLATES).format(
        a=rng.choice(_ADJECTIVES), n=rng.choice(_NOUNS), p=rng.choice(_PLACES)
    )


def make_corpus(size=2400, seed=0):
    """`size` deterministic strings: captions, fragments, noise, long text."""
    rng = random.Random(seed)
    corpus = ["", " ", "\n\t ", "a", "A"] + list(_FRAGMENTS)
    joiners = [" ", "", "  ", "\t", "\n", ", ", " & ", "&"]
    while len(corpus) < size:
        kind = rng.random()
        if kind < 0.3:
            text = _caption(rng)
        elif kind < 0.55:
            parts = [rng.choice(_FRAGMENTS) for _ in range(rng.randint(1, 4))]
            text = rng.choice(joiners).join(parts)
        elif kind < 0.7:
            text = _caption(rng) + rng.choice(joiners) + rng.choice(_FRAGMENTS)
        elif kind < 0.85:
            text = _random_unicode(rng)
        elif kind < 0.95:
            text = _mixed_case(
                rng, _caption(rng) + " " + rng.choice(_FRAGMENTS)
            )
        else:  # far longer than 77 tokens
            parts = [_caption(rng) for _ in range(rng.randint(8, 20))]
            parts += [rng.choice(_FRAGMENTS) for _ in range(5)]
            rng.shuffle(parts)
            text = " ".join(parts)
        corpus.append(text)
    return corpus[:size]


# Text that went through the wrong codec, the way ftfy's `fix_encoding`
# finds it: UTF-8 bytes decoded as a single-byte (or other) encoding.
_MOJIBAKE_SOURCES = [
    "café", "naïve", "über", "señor", "Ærøskøbing", "Łódź", "Dvořák",
    "İstanbul", "Ça va", "“smart quotes”", "don’t", "em—dash", "wait…",
    "€5", "£10", "©2020", "½ cup", "30°C", "à la carte", "São Paulo",
    "crème brûlée", "Zürich", "Ελληνικά", "Привет", "日本語", "한국어",
    "😀", "👍🏽", "ﬁsh", "• bullet", "™", "±5", "µm", "×2", "résumé",
    "jalapeño", "Čeština", "ğüşıöç", "Ø", "the end.",
]
_CODECS = [
    "latin-1", "cp1252", "sloppy-windows-1252", "cp1251",
    "sloppy-windows-1251", "cp1250", "sloppy-windows-1250", "cp1253",
    "cp1254", "cp1257", "iso-8859-2", "mac_roman", "cp437", "cp850",
    "koi8-r", "cp1256",
]


def _wrong_codec(rng, text):
    codec = rng.choice(_CODECS)
    errors = rng.choice(["replace", "ignore"])
    return text.encode("utf-8").decode(codec, errors=errors)


def make_mojibake(size=800, seed=1):
    """`size` deterministic strings with mojibake in many of its forms.

    Single and double wrong decoding, U+00A0 turned into a space (ftfy's
    `restore_byte_a0`), HTML-escaped mojibake, mojibake after a line with
    "<", upper case, mixed with clean text, stray C1 and Windows-1252
    bytes; plus rows the graph hands to Python for other reasons: NUL,
    HTML escapes nested deeper than its rounds, characters whose NFC
    differs between ICU and Python's Unicode versions.
    """
    import html.entities

    import ftfy.bad_codecs  # noqa: F401  (registers "sloppy-windows-*")

    rng = random.Random(seed)
    names = html.entities.codepoint2name
    out = [
        "&" + "amp;" * 40 + "x", "a\x00b", "Ã\x00©", "&am\x00p;",
        "\u0897 \U0001e4ec", "\U000105d2\u0307", "\U00011382\U000113c9",
        "&Atilde;&copy; &ATILDE;&SUP3;", "voilÃ  le travail", "sÃ³",
    ]
    while len(out) < size:
        text = " ".join(
            rng.choice(_MOJIBAKE_SOURCES) for _ in range(rng.randint(1, 3))
        )
        broken = _wrong_codec(rng, text)
        kind = rng.random()
        if kind < 0.15:
            broken = _wrong_codec(rng, broken)
        elif kind < 0.25:
            broken = broken.replace("\xa0", " ")
        elif kind < 0.35:
            broken = "".join(
                f"&{names[ord(c)]};" if ord(c) in names and rng.random() < 0.7
                else c for c in broken
            )
        elif kind < 0.45:
            broken = "<b>bold</b>\n" + broken
        elif kind < 0.55:
            broken = broken.upper()
        elif kind < 0.75:
            broken = _caption(rng) + rng.choice([" ", "\n", ", "]) + broken
        elif kind < 0.85:
            raw = bytes(rng.randrange(0x80, 0x100) for _ in range(3))
            broken += " " + raw.decode(rng.choice(["latin-1", "cp1252"]),
                                       errors="replace")
        out.append(broken)
    return out[:size]


def _fix_encoding_matters(text):
    """Whether ftfy's mojibake repair (`fix_encoding`) changes the text."""
    import ftfy

    return ftfy.fix_text(text) != ftfy.fix_text(text, fix_encoding=False)


# Fixtures ------------------------------------------------------------------
_ORDINARY = 2400  # rows of `make_corpus`; `make_mojibake` rows follow


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(_ORDINARY) + make_mojibake()


@pytest.fixture(scope="module")
def openai_tokenizer():
    return CLIPTokenizer.from_openai_vocab()


def _open_clip_tokenizer():
    """open_clip's `tokenizer` module (`open_clip.tokenize` is its
    `tokenize`), loaded from its file: the package's `__init__` also
    imports torchvision, timm and transformers, seconds that tokenizing
    does not need."""
    import importlib.util

    if "open_clip" in sys.modules:
        return sys.modules["open_clip"].tokenizer
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open_clip is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "tokenizer.py")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference_ids(corpus):
    return _open_clip_tokenizer().tokenize(corpus).numpy()


@pytest.fixture(scope="module")
def fix_encoding_rows(corpus):
    return np.array([_fix_encoding_matters(text) for text in corpus])


@pytest.fixture(scope="module")
def tf_modules():
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tensorflow_text")
    return tf


def _map_in_tf_data(tf, tokenizer, texts, batch_size=None):
    ds = tf.data.Dataset.from_tensor_slices(texts)
    if batch_size:
        ds = ds.batch(batch_size)
    ds = ds.map(tokenizer, num_parallel_calls=tf.data.AUTOTUNE)
    rows = list(ds.as_numpy_iterator())
    return np.concatenate(rows) if batch_size else np.stack(rows)


@pytest.fixture(scope="module")
def graph_ids(tf_modules, openai_tokenizer, corpus):
    """The whole corpus through one batched `tf.data` pass."""
    return _map_in_tf_data(tf_modules, openai_tokenizer, corpus, 400)


def _mismatches(ids, reference):
    return np.flatnonzero((ids != reference).any(axis=1))


# Parity with open_clip -------------------------------------------------------
def test_corpus_is_varied(corpus, fix_encoding_rows):
    assert len(corpus) >= 3000
    joined = "".join(corpus)
    for piece in ["<|endoftext|>", "&amp;", "\t", "ＡＢＣ", "👨‍👩", "日本",
                  "мир", "नमस्ते", "مرحبا", "ﬁ", "Ã©", "https://", "â€",
                  "вЂ", "ΓÇ", "√©", "Ã\xa0", "&Atilde;", "\x00",
                  "<b>bold</b>\n"]:
        assert piece in joined
    assert "" in corpus
    assert max(len(s.split()) for s in corpus) > 150
    # Plenty of rows that only ftfy's mojibake repair gets right.
    assert fix_encoding_rows.sum() > 400, fix_encoding_rows.sum()


def test_eager_parity_with_open_clip(openai_tokenizer, corpus, reference_ids):
    ids = openai_tokenizer(corpus)
    assert ids.dtype == np.int32
    assert ids.shape == (len(corpus), 77)
    bad = _mismatches(ids, reference_ids)
    assert not len(bad), [corpus[i] for i in bad[:5]]


def test_graph_parity_in_tf_data(
    tf_modules, openai_tokenizer, corpus, reference_ids, graph_ids
):
    assert graph_ids.dtype == np.int32
    assert graph_ids.shape == (len(corpus), 77)
    # Every string, mojibake included: identical to open_clip.
    bad = _mismatches(graph_ids, reference_ids)
    assert not len(bad), [corpus[i] for i in bad[:5]]
    # Unbatched (scalar strings), plain and mojibake rows: same ids.
    rows = list(range(40)) + list(range(len(corpus) - 40, len(corpus)))
    single = _map_in_tf_data(tf_modules, openai_tokenizer,
                             [corpus[i] for i in rows])
    np.testing.assert_array_equal(single, graph_ids[rows])


def test_graph_flags_every_row_it_cannot_clean(
    tf_modules, corpus, fix_encoding_rows
):
    """The graph's mask covers every row ftfy's mojibake repair changes
    and every row its own ops clean differently from the eager code."""
    from keras_clip.text import bpe
    from keras_clip.text import cleaning_graph as text_cleaning_graph

    cleaner = text_cleaning_graph.shared_cleaner()
    cleaned, flagged = cleaner.function(tf_modules.constant(corpus))
    cleaned = [t.decode("utf-8") for t in cleaned.numpy().tolist()]
    flagged = flagged.numpy()
    repaired = fix_encoding_rows
    wrong = np.array([c != bpe.clean_text(t) for c, t in zip(cleaned, corpus)])
    assert not (repaired & ~flagged).any(), [
        corpus[i] for i in np.flatnonzero(repaired & ~flagged)[:5]
    ]
    assert not (wrong & ~flagged).any(), [
        corpus[i] for i in np.flatnonzero(wrong & ~flagged)[:5]
    ]
    # Without the Python route the graph would be wrong on these rows.
    assert wrong.sum() > 300, wrong.sum()
    # Ordinary text stays on the graph ops.
    assert flagged[:_ORDINARY].mean() < 0.1, flagged[:_ORDINARY].mean()
    rng = random.Random(2)
    captions = [_caption(rng) for _ in range(200)]
    assert not cleaner.function(tf_modules.constant(captions))[1].numpy().any()


def test_mojibake_heuristic_translated_to_re2(tf_modules):
    """RE2's reading of ftfy's `BADNESS_RE` equals Python's, but for its
    "^" (dropped: the graph tests whole texts, ftfy each line)."""
    import ftfy.badness

    from keras_clip.text.cleaning_python_rows import re2_search_superset

    bad = ftfy.badness.BADNESS_RE
    rng = random.Random(3)
    alphabet = sorted(
        set(bad.pattern) - set("[]{}|")
        | set(map(chr, range(0x80, 0x250))) | set("ЀЁЂЃ▀▄█ \n\t\u2003")
    )
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
             for _ in range(20000)]
    texts += ["Ã ", "a Ã ", "x\nÂ ", "é»x", "é»_", "é» ", "é»\u0301"]
    got = tf_modules.strings.regex_full_match(
        tf_modules.constant(texts), f"(?s).*(?:{re2_search_superset(bad)}).*"
    ).numpy()
    hits = 0
    for text, hit in zip(texts, got.tolist()):
        found = bool(bad.search(text))
        anywhere = any(bad.match(text[i:]) for i in range(len(text)))
        assert found <= hit == anywhere, text
        hits += found
    assert 1000 < hits < len(texts) - 1000, hits


def test_graph_known_differences_from_keras_hub(tf_modules, openai_tokenizer):
    """The cases docs/tokenizer.md lists where keras-hub goes wrong."""
    tf = tf_modules
    texts = ["Room 1234", "A Photo Of A CAT", "x <|endoftext|> y", "a, b"]
    graph = openai_tokenizer(tf.constant(texts)).numpy()
    np.testing.assert_array_equal(graph, openai_tokenizer(texts))
    digits = graph[0, 2:6].tolist()
    assert digits == [272, 273, 274, 275]  # one token per digit
    np.testing.assert_array_equal(
        graph[1], openai_tokenizer(["a photo of a cat"])[0]
    )
    assert openai_tokenizer.eot_token_id not in graph[2, :-1].tolist()[:8]
    assert openai_tokenizer.detokenize(graph[3]) == "a , b"


# Special tokens, truncation, shapes -------------------------------------------
def test_special_token_literals(openai_tokenizer):
    sot, eot = openai_tokenizer.sot_token_id, openai_tokenizer.eot_token_id
    assert (sot, eot) == (49406, 49407)
    assert openai_tokenizer.vocabulary_size == 49408
    assert openai_tokenizer.pad_token_id == 0
    ids = openai_tokenizer(["<end_of_text>", "<|endoftext|>"])
    # open_clip reads its own special-token spelling in text...
    assert ids[0, :4].tolist() == [sot, eot, eot, 0]
    # ...but OpenAI's spelling is plain text there.
    assert ids[1, :8].tolist() == [sot, 27, 347, 40786, 4160, 91, 285, eot]
    strict = CLIPTokenizer(
        merges=openai_tokenizer.merges, parse_special_tokens=False
    )
    row = strict(["<end_of_text>"])[0]
    assert eot not in row[:-1].tolist()[: int(np.argmax(row == eot))]


def test_truncation_and_context_length(openai_tokenizer):
    long_text = " ".join(["word"] * 200)
    ids = openai_tokenizer([long_text, "a cat"])
    assert ids[0, 0] == 49406 and ids[0, -1] == 49407
    assert (ids[0, 1:-1] == ids[0, 1]).all()
    word = ids[0, 1]
    short = CLIPTokenizer(merges=openai_tokenizer.merges, context_length=5)
    np.testing.assert_array_equal(
        short([long_text, "a"]),
        [[49406, word, word, word, 49407], [49406, 320, 49407, 0, 0]],
    )
    tiny = CLIPTokenizer(merges=openai_tokenizer.merges, context_length=2)
    assert tiny(["a long caption"]).tolist() == [[49406, 49407]]


def test_input_forms(openai_tokenizer):
    expected = openai_tokenizer(["a cat", "a dog"])
    assert openai_tokenizer("a cat").shape == (77,)
    np.testing.assert_array_equal(openai_tokenizer("a cat"), expected[0])
    np.testing.assert_array_equal(openai_tokenizer(("a cat", "a dog")), expected)
    np.testing.assert_array_equal(
        openai_tokenizer(np.array(["a cat", "a dog"])), expected
    )
    np.testing.assert_array_equal(
        openai_tokenizer([b"a cat", b"a dog"]), expected
    )
    assert openai_tokenizer([]).shape == (0, 77)
    np.testing.assert_array_equal(
        openai_tokenizer.tokenize(["a cat"]), expected[:1]
    )


def test_tf_tensor_inputs(tf_modules, openai_tokenizer):
    tf = tf_modules
    expected = openai_tokenizer(["a cat", "a dog"])
    scalar = openai_tokenizer(tf.constant("a cat"))
    assert scalar.dtype == tf.int32 and scalar.shape == (77,)
    np.testing.assert_array_equal(scalar.numpy(), expected[0])
    np.testing.assert_array_equal(
        openai_tokenizer(tf.constant(["a cat", "a dog"])).numpy(), expected
    )
    # Bytes that are not UTF-8, NUL, mojibake: decoded as the eager path
    # decodes bytes (U+FFFD for bad bytes), then cleaned the same way.
    raw = [b"\xff\xfeab", b"caf\xc3\x83\xc2\xa9 \xe2\x82", b"a\x00b", b"",
           "donâ€™t".encode("utf-8")]
    np.testing.assert_array_equal(
        openai_tokenizer(tf.constant(raw)).numpy(), openai_tokenizer(raw)
    )


def test_detokenize(openai_tokenizer):
    texts = ["a photo of a cat", "Hello, World!", "", "日本 😀 café"]
    ids = openai_tokenizer(texts)
    assert openai_tokenizer.detokenize(ids) == [
        "a photo of a cat", "hello , world !", "", "日本 😀 café"
    ]
    assert openai_tokenizer.detokenize(ids[0]) == "a photo of a cat"
    assert openai_tokenizer.detokenize(ids[0].tolist()) == "a photo of a cat"
    backend_ids = keras.ops.convert_to_tensor(ids)
    assert openai_tokenizer.detokenize(backend_ids)[0] == "a photo of a cat"


def test_from_openai_vocab_path(tmp_path, openai_tokenizer):
    import gzip

    path = tmp_path / "bpe.txt.gz"
    lines = ["#version: test"] + openai_tokenizer.merges + ["x y", "z w"]
    path.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    tokenizer = CLIPTokenizer.from_openai_vocab(path, context_length=16)
    assert tokenizer.vocabulary == openai_tokenizer.vocabulary
    assert tokenizer.context_length == 16
    with pytest.raises(FileNotFoundError):
        CLIPTokenizer.from_openai_vocab(tmp_path / "missing.txt.gz")


# Trained vocabularies ---------------------------------------------------------
def _training_captions():
    rng = random.Random(1)
    return [_caption(rng) for _ in range(400)] + [
        "grinning face", "man feeding baby medium-light skin tone",
        "flag: France", "keycap: 1", "red heart", "thumbs up: dark skin tone",
    ]


@pytest.fixture(scope="module")
def trained_tokenizer():
    return CLIPTokenizer.train(
        _training_captions(), vocabulary_size=700, context_length=24
    )


def test_train_vocabulary(trained_tokenizer):
    tok = trained_tokenizer
    assert tok.vocabulary_size == 700
    assert len(tok.merges) == 700 - 514
    assert (tok.sot_token_id, tok.eot_token_id) == (698, 699)
    assert tok.vocabulary[:512] == bpe.base_vocabulary()
    assert len(set(tok.vocabulary)) == 700
    again = CLIPTokenizer.train(_training_captions(), vocabulary_size=700)
    assert again.merges == tok.merges  # deterministic


def test_trained_round_trip(trained_tokenizer):
    texts = ["A Photo of a RED cat", "grinning face", "zebra quartz jumps",
             "man feeding baby medium light skin tone"]
    ids = trained_tokenizer(texts)
    assert ids.shape == (4, 24)
    assert trained_tokenizer.detokenize(ids) == [t.lower() for t in texts]
    # Frequent words became single tokens.
    assert trained_tokenizer(["photo"])[0, 2] == trained_tokenizer.eot_token_id


def test_trained_graph_matches_eager(tf_modules, trained_tokenizer, corpus):
    texts = corpus[:300] + corpus[-100:]  # mojibake at the end
    graph = _map_in_tf_data(tf_modules, trained_tokenizer, texts, 200)
    np.testing.assert_array_equal(graph, trained_tokenizer(texts))


def test_train_runs_out_of_pairs():
    with pytest.warns(UserWarning, match="support only 517 tokens"):
        tok = CLIPTokenizer.train(["ab ab", "abc"], vocabulary_size=1000)
    # Merges "a b</w>", "a b", "ab c</w>"; then every word is one token.
    assert tok.vocabulary_size == 514 + 3
    assert tok.merges == ["a b</w>", "a b", "ab c</w>"]
    assert tok.detokenize(tok(["abc ab"]))[0] == "abc ab"


# Saving ---------------------------------------------------------------------
def test_config_and_assets_round_trip(trained_tokenizer, tmp_path):
    config = trained_tokenizer.get_config()
    assert config["context_length"] == 24
    assert "vocabulary" not in config and "merges" not in config
    trained_tokenizer.save_assets(str(tmp_path))
    restored = CLIPTokenizer.from_config(config)
    with pytest.raises(ValueError, match="no vocabulary"):
        restored(["a"])
    restored.load_assets(str(tmp_path))
    assert restored.vocabulary == trained_tokenizer.vocabulary
    assert restored.merges == trained_tokenizer.merges
    texts = ["a tiny red robot", "flag: France 😀"]
    np.testing.assert_array_equal(restored(texts), trained_tokenizer(texts))


@keras.saving.register_keras_serializable(package="keras_clip_test")
class _TokenizerHolder(keras.Model):
    """Stand-in for CLIPModel: a model that carries `self.tokenizer`."""

    def __init__(self, tokenizer_config=None, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer_config = tokenizer_config or {}
        self.tokenizer = CLIPTokenizer(**self.tokenizer_config)
        self.embed = keras.layers.Embedding(2000, 4)

    def call(self, ids):
        return keras.ops.mean(self.embed(ids), axis=1)

    def get_config(self):
        return {**super().get_config(), "tokenizer_config": self.tokenizer_config}


def _save_holder(tokenizer, path):
    config = {k: v for k, v in tokenizer.get_config().items()
              if k in ("context_length", "parse_special_tokens", "name")}
    model = _TokenizerHolder(config)
    model.tokenizer.set_vocabulary(tokenizer.vocabulary, tokenizer.merges)
    model(model.tokenizer(["a cat"]))
    model.save(path)
    return model


def test_keras_file_round_trip_safe_mode(trained_tokenizer, tmp_path):
    path = str(tmp_path / "holder.keras")
    _save_holder(trained_tokenizer, path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.tokenizer, CLIPTokenizer)
    assert loaded.tokenizer.vocabulary == trained_tokenizer.vocabulary
    texts = ["a photo of a cat", "grinning face"]
    np.testing.assert_array_equal(
        loaded.tokenizer(texts), trained_tokenizer(texts)
    )


def test_keras_file_loads_on_another_backend(trained_tokenizer, tmp_path):
    """Saved here, loaded in a fresh process on another backend, with no
    TensorFlow import needed for eager tokenization there."""
    path = str(tmp_path / "holder.keras")
    _save_holder(trained_tokenizer, path)
    other = "jax" if keras.backend.backend() != "jax" else "torch"
    texts = ["a photo of a cat", "grinning face"]
    expected = trained_tokenizer(texts).tolist()
    script = textwrap.dedent(f"""
        import sys, keras
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import tokenizer_test  # registers the holder class
        model = keras.saving.load_model({path!r}, safe_mode=True)
        ids = model.tokenizer({texts!r}).tolist()
        assert ids == {expected!r}, ids
        assert "tensorflow" not in sys.modules, "eager path imported TF"
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND=other)
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True,
        text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


# Bad input ------------------------------------------------------------------
def test_bad_inputs(openai_tokenizer):
    with pytest.raises(ValueError, match="Expected .*Received: int"):
        openai_tokenizer(123)
    with pytest.raises(ValueError, match="Received an element of type int"):
        openai_tokenizer(["a", 1])
    with pytest.raises(ValueError, match="Received: array of dtype float64"):
        openai_tokenizer(np.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        openai_tokenizer(np.array([["a"]]))
    with pytest.raises(ValueError, match="context_length=1"):
        CLIPTokenizer(context_length=1)
    with pytest.raises(ValueError, match="context_length='77'"):
        CLIPTokenizer(context_length="77")
    with pytest.raises(ValueError, match="vocabulary_size=100"):
        CLIPTokenizer.train(["a cat"], vocabulary_size=100)
    with pytest.raises(ValueError, match="not one string"):
        CLIPTokenizer.train("a cat", vocabulary_size=600)
    with pytest.raises(ValueError, match="type int"):
        CLIPTokenizer.train(["a", 3], vocabulary_size=600)
    with pytest.raises(ValueError, match="pair of non-empty tokens"):
        CLIPTokenizer(merges=["a b c"])
    with pytest.raises(ValueError, match="no vocabulary"):
        CLIPTokenizer()(["a"])
    with pytest.raises(ValueError, match="Received: dtype=float"):
        openai_tokenizer.detokenize(np.zeros((1, 3)))


def test_bad_tf_inputs(tf_modules, openai_tokenizer):
    tf = tf_modules
    with pytest.raises(ValueError, match="Received: dtype=int32"):
        openai_tokenizer(tf.constant([1, 2]))
    with pytest.raises(ValueError, match="shape=\\(1, 1\\)"):
        openai_tokenizer(tf.constant([["a"]]))
