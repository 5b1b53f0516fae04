"""Reading checkpoints as NumPy state dicts, without running their code.

Three formats reach `load_state_dict`:

- `.safetensors`: read by `safetensors` (no pickle at all), preferred.
- torch pickles (`torch.save`, `.pt` / `.bin`): read by
  `torch.load(..., weights_only=True)`, whose unpickler only rebuilds
  tensors and plain containers; anything else is refused.
- TorchScript archives (OpenAI's original `.pt` files): `torch.load`
  refuses them with `weights_only=True` and `torch.jit.load` would run their
  code, so `read_torchscript_state_dict` unpickles the archive's `data.pkl`
  with an allow-list (tensors, `OrderedDict`, TorchScript module stubs) and
  reads parameter/buffer names from the class declarations in `code/`,
  which are parsed as text, never executed.
"""

import collections
import io
import os
import pickle
import re
import warnings
import zipfile

import numpy as np

# TorchScript storage class names -> NumPy dtype ("bfloat16" is widened).
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "DoubleStorage": np.float64,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs more than tensors and containers to be read."""


def _refused(path, detail):
    return UnsafeCheckpointError(
        "Refusing to load a checkpoint that needs more than tensors to "
        "unpickle (it could run arbitrary code). Expected only tensors and "
        "plain containers; convert it to `.safetensors` with code you "
        f"trust. Received: {path} ({detail})"
    )


_EXPECTED_FORMATS = (
    "a checkpoint: a torch.save file (.pt / .bin / .pth), a .safetensors "
    "file or an OpenAI TorchScript .pt"
)


def describe_file(path):
    """A few words on what a file holds: size, and its first bytes."""
    size = os.path.getsize(path)
    if size == 0:
        return "an empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(48)
    if zipfile.is_zipfile(path):
        return f"a zip archive of {size:,} bytes"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"a text file of {size:,} bytes starting {text[:40]!r}"
    return f"a file of {size:,} bytes starting {head[:16]!r}"


def unreadable(path, error=None):
    """The `ValueError` for a file that is no checkpoint of a known format."""
    detail = ""
    if error is not None:
        lines = str(error).strip().splitlines()
        detail = f" ({type(error).__name__}: {lines[0] if lines else 'no message'})"
    return ValueError(
        f"Expected {_EXPECTED_FORMATS}. Received: {path}, "
        f"{describe_file(path)}, which none of them reads{detail}. Check "
        "that the path names the checkpoint and that its download or copy "
        "finished."
    )


# ---- TorchScript archives ----------------------------------------------


class _StorageType:
    def __init__(self, name):
        self.name = name


class _ScriptModule:
    """Attributes of one pickled TorchScript module (never executed)."""

    qualified_name = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise UnsafeCheckpointError(
                f"Expected a dict of attributes for {self.qualified_name}. "
                f"Received: {type(state).__name__}"
            )
        self.attributes = state


def _restore_type_tag(value, type_str=None):
    return value


def _build_list(values):
    return list(values)


class _ArchiveUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript `data.pkl` with an allow-list of globals."""

    _SAFE = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
        ("torch.jit._pickle", "build_intlist"): _build_list,
        ("torch.jit._pickle", "build_tensorlist"): _build_list,
        ("torch.jit._pickle", "build_doublelist"): _build_list,
        ("torch.jit._pickle", "build_boollist"): _build_list,
    }

    def __init__(self, data, archive, root, path):
        super().__init__(io.BytesIO(data))
        self._archive = archive
        self._root = root
        self._path = path
        self._byteorder = "little"
        name = f"{root}byteorder"
        if name in archive.namelist():
            self._byteorder = archive.read(name).decode().strip()
        self._storages = {}
        self._classes = {}

    def find_class(self, module, name):
        if (module, name) in self._SAFE:
            return self._SAFE[(module, name)]
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module.startswith("__torch__.") or module == "__torch__":
            qualified = f"{module}.{name}"
            if qualified not in self._classes:
                self._classes[qualified] = type(
                    name, (_ScriptModule,), {"qualified_name": qualified}
                )
            return self._classes[qualified]
        raise _refused(self._path, f"it imports {module}.{name}")

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
        ):
            raise _refused(self._path, f"unknown persistent id {pid!r}")
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            dtype = _STORAGE_DTYPES[storage_type.name]
            raw = self._archive.read(f"{self._root}data/{key}")
            read_as = np.uint16 if dtype == "bfloat16" else dtype
            array = np.frombuffer(raw, dtype=np.dtype(read_as).newbyteorder(
                "<" if self._byteorder == "little" else ">"
            ))
            if dtype == "bfloat16":
                array = (array.astype(np.uint32) << 16).view(np.float32)
            self._storages[key] = array[:numel]
        return self._storages[key]

    @staticmethod
    def _rebuild_tensor(storage, offset, size, stride, *unused):
        size, stride = tuple(size), tuple(stride)
        # `as_strided` does not check bounds: a forged archive must not make
        # it read outside the storage.
        last = offset + sum((n - 1) * s for n, s in zip(size, stride) if n)
        if (
            len(size) != len(stride)
            or offset < 0
            or any(n < 0 for n in size)
            or any(s < 0 for s in stride)
            or (all(size) and last >= len(storage))
        ):
            raise UnsafeCheckpointError(
                "Expected a tensor inside its storage. Received: offset "
                f"{offset}, size {size}, stride {stride} for a storage of "
                f"{len(storage)} elements"
            )
        item = storage.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage[offset:], shape=tuple(size), strides=[s * item for s in stride]
        )
        return np.array(view, dtype=storage.dtype.newbyteorder("="))


def is_torchscript_archive(path):
    """Whether `path` is a zip written by `torch.jit.save`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(
            n.endswith("/constants.pkl") or "/code/__torch__/" in n
            for n in archive.namelist()
        )


def _class_members(archive, root, qualified, cache):
    """`(parameters, buffers)` declared for a TorchScript class in `code/`."""
    module, _, name = qualified.rpartition(".")
    filename = f"{root}code/{module.replace('.', '/')}.py"
    if filename not in cache:
        if filename not in archive.namelist():
            raise ValueError(
                f"Expected the TorchScript class {qualified} to be declared "
                f"in {filename}. Received: an archive without that file"
            )
        cache[filename] = archive.read(filename).decode("utf-8")
    source = cache[filename]
    match = re.search(
        rf"^class {re.escape(name)}\(.*?(?=^class |\Z)", source, re.M | re.S
    )
    if match is None:
        raise ValueError(
            f"Expected a declaration of class {name} in {filename}. "
            "Received: none"
        )
    members = []
    for field in ("__parameters__", "__buffers__"):
        found = re.search(rf"{field} = \[(.*?)\]", match.group(0), re.S)
        members.append(re.findall(r'"([^"]+)"', found.group(1)) if found else [])
    return members


def read_torchscript_state_dict(path):
    """The state dict of a TorchScript archive, as NumPy arrays.

    Equivalent to `torch.jit.load(path).state_dict()` without running any
    of the archive's code and without importing torch.

    Args:
        path: a file written by `torch.jit.save` (e.g. OpenAI's `ViT-B-32.pt`).

    Returns:
        `(state_dict, class_names)`: an ordered dict of NumPy arrays, and the
        set of TorchScript class names found (they tell e.g. `QuickGELU`).
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        pickles = [n for n in pickles if n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(
                "Expected one top-level data.pkl in a TorchScript archive. "
                f"Received: {pickles} in {path}"
            )
        root = pickles[0][: -len("data.pkl")]
        unpickler = _ArchiveUnpickler(
            archive.read(pickles[0]), archive, root, path
        )
        module = unpickler.load()
        if not isinstance(module, _ScriptModule):
            raise ValueError(
                "Expected a TorchScript module at the root of the archive. "
                f"Received: {type(module).__name__} in {path}"
            )
        state, cache = collections.OrderedDict(), {}

        def walk(obj, prefix):
            params, buffers = _class_members(
                archive, root, obj.qualified_name, cache
            )
            attributes = getattr(obj, "attributes", {})
            for name in params + buffers:
                value = attributes.get(name)
                if isinstance(value, np.ndarray):
                    state[prefix + name] = value
            for name, value in attributes.items():
                if isinstance(value, _ScriptModule):
                    walk(value, f"{prefix}{name}.")

        walk(module, "")
    names = {qualified.rpartition(".")[2] for qualified in unpickler._classes}
    return state, names


# ---- every format ------------------------------------------------------


def to_numpy(value):
    """A NumPy copy of a torch tensor / NumPy array (bfloat16 -> float32)."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; torch is loaded already.
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _load_safetensors(path):
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (TypeError, ValueError):
        # NumPy has no bfloat16: let torch widen those files.
        with safe_open(path, framework="pt") as f:
            return {k: to_numpy(f.get_tensor(k)) for k in f.keys()}


def _load_torch_pickle(path):
    import torch  # Only conversion needs torch.

    try:
        with warnings.catch_warnings():
            # torch warns before refusing a TorchScript archive; we say why.
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = str(error).strip().splitlines()
        # torch refuses what its weights-only unpickler does not allow;
        # other unpickling errors mean the file is no pickle at all.
        if "weights only" not in str(error).lower():
            raise unreadable(path, error) from None
        raise _refused(path, lines[-1] if lines else "unpickling failed") from None
    except RuntimeError as error:
        if "TorchScript" in str(error):
            raise _refused(path, "a TorchScript archive") from None
        raise unreadable(path, error) from None
    except Exception as error:  # noqa: BLE001 - garbage fails in many ways
        raise unreadable(path, error) from None
    return loaded


def unwrap_state_dict(loaded, path="<state dict>"):
    """The tensors of a checkpoint: `state_dict` of a training checkpoint,
    `module.` (DistributedDataParallel) prefixes removed, NumPy values."""
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ValueError(
            "Expected a state dict (a mapping of names to tensors). "
            f"Received: {type(loaded).__name__} from {path}"
        )
    keys = list(loaded)
    if keys and all(k.startswith("module.") for k in keys):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    out = collections.OrderedDict()
    for key, value in loaded.items():
        if not hasattr(value, "shape"):
            raise ValueError(
                f"Expected a tensor for every key. Received: key {key!r} "
                f"holding {type(value).__name__} in {path}"
            )
        out[key] = to_numpy(value)
    return out


def _is_safetensors(path):
    # An 8-byte little-endian header length, then the JSON header.
    with open(path, "rb") as f:
        head = f.read(9)
    return (
        len(head) == 9
        and head[8:9] == b"{"
        and int.from_bytes(head[:8], "little") < os.path.getsize(path)
    )


def load_state_dict(path):
    """Reads a checkpoint file into `(state_dict, info)` safely.

    Args:
        path: a `.safetensors` file, a `torch.save` file (`.pt`, `.bin`,
            `.pth`) or a TorchScript archive (OpenAI's `.pt` releases).

    Returns:
        An ordered dict of NumPy arrays and a dict `info` with `"format"`
        ("safetensors", "torch" or "torchscript") and, for TorchScript,
        `"class_names"`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Expected a checkpoint file. Received: {path!r} (not a file)"
        )
    if os.path.getsize(path) == 0:
        raise unreadable(path)
    if _is_safetensors(path):
        try:
            state = _load_safetensors(path)
        except Exception as error:  # noqa: BLE001 - e.g. a file cut short
            raise unreadable(path, error) from None
        return unwrap_state_dict(state, path), {"format": "safetensors"}
    if is_torchscript_archive(path):
        try:
            state, names = read_torchscript_state_dict(path)
        except (UnsafeCheckpointError, ValueError):
            raise
        except Exception as error:  # noqa: BLE001 - a damaged archive
            raise unreadable(path, error) from None
        return state, {"format": "torchscript", "class_names": names}
    loaded = _load_torch_pickle(path)
    return unwrap_state_dict(loaded, path), {"format": "torch"}
