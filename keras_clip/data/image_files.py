"""Image files for evaluation and embedding: folders, lists, bad files counted.

`image_folder` reads the common class-per-subfolder layout (torchvision's
`ImageFolder`): `root/<class name>/<image>`. `read_images` opens a list of
paths. Files that cannot be decoded are skipped and returned by name, never
silently dropped.
"""

import os

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


def is_image_file(path):
    return path.lower().endswith(IMAGE_EXTENSIONS)


def list_images(paths):
    """Image files named by `paths` (files, or folders searched recursively), sorted per folder."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isdir(path):
            found = []
            for folder, _, files in os.walk(path):
                found.extend(os.path.join(folder, f) for f in files if is_image_file(f))
            out.extend(sorted(found))
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"Expected an image file or a folder. Received: {path!r} (not found)")
    if not out:
        raise ValueError(
            f"Expected at least one image file (extensions {IMAGE_EXTENSIONS}). "
            f"Received paths with none: {list(paths)[:5]}"
        )
    return out


def load_rgb(path):
    """One image file as a uint8 RGB array; transparency composited on white."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "P", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"))


def read_images(paths):
    """Decodes `paths`; returns `(images, kept_paths, bad)`.

    `images` is a list of uint8 `(H, W, 3)` arrays for `kept_paths`; `bad`
    is a list of `(path, reason)` for files that could not be read.
    """
    images, kept, bad = decode_all(paths)
    if not images:
        raise ValueError(
            f"Every image failed to decode ({len(bad)} files). First: "
            f"{bad[0][0]!r}: {bad[0][1]}" if bad else "Expected at least one image path."
        )
    return images, kept, bad


def decode_all(paths):
    """Like `read_images`, without raising when nothing decodes."""
    images, kept, bad = [], [], []
    for path in paths:
        try:
            images.append(load_rgb(path))
            kept.append(path)
        except Exception as error:  # PIL raises many types for bad files
            bad.append((path, f"{type(error).__name__}: {error}"))
    return images, kept, bad


def image_folder(root):
    """Reads `root/<class>/<images>`; returns `(images, labels, classnames, bad)`.

    Class names are the subfolder names with `_` read as a space, sorted;
    `labels` are int indices into them.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Expected a folder of class subfolders. Received: {root!r} (not a folder)")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(
            f"Expected class subfolders in {root!r} (root/<class name>/<image>). Received: none"
        )
    images, labels, bad = [], [], []
    for index, name in enumerate(classes):
        files = list_images_or_empty(os.path.join(root, name))
        got, _, failed = decode_all(files)
        images.extend(got)
        labels.extend([index] * len(got))
        bad.extend(failed)
    if not images:
        raise ValueError(f"Expected images in the class subfolders of {root!r}. Received: none")
    classnames = [name.replace("_", " ") for name in classes]
    return images, np.asarray(labels, np.int64), classnames, bad


def list_images_or_empty(folder):
    try:
        return list_images(folder)
    except ValueError:
        return []
