"""Nothing in an input ever runs. Every pickle the tool reads (``convert``'s
``torch.save`` files, CIFAR batches) goes through one allow-list unpickler, and ``convert`` reads the
``torch.save`` container itself: no input reaches ``torch.load`` or ``torch.jit``.

The marker test builds a real TorchScript archive whose load writes a file (checked once, in a
subprocess, with ``torch.jit.load``) and fails if ``convert`` lets it run. The rows are hostile or
damaged real files (made with torch.save, then edited with zipfile/tarfile/pickle); each is refused
in one line with the workspace byte-identical (so a marker written under it fails the row too).
The positive rows convert real torch.save files exactly as before.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from clip_helpers import TINY
from helpers import assert_clean_failure, run_cli
from hostile import RAW_CONTROL, Workspace, assert_refused
from hostile_files import snapshot
from safetensors.torch import load_file

# -- hostile pickles ------------------------------------------------------------------------------


class Calls:
    """Unpickling this calls ``function(*args)``: the classic pickle payload."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def builds_on(module: str, name: str, attributes: dict) -> bytes:
    """A pickle that names the global ``module.name`` and sets its attributes (BUILD with slot
    state: a change to a function or class that would outlive the file)."""
    state = pickle.dumps((None, attributes), protocol=2)[2:-1]  # without PROTO and STOP
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + state + b"b."


def marker(w: Workspace) -> Path:
    return w.root / "MARKER"


def os_system(w: Workspace) -> Calls:
    return Calls(os.system, f"touch '{marker(w)}'")


def builtin_eval(w: Workspace) -> Calls:
    return Calls(eval, f"open({str(marker(w))!r}, 'w')")


class _Storage:
    """Pickles as torch.save's persistent id of a storage."""

    def __init__(self, pid: tuple):
        self.pid = pid


class _TensorOver:
    """Pickles as torch.save pickles a tensor: ``_rebuild_tensor_v2`` over a storage."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, self.shape, stride, False, collections.OrderedDict())


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Storage) else None


def torch_pickle(obj: object) -> bytes:
    """``obj`` pickled as torch.save pickles (protocol 2, storages as persistent ids)."""
    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def float_tensor(numel: int, key: str = "0") -> _TensorOver:
    return _TensorOver(_Storage(("storage", torch.FloatStorage, key, "cpu", numel)), (numel,))


# -- torch.save files, real and edited --------------------------------------------------------------


def saved(w: Workspace, obj: object = None, name: str = "research.pt", **kwargs) -> Path:
    """A real torch.save file in the workspace (default: one 6-element float tensor, storage '0')."""
    path = w.root / name
    torch.save({"visual.proj": torch.arange(6.0)} if obj is None else obj, path, **kwargs)
    return path


def edited(w: Workspace, change: Callable[[list[list]], None], name: str = "research.pt") -> Path:
    """A real torch.save zip, rewritten member by member after ``change`` edits its list of
    [name, bytes, compression] entries (names inside the archive's folder; a name starting with
    '/' is written without it, outside the folder)."""
    path = saved(w, name=name)
    with zipfile.ZipFile(path) as archive:
        folder = archive.namelist()[0].partition("/")[0]
        entries = [[info.filename.partition("/")[2], archive.read(info), zipfile.ZIP_STORED] for info in archive.infolist()]
    change(entries)
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as archive:
        warnings.simplefilter("ignore")  # "Duplicate name" is what one row wants
        for inner, data, compression in entries:
            archive.writestr(f"{folder}/{inner}" if not inner.startswith("/") else inner[1:], data, compression)
    return path


def member(name: str, action: Callable[[list], None]) -> Callable[[list[list]], None]:
    def change(entries: list[list]) -> None:
        for index, entry in enumerate(entries):
            if entry[0] == name:
                action(entries, index)
                return
        raise AssertionError(f"no member {name}")
    return change


def drop(entries, index):
    del entries[index]


def shorten(entries, index):
    entries[index][1] = entries[index][1][:-4]


def lengthen(entries, index):
    entries[index][1] += b"\0" * 4


def deflate(entries, index):
    entries[index][2] = zipfile.ZIP_DEFLATED


def duplicate(entries, index):
    entries.append(list(entries[index]))


def big_endian(entries, index):
    entries[index][1] = b"big"


def pickled(payload: Callable[[], object]) -> Callable:
    """Replace data.pkl with ``payload()`` pickled the torch way."""
    def action(entries, index):
        entries[index][1] = torch_pickle(payload())
    return action


def replaced(data: bytes) -> Callable:
    def action(entries, index):
        entries[index][1] = data
    return action


def added(name: str, data: bytes = b"x") -> Callable[[list[list]], None]:
    def change(entries: list[list]) -> None:
        entries.append([name, data, zipfile.ZIP_STORED])
    return change


def hostile_data_pkl(w: Workspace, payload: Callable[[Workspace], object]) -> Path:
    return edited(w, member("data.pkl", pickled(lambda: {"visual.proj": payload(w)})))


def lying_directory(w: Workspace) -> Path:
    """Storage '0' declared (and listed in the zip's central directory) as 2 GiB the file lacks."""
    huge = 1 << 31
    path = edited(w, member("data.pkl", pickled(lambda: {"visual.proj": float_tensor(huge // 4)})))
    data = bytearray(path.read_bytes())
    name = b"research/data/0"
    at = data.index(b"PK\x01\x02")  # the central directory's first entry
    while data[at + 46:at + 46 + len(name)] != name:
        at = data.index(b"PK\x01\x02", at + 4)
    data[at + 20:at + 28] = huge.to_bytes(4, "little") * 2  # compressed and uncompressed sizes
    path.write_bytes(bytes(data))
    return path


def legacy(w: Workspace, obj: object, keys: list, tail: bytes = b"") -> Path:
    """A legacy (pre-1.6) torch.save stream: magic, protocol, system info, the object, its storage keys."""
    path = w.root / "legacy.pt"
    header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                               "type_sizes": {"short": 2, "int": 4, "long": 4}}]
    path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header) + torch_pickle(obj)
                     + pickle.dumps(keys, protocol=2) + tail)
    return path


def truncated_legacy(w: Workspace) -> Path:
    path = saved(w, name="legacy.pt", _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-5])
    return path


def tar_with_fifo(w: Workspace) -> Path:
    """A tar-format checkpoint whose 'storages' member is a FIFO: torch.load extracts it and then
    blocks opening it."""
    path = w.root / "old.pt"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        fifo = tarfile.TarInfo("storages")
        fifo.type = tarfile.FIFOTYPE
        tar.addfile(fifo)
        for name in ("sys_info", "pickle", "tensors"):
            data = pickle.dumps(0, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class _Module:
    """Pickles as torch.save pickles an nn.Module (a Sequential), children given after creation."""

    def __init__(self):
        self.children: dict[str, object] = {}

    def __reduce__(self):
        state = {"training": False, "_parameters": {}, "_buffers": {}, "_non_persistent_buffers_set": set(),
                 "_modules": self.children}
        return torch.nn.Sequential, (), state


def module_graph(w: Workspace, shape: str) -> Path:
    """A whole-module file whose module contains itself, or shares submodules 2**40 ways."""
    root = _Module()
    if shape == "cycle":
        root.children["0"] = root
    else:
        level = root
        for _ in range(40):
            child = _Module()
            level.children.update({"a": child, "b": child})
            level = child
    return edited(w, member("data.pkl", pickled(lambda: root)))


# -- CIFAR --------------------------------------------------------------------------------------


def cifar_with(w: Workspace, test_batch: object) -> Path:
    """cifar-10-batches-py as torchvision has it, with ``test_batch`` pickled as the test batch."""
    folder = w.root / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        batch = {b"labels": [int(v) for v in rng.integers(0, 10, 4)],
                 b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))
    return folder / "test_batch"


def split_cifar(w: Workspace, test_batch: object) -> tuple[list, list[str]]:
    path = cifar_with(w, test_batch)
    return (["split", "--data", f"cifar10:{w.root / 'cifar'}", "--forget-fraction", "0.5", "-o", w.out / "f.json"],
            [str(path)])


# -- the table ------------------------------------------------------------------------------------

Row = Callable[[Workspace], tuple[list, list[str]]]


def convert(path: Path, *fragments: str) -> tuple[list, list[str]]:
    return ["convert", path, "-o", path.parent / "out" / "c.safetensors", "-m", TINY], [str(path), *fragments]


REFUSED = "refused: its pickle asks for"
ROWS: dict[str, Row] = {
    # globals: refused by name before anything is called (a marker under ws.root would fail the row)
    "zip-data-pkl-os-system": lambda w: convert(hostile_data_pkl(w, os_system), REFUSED, "'posix.system'",
                                                "nothing was run"),
    "zip-data-pkl-builtins-eval": lambda w: convert(hostile_data_pkl(w, builtin_eval), REFUSED, "'builtins.eval'"),
    "zip-gadget-torch-jit-load": lambda w: convert(
        hostile_data_pkl(w, lambda w: Calls(torch.jit.load, str(w.root / "payload.pt"))), REFUSED,
        "'torch.jit._serialization.load'"),
    "zip-gadget-torch-load": lambda w: convert(
        hostile_data_pkl(w, lambda w: Calls(torch.load, str(w.root / "payload.pt"))), REFUSED,
        "'torch.serialization.load'"),
    "zip-gadget-allocating-constructor": lambda w: convert(
        hostile_data_pkl(w, lambda w: Calls(torch.FloatTensor, 1 << 40)), REFUSED, "'torch.FloatTensor'"),
    "zip-gadget-torch-tensor-called": lambda w: convert(
        hostile_data_pkl(w, lambda w: Calls(torch.Tensor, 1 << 40)), REFUSED, "'torch.Tensor(...)'"),
    "zip-gadget-storage-type-called": lambda w: convert(
        hostile_data_pkl(w, lambda w: Calls(torch.FloatStorage, 1 << 40)), REFUSED, "'torch.FloatStorage(...)'"),
    "zip-changes-a-torch-function": lambda w: convert(  # (None,): the default it has, should this ever run
        edited(w, member("data.pkl", replaced(builds_on("torch._utils", "_rebuild_tensor_v2", {"__defaults__": (None,)})))),
        REFUSED, "'torch._utils._rebuild_tensor_v2.__setstate__'"),
    "legacy-stream-os-system": lambda w: convert(legacy(w, {"visual.proj": os_system(w)}, []), REFUSED, "'posix.system'"),
    # storages: each from its own member, exactly the declared size, never more than the file holds
    "zip-storage-member-missing": lambda w: convert(edited(w, member("data/0", drop)), "has no member research/data/0"),
    "zip-storage-member-shorter": lambda w: convert(edited(w, member("data/0", shorten)),
                                                    "holds 20 bytes", "declares 6 float32 elements (24 bytes)"),
    "zip-storage-member-longer": lambda w: convert(edited(w, member("data/0", lengthen)), "holds 28 bytes", "(24 bytes)"),
    "zip-storage-huge-numel": lambda w: convert(
        edited(w, member("data.pkl", pickled(lambda: {"visual.proj": float_tensor(1 << 61)}))),
        "holds 24 bytes", "declares 2,305,843,009,213,693,952 float32 elements"),
    "zip-tensor-beyond-its-storage": lambda w: convert(
        edited(w, member("data.pkl", pickled(lambda: {"visual.proj": _TensorOver(float_tensor(6).storage, (1 << 40,))}))),
        "resize storage that is not resizable"),
    "zip-directory-claims-more-than-the-file": lambda w: convert(lying_directory(w), "more bytes than the file's own size"),
    "zip-storage-declared-twice-differently": lambda w: convert(
        edited(w, member("data.pkl", pickled(lambda: {"visual.proj": float_tensor(6), "b": float_tensor(3)}))),
        "storage '0' is declared twice, differently"),
    "legacy-stream-truncated": lambda w: convert(truncated_legacy(w), "ends after"),
    "legacy-stream-storage-list-mismatch": lambda w: convert(
        legacy(w, {"visual.proj": _TensorOver(_Storage(("storage", torch.FloatStorage, "0", "cpu", 2, None)), (2,))},
               ["0", "1"]), "list of storages does not match"),
    # the zip container: one folder of plain names, each once, stored
    "zip-compressed-member": lambda w: convert(edited(w, member("data/0", deflate)), "'research/data/0' is compressed"),
    "zip-dot-dot-member": lambda w: convert(edited(w, added("../../evil")), "'research/../../evil'", "plain relative path"),
    "zip-absolute-member": lambda w: convert(edited(w, added("//etc/evil")), "'/etc/evil'", "plain relative path"),
    "zip-duplicate-member": lambda w: convert(edited(w, member("data/0", duplicate)), "'research/data/0' appears twice"),
    "zip-two-folders": lambda w: convert(edited(w, added("/other/x")), "two folders"),
    "zip-no-data-pkl": lambda w: convert(edited(w, member("data.pkl", drop)), "no research/data.pkl"),
    "zip-big-endian": lambda w: convert(edited(w, member("byteorder", big_endian)), "big-endian", "torch.save"),
    "zip-torchscript-member": lambda w: convert(edited(w, added("constants.pkl")), "TorchScript", "nothing was run"),
    # module graphs a walk would never finish
    "module-contains-itself": lambda w: convert(module_graph(w, "cycle"), "nested more than 200 deep", "contain itself"),
    "module-shares-submodules-2-to-the-40": lambda w: convert(module_graph(w, "shared"), "more than 100,000 modules"),
    # CIFAR batches: the same unpickler, numpy arrays only
    "cifar-batch-os-system": lambda w: split_cifar(w, {b"data": os_system(w), b"labels": []}),
    "cifar-batch-torch-tensor": lambda w: split_cifar(w, {b"data": torch.zeros(1), b"labels": []}),
}
FRAGMENTS = {"cifar-batch-os-system": [REFUSED, "'posix.system'", "CIFAR batch"],
             "cifar-batch-torch-tensor": [REFUSED, "'torch._utils._rebuild_tensor_v2'"]}


@pytest.mark.parametrize("case", ROWS)
def test_hostile_pickle_is_refused_and_nothing_runs(case, ws, cli):
    def build(w: Workspace) -> tuple[list, list[str]]:
        args, fragments = ROWS[case](w)
        return args, fragments + FRAGMENTS.get(case, [])

    assert_refused(ws, cli, build)
    assert not marker(ws).exists()


# -- TorchScript: the marker test -----------------------------------------------------------------


class WritesAFileWhenLoaded(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) creates a file."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.mapped = torch.zeros(4)

    def forward(self, x):
        return x + self.mapped

    @torch.jit.export
    def __getstate__(self):
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.target = state[0]
        self.training = state[1]
        self.mapped = torch.from_file(self.target, shared=True, size=4)  # creates the file


@pytest.fixture(scope="module")
def torchscript_payload(tmp_path_factory) -> tuple[Path, Path]:
    """(archive, marker): a real torch.jit.save archive that writes ``marker`` when loaded, which
    is checked once by loading it with torch.jit.load in a subprocess."""
    folder = tmp_path_factory.mktemp("torchscript")
    archive, target = folder / "payload.pt", folder / "MARKER"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(WritesAFileWhenLoaded(str(target))), str(archive))
    target.unlink(missing_ok=True)
    load = subprocess.run([sys.executable, "-W", "ignore", "-c", f"import torch; torch.jit.load({str(archive)!r})"],
                          capture_output=True, text=True, timeout=120)
    assert load.returncode == 0 and target.exists(), load.stderr  # the archive really runs code when loaded
    target.unlink()
    return archive, target


def test_torchscript_archive_is_refused_and_its_code_never_runs(torchscript_payload, ws, cli):
    archive, target = torchscript_payload
    source = ws.root / "finetuned.pt"
    shutil.copy(archive, source)
    before = snapshot(ws.root)

    result = cli("convert", source, "-o", ws.out / "c.safetensors", "-m", TINY)

    assert not target.exists(), "convert ran the archive's code"
    assert_clean_failure(result, str(source), "TorchScript", "nothing was run")
    assert snapshot(ws.root) == before


# -- hangs in a real process ----------------------------------------------------------------------


def test_tar_checkpoint_with_a_fifo_member_is_refused_without_unpacking(ws):
    source = tar_with_fifo(ws)
    before = snapshot(ws.root)
    result = run_cli("convert", source, "-o", ws.out / "c.safetensors", "-m", TINY, timeout=60)
    line = assert_clean_failure(result, str(source), "tar-format", "torch.save")
    assert not RAW_CONTROL.search(line)
    assert snapshot(ws.root) == before


# -- what works keeps working ---------------------------------------------------------------------


def _tiny_model():
    from negmerge_cli.clip import models

    return models.create_model(TINY).eval()


@pytest.mark.parametrize("how", ["state-dict", "whole-module", "whole-module-legacy"])
def test_real_torch_save_files_convert_exactly(ws, cli, how):
    model = _tiny_model()
    source = ws.root / "research.pt"
    torch.save(model.state_dict() if how == "state-dict" else model, source,
               _use_new_zipfile_serialization=how != "whole-module-legacy")
    out = ws.out / "c.safetensors"

    result = cli("convert", source, "-o", out, "-m", TINY)

    assert result.returncode == 0, result.stderr
    converted, expected = load_file(str(out)), model.state_dict()
    assert set(converted) == set(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
