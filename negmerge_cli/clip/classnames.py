"""Class names of the paper's datasets where they are not the dataset's own folder names.

GTSRB and EuroSAT use the names from OpenAI CLIP's prompts.md, as the task-arithmetic code does.
"""

from __future__ import annotations

import re

GTSRB = (
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)

# EuroSAT folder names (AnnualCrop, ...) -> OpenAI's prompt names.
EUROSAT = {
    "annual crop": "annual crop land",
    "forest": "forest",
    "herbaceous vegetation": "brushland or shrubland",
    "highway": "highway or road",
    "industrial area": "industrial buildings or commercial buildings",
    "pasture": "pasture land",
    "permanent crop": "permanent crop land",
    "residential area": "residential buildings or homes or apartments",
    "river": "river",
    "sea lake": "lake or sea",
}

DIGITS = tuple(str(digit) for digit in range(10))


def eurosat_name(folder: str) -> str:
    """``AnnualCrop`` -> ``annual crop land`` (split CamelCase, 'al' -> 'al area', then OpenAI's name)."""
    words = [w.lower() for w in re.findall(r"[A-Z](?:[a-z]+|[A-Z]*(?=[A-Z]|$))", folder.replace("_", " "))]
    name = " ".join(words) or folder.lower()
    if name.endswith("al"):
        name += " area"
    return EUROSAT.get(name, name)


def folder_name(folder: str) -> str:
    """Folder names as prompts: underscores become spaces."""
    return folder.replace("_", " ").strip()


def imagenet() -> tuple[str, ...]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return tuple(IMAGENET_CLASSNAMES)
