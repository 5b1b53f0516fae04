"""Checkpoint conversion: parity with open_clip and transformers, round trips,
file formats and refusals. Run once per backend (KERAS_BACKEND).

Reference models are randomly initialised offline, with LayerNorm gains /
biases and BatchNorm statistics randomised so a wrong mapping cannot pass.
Set KERAS_CLIP_PARITY_LOG to a file to append the measured differences.
"""

import json
import os
import pickle
import warnings
import zipfile

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

from keras_clip import convert  # noqa: E402
from keras_clip.convert import checkpoint_io  # noqa: E402

TOLERANCE = 1e-4
pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    # Bare state dicts warn that head counts were assumed; one test checks it.
    pytest.mark.filterwarnings("ignore:Assumed (vision|text)_heads:UserWarning"),
]
BATCH = 2
torch.set_num_threads(1)


# ---- reference models ---------------------------------------------------


def _randomize(module, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def fill(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) * (high - low) + low)

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                fill(layer.weight, 0.6, 1.4)
                fill(layer.bias, -0.3, 0.3)
            if isinstance(layer, torch.nn.BatchNorm2d):
                fill(layer.running_mean, -0.3, 0.3)
                fill(layer.running_var, 0.5, 1.5)
        module.logit_scale.fill_(2.9)
    return module.eval()


def _tiny_vit(quick_gelu=True):
    torch.manual_seed(1)
    return _randomize(CLIP(
        32,
        vision_cfg=CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=100, width=128, heads=2, layers=2),
        quick_gelu=quick_gelu,
    ))


def _tiny_resnet():
    # RN50's structure: 3-conv stem, 4 stages (stage 2: stride 2, channel
    # change, 2 blocks), attention pool; GELU text tower.
    torch.manual_seed(2)
    return _randomize(CLIP(
        48,
        vision_cfg=CLIPVisionCfg(layers=(1, 2, 1, 1), width=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=100, width=128, heads=2, layers=2),
        quick_gelu=False,
    ))


def _hf_model(legacy_eos):
    torch.manual_seed(3)
    eos = 2 if legacy_eos else 99
    act = "quick_gelu" if legacy_eos else "gelu"
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=100, hidden_size=64, intermediate_size=256,
            num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16, eos_token_id=eos, bos_token_id=98,
            pad_token_id=0, hidden_act=act,
        ),
        vision_config=dict(
            hidden_size=96, intermediate_size=384, num_hidden_layers=2,
            num_attention_heads=3, image_size=32, patch_size=8, hidden_act=act,
        ),
        projection_dim=24,
    )
    return _randomize(transformers.CLIPModel(config))


def _inputs(image_size, context=16, eot=99, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(BATCH, image_size, image_size, 3)).astype("float32")
    tokens = np.zeros((BATCH, context), "int32")
    for row, end in enumerate((5, context - 1)):
        tokens[row, 0] = 98
        tokens[row, 1:end] = rng.integers(1, eot - 1, end - 1)
        tokens[row, end] = eot
    return images, tokens


def _to_torch(images, tokens):
    return (
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(tokens).long(),
    )


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _log(case, diffs):
    path = os.environ.get("KERAS_CLIP_PARITY_LOG")
    if path:
        with open(path, "a") as f:
            record = {"backend": keras.backend.backend(), "case": case}
            f.write(json.dumps({**record, **diffs}) + "\n")


def _check_open_clip_parity(reference, model, case, tokens_eot=99):
    images, tokens = _inputs(model.config.image_size, model.config.context_length, tokens_eot)
    timages, ttokens = _to_torch(images, tokens)
    with torch.no_grad():
        logits, _ = reference.get_logits(timages, ttokens)
        image_ref = reference.encode_image(timages).numpy()
        text_ref = reference.encode_text(ttokens).numpy()
    out = model({"images": images, "token_ids": tokens})
    diffs = {
        "logits": float(np.abs(_numpy(out["logits_per_image"]) - logits.numpy()).max()),
        "image_embedding": float(np.abs(
            _numpy(model.encode_image(images, normalize=False)) - image_ref).max()),
        "text_embedding": float(np.abs(
            _numpy(model.encode_text(tokens, normalize=False)) - text_ref).max()),
    }
    _log(case, diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    return diffs


# ---- parity -------------------------------------------------------------


@pytest.fixture(scope="module")
def vit():
    return _tiny_vit()


@pytest.fixture(scope="module")
def resnet():
    return _tiny_resnet()


def test_open_clip_vit_parity(vit):
    model = convert.from_open_clip(vit.state_dict(), activation="quick_gelu")
    c = model.config
    assert (c.vision, c.vision_width, c.vision_layers, c.patch_size, c.image_size) == (
        "vit", 128, 2, 8, 32)
    assert (c.text_width, c.text_layers, c.context_length, c.vocabulary_size, c.embed_dim) == (
        128, 2, 16, 100, 32)
    assert model.tokenizer is None  # not OpenAI's vocabulary
    _check_open_clip_parity(vit, model, "open_clip tiny ViT (QuickGELU)")


def test_open_clip_resnet_parity(resnet):
    model = convert.from_open_clip(resnet.state_dict(), activation="gelu")
    c = model.config
    assert (c.vision, c.vision_layers, c.vision_width, c.vision_heads, c.image_size) == (
        "resnet", (1, 2, 1, 1), 16, 8, 64)
    _check_open_clip_parity(resnet, model, "open_clip tiny RN (GELU)")


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos99_gelu", "eos2_quickgelu"])
def test_huggingface_parity(legacy_eos, tmp_path):
    reference = _hf_model(legacy_eos)
    model = convert.from_huggingface(reference)
    assert model.config.eot_token_id == 99
    assert model.config.activation == ("quick_gelu" if legacy_eos else "gelu")
    images, tokens = _inputs(32)
    timages, ttokens = _to_torch(images, tokens)
    with torch.no_grad():
        out_ref = reference(input_ids=ttokens, pixel_values=timages)
        image_ref = reference.visual_projection(
            reference.vision_model(pixel_values=timages).pooler_output).numpy()
        text_ref = reference.text_projection(
            reference.text_model(input_ids=ttokens).pooler_output).numpy()
    out = model({"images": images, "token_ids": tokens})
    diffs = {
        "logits": float(np.abs(_numpy(out["logits_per_image"]) - out_ref.logits_per_image.numpy()).max()),
        "image_embedding": float(np.abs(_numpy(model.encode_image(images, normalize=False)) - image_ref).max()),
        "text_embedding": float(np.abs(_numpy(model.encode_text(tokens, normalize=False)) - text_ref).max()),
    }
    _log(f"huggingface tiny ViT ({'eos 2, quick_gelu' if legacy_eos else 'eos 99, gelu'})", diffs)
    assert max(diffs.values()) < TOLERANCE, diffs
    if not legacy_eos:
        # A folder as save_pretrained writes it, with a preprocessor config.
        reference.save_pretrained(tmp_path)
        mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
        with open(tmp_path / "preprocessor_config.json", "w") as f:
            json.dump({"image_mean": mean, "image_std": std, "resample": 2}, f)
        loaded = convert.from_huggingface(tmp_path)
        assert loaded.config.image_mean == tuple(mean)
        assert loaded.config.image_std == tuple(std)
        assert loaded.config.image_interpolation == "bilinear"  # PIL code 2
        np.testing.assert_array_equal(
            _numpy(loaded.encode_text(tokens)), _numpy(model.encode_text(tokens)))


# ---- round trip and formats ----------------------------------------------


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_export_round_trip_is_exact(name, vit, resnet, tmp_path):
    reference = {"vit": vit, "resnet": resnet}[name]
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    model = convert.from_open_clip(state, activation="gelu")
    path = tmp_path / "exported.safetensors"
    exported = convert.to_open_clip(model, path)
    assert sorted(exported) == sorted(state)
    for key, value in state.items():
        assert exported[key].shape == value.shape, key
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    # The file loads strictly into open_clip's model built from our config.
    from safetensors.torch import load_file

    rebuilt = CLIP(**convert.open_clip_model_config(model.config))
    rebuilt.load_state_dict(load_file(path), strict=True)
    again = convert.from_open_clip(path, activation="gelu")
    for a, b in zip(model.weights, again.weights):
        np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=a.path)


def test_file_formats_give_the_same_weights(vit, tmp_path):
    from safetensors.torch import save_file

    state = vit.state_dict()
    expected = convert.from_open_clip(state, activation="quick_gelu")
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    torch.save(state, tmp_path / "m.pt")
    # open_clip's training checkpoints: {"epoch", "state_dict": {"module.*"}}.
    torch.save(
        {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}},
        tmp_path / "epoch_3.pt",
    )
    # The open_clip hub layout: folder with config (activation and mean/std).
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, hub / "open_clip_model.safetensors")
    model_cfg = convert.open_clip_model_config(expected.config)
    with open(hub / "open_clip_config.json", "w") as f:
        json.dump({"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bilinear"}}, f)
    for source in ("m.safetensors", "m.pt", "epoch_3.pt", "hub"):
        activation = None if source == "hub" else "quick_gelu"
        model = convert.from_open_clip(tmp_path / source, activation=activation)
        for a, b in zip(expected.weights, model.weights):
            np.testing.assert_array_equal(_numpy(a), _numpy(b), err_msg=f"{source}: {a.path}")
    assert model.config.image_mean == (0.5,) * 3
    assert model.config.image_interpolation == "bilinear"
    assert model.config.activation == "quick_gelu"


def _trace(reference, path):
    images, tokens = _inputs(reference.visual.image_size[0], 16)
    timages, ttokens = _to_torch(images, tokens)
    traced = torch.jit.trace_module(
        reference,
        {"forward": (timages, ttokens), "encode_image": (timages,), "encode_text": (ttokens,)},
        check_trace=False,
    )
    traced.save(str(path))
    return traced


def test_torchscript_archive_is_read_without_running_it(vit, tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    traced = _trace(vit, path)
    state, names = checkpoint_io.read_torchscript_state_dict(path)
    expected = traced.state_dict()  # test-only: our own, trusted file.
    assert list(state) == list(expected)  # includes TorchScript's attn_mask
    for key, value in expected.items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
        assert state[key].dtype == value.numpy().dtype
    assert "QuickGELU" in names
    model = convert.from_open_clip(path)  # activation found in the archive
    assert model.config.activation == "quick_gelu"
    _check_open_clip_parity(vit, model, "TorchScript tiny ViT")
    # torch.load(weights_only=True) refuses TorchScript: say so clearly.
    with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="TorchScript"):
        checkpoint_io._load_torch_pickle(str(path))


def test_torchscript_half_precision_resnet(tmp_path):
    # OpenAI's archives store most weights in float16.
    half = _tiny_resnet()
    open_clip.model.convert_weights_to_lp(half, torch.float16)
    path = tmp_path / "RN-tiny-fp16.pt"
    images, tokens = _inputs(64)
    timages, ttokens = _to_torch(images, tokens)
    traced = torch.jit.trace(half.visual, (timages.half(),), check_trace=False)
    traced.save(str(path))
    state, _ = checkpoint_io.read_torchscript_state_dict(path)
    for key, value in half.visual.state_dict().items():
        np.testing.assert_array_equal(state[key], value.numpy(), err_msg=key)
    assert state["conv1.weight"].dtype == np.float16


# ---- errors ---------------------------------------------------------------


def test_extra_missing_and_misshapen_keys_are_named(vit):
    state = {k: v.numpy() for k, v in vit.state_dict().items()}
    with pytest.raises(ValueError, match="visual.extra_gain"):
        convert.from_open_clip({**state, "visual.extra_gain": np.ones(3)}, activation="gelu")
    missing = dict(state)
    del missing["transformer.resblocks.1.ln_2.bias"]
    with pytest.raises(ValueError, match=r"missing key\(s\) \['transformer.resblocks.1.ln_2.bias'\]"):
        convert.from_open_clip(missing, activation="gelu")
    wrong = dict(state)
    wrong["visual.transformer.resblocks.0.mlp.c_fc.bias"] = np.zeros(7, "float32")
    with pytest.raises(ValueError, match=r"mlp.c_fc.bias: expected \(512,\), received \(7,\)"):
        convert.from_open_clip(wrong, activation="gelu")
    with pytest.raises(ValueError, match="Could not tell the activation"):
        convert.from_open_clip(state)
    with pytest.raises(ValueError, match="text_width"):
        convert.from_open_clip(state, activation="gelu", text_width=64)
    with pytest.raises(ValueError, match="Expected `CLIPConfig` field names"):
        convert.from_open_clip(state, activation="gelu", widht=3)
    bad_mask = dict(state, attn_mask=np.zeros((16, 16), "float32"))
    with pytest.raises(ValueError, match="attn_mask"):
        convert.from_open_clip(bad_mask, activation="gelu")


def test_files_that_are_no_checkpoint_are_named(vit, tmp_path):
    expected = (r"Expected a checkpoint: a torch.save file \(.pt / .bin / .pth\), a "
                r".safetensors file or an OpenAI TorchScript .pt\. Received: ")
    notes = tmp_path / "notes.pt"
    notes.write_text("epochs: 10\nlr: 0.001\n")
    with pytest.raises(ValueError, match=expected + r".*notes\.pt, a text file of 21 bytes "
                       r"starting 'epochs: 10\\nlr: 0.001\\n', which none of them reads "
                       r"\(\w+Error: .*\)\. Check that the path"):
        convert.from_open_clip(notes, activation="gelu")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=expected + r".*empty\.pt, an empty file \(0 bytes\), "
                       "which none of them reads. Check"):
        convert.from_open_clip(empty, activation="gelu")
    whole = tmp_path / "whole.pt"
    torch.save(vit.state_dict(), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[:5000])  # an interrupted download
    with pytest.raises(ValueError, match=expected + r".*cut\.pt, a file of 5,000 bytes "
                       r"starting b'PK.*which none of them reads \(\w+Error: "):
        convert.from_open_clip(cut, activation="gelu")
    # A checkpoint missing a key the architecture is read from.
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in vit.state_dict().items()
             if k != "visual.conv1.weight"}
    save_file(state, tmp_path / "no_conv1.safetensors")
    with pytest.raises(ValueError, match=r"Expected the key 'visual.conv1.weight' in "
                       r".*no_conv1\.safetensors, as in every OpenAI / open_clip CLIP "
                       r"checkpoint of this layout\. Received: no such key among its "
                       rf"{len(state)} keys; keys found nearby: \['visual\.[^]]*\]\. Check "
                       "that it is a complete CLIP checkpoint"):
        convert.from_open_clip(tmp_path / "no_conv1.safetensors", activation="gelu")


def test_non_finite_weights_are_named(vit):
    state = {k: v.numpy().copy() for k, v in vit.state_dict().items()}
    state["logit_scale"] = np.array(np.nan, np.float32)
    with pytest.raises(ValueError, match=r"Expected finite values in every weight of a CLIP "
                       r".*Received: a state dict with NaN or infinity at 1 key\(s\): "
                       r"logit_scale \(1 NaN, 0 infinite of 1\)\. The file is damaged"):
        convert.from_open_clip(state, activation="gelu", vision_heads=2, text_heads=2)
    state["logit_scale"] = np.array(2.9, np.float32)
    state["transformer.resblocks.1.mlp.c_fc.weight"][3, :2] = [np.inf, -np.inf]
    with pytest.raises(ValueError, match=r"transformer.resblocks.1.mlp.c_fc.weight "
                       r"\(0 NaN, 2 infinite of 65536\)"):
        convert.from_open_clip(state, activation="gelu", vision_heads=2, text_heads=2)


def _tiny_resnet_head_width_16():
    # Head counts off OpenAI's width / 64 rule: 32 attention-pool heads of
    # width 16 (the rule says 8), 4 text heads of width 16 (the rule says 1).
    torch.manual_seed(4)
    return _randomize(CLIP(
        48,
        vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=16, head_width=16, image_size=64),
        text_cfg=CLIPTextCfg(context_length=16, vocab_size=100, width=64, heads=4, layers=1),
        quick_gelu=False,
    ))


def _head_warnings(caught):
    return [str(w.message) for w in caught if "Assumed" in str(w.message)]


def test_assumed_head_counts_warn_and_overrides_match_open_clip(vit):
    reference = _tiny_resnet_head_width_16()
    assert reference.visual.attnpool.num_heads == 32
    state = reference.state_dict()
    with pytest.warns(UserWarning, match=r"Assumed vision_heads=8 and text_heads=1 for a "
                      r"state dict by OpenAI's rule \(width / 64.* Pass `vision_heads=` "
                      r"and `text_heads=` to `from_open_clip`"):
        assumed = convert.from_open_clip(state, activation="gelu")
    images, tokens = _inputs(64)
    timages, ttokens = _to_torch(images, tokens)
    with torch.no_grad():
        image_ref = reference.encode_image(timages).numpy()
    wrong = np.abs(_numpy(assumed.encode_image(images, normalize=False)) - image_ref).max()
    assert wrong > 1e-5  # the silent error the warning is about
    for kwargs in (dict(vision_heads=32, text_heads=4),
                   dict(config=convert.open_clip_model_config(assumed.config.replace(
                       vision_heads=32, text_heads=4)))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = convert.from_open_clip(state, activation="gelu", **kwargs)
        assert not _head_warnings(caught), kwargs
        assert (model.config.vision_heads, model.config.text_heads) == (32, 4)
        _check_open_clip_parity(reference, model, "open_clip tiny RN, head width 16")
    # One count given: the warning names only the other.
    with pytest.warns(UserWarning, match=r"Assumed text_heads=1 for .* Pass `text_heads=`"):
        convert.from_open_clip(state, activation="gelu", vision_heads=32)
    # OpenAI's own state dicts (with `input_resolution`) follow the rule: no warning.
    openai = {**{k: v.numpy() for k, v in vit.state_dict().items()},
              "input_resolution": np.array(32), "context_length": np.array(16),
              "vocab_size": np.array(100)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert.from_open_clip(openai)
    assert not _head_warnings(caught)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickles_are_refused(vit, tmp_path):
    marker = tmp_path / "pwned"
    evil = {"logit_scale": torch.zeros(()), "payload": _Exploit(marker)}
    path = tmp_path / "evil.pt"
    torch.save(evil, path)
    with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="Refusing"):
        convert.from_open_clip(path, activation="gelu")
    assert not marker.exists()
    # The same payload as a TorchScript archive's data.pkl.
    archive = tmp_path / "ViT-tiny.pt"
    _trace(vit, archive)
    forged = tmp_path / "forged.pt"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("/data.pkl"):
                data = pickle.dumps(_Exploit(marker), protocol=2)
            dst.writestr(item, data)
    with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="system"):
        convert.from_open_clip(forged, activation="gelu")
    assert not marker.exists()
    # A tensor claiming more elements than its storage holds.
    rebuild = checkpoint_io._ArchiveUnpickler._rebuild_tensor
    with pytest.raises(checkpoint_io.UnsafeCheckpointError, match="inside its storage"):
        rebuild(np.zeros(4, np.float32), 0, (3, 2), (2, 1))
    np.testing.assert_array_equal(
        rebuild(np.arange(6, dtype=np.float32), 0, (3, 2), (1, 3)),
        np.arange(6, dtype=np.float32).reshape(2, 3).T)


def test_convert_command_writes_a_complete_keras_file(vit, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, tmp_path / "m.safetensors")
    out = tmp_path / "m.keras"
    from keras_clip_app import cli

    assert cli.main(["convert", str(tmp_path / "m.safetensors"), str(out), "--activation", "quick_gelu"]) == 0
    loaded = keras.saving.load_model(out)
    images, tokens = _inputs(32)
    expected = convert.from_open_clip(tmp_path / "m.safetensors", activation="quick_gelu")
    np.testing.assert_allclose(
        _numpy(loaded({"images": images, "token_ids": tokens})["logits_per_image"]),
        _numpy(expected({"images": images, "token_ids": tokens})["logits_per_image"]),
        atol=1e-6,
    )


# ---- full size -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32-quickgelu", "RN50"])
def test_full_size_parity(name):
    reference = _randomize(open_clip.create_model(name, pretrained=None))
    # open_clip's "RN50" config uses GELU; "-quickgelu" names OpenAI's choice.
    activation = "quick_gelu" if name.endswith("-quickgelu") else "gelu"
    model = convert.from_open_clip(reference.state_dict(), activation=activation)
    assert model.count_params() == sum(
        v.numel() for k, v in reference.state_dict().items()
        if not k.endswith("num_batches_tracked"))
    # OpenAI's tokenizer is attached; it matches open_clip's, token for token.
    strings = ["a photo of a cat.", "Two 3D-printed dogs, 1,024 px!"]
    tokens = np.asarray(model.tokenizer(strings), "int32")
    np.testing.assert_array_equal(tokens, open_clip.get_tokenizer(name)(strings).numpy())
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, 224, 224, 3)).astype("float32")
    timages, ttokens = _to_torch(images, tokens)
    with torch.no_grad():
        logits, _ = reference.get_logits(timages, ttokens)
    out = _numpy(model({"images": images, "token_ids": tokens})["logits_per_image"])
    diff = float(np.abs(out - logits.numpy()).max())
    probs = float(np.abs(
        _numpy(keras.ops.softmax(out, axis=-1)) - logits.softmax(-1).numpy()).max())
    _log(f"open_clip {name} full size", {"logits": diff, "probabilities": probs})
    assert diff < TOLERANCE and probs < TOLERANCE


def test_convert_command_passes_head_counts(tmp_path):
    from safetensors.torch import save_file

    from keras_clip_app import cli

    reference = _tiny_resnet_head_width_16()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "rn.safetensors")
    out = tmp_path / "rn.keras"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main(["convert", str(tmp_path / "rn.safetensors"), str(out), "--activation", "gelu",
                         "--vision-heads", "32", "--text-heads", "4"]) == 0
    assert not _head_warnings(caught)
    model = keras.saving.load_model(out)
    assert (model.config.vision_heads, model.config.text_heads) == (32, 4)
    _check_open_clip_parity(reference, model, "converted by the CLI with head counts")
