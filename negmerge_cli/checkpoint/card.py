"""The model card (``README.md``) of an output folder, in the Hugging Face Hub's format.

YAML front matter (``base_model``, ``tags``, ``library_name``) and a short Markdown body, both made
from the provenance the weights already carry in their ``__metadata__`` (``negmerge.*`` keys): the
card says nothing the weights do not record. The YAML is written by hand (a few keys, every string
double-quoted and escaped), so no YAML library is needed at run time.

Everything in the card that comes from a user or a file (the folder's name, file names, method
and parameter values) goes through :mod:`negmerge_cli.core.escape`: YAML strings, Markdown text or code
spans, so a backtick, ``<script>``, a newline or ``---`` in a file name shows as itself.
"""

from __future__ import annotations

import re

from negmerge_cli.checkpoint.provenance import PREFIX, VECTOR_PROVENANCE, read_inputs
from negmerge_cli.core.errors import NegmergeError
from negmerge_cli.core.escape import markdown, markdown_code, one_line, yaml_string
from negmerge_cli.core.strict_json import load_json

# provenance keys shown as inputs, or not at all; every other negmerge.* key is a parameter
INPUT_ROLES = {"base": "base", "inputs": "input", "vector": "vector", "source": "source"}
_NOT_PARAMETERS = {"version", "command", "kind", "zero_tensors", VECTOR_PROVENANCE.removeprefix(PREFIX), *INPUT_ROLES}
_INPUT_HEADER = ("role", "input", "file", "SHA-256")

_DESCRIPTIONS = {  # the fields are filled with Markdown (escaped by _description)
    "merge": "A task vector: the merge of {count} task vectors with the method {method}.",
    "apply": "theta = base + scale * vector, scale = {scale} (a negative scale removes what the vector added).",
    "convert": "A conversion of a research checkpoint to an OpenCLIP state dict.",
}


def render(metadata: dict[str, str], *, title: str, base_model: str | None, library_name: str | None,
           command_line: str | None) -> str:
    """The card's text for weights whose provenance is ``metadata``."""
    command = metadata.get(PREFIX + "command", "")
    method = metadata.get(PREFIX + "method")
    inputs = _inputs(metadata)
    front = {"base_model": base_model, "library_name": library_name, "tags": _tags(command, method, metadata)}
    body = [
        f"# {markdown(title)}",
        "",
        _description(command, method, metadata, inputs),
        "",
        f"Made with negmerge_cli {markdown(metadata.get(PREFIX + 'version', '?'))}, command {markdown_code(command)}.",
        "",
        "## Parameters",
        "",
        *_table(("parameter", "value"), _parameters(metadata)),
        "",
        "## Inputs",
        "",
        "Each input as named on the command line, with the SHA-256 of each of its files (one per shard).",
        "",
        *_table(_INPUT_HEADER, inputs),
        "",
        *_hub_section(metadata),
        *_vector_section(metadata),
        "## Command",
        "",
        *_code_block(command_line or f"(library call: {command})"),
    ]
    return front_matter(front) + "\n".join(body) + "\n"


def front_matter(fields: dict[str, str | list[str] | None]) -> str:
    """``---`` YAML ``---``: strings and lists of strings, None values left out."""
    lines = ["---"]
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {yaml_string(item)}" for item in value)
        else:
            lines.append(f"{key}: {yaml_string(value)}")
    return "\n".join(lines + ["---", ""]) + "\n"


def _tags(command: str, method: str | None, metadata: dict[str, str]) -> list[str]:
    tags = ["negmerge-cli", "open_clip"] if command == "convert" else ["merge", "negmerge-cli"]
    if method:
        tags.append(method)
    if command == "apply":
        tags.append("task-arithmetic")
        if _number(metadata.get(PREFIX + "scale")) < 0:
            tags.append("unlearning")
    return tags


def _description(command: str, method: str | None, metadata: dict[str, str], inputs: list[tuple]) -> str:
    text = _DESCRIPTIONS.get(command, "Made by {command}.").format(
        command=markdown_code(command), method=markdown_code(method or "?"),
        scale=markdown(metadata.get(PREFIX + "scale", "?")),
        count=len(read_inputs(metadata.get(PREFIX + "inputs"))))
    if command == "merge" and PREFIX + "base" in metadata:
        text += " Each input is a fine-tuned checkpoint minus the base."
    return text


def _parameters(metadata: dict[str, str]) -> list[tuple[str, str]]:
    rows = []
    for key, value in metadata.items():
        name = key.removeprefix(PREFIX)
        if key.startswith(PREFIX) and name not in _NOT_PARAMETERS:
            rows.append((name, value))
    return rows or [("(none)", "")]


def _inputs(metadata: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(role, input as named, file, SHA-256) of every file of every input the provenance lists
    (the older flat lists of files read as one input per file)."""
    return [(role, named["input"], file["file"], file["sha256"])
            for key, role in INPUT_ROLES.items()
            for named in read_inputs(metadata.get(PREFIX + key))
            for file in named["files"]]


def _hub_section(metadata: dict[str, str]) -> list[str]:
    """The inputs taken from the Hugging Face Hub: repository, revision asked, commit used."""
    rows = [(role, named["input"], named["repo_id"], named.get("revision", "(default branch)"), named.get("commit", "?"))
            for key, role in INPUT_ROLES.items()
            for named in read_inputs(metadata.get(PREFIX + key)) if "repo_id" in named]
    if not rows:
        return []
    return ["## From the Hugging Face Hub", "", *_table(("role", "input", "repository", "revision", "commit"), rows), ""]


def _vector_section(metadata: dict[str, str]) -> list[str]:
    """``apply``: how the vector was made, from its own metadata (command, method, inputs)."""
    try:
        made = load_json(metadata.get(VECTOR_PROVENANCE, "").encode(), "vector", NegmergeError)
    except NegmergeError:
        return []
    if not isinstance(made, dict) or not all(isinstance(v, str) for v in made.values()):
        return []
    command, method = made.get(PREFIX + "command", "?"), made.get(PREFIX + "method")
    inputs = _inputs(made)
    count = len(read_inputs(made.get(PREFIX + "inputs")))
    how = f"{markdown_code(command)}" + (f" with the method {markdown_code(method)}" if method else "")
    return [
        "## The vector",
        "",
        f"The vector was made by {how} from {count} input{'s' if count != 1 else ''}"
        + (" (each a fine-tuned checkpoint minus the base)." if PREFIX + "base" in made else "."),
        "",
        *_table(("parameter", "value"), _parameters(made)),
        "",
        *_table(_INPUT_HEADER, inputs),
        "",
    ]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(markdown_code(value) for value in row) + " |" for row in rows]


def _code_block(text: str) -> list[str]:
    """A fenced block holding ``text`` on one line: the fence is longer than any backtick run in it."""
    line = one_line(text)
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", line)), default=0))
    return [fence + "sh", line, fence]


def _number(text: str | None) -> float:
    try:
        return float(text) if text is not None else 0.0
    except ValueError:
        return 0.0
