"""Hugging Face Hub repo ids wherever a checkpoint, vector or model folder is taken.

``ORG/NAME`` or ``ORG/NAME@REVISION`` stands for the repository's snapshot folder in the local hub
cache, fetched by ``huggingface_hub`` when it is missing and the Hub can be reached (its progress
bars, ``HF_TOKEN`` or the stored login, ``HF_HUB_OFFLINE=1``, ``HF_HOME`` / ``HF_HUB_CACHE`` all as
``huggingface_hub`` reads them). Only what this tool reads is fetched: the small top-level files an
output folder carries (configs, tokenizer files), then the weights the folder rule picks
(:func:`reader.folder_weights`: the one file, or the shards its index lists, or a PEFT adapter's).

Ambiguity rule: an existing local path always wins; text that is not one and reads as a Hub id
(exactly one ``/``, the Hub's characters, no weight or JSON suffix) is an id; anything else is
returned as a path, and fails later as a missing file, as before. Every user string becomes a path
in :func:`resolve`, called once per argument by the stages (never by the commands).
"""

from __future__ import annotations

import fnmatch
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from negmerge_cli.checkpoint.hub_cache import OPEN_CLIP_WEIGHTS, ResolvedSource
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError

# ORG/NAME as the Hub spells ids (96 characters at most; no "--" or "..", no leading or trailing
# "-" or "."), then an optional @REVISION (a branch, tag or commit; branches may hold "/")
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_ID = re.compile(rf"(?P<repo>{_PART}/{_PART})(?:@(?P<revision>[A-Za-z0-9._/-]+))?")
_NOT_NAMES = (".safetensors", ".json", ".bin", ".pt", ".pth", ".ckpt", ".yaml", ".txt", ".csv")  # files, not repos
# the small top-level files an output folder carries (checkpoint/folder.py copies them), and indexes
COMPANION_PATTERNS = ["*.json", "*.txt", "*.model", "*.jinja", "*.py", "*.tiktoken", "*.vocab", "*.spm"]
NESTED = ["*/*"]  # subfolders (onnx/, other formats, training logs): never read here


def parse_id(text: str) -> tuple[str, str | None] | None:
    """``(ORG/NAME, revision or None)`` when ``text`` reads as a Hub repo id, else None."""
    match = _ID.fullmatch(text)
    if match is None or len(match["repo"]) > 96 or "--" in match["repo"] or ".." in text:
        return None
    if match["repo"].lower().endswith(_NOT_NAMES):
        return None
    return match["repo"], match["revision"]


def resolve(source: str | os.PathLike) -> ResolvedSource:
    """The local path ``source`` stands for: itself when it exists (or is not an id), else the
    snapshot of the Hub repository it names (fetched if needed). One-line CheckpointError naming
    the id and what to do when the repository cannot be had."""
    if isinstance(source, ResolvedSource):
        return source
    text = os.fspath(source)
    parsed = None if os.path.lexists(text) else parse_id(text)
    if parsed is None:  # named as a path spells it ("ft1/" is "ft1"), as provenance always recorded it
        return ResolvedSource(os.fspath(Path(text)), Path(text))
    repo_id, revision = parsed
    folder = _fetch(text, repo_id, revision)
    return ResolvedSource(text, folder, repo_id, revision, folder.name)


def resolve_optional(source: str | None) -> str | None:
    """A model option's value (``--checkpoint``, ``--pretrained``, ``--vector``...) as a local
    path string: an id becomes its snapshot, or its ``open_clip_model.safetensors`` when the
    repository is in OpenCLIP's hub layout; anything else is left as given (tags, files)."""
    if not source:
        return source
    resolved = resolve(source)
    if resolved.repo_id is None:
        return source
    weights = resolved.path / OPEN_CLIP_WEIGHTS
    return os.fspath(weights if weights.is_file() else resolved.path)


def _fetch(text: str, repo_id: str, revision: str | None) -> Path:
    """The snapshot folder: online, the companions and then the weights the folder rule picks from
    the repository's listing; offline or out of reach, what the cache holds."""
    from huggingface_hub import constants, snapshot_download

    with _one_line(text, repo_id, revision):
        listing = None if constants.HF_HUB_OFFLINE else _listing(repo_id, revision)
        if listing is None:
            folder = _cached_snapshot(repo_id, revision)
        else:
            commit, names = listing
            companions = sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in COMPANION_PATTERNS))
            if companions:  # the config and index decide which weights are read
                snapshot_download(repo_id, revision=commit, allow_patterns=companions)
            weights = _weights_to_fetch(text, _snapshot_path(repo_id, commit), names)
            # by the revision's name, so that the cache records it (refs/) for offline runs
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=companions + weights))
    if not folder.is_dir() or not any(name.endswith(".safetensors") for name in os.listdir(folder)):
        raise CheckpointError(f"{text}: the cached snapshot {folder} holds no safetensors weights; "
                              + _advice(repo_id, revision, constants.HF_HUB_OFFLINE))
    return folder


def _cached_snapshot(repo_id: str, revision: str | None) -> Path:
    """The cache's snapshot of ``revision``, with whatever files it holds: a snapshot that
    ``huggingface_hub`` finds incomplete (some file of the repository never fetched) still has the
    weights this tool reads, or the reader names the one missing."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import IncompleteSnapshotError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=COMPANION_PATTERNS,
                                      ignore_patterns=NESTED))
    except IncompleteSnapshotError as error:
        return Path(error.snapshot_path)


def _listing(repo_id: str, revision: str | None) -> tuple[str, set[str]] | None:
    """The commit ``revision`` names and the repository's top-level files there; None when the Hub
    cannot be reached (then the cache is what there is)."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision)
    except Exception as error:  # out of reach (the transport's errors, a socket's): the cache is what there is
        if isinstance(error, (ConnectionError, TimeoutError)) or type(error).__module__.startswith("httpx"):
            return None
        raise
    return info.sha, {s.rfilename for s in info.siblings or [] if "/" not in s.rfilename}


def _snapshot_path(repo_id: str, commit: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit


def _weights_to_fetch(text: str, folder: Path, names: set[str]) -> list[str]:
    """The weight files this tool reads from the repository (named ``text``), by the folder rule,
    given its top-level ``names`` and the companions already in ``folder``."""
    from negmerge_cli.checkpoint.format import MAX_HEADER_BYTES, parse_index
    from negmerge_cli.checkpoint.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
    from negmerge_cli.checkpoint.reader import (
        INDEX_SUFFIX,
        MODEL_CONFIG,
        PICKLE_ADVICE,
        configured_weights,
        folder_weights,
    )

    if ADAPTER_CONFIG in names:
        return [ADAPTER_WEIGHTS]
    configured = configured_weights(folder / MODEL_CONFIG) if MODEL_CONFIG in names else None
    chosen = folder_weights(Path(text), names, configured)
    wanted = [chosen, *([OPEN_CLIP_WEIGHTS] if OPEN_CLIP_WEIGHTS in names else [])]
    if chosen.endswith(INDEX_SUFFIX):
        index = folder / chosen
        raw = files.read_bytes(index, error=CheckpointError, limit=MAX_HEADER_BYTES, what="an index")
        wanted += sorted(set(parse_index(index, raw).values()))
    elif not chosen.endswith(".safetensors"):
        raise CheckpointError(f"{text}: transformers loads {chosen} from this repository, a pickle this tool does "
                              f"not read (safetensors only); {PICKLE_ADVICE}")
    return wanted


@contextmanager
def _one_line(text: str, repo: str, revision: str | None) -> Iterator[None]:
    """``huggingface_hub``'s failures as one CheckpointError naming the id and what to do."""
    try:
        yield
    except Exception as error:
        # the Hub client's errors, the transport's and the file system's; anything else is a bug
        if isinstance(error, CheckpointError) or not (
                isinstance(error, OSError) or type(error).__module__.startswith(("huggingface_hub", "httpx"))):
            raise
        raise CheckpointError(f"{text}: {_why(error, repo, revision)}") from None


def _why(error: Exception, repo: str, revision: str | None) -> str:
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    which = f"revision {revision} of " if revision else ""
    if isinstance(error, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (f"no such file or folder, and {which}the Hub repository {repo} is not in the local cache "
                    f"({constants.HF_HUB_CACHE}) while HF_HUB_OFFLINE=1 forbids downloading it; "
                    + _advice(repo, revision))
        return (f"no such file or folder, and {which}the Hub repository {repo} is neither in the local cache nor "
                f"reachable ({_first_line(error)}); check the network, or " + _advice(repo, revision, offline=False))
    if isinstance(error, GatedRepoError):
        return (f"the Hub repository {repo} is gated: accept its conditions on its page, then log in "
                "(hf auth login, or set HF_TOKEN)")
    if isinstance(error, RepositoryNotFoundError):
        return (f"no such file or folder, nor a Hub repository {repo} (or it is private: log in with "
                "hf auth login, or set HF_TOKEN)")
    if isinstance(error, RevisionNotFoundError):
        return f"the Hub repository {repo} has no revision {revision}; give a branch, tag or commit it has"
    if isinstance(error, HfHubHTTPError):
        return f"the Hub refused {repo} ({_first_line(error)})"
    return f"cannot fetch the Hub repository {repo} ({type(error).__name__}: {_first_line(error)})"


def _advice(repo: str, revision: str | None, offline: bool = True) -> str:
    spec = f"{repo} --revision {revision}" if revision else repo
    fetch = f"download it where the network is ('hf download {spec}', into HF_HOME)"
    return fetch + " or unset HF_HUB_OFFLINE" if offline else fetch


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
