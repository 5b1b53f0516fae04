"""Prompt templates and class names for zero-shot classification.

CLIP classifies by comparing an image with the embeddings of captions such as
"a photo of a dog." (Radford et al. 2021, section 3.1.4). This module holds
the single default template, OpenAI's 80 ImageNet templates, and loaders for
clip-benchmark's class-name and template files or the user's own lists.
"""

import json
import os

# The default prompt, "a photo of a {label}." (paper, section 3.1.4).
SIMPLE_TEMPLATES = ("a photo of a {}.",)

# OpenAI's 80 prompt templates for ImageNet, in their published order
# (CLIP repository, "Prompt_Engineering_for_ImageNet.ipynb"); the paper's
# ensemble of these adds about 3.5% top-1 on ImageNet (section 3.1.4).
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_TEMPLATE_SETS = {"simple": SIMPLE_TEMPLATES, "imagenet": IMAGENET_TEMPLATES}


def fill_template(template, classname):
    """The prompt for one class: `template` with `classname` in its slot.

    Args:
        template: a string with one `{}` slot (OpenAI's style) or `{c}`
            (clip-benchmark's style), or a callable `classname -> str`.
        classname: the class name to insert.

    Returns:
        The prompt string.

    Example:

    >>> fill_template("a photo of a {}.", "dog")
    'a photo of a dog.'
    """
    if callable(template):
        return template(classname)
    if not isinstance(template, str):
        raise ValueError(
            "A template must be a string with a `{}` or `{c}` slot, or a "
            f"callable. Received: {template!r}"
        )
    if "{c}" in template:
        return template.replace("{c}", classname)
    if "{}" in template:
        return template.replace("{}", classname)
    raise ValueError(
        "A template must contain a `{}` or `{c}` slot for the class name. "
        f"Received: template={template!r}"
    )


def get_templates(templates=None):
    """A tuple of templates from a set's name, one string or a list.

    Args:
        templates: `None` or `"simple"` (the single "a photo of a {}."),
            `"imagenet"` (OpenAI's 80), a single template string with a slot,
            or a list of templates.

    Returns:
        A non-empty tuple of templates.
    """
    if templates is None:
        return SIMPLE_TEMPLATES
    if isinstance(templates, str):
        if templates in _TEMPLATE_SETS:
            return _TEMPLATE_SETS[templates]
        fill_template(templates, "x")  # Raises when there is no slot.
        return (templates,)
    templates = tuple(templates)
    if not templates:
        raise ValueError("`templates` must not be empty. Received: []")
    for t in templates:
        fill_template(t, "x")
    return templates


def _clip_benchmark_file(name):
    try:
        import clip_benchmark
    except ImportError as e:
        raise ImportError(
            "Loading class names or templates by dataset name needs the "
            "data files of the `clip-benchmark` package. Install it with "
            "`pip install --no-deps clip-benchmark`, or pass your own lists."
        ) from e
    path = os.path.join(os.path.dirname(clip_benchmark.__file__), "datasets", name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`clip-benchmark` has no file {name!r}. Expected it at {path}"
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _lookup(table, dataset, what, filename):
    if dataset not in table:
        raise ValueError(
            f"clip-benchmark's {filename} has no {what} for dataset "
            f"{dataset!r}. Expected one of: {sorted(table)}"
        )
    return table[dataset]


def load_classnames(dataset, language="en"):
    """Class names of a benchmark dataset, from clip-benchmark's JSON.

    Args:
        dataset: a clip-benchmark dataset name, e.g. `"imagenet1k"`,
            `"mnist"`, `"pets"`.
        language: the file's language prefix (`"en"`, `"cn"`, `"jp"`, ...).

    Returns:
        A list of class-name strings, in label order.

    Example:

    >>> load_classnames("mnist")[:3]
    ['0', '1', '2']
    """
    filename = f"{language}_classnames.json"
    names = _lookup(_clip_benchmark_file(filename), dataset, "class names", filename)
    return [str(n) for n in names]


def load_templates(dataset, language="en"):
    """Prompt templates of a benchmark dataset, from clip-benchmark's JSON.

    clip-benchmark's `{c}` slots are rewritten as `{}`.

    Args:
        dataset: a clip-benchmark dataset name, e.g. `"imagenet1k"` (the 80
            templates), `"cifar10"` (18).
        language: the file's language prefix.

    Returns:
        A tuple of template strings.
    """
    filename = f"{language}_zeroshot_classification_templates.json"
    table = _clip_benchmark_file(filename)
    templates = _lookup(table, dataset, "templates", filename)
    return tuple(t.replace("{c}", "{}") for t in templates)


def read_list(source, key=None):
    """A list of strings from a list, a JSON file or a text file.

    For the user's own class names or templates: a `.json` file holding a
    list, or a dict of lists picked by `key`; any other file is read as one
    entry per non-empty line.

    Args:
        source: a list / tuple of strings, or a file path.
        key: the entry to take when the JSON file holds a dict.

    Returns:
        A list of strings.
    """
    if isinstance(source, (list, tuple)):
        return [str(s) for s in source]
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            "`source` must be a list of strings or a file path. "
            f"Received: {type(source).__name__}"
        )
    path = os.fspath(source)
    with open(path, encoding="utf-8") as f:
        if not path.endswith(".json"):
            return [line.strip() for line in f if line.strip()]
        data = json.load(f)
    if isinstance(data, dict):
        if key is None or key not in data:
            raise ValueError(
                f"{path} holds a dict; pass `key`, one of {sorted(data)}. "
                f"Received: key={key!r}"
            )
        data = data[key]
    if not isinstance(data, list):
        raise ValueError(
            f"{path} must hold a list of strings. Received: {type(data).__name__}"
        )
    return [str(s) for s in data]
