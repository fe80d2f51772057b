"""What ``convert`` is given as tensors, and which weights a model folder is.

Convert sources: every source tensor is checked against the target model's skeleton (a dense CPU
tensor with values, of the weight's dtype class, in exactly the shape its part of the model needs)
before any arithmetic, and one weight under two names (two naming schemes, or a block both fused and
split) is refused instead of one of them being dropped. The legitimate layouts still convert to
tensors equal to the model's.

Model folders: a folder is read from the weights ``transformers.AutoModel.from_pretrained(FOLDER)``
loads (``model.safetensors`` before an index; config.json's ``transformers_weights`` first), checked
here against transformers itself on a real tiny model whose folder also holds an index and shards of
DIFFERENT weights; folders only an arbitrary rule could resolve are refused, and an output folder in
which other weights would win over the ones written is refused before any work.

Every refused row goes through the real CLI with ``hostile.assert_refused``: non-zero exit, one
``error:`` line naming the file and the tensor or file at fault, no traceback, nothing written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from clip_helpers import TINY
from helpers import assert_clean_failure
from hostile import Workspace, assert_refused
from safetensors.torch import load_file, save_file

BLOCK = "visual.transformer.resblocks.0.attn"
PROJ = "visual.proj"  # (64, 64) in the tiny model
IN_PROJ = f"{BLOCK}.in_proj_weight"  # (192, 64)


# -- convert sources ----------------------------------------------------------------------------


def base_state(w: Workspace) -> dict[str, torch.Tensor]:
    return load_file(str(w.base))


def split_state(w: Workspace) -> dict[str, object]:
    """The NegMerge release's layout: ``model.`` prefix, every visual attention as Q, K, V, O."""
    state: dict[str, object] = {}
    for name, tensor in base_state(w).items():
        block, _, field = name.rpartition(".attn.")
        if not block.startswith("visual."):
            state[f"model.{name}"] = tensor
        elif field in ("in_proj_weight", "in_proj_bias"):
            kind = field.removeprefix("in_proj_")
            for part, third in zip("QKV", tensor.chunk(3)):
                state[f"model.{block}.attn.{part}.{kind}"] = third.clone()
        else:  # out_proj.weight / out_proj.bias
            state[f"model.{block}.attn.O.{field.removeprefix('out_proj.')}"] = tensor
    return state


def pickled(change: Callable[[dict], None], split: bool = False) -> Callable[[Workspace], Path]:
    """A ``torch.save`` state dict of the tiny model (fused or split), with ``change`` applied."""
    def make(w: Workspace) -> Path:
        state = split_state(w) if split else dict(base_state(w))
        change(state)
        torch.save(state, w.root / "source.pt")
        return w.root / "source.pt"
    return make


def stored(change: Callable[[dict], None]) -> Callable[[Workspace], Path]:
    """The same as a safetensors file (what safetensors can hold: no meta, sparse or non-tensors)."""
    def make(w: Workspace) -> Path:
        state = dict(base_state(w))
        change(state)
        save_file(state, str(w.root / "source.safetensors"))
        return w.root / "source.safetensors"
    return make


def put(name: str, value: Callable[[torch.Tensor], object]) -> Callable[[dict], None]:
    def change(state: dict) -> None:
        state[name] = value(state[name])
    return change


def add(extra: dict[str, Callable[[dict], object]]) -> Callable[[dict], None]:
    """Add tensors computed from the state as it was."""
    def change(state: dict) -> None:
        state.update({name: make(state) for name, make in extra.items()})
    return change


def drop(name: str) -> Callable[[dict], None]:
    return lambda state: state.pop(name)


def _hf_names(then: Callable[[dict], None]) -> Callable[[dict], None]:
    """transformers names for the pre-LayerNorm, so the file reads as transformers CLIP, then ``then``."""
    def change(state: dict) -> None:
        for kind in ("weight", "bias"):
            state[f"vision_model.pre_layrnorm.{kind}"] = state.pop(f"visual.ln_pre.{kind}")
        then(state)
    return change


def _bare_and_prefixed(state: dict) -> None:
    """The patch embedding as transformers 5 (bare) and 4 (``vision_model.``) name it, both."""
    conv = state.pop("visual.conv1.weight")
    state["embeddings.patch_embedding.weight"] = conv
    state["vision_model.embeddings.patch_embedding.weight"] = conv.clone()


def _hf_projection(value: torch.Tensor) -> Callable[[dict], None]:
    """transformers CLIP names, the projection (``visual_projection.weight``) stored as ``value``."""
    def change(state: dict) -> None:
        state.pop(PROJ)
        state["visual_projection.weight"] = value
    return _hf_names(change)


def convert_row(make: Callable[[Workspace], Path], *fragments: str):
    def build(w: Workspace):
        source = make(w)
        return ["convert", source, "-o", w.out / "converted.safetensors", "-m", TINY], [str(source), *fragments]
    return build


Q = f"model.{BLOCK}.Q.weight"
SPLIT_CASES = {
    # tensor kinds, before the torch.cat that fuses them
    "split-q-is-0d": (put(Q, lambda t: torch.tensor(0.5)), [f"'{Q}'", "has shape ()", "(64, 64)", "Q rows"]),
    "split-q-is-3d": (put(Q, lambda t: t.unsqueeze(0)), [f"'{Q}'", "(1, 64, 64)"]),
    "split-q-is-meta": (put(Q, lambda t: torch.empty(t.shape, device="meta")), [f"'{Q}'", "meta"]),
    "split-q-is-sparse": (put(Q, lambda t: t.to_sparse()), ["sparse"]),  # refused when read, or when checked
    "split-q-is-integer": (put(Q, lambda t: t.long()), [f"'{Q}'", "int64", "floating-point"]),
    "split-q-is-a-string": (put(Q, lambda t: "weights"), [f"'{Q}'", "is a str, not a tensor"]),
    "split-q-is-float16": (put(Q, lambda t: t.half()), [IN_PROJ, "differ in dtype", "float16"]),
    "split-v-missing": (drop(f"model.{BLOCK}.V.bias"), [f"{BLOCK}.in_proj_bias", "V rows"]),
    # one block in both layouts: which one would win?
    "split-and-fused-in-proj": (add({f"model.{IN_PROJ}": lambda s: torch.zeros(192, 64)}),
                                [f"'model.{IN_PROJ}'", f"'{Q}'", "both hold", IN_PROJ]),
    "split-o-and-out-proj": (add({f"model.{BLOCK}.out_proj.weight": lambda s: torch.zeros(64, 64)}),
                             [f"'model.{BLOCK}.O.weight'", f"'model.{BLOCK}.out_proj.weight'", "both hold"]),
}
FUSED_CASES = {
    "fused-matrix-is-0d": (put(PROJ, lambda t: torch.tensor(1.0)), [f"'{PROJ}'", "has shape ()", "(64, 64)"]),
    "fused-matrix-is-3d": (put(IN_PROJ, lambda t: t.reshape(3, 64, 64)), [f"'{IN_PROJ}'", "(3, 64, 64)", "(192, 64)"]),
    "fused-matrix-transposed": (put(f"{BLOCK}.out_proj.weight", lambda t: t[:, :32].t()), ["(32, 64)", "(64, 64)"]),
    "fused-meta": (put(PROJ, lambda t: torch.empty(t.shape, device="meta")), [f"'{PROJ}'", "meta"]),
    "fused-sparse-coo": (put(PROJ, lambda t: t.to_sparse()), ["sparse"]),
    "fused-sparse-csr": (put(PROJ, lambda t: t.to_sparse_csr()), ["sparse"]),
    "fused-integer": (put(PROJ, lambda t: t.to(torch.int32)), [f"'{PROJ}'", "int32", "floating-point"]),
    "fused-bool": (put(PROJ, lambda t: t > 0), [f"'{PROJ}'", "bool"]),
    "fused-complex": (put(PROJ, lambda t: t.to(torch.complex64)), [f"'{PROJ}'", "complex64"]),
    "fused-float-unstorable": (put(PROJ, lambda t: t.to(torch.float8_e4m3fnuz)),
                               [f"'{PROJ}'", "safetensors cannot store"]),
    "fused-a-list": (put(PROJ, lambda t: [1.0, 2.0]), [f"'{PROJ}'", "is a list, not a tensor"]),
    "fused-none": (put("logit_scale", lambda t: None), ["'logit_scale'", "NoneType"]),
    # one weight under two naming schemes
    "hf-and-open-clip-name": (add({"vision_model.post_layernorm.weight": lambda s: torch.zeros(64)}),
                              ["'visual.ln_post.weight'", "'vision_model.post_layernorm.weight'", "both hold"]),
    "hf-q-proj-and-fused-in-proj": (
        add({"vision_model.encoder.layers.0.self_attn.q_proj.weight": lambda s: torch.zeros(64, 64)}),
        [f"'{IN_PROJ}'", "q_proj.weight'", "both hold"]),
    "hf-projection-and-open-clip-proj": (_hf_names(add({"visual_projection.weight": lambda s: s[PROJ].t()})),
                                         [f"'{PROJ}'", "'visual_projection.weight'", "both hold"]),
    "hf-bare-and-prefixed-vision": (_hf_names(_bare_and_prefixed), [
        "'embeddings.patch_embedding.weight'", "'vision_model.embeddings.patch_embedding.weight'",
        "both hold 'visual.conv1.weight'"]),
    "research-prefix-beside-bare-name": (add({f"model.{PROJ}": lambda s: s[PROJ]}),
                                         [f"'model.{PROJ}'", "unexpected"]),
}
CONVERT_ROWS = {
    **{name: convert_row(pickled(change, split=True), *fragments) for name, (change, fragments) in SPLIT_CASES.items()},
    **{name: convert_row(pickled(change), *fragments) for name, (change, fragments) in FUSED_CASES.items()},
    "safetensors-matrix-is-0d": convert_row(stored(put(PROJ, lambda t: torch.tensor(1.0))),
                                            f"'{PROJ}'", "has shape ()"),
    "safetensors-integer": convert_row(stored(put(IN_PROJ, lambda t: t.long())), f"'{IN_PROJ}'", "int64"),
    "safetensors-hf-and-open-clip-name": convert_row(
        stored(add({"vision_model.pre_layrnorm.weight": lambda s: s["visual.ln_pre.weight"].clone()})),
        "'visual.ln_pre.weight'", "'vision_model.pre_layrnorm.weight'", "both hold"),
    "safetensors-hf-projection-is-1d": convert_row(stored(_hf_projection(torch.zeros(64))),
                                                   "'visual_projection.weight'", "(64,)", "transpose of 'visual.proj'"),
}


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("case", CONVERT_ROWS)
def test_convert_refuses_unfit_or_ambiguous_tensors(case, ws, cli):
    assert_refused(ws, cli, CONVERT_ROWS[case])


def _logit_scale_other_form(state: dict) -> None:
    """``()`` where the model has ``(1,)``, or the other way round (open_clip versions differ)."""
    scale = state["logit_scale"]
    state["logit_scale"] = scale.reshape(1) if scale.dim() == 0 else scale.reshape(())


CONVERTS = {  # (source maker, dtype of every floating tensor in the output or None: the base's)
    "open-clip-state-dict": (pickled(lambda s: None), None),
    "split-research-state-dict": (pickled(lambda s: None, split=True), None),
    "safetensors": (stored(lambda s: None), None),
    "logit-scale-other-form": (pickled(_logit_scale_other_form), None),
    "float16": (pickled(lambda s: s.update({k: v.half() for k, v in s.items()})), torch.float16),
}


@pytest.mark.parametrize("case", CONVERTS)
def test_legitimate_sources_convert_to_the_same_tensors(case, ws, cli):
    make, dtype = CONVERTS[case]
    source, out = make(ws), ws.root / "converted.safetensors"
    result = cli("convert", source, "-o", out, "-m", TINY, "-q")
    assert result.returncode == 0, result.stderr
    converted, base = load_file(str(out)), base_state(ws)
    assert list(converted) == list(base)  # every tensor, in the model's order
    for name, tensor in base.items():
        expected = tensor.to(dtype) if dtype is not None else tensor
        assert converted[name].dtype == expected.dtype and torch.equal(converted[name], expected), name


# -- model folders: which weights a model folder is -----------------------------------------------

def _gpt2(seed: int):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2Model(config)


def _model_folder(folder: Path, seed: int, stale_seed: int) -> Path:
    """A transformers folder (``model.safetensors``, config.json) that ALSO holds an index and shards
    of different weights, as a folder gets when a sharded save lands beside an unsharded one."""
    _gpt2(seed).save_pretrained(folder)
    stale = folder.parent / f"{folder.name}-stale"
    _gpt2(stale_seed).save_pretrained(stale, max_shard_size="8KB")
    for path in stale.glob("*.safetensors*"):
        shutil.move(str(path), folder / path.name)
    shutil.rmtree(stale)
    assert (folder / "model.safetensors.index.json").exists() and len(list(folder.glob("model-*"))) > 1
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory) -> Path:
    """base, ft0, ft1: each with model.safetensors plus an index and shards of other weights."""
    root = tmp_path_factory.mktemp("ambiguous")
    for name, seed in (("base", 0), ("ft0", 1), ("ft1", 2)):
        _model_folder(root / name, seed, 100 + seed)
    return root


def loaded(folder: Path) -> dict[str, torch.Tensor]:
    """What the user's model will hold: transformers' own choice of weights."""
    from transformers import AutoModel

    return {k: v.detach() for k, v in AutoModel.from_pretrained(folder).state_dict().items()}


def _read(path: Path) -> dict[str, torch.Tensor]:
    from negmerge_cli.checkpoint import load_state_dict

    return load_state_dict(path)


def _same(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) <= set(expected) and actual
    for name, tensor in actual.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)


def test_every_command_reads_the_weights_transformers_loads(family, tmp_path, cli):
    base, ft0, ft1 = (loaded(family / name) for name in ("base", "ft0", "ft1"))
    assert not torch.equal(base["h.0.attn.c_attn.weight"], _read(family / "base" / "model.safetensors.index.json")[
        "h.0.attn.c_attn.weight"])  # the stale shards really hold other weights

    inspected = cli("inspect", "--json", family / "base")
    assert inspected.returncode == 0, inspected.stderr
    shown = json.loads(inspected.stdout)
    assert {t["name"] if isinstance(t, dict) else t for t in shown["tensors"]} == set(_read(family / "base"))
    assert shown["total_bytes"] == (family / "base" / "model.safetensors").stat().st_size

    tau = tmp_path / "tau.safetensors"
    assert cli("vector", family / "ft0", "--base", family / "base", "-o", tau, "-q").returncode == 0
    _same(load_file(str(tau)), {k: ft0[k] - base[k] for k in base})

    merged = tmp_path / "mean.safetensors"
    result = cli("merge", "--method", "mean", "--base", family / "base", family / "ft0", family / "ft1",
                 "-o", merged, "-q")
    assert result.returncode == 0, result.stderr
    _same(load_file(str(merged)), {k: (ft0[k] - base[k] + ft1[k] - base[k]) / 2 for k in base})

    out = tmp_path / "negated"
    result = cli("apply", "--base", family / "base", "--vector", tau, "--scale", "-1", "-o", f"{out}/", "-q")
    assert result.returncode == 0, result.stderr
    _same(loaded(out), {k: base[k] - (ft0[k] - base[k]) for k in base})  # what transformers loads from the output


def test_an_index_or_file_passed_explicitly_is_read_as_given(family, tmp_path, cli):
    index = family / "ft0" / "model.safetensors.index.json"
    tau = tmp_path / "tau.safetensors"
    result = cli("vector", index, "--base", family / "base" / "model.safetensors.index.json", "-o", tau, "-q")
    assert result.returncode == 0, result.stderr
    stale_ft, stale_base = _read(index), _read(family / "base" / "model.safetensors.index.json")
    _same(load_file(str(tau)), {k: stale_ft[k] - stale_base[k] for k in stale_ft})
    result = cli("vector", family / "ft0" / "model.safetensors", "--base", family / "base", "-o", tau, "-q", "--force")
    assert result.returncode == 0, result.stderr
    ft0, base = loaded(family / "ft0"), loaded(family / "base")
    _same(load_file(str(tau)), {k: ft0[k] - base[k] for k in base})


def test_config_naming_the_weights_is_followed_as_transformers_does(family, tmp_path, cli):
    folder = tmp_path / "named"
    shutil.copytree(family / "ft1", folder)
    (folder / "model.safetensors").rename(folder / "custom.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_weights": "custom.safetensors"}))
    expected = loaded(folder)
    _same(_read(folder), expected)
    _same(expected, load_file(str(folder / "custom.safetensors")))


def test_variants_and_pickles_beside_the_chosen_file_are_ignored_as_transformers_does(family, tmp_path, cli):
    folder = Path(shutil.copytree(family / "ft1", tmp_path / "crowded"))
    other = load_file(str(family / "base" / "model.safetensors"))
    save_file(other, str(folder / "model.fp16.safetensors"), {"format": "pt"})
    torch.save(other, folder / "pytorch_model.bin")
    expected = loaded(folder)
    _same(expected, load_file(str(folder / "model.safetensors")))
    _same(_read(folder), expected)
    # without model.safetensors and its index transformers loads the pickle, which negmerge refuses
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").unlink()
    _same(loaded(folder), other)
    assert_clean_failure(cli("inspect", folder), str(folder), "pytorch_model.bin")


def in_ws(family_root: Path, name: str) -> Callable[[Workspace], Path]:
    """A copy of one of the family's folders inside the workspace."""
    def make(w: Workspace) -> Path:
        return Path(shutil.copytree(family_root / name, w.root / name))
    return make


def _edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def zero_vector(w: Workspace, folder: Path) -> Path:
    """A task vector (by its metadata) of the folder's model, all zeros."""
    path = w.root / "zero-tau.safetensors"
    tensors = {k: torch.zeros_like(v) for k, v in load_file(str(folder / "model.safetensors")).items()}
    save_file(tensors, str(path), {"format": "pt", "negmerge.kind": "task_vector"})
    return path


def folder_rows(family_root: Path) -> dict:
    base, ft0 = in_ws(family_root, "base"), in_ws(family_root, "ft0")

    def bin_beside_other_safetensors(w):
        folder = base(w)
        (folder / "model.safetensors").rename(folder / "model.fp16.safetensors")
        (folder / "model.safetensors.index.json").unlink()
        (folder / "pytorch_model.bin").write_bytes(b"pickle")
        return ["inspect", folder], [str(folder), "pytorch_model.bin", "pickle"]

    def twin_file_and_index(w):
        folder = base(w)
        (folder / "model.safetensors").rename(folder / "weights.safetensors")
        (folder / "model.safetensors.index.json").rename(folder / "weights.safetensors.index.json")
        return ["vector", folder, "--base", folder / "weights.safetensors", "-o", w.out / "t.safetensors"], [
            str(folder), "weights.safetensors", "weights.safetensors.index.json", "pass the file or the index"]

    def configured(value):
        def build(w):
            folder = base(w)
            _edit_config(folder, transformers_weights=value)
            return ["inspect", folder], [str(folder / "config.json"), "transformers_weights"]
        return build

    def distributed(w):
        folder = base(w)
        shutil.copy(folder / "model.safetensors", folder / "shard-00001-model-00001-of-00001.safetensors")
        return ["inspect", folder], [str(folder), "distributed"]

    def output_holds_winning_weights(w):
        folder, out = base(w), w.root / "existing"
        out.mkdir()
        shutil.copy(folder / "model.safetensors", out / "model.safetensors")
        return (["apply", "-b", folder, "-v", zero_vector(w, folder), "-s", "-1", "-o", f"{out}/",
                 "--shard-size", "8KB", "--force"],
                [str(out), "model.safetensors", "instead of", "model.safetensors.index.json"])

    def output_config_names_other_weights(w):
        folder, out = base(w), w.root / "existing"
        out.mkdir()
        (out / "config.json").write_text('{"transformers_weights": "old.safetensors"}')
        return (["merge", "--method", "mean", "-b", folder, ft0(w), "-o", f"{out}/", "--no-copy-files"],
                [str(out), "config.json", "old.safetensors", "instead of"])

    def convert_output_folder_holds_model_safetensors(w):
        out = w.root / "existing"
        out.mkdir()
        shutil.copy(w.base, out / "model.safetensors")
        return (["convert", w.base, "-o", f"{out}/", "-m", TINY, "--force"],
                [str(out), "model.safetensors", "instead of", "open_clip_model.safetensors"])

    return {
        "folder-pytorch-bin-wins-over-other-safetensors": bin_beside_other_safetensors,
        "folder-file-and-index-of-one-name": twin_file_and_index,
        "folder-config-weights-not-a-string": configured(["model.safetensors"]),
        "folder-config-weights-outside-folder": configured("../model.safetensors"),
        "folder-config-weights-not-weights": configured("model.pt"),
        "folder-distributed-checkpoint": distributed,
        "output-folder-holds-weights-that-would-win": output_holds_winning_weights,
        "output-folder-config-names-other-weights": output_config_names_other_weights,
        "convert-output-folder-holds-model-safetensors": convert_output_folder_holds_model_safetensors,
    }


FOLDER_ROWS = list(folder_rows(Path()))


@pytest.mark.parametrize("case", FOLDER_ROWS)
def test_ambiguous_folders_are_refused(case, family, ws, cli):
    assert_refused(ws, cli, folder_rows(family)[case])
