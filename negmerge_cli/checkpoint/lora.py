"""PEFT LoRA adapters read as task vectors: a virtual checkpoint whose tensors are computed when read.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``. For every adapted
module ``<name>`` the file holds ``base_model.model.<name>.lora_A.weight`` (A, r x in) and
``...lora_B.weight`` (B, out x r); the module's weight changes by

    delta W = scaling * (B @ A),   scaling = lora_alpha / r   (use_rslora: lora_alpha / sqrt(r))

with ``r`` and ``lora_alpha`` taken from ``rank_pattern`` / ``alpha_pattern`` when a pattern names
the module (PEFT's rule: the pattern matches the module name's end, after a dot; matched with RE2,
in linear time, see :func:`pattern_matcher`), transposed when
``fan_in_fan_out`` (GPT-2's Conv1D stores weights as in x out). The delta is tensor
``<name>.weight`` of the vector: the base model's name for that weight.

Deltas are computed in float32 (float64 if the adapter stores float64), in blocks of whole rows of
about 256K elements each, whatever slices the streaming engine asks for: memory stays small
whatever the module's size, and the blocks (so the bits of the result) depend on the shape alone.
A delta of at most one block is the very product PEFT's ``merge_and_unload`` computes; a larger one
may differ from it in the last bit (a product's rounding can depend on how many rows it covers).
Only plain LoRA on linear (and Conv1D) layers is read; anything else a PEFT adapter may hold (DoRA,
other PEFT methods, bias or extra trained modules, embedding or convolution LoRA) is refused with
one line rather than silently dropped.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from negmerge_cli.checkpoint.adapter_config import LoraSettings, read_settings
from negmerge_cli.checkpoint.format import TensorEntry, itemsize
from negmerge_cli.checkpoint.protocol import Checkpoint
from negmerge_cli.checkpoint.provenance import PREFIX as PROVENANCE_PREFIX
from negmerge_cli.checkpoint.reader import SafetensorsCheckpoint, SafetensorsFile
from negmerge_cli.core import files
from negmerge_cli.core.errors import CheckpointError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1024 * 1024
PREFIX = "base_model.model."
BLOCK_ELEMENTS = 1 << 18  # 1 MB of float32 per block of the delta: small next to any budget
_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<factor>A|B)\.weight")
_EMBEDDING_KEY = re.compile(r".+\.lora_embedding_[AB]")


def block_rows(shape: tuple[int, int]) -> int:
    """Rows of the delta computed by one matrix product: about BLOCK_ELEMENTS, fixed by the shape
    alone, so the result never depends on --max-memory (a product's rounding can depend on how many
    rows it has)."""
    return max(1, BLOCK_ELEMENTS // max(1, shape[1]))


def is_adapter_folder(path: Path) -> bool:
    """A folder holding ``adapter_config.json`` (or that file itself) is read as a LoRA adapter."""
    return path.name == ADAPTER_CONFIG or (path.is_dir() and (path / ADAPTER_CONFIG).exists())


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: its factors' tensor names and the delta it makes."""

    name: str  # as the base names it, e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    scaling: float
    transposed: bool  # fan_in_fan_out: the base stores this weight as in x out
    shape: tuple[int, int]  # of the delta, as the base stores the weight

    @property
    def target(self) -> str:
        return self.name + ".weight"


class ConfigFile:
    """``adapter_config.json`` as one of the adapter's files: read whole, hashed at once."""

    hasher = None  # nothing left to hash after opening

    def __init__(self, path: Path, raw: bytes):
        self.path, self.size, self._digest = path, len(raw), hashlib.sha256(raw).hexdigest()

    def sha256(self) -> str:
        return self._digest


class LoraAdapter:
    """A LoRA adapter presented as a checkpoint of task-vector tensors named as in the base model.

    Offers what the planners and the streaming engine use of :class:`Checkpoint` (names, entries,
    slice reads, file digests), so vectors, merges, applies and inspection work on it unchanged."""

    metadata = {PROVENANCE_PREFIX + "kind": "task_vector"}  # what it is, for inspect

    def __init__(self, folder: Path, config: ConfigFile, weights: Checkpoint, modules: list[LoraModule],
                 dtype: torch.dtype):
        self.path, self.weights = folder, weights
        self.files = [config, *weights.files]
        self.modules = {m.target: m for m in modules}
        self._dtype = dtype
        self._factors_cache: tuple[str, torch.Tensor, torch.Tensor] | None = None
        self._block_cache: tuple[str, int, torch.Tensor] | None = None
        self._lock = threading.Lock()

    @property
    def weights_path(self) -> Path:
        return self.weights.path

    @property
    def names(self) -> list[str]:
        return list(self.modules)

    def __contains__(self, name: str) -> bool:
        return name in self.modules

    def entry(self, name: str) -> TensorEntry:
        shape = self.modules[name].shape
        return TensorEntry(name, self._dtype, shape, 0, math.prod(shape) * itemsize(self._dtype))

    def read(self, name: str, start: int = 0, stop: int | None = None, pin: bool = False) -> torch.Tensor:
        """Flat elements ``[start, stop)`` of the delta, a fresh tensor (``pin`` is ignored: the delta is computed, not read)."""
        module = self.modules[name]
        stop = math.prod(module.shape) if stop is None else stop
        if start >= stop:
            return torch.empty(0, dtype=self._dtype)
        pieces = []
        while start < stop:
            block_start, block = self._block(module, start)
            end = min(stop, block_start + block.numel())
            pieces.append(block[start - block_start: end - block_start])
            start = end
        return torch.cat(pieces) if len(pieces) > 1 else pieces[0].clone()

    def read_tensor(self, name: str) -> torch.Tensor:
        return self.read(name).reshape(self.entry(name).shape)

    def _block(self, module: LoraModule, element: int) -> tuple[int, torch.Tensor]:
        """The block of rows holding flat element ``element``, and where it starts; the last block
        is kept, as the engine reads a tensor slice by slice in order (from several threads)."""
        rows, columns = module.shape
        per_block = block_rows(module.shape)
        first = element // columns // per_block * per_block
        with self._lock:
            cached = self._block_cache
            if cached is None or cached[:2] != (module.name, first):
                a, b = self._factors(module)
                last = min(rows, first + per_block)
                product = a[:, first:last].T @ b.T if module.transposed else b[first:last] @ a
                product.mul_(module.scaling)  # after the product, as PEFT's get_delta_weight does
                cached = self._block_cache = (module.name, first, product.reshape(-1))
            return first * columns, cached[2]

    def _factors(self, module: LoraModule) -> tuple[torch.Tensor, torch.Tensor]:
        """A and B in the working dtype; the last module's are kept (its blocks come one by one)."""
        cached = self._factors_cache
        if cached is None or cached[0] != module.name:
            a, b = (self.weights.read_tensor(k).to(self._dtype) for k in (module.a_key, module.b_key))
            cached = self._factors_cache = (module.name, a, b)
        return cached[1], cached[2]

    def file_hashes(self) -> dict[str, str]:
        return {str(f.path): f.sha256() for f in self.files}

    @property
    def hashes_known(self) -> bool:
        return self.weights.hashes_known

    @property
    def total_bytes(self) -> int:
        return self.files[0].size + self.weights.total_bytes

    def close(self) -> None:
        self.weights.close()

    def __enter__(self) -> "LoraAdapter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_adapter(path: Path, digest: bool = True, rehash: bool = False) -> LoraAdapter:
    """Open and validate a PEFT LoRA adapter folder (or its ``adapter_config.json``)."""
    folder = path.parent if path.name == ADAPTER_CONFIG else path
    config_path = folder / ADAPTER_CONFIG
    raw = files.read_bytes(config_path, error=CheckpointError, limit=MAX_CONFIG_BYTES, what="an adapter config")
    settings = read_settings(config_path, raw)
    weights_file = SafetensorsFile(folder / ADAPTER_WEIGHTS, digest, rehash)
    weights = SafetensorsCheckpoint(weights_file.path, [weights_file], weights_file.header.metadata)
    try:
        modules = _modules(weights, settings)
        dtypes = {weights.entry(n).dtype for n in weights.names}
        dtype = torch.float64 if torch.float64 in dtypes else torch.float32
        return LoraAdapter(folder, ConfigFile(config_path, raw), weights, modules, dtype)
    except BaseException:
        weights.close()
        raise


def _modules(weights: Checkpoint, settings: LoraSettings) -> list[LoraModule]:
    """Pair every module's A and B, check their shapes against each other and the config."""
    factors: dict[str, dict[str, str]] = {}
    for key in weights.names:
        module, factor = _split_key(weights.path, key)
        factors.setdefault(module, {})[factor] = key
    if not factors:
        raise CheckpointError(f"{weights.path}: holds no LoRA weights")
    return [_module(weights, settings, name, pair) for name, pair in factors.items()]


def _split_key(path: Path, key: str) -> tuple[str, str]:
    if _EMBEDDING_KEY.fullmatch(key):
        raise CheckpointError(f"{path}: tensor '{key}': LoRA on embedding layers is not supported")
    match = _KEY.fullmatch(key)
    if match is None:
        raise CheckpointError(f"{path}: tensor '{key}' is not a LoRA factor (expected <module>.lora_A.weight "
                              f"or <module>.lora_B.weight)")
    if not key.startswith(PREFIX):
        raise CheckpointError(f"{path}: tensor '{key}' does not start with '{PREFIX}' as PEFT saves adapters")
    return match["module"][len(PREFIX):], match["factor"]


def _module(weights: Checkpoint, settings: LoraSettings, name: str, pair: dict[str, str]) -> LoraModule:
    where = f"{weights.path}: module '{name}'"
    if set(pair) != {"A", "B"}:
        missing = "lora_B" if "A" in pair else "lora_A"
        raise CheckpointError(f"{where}: has no {missing}.weight")
    a, b = weights.entry(pair["A"]), weights.entry(pair["B"])
    for entry in (a, b):
        if not entry.dtype.is_floating_point:
            raise CheckpointError(f"{weights.path}: tensor '{entry.name}' is {entry.dtype_code}, not floating-point")
        if len(entry.shape) != 2:
            raise CheckpointError(f"{weights.path}: tensor '{entry.name}' has shape {list(entry.shape)}; only LoRA "
                                  f"on linear layers (2-D factors) is supported")
    rank = settings.rank(name)
    if a.shape[0] != rank or b.shape[1] != rank:
        raise CheckpointError(f"{where}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not have the rank "
                              f"r={rank} of the config")
    out_features, in_features = b.shape[0], a.shape[1]
    shape = (in_features, out_features) if settings.fan_in_fan_out else (out_features, in_features)
    return LoraModule(name, pair["A"], pair["B"], settings.scaling(name), settings.fan_in_fan_out, shape)


def check_against_base(adapter: LoraAdapter, base: Checkpoint) -> None:
    """Every adapted module must name a floating-point weight of the base with the delta's shape."""
    for target, module in adapter.modules.items():
        where = f"{adapter.weights_path}: LoRA module '{module.name}'"
        if target not in base:
            raise CheckpointError(f"{where}: the base {base.path} has no tensor '{target}'")
        entry = base.entry(target)
        if not entry.dtype.is_floating_point:
            raise CheckpointError(f"{where}: the base's '{target}' is {entry.dtype_code}, not floating-point")
        if entry.shape != module.shape:
            hint = " (fan_in_fan_out?)" if entry.shape == module.shape[::-1] else ""
            raise CheckpointError(f"{where}: its delta has shape {list(module.shape)} but the base's '{target}' "
                                  f"is {list(entry.shape)}{hint}")


def is_adapter(checkpoint: object) -> bool:
    return isinstance(checkpoint, LoraAdapter)
