"""How alike the demo's k task vectors are, which decides what NegMerge can do with them.

NegMerge keeps an element only where all k vectors agree on its sign, and there takes their mean.
Near-identical vectors agree almost everywhere, so the merge is close to the mean; vectors that
differ more agree less, and the merge keeps less (the demo's seed-varied fine-tunes are far from
identical: docs/demo.md gives the measured agreement).
The tiny demo's vectors fit in memory; a dense computation keeps this obviously right.
"""

from __future__ import annotations

from pathlib import Path

import torch


def _float_tensors(path: Path) -> dict[str, torch.Tensor]:
    from negmerge_cli.checkpoint.opening import load_state_dict

    return {name: tensor for name, tensor in load_state_dict(path).items() if tensor.is_floating_point()}


def _flat(state: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> torch.Tensor:
    """The float tensors of one file, in name order, as one float64 row; a tensor the file leaves
    out (merge writes no all-zero tensor) counts as zeros."""
    zeros = lambda shape: torch.zeros(shape.numel(), dtype=torch.float64)
    return torch.cat([state[name].reshape(-1).double() if name in state else zeros(shape)
                      for name, shape in sorted(shapes.items())])


def vector_agreement(vectors: list[Path], merged: dict[str, Path]) -> dict:
    """The k vectors' norms and pairwise cosine similarities; the share of the elements any of them
    changed on whose sign all k agree (strictly: what NegMerge keeps); and each merge's norm and
    cosine similarity to the mean of the k."""
    states = [_float_tensors(path) for path in [*vectors, *merged.values()]]
    shapes = {name: tensor.shape for state in states for name, tensor in state.items()}
    rows = torch.stack([_flat(state, shapes) for state in states[:len(vectors)]])
    norms = rows.norm(dim=1)
    cosine = (rows @ rows.T) / (norms[:, None] * norms[None, :]).clamp_min(1e-300)
    pairs = cosine[torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)]
    signs = rows.sign()
    changed = (rows != 0).any(dim=0)
    agreed = (signs[0] != 0) & (signs == signs[0]).all(dim=0)
    mean = rows.mean(dim=0)
    found = {"k": len(vectors), "norms": [float(n) for n in norms],
             "cosine_min": float(pairs.min()) if len(pairs) else 1.0,
             "cosine_mean": float(pairs.mean()) if len(pairs) else 1.0,
             "sign_agreement": float(agreed.sum() / changed.sum().clamp_min(1)), "merged": {}}
    for method, state in zip(merged, states[len(vectors):]):
        row = _flat(state, shapes)
        found["merged"][method] = {"norm": float(row.norm()),
                                   "cosine_to_mean": float(row @ mean / (row.norm() * mean.norm()).clamp_min(1e-300))}
    return found


def describe(found: dict) -> str:
    """One line for the demo's output."""
    merged = found["merged"]
    norms = ", ".join(f"{method} {entry['norm']:.3g}" for method, entry in merged.items())
    return (f"the k = {found['k']} task vectors: pairwise cosine similarity {found['cosine_mean']:.3f} on average "
            f"(lowest {found['cosine_min']:.3f}), norms "
            f"{min(found['norms']):.3g} to {max(found['norms']):.3g}; all k agree on the sign of "
            f"{found['sign_agreement']:.1%} of the elements they change (NegMerge keeps those); merged norms: {norms}")
