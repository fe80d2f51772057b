"""Zero-shot prompt templates of the task-arithmetic line of work (Ilharco et al.).

Each template is a string with ``{}`` where the class name goes. The sets and their order are the
ones in mlfoundations/task_vectors ``src/datasets/templates.py``; ImageNet uses the 80 OpenAI
templates that open_clip ships.
"""

from __future__ import annotations

from pathlib import Path

from negmerge_cli.core import files
from negmerge_cli.core.errors import UsageError

_MAX_LIST_BYTES = 16 * 2**20  # a --templates or --classnames file is a short list of lines

CARS = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a photo of my {}.",
    "i love my {}!",
    "a photo of my dirty {}.",
    "a photo of my clean {}.",
    "a photo of my new {}.",
    "a photo of my old {}.",
)
DTD = (
    "a photo of a {} texture.",
    "a photo of a {} pattern.",
    "a photo of a {} thing.",
    "a photo of a {} object.",
    "a photo of the {} texture.",
    "a photo of the {} pattern.",
    "a photo of the {} thing.",
    "a photo of the {} object.",
)
EUROSAT = (
    "a centered satellite photo of {}.",
    "a centered satellite photo of a {}.",
    "a centered satellite photo of the {}.",
)
GTSRB = (
    'a zoomed in photo of a "{}" traffic sign.',
    'a centered photo of a "{}" traffic sign.',
    'a close up photo of a "{}" traffic sign.',
)
MNIST = ('a photo of the number: "{}".',)
RESISC45 = tuple(
    f"{kind} {{}}." if article == "" else f"{kind} {article} {{}}."
    for article in ("", "a", "the")
    for kind in (
        "satellite imagery of",
        "aerial imagery of",
        "satellite photo of",
        "aerial photo of",
        "satellite view of",
        "aerial view of",
    )
)
SUN397 = ("a photo of a {}.", "a photo of the {}.")
SVHN = ('a photo of the number: "{}".',)
# Generic fallback for image folders: CLIP's plain prompt.
GENERIC = ("a photo of a {}.",)


def imagenet_templates() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)


_BY_DATASET = {
    "cars": CARS,
    "dtd": DTD,
    "eurosat": EUROSAT,
    "gtsrb": GTSRB,
    "mnist": MNIST,
    "resisc45": RESISC45,
    "sun397": SUN397,
    "svhn": SVHN,
    "digits": MNIST,  # 8x8 handwritten digits: the MNIST prompt
}


def templates_for(dataset: str) -> tuple[str, ...]:
    """The built-in template set of a dataset kind (``imagenet``, ``cars``..., or ``folder``)."""
    if dataset == "imagenet":
        return imagenet_templates()
    return _BY_DATASET.get(dataset, GENERIC)


def read_templates(path: Path) -> tuple[str, ...]:
    """One template per non-empty line, each with exactly one ``{}``."""
    lines = _read_lines(path, "--templates")
    for number, line in enumerate(lines, 1):
        if line.count("{}") != 1:
            raise UsageError(f"{path}:{number}: --templates line must hold exactly one '{{}}': {line!r}")
    return tuple(lines)


def read_classnames(path: Path) -> tuple[str, ...]:
    """One class name per non-empty line, in label order."""
    return tuple(_read_lines(path, "--classnames"))


def fill(template: str, classname: str) -> str:
    # replace, not format: class names and templates may hold other braces
    return template.replace("{}", classname)


def _read_lines(path: Path, option: str) -> list[str]:
    text = files.read_text(path, error=UsageError, limit=_MAX_LIST_BYTES, what=f"a {option} file")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path}: {option} file is empty")
    return lines
