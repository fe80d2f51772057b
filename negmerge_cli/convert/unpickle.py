"""Reading ``torch.save`` files without running anything they contain.

A pickle is a small program: unpickling calls whatever globals it names, so ``torch.load`` of an
untrusted file can run ``os.system``. The research code saves whole modules
(``torch.save(image_encoder)``), whose pickles name module classes (``src.modeling.ImageEncoder``,
``open_clip.model.CLIP``, ``torch.nn.modules.linear.Linear``, the torchvision/timm preprocessing it
carries). We unpickle through ``torch.load`` with our own pickle module, whose ``find_class`` is the
only way a pickle reaches a Python object:

- the globals torch's weights-only loader accepts (tensor rebuild functions, storage types, dtypes,
  ``torch.Size``, ``collections.OrderedDict``, ``set``...) resolve to themselves;
- classes and functions under ``STAND_IN_PREFIXES`` resolve to inert stand-ins that only record what
  unpickling hands them; the real class is never imported;
- anything else is refused (:class:`ForbiddenGlobal`) before it is called.

A whole module comes back as a tree of stand-ins, which :func:`module_state_dict` walks into the
state dict ``nn.Module.state_dict()`` would have given.
"""

from __future__ import annotations

import _compat_pickle
import functools
import pickle
import types
import warnings
from pathlib import Path

import torch

from negmerge_cli.errors import CheckpointError

# Where the classes of a research checkpoint live: torch.nn modules, open_clip, the research
# package itself (`src.modeling.ImageEncoder`, `src.modeling.CustomMultiheadAttention`), and the
# preprocessing objects an ImageEncoder keeps as attributes (torchvision, timm, PIL enums).
STAND_IN_PREFIXES = ("torch.nn.", "open_clip.", "src.", "torchvision.transforms.", "timm.data.", "PIL.Image.")


class ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, qualified_name: str):
        super().__init__(qualified_name)
        self.qualified_name = qualified_name


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
def _safe_globals() -> dict[str, object]:
    # torch's own curated list for untrusted files; private, but it moves with torch's pickle format
    from torch import _weights_only_unpickler

    return dict(_weights_only_unpickler._get_allowed_globals())


class RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stand_ins: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        # Overriding find_class skips pickle's own mapping of Python 2 names (torch.save uses
        # protocol 2, which writes `__builtin__ set`), so apply it here.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        qualified = f"{module}.{name}"
        safe = _safe_globals().get(qualified)
        if safe is not None:
            return safe
        if qualified.startswith(STAND_IN_PREFIXES):
            return self._stand_in(qualified, name)
        raise ForbiddenGlobal(qualified)

    def _stand_in(self, qualified: str, name: str) -> type:
        if qualified not in self._stand_ins:
            self._stand_ins[qualified] = type(name.rpartition(".")[2], (StandIn,), {"qualified_name": qualified})
        return self._stand_ins[qualified]


def _load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs of a pickle module: `Unpickler` (zip files) and `load` (legacy files).
_PICKLE_MODULE = types.SimpleNamespace(__name__="negmerge_restricted_pickle", Unpickler=RestrictedUnpickler, load=_load)


def load_pickled(path: Path, handle) -> object:
    """The object the ``torch.save`` file ``handle`` (opened from ``path``) holds, with stand-ins
    for module classes; one-line errors naming ``path``."""
    try:
        with warnings.catch_warnings():
            # legacy-format files carry their classes' source, which torch compares with the
            # installed classes and warns about; stand-ins have no source to compare
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location="cpu", pickle_module=_PICKLE_MODULE, weights_only=False)
    except ForbiddenGlobal as refused:
        raise CheckpointError(
            f"{path}: refused: its pickle asks for '{refused.qualified_name}', which a checkpoint has no use "
            "for (not on the allow-list; nothing was run)"
        ) from None
    except Exception as exc:  # torch and pickle fail on damaged input in many ways; all mean the same here
        reason = str(exc).split(". ")[0].splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (damaged or truncated?): {reason}") from None


def is_module(obj: object) -> bool:
    state = getattr(obj, "pickled_state", None)
    return isinstance(obj, StandIn) and isinstance(state, dict) and "_modules" in state and "_parameters" in state


def module_state_dict(root: StandIn, path: Path) -> dict[str, object]:
    """What ``root.state_dict()`` would give: parameters and persistent buffers, depth first."""
    tensors: dict[str, object] = {}
    _visit(root, "", tensors, set(), path)
    return tensors


def _visit(module: StandIn, prefix: str, tensors: dict, ancestors: set[int], path: Path) -> None:
    if id(module) in ancestors:
        raise CheckpointError(f"{path}: module '{prefix.rstrip('.')}' contains itself")
    state = module.pickled_state
    tensors.update((prefix + k, v) for k, v in _field(state, "_parameters", dict, prefix, path).items() if v is not None)
    skipped = _field(state, "_non_persistent_buffers_set", set, prefix, path)
    buffers = _field(state, "_buffers", dict, prefix, path)
    tensors.update((prefix + k, v) for k, v in buffers.items() if v is not None and k not in skipped)
    for name, child in _field(state, "_modules", dict, prefix, path).items():
        if child is None:
            continue
        if not is_module(child):
            raise CheckpointError(f"{path}: submodule '{prefix}{name}' is not a module")
        _visit(child, f"{prefix}{name}.", tensors, ancestors | {id(module)}, path)


def _field(state: dict, name: str, kind: type, prefix: str, path: Path):
    """One of nn.Module's bookkeeping fields, checked: a hostile file may put anything there."""
    value = state.get(name) or kind()
    if not isinstance(value, kind) or not all(isinstance(key, str) for key in value):
        raise CheckpointError(f"{path}: module '{prefix.rstrip('.') or '(top)'}' has a malformed {name}")
    return value
