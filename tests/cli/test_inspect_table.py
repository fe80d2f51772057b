"""`negmerge inspect`'s table: whole tensor names at any width, and the per-prefix summary."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

CLIP_NAMES = [f"visual.transformer.resblocks.{i}.attn.in_proj_weight" for i in range(3)] + [
    "visual.transformer.resblocks.0.mlp.c_fc.bias", "transformer.resblocks.0.ln_1.weight", "logit_scale"]


def _vector(path, names, zero=()):
    tensors = {n: (torch.zeros(6) if n in zero else torch.ones(6)) for n in names}
    save_file(tensors, str(path), {"negmerge.kind": "task_vector"})
    return path


def _first_column(table: str) -> list[str]:
    """The tensor column's cells, continuation lines joined (a row's other cells are blank there)."""
    cells = []
    for line in table.splitlines():
        if not line.startswith("│"):
            if cells and not line.startswith("└"):
                continue
            if line.startswith("└"):
                break
            continue
        parts = [p.strip() for p in line.split("│")[1:-1]]
        if parts[1]:
            cells.append(parts[0])
        else:
            cells[-1] += parts[0]
    return cells


@pytest.mark.parametrize("columns", ["80", "60", "40"])
def test_names_are_whole_in_a_narrow_pipe(tmp_path, cli, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", columns)  # stdout is captured: a pipe, as `negmerge inspect x | cat`
    result = cli("inspect", _vector(tmp_path / "tau.safetensors", CLIP_NAMES))
    assert result.returncode == 0, result.stderr
    assert "…" not in result.stdout and "..." not in result.stdout
    assert sorted(_first_column(result.stdout)) == sorted(CLIP_NAMES)
    assert max(len(line) for line in result.stdout.splitlines() if line[:1] in "│┃┏┡└") <= int(columns)
    if columns == "80":  # wide enough for each component: broken only after dots
        assert "│ visual.transformer.resblocks.0.attn │" in result.stdout
        assert "│ .in_proj_weight" in result.stdout


def test_prefix_summary_in_the_table_and_the_json(tmp_path, cli):
    path = _vector(tmp_path / "tau.safetensors", CLIP_NAMES, zero={"visual.transformer.resblocks.0.mlp.c_fc.bias"})
    prefixes = json.loads(cli("inspect", "--json", path).stdout)["prefixes"]
    assert prefixes == [  # in the file's (sorted) tensor order
        {"prefix": "logit_scale", "tensor_count": 1, "numel": 6, "nonzero": 6, "nonzero_fraction": 1.0},
        {"prefix": "transformer.*", "tensor_count": 1, "numel": 6, "nonzero": 6, "nonzero_fraction": 1.0},
        {"prefix": "visual.*", "tensor_count": 4, "numel": 24, "nonzero": 18, "nonzero_fraction": 0.75}]
    table = cli("inspect", path).stdout
    assert "by name prefix" in table and "│ visual.*      │       4 │       24 │   75.00% │" in table

    llm = [f"model.layers.{i}.self_attn.q_proj.weight" for i in range(2)] + ["model.embed_tokens.weight", "lm_head.weight"]
    save_file({n: torch.ones(2) for n in llm}, str(tmp_path / "llm.safetensors"))
    assert [p["prefix"] for p in json.loads(cli("inspect", "--json", tmp_path / "llm.safetensors").stdout)["prefixes"]] \
        == ["lm_head.*", "model.*"]
    shared = ["model.layers.0.w", "model.layers.1.w", "model.norm.weight"]  # every name under model.: one level down
    save_file({n: torch.ones(2) for n in shared}, str(tmp_path / "shared.safetensors"))
    groups = json.loads(cli("inspect", "--json", "--no-nonzero", tmp_path / "shared.safetensors").stdout)["prefixes"]
    assert [(g["prefix"], g["tensor_count"], g["nonzero"]) for g in groups] == [("model.layers.*", 2, None),
                                                                                 ("model.norm.*", 1, None)]
