"""What a ``torch.save`` pickle may name, and the state dict of a pickled module.

The research code saves whole modules (``torch.save(image_encoder)``), whose pickles name module
classes (``src.modeling.ImageEncoder``, ``open_clip.model.CLIP``, ``torch.nn.modules.linear.Linear``,
the torchvision/timm preprocessing it carries). :func:`checkpoint_globals` is the allow-list that
:mod:`negmerge_cli.core.safe_pickle` unpickles such files with (see :mod:`.torch_file` for the container):

- the rebuild functions of dense tensors and parameters ``torch.save`` writes, wrapped in
  :class:`Named` objects of ours (so unpickling cannot set attributes of torch's own functions);
  none of them reads files, allocates memory from a size it is given, or touches a GPU;
- dtypes, ``torch.Size``, ``torch.device``, ``collections.OrderedDict``, ``set``: the real,
  immutable objects;
- ``torch.Tensor`` and the storage types (``torch FloatStorage``) resolve to tokens that may be
  named but not called (``torch.Tensor(n)`` allocates): the container's ``persistent_load`` reads a
  :class:`StorageKind` for its dtype;
- classes and functions under ``STAND_IN_PREFIXES`` resolve to inert stand-ins that only record what
  unpickling hands them; the real class is never imported;
- anything else is refused before it is called.

A whole module comes back as a tree of stand-ins, which :func:`module_state_dict` walks into the
state dict ``nn.Module.state_dict()`` would have given.
"""

from __future__ import annotations

import codecs
import collections
import functools
from pathlib import Path

import torch

from negmerge_cli.core.errors import CheckpointError
from negmerge_cli.core.safe_pickle import ForbiddenGlobal

# Where the classes of a research checkpoint live: torch.nn modules, open_clip, the research
# package itself (`src.modeling.ImageEncoder`, `src.modeling.CustomMultiheadAttention`), and the
# preprocessing objects an ImageEncoder keeps as attributes (torchvision, timm, PIL enums).
STAND_IN_PREFIXES = ("torch.nn.", "open_clip.", "src.", "torchvision.transforms.", "timm.data.", "PIL.Image.")
MAX_MODULES = 100_000  # a CLIP ViT-L/14 has about 400 modules, nested 6 deep: bounds on a hostile
MAX_DEPTH = 200  # module graph

# The storage types torch.save names (``torch.FloatStorage``; ``torch.cuda.*`` in files of old
# versions; ``torch.storage.UntypedStorage`` for dtypes without a legacy storage class).
_STORAGE_DTYPES = {
    "Double": torch.float64, "Float": torch.float32, "Half": torch.float16, "BFloat16": torch.bfloat16,
    "Long": torch.int64, "Int": torch.int32, "Short": torch.int16, "Char": torch.int8, "Byte": torch.uint8,
    "Bool": torch.bool, "ComplexFloat": torch.complex64, "ComplexDouble": torch.complex128,
}
_TENSOR_FUNCTIONS = (  # the rebuild functions of dense CPU tensors and parameters (meta ones have no data)
    torch._utils._rebuild_tensor, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_tensor_v3,
    torch._utils._rebuild_parameter, torch._utils._rebuild_parameter_with_state,
    torch._utils._rebuild_meta_tensor_no_storage,
)
# Immutable types and values (BUILD cannot set their attributes), given to pickles as they are
_PLAIN = {"torch.Size": torch.Size, "torch.device": torch.device, "collections.OrderedDict": collections.OrderedDict,
          "builtins.set": set, "_codecs.encode": codecs.encode}


class Named:
    """An allow-listed global as a pickle gets it: an object of ours, calling ``function`` (or, without
    one, refusing the call: ``torch.Tensor(n)`` would allocate n elements). Unpickling may try to set
    attributes of a global it names (BUILD): on torch's own functions and classes that change would
    outlive the file, so it is refused."""

    __slots__ = ("name", "function")

    def __init__(self, name: str, function=None):
        self.name, self.function = name, function

    def __call__(self, *args, **kwargs):
        if self.function is None:
            raise ForbiddenGlobal(f"{self.name}(...)")
        return self.function(*args, **kwargs)

    def __setstate__(self, state):
        raise ForbiddenGlobal(f"{self.name}.__setstate__")


class StorageKind(Named):
    """A storage type (``torch FloatStorage``): only ``persistent_load`` reads it, for the dtype."""

    __slots__ = ("dtype",)

    def __init__(self, name: str, dtype: torch.dtype):
        super().__init__(name)
        self.dtype = dtype


TENSOR = Named("torch.Tensor")  # named by _rebuild_from_type_v2 as the class to rebuild


def _rebuild_from_type(func, new_type, args, state):
    return torch._tensor._rebuild_from_type_v2(func, torch.Tensor if new_type is TENSOR else new_type, args, state)


class StandIn:
    """Inert replacement for a class the pickle names: records constructor arguments and state."""

    qualified_name = "?"

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        self.pickled_args = args

    def __setstate__(self, state):
        self.pickled_state = state


@functools.lru_cache(maxsize=1)
def _tensor_globals() -> dict[str, object]:
    found: dict[str, object] = {name: Named(name, f) for f in _TENSOR_FUNCTIONS
                                for name in [f"{f.__module__}.{f.__name__}"]}
    found["torch._tensor._rebuild_from_type_v2"] = Named("torch._tensor._rebuild_from_type_v2", _rebuild_from_type)
    found["torch.Tensor"] = TENSOR
    found.update({f"torch.{name}": value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    for prefix in ("torch", "torch.cuda"):
        found.update({f"{prefix}.{kind}Storage": StorageKind(f"{prefix}.{kind}Storage", dtype)
                      for kind, dtype in _STORAGE_DTYPES.items()})
    found["torch.storage.UntypedStorage"] = StorageKind("torch.storage.UntypedStorage", torch.uint8)
    return {**found, **_PLAIN}


def checkpoint_globals():
    """The allow-list of one checkpoint file (its stand-in classes are made once per file)."""
    stand_ins: dict[str, type] = {}

    def allowed(name: str) -> object:
        known = _tensor_globals().get(name)
        if known is not None:
            return known
        if not name.startswith(STAND_IN_PREFIXES):
            return None
        if name not in stand_ins:
            stand_ins[name] = type(name.rpartition(".")[2], (StandIn,), {"qualified_name": name})
        return stand_ins[name]

    return allowed


def is_module(obj: object) -> bool:
    state = getattr(obj, "pickled_state", None)
    return isinstance(obj, StandIn) and isinstance(state, dict) and "_modules" in state and "_parameters" in state


def module_state_dict(root: StandIn, path: Path) -> dict[str, object]:
    """What ``root.state_dict()`` would give: parameters and persistent buffers, depth first.

    Walked with a stack of its own and bounded (MAX_DEPTH levels, MAX_MODULES visits): a hostile
    file may nest modules deeper than Python recurses, put a module inside itself, or share
    submodules so that the walk would never end."""
    tensors: dict[str, object] = {}
    pending: list[tuple[StandIn, str, int]] = [(root, "", 0)]
    visited = 0
    while pending:
        module, prefix, depth = pending.pop()
        visited += 1
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: modules nested more than {MAX_DEPTH} deep at "
                                  f"'{prefix[:80]}...' (does a module contain itself?)")
        if visited > MAX_MODULES:
            raise CheckpointError(f"{path}: holds more than {MAX_MODULES:,} modules (are submodules shared without end?)")
        state = module.pickled_state
        tensors.update((prefix + k, v) for k, v in _field(state, "_parameters", dict, prefix, path).items() if v is not None)
        skipped = _field(state, "_non_persistent_buffers_set", set, prefix, path)
        buffers = _field(state, "_buffers", dict, prefix, path)
        tensors.update((prefix + k, v) for k, v in buffers.items() if v is not None and k not in skipped)
        children = []
        for name, child in _field(state, "_modules", dict, prefix, path).items():
            if child is None:
                continue
            if not is_module(child):
                raise CheckpointError(f"{path}: submodule '{prefix}{name}' is not a module")
            children.append((child, f"{prefix}{name}.", depth + 1))
        pending.extend(reversed(children))  # the first child is walked next, as state_dict() does
    return tensors


def _field(state: dict, name: str, kind: type, prefix: str, path: Path):
    """One of nn.Module's bookkeeping fields, checked: a hostile file may put anything there."""
    value = state.get(name) or kind()
    if not isinstance(value, kind) or not all(isinstance(key, str) for key in value):
        raise CheckpointError(f"{path}: module '{prefix.rstrip('.') or '(top)'}' has a malformed {name}")
    return value
