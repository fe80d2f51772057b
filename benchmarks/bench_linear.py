"""Cost of linearized (tangent) fine-tuning and of its one-pass lambda search, as ratios against the
standard mode measured in the same run:

    python3 benchmarks/bench_linear.py                        # negmerge-tiny on the built-in digits, CPU
    python3 benchmarks/bench_linear.py --model ViT-B-32 --device cuda --batch 64

1. One optimizer step of the image encoder, standard against linear (one jvp forward and its
   backward), best of several steps after a warm-up.
2. The lambda search on the paper's 21-point grid over two sets: standard (every lambda re-runs the
   encoder over both sets) against linear (one jvp pass per set, then every lambda from
   f0 - lambda * u), both through the library's own search.
Models are randomly initialised (no download): speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from negmerge_cli.checkpoint import save_state_dict
from negmerge_cli.clip import datasets, models
from negmerge_cli.clip.linearize import LinearizedEncoder
from negmerge_cli.clip.zeroshot import build_head, logits
from negmerge_cli.core.output import configure
from negmerge_cli.stages import EvalOptions, SearchOptions, search_coefficient


def step_seconds(model, head, images, labels, linear: bool, repeats: int) -> float:
    """Best time of one AdamW step of the (linearized) image encoder."""
    encoder = (LinearizedEncoder(model.visual) if linear else model.visual).train()
    optimizer = torch.optim.AdamW([p for p in model.visual.parameters() if p.requires_grad], lr=1e-5)
    best = float("inf")
    for index in range(repeats + 1):  # the first is a warm-up
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(logits(encoder(images), head), labels).backward()
        optimizer.step()
        if images.is_cuda:
            torch.cuda.synchronize()
        if index:
            best = min(best, time.perf_counter() - started)
    return best


def search_seconds(model_name: str, base: Path, tau: Path, linearize: bool, device: str) -> tuple[float, dict]:
    options = EvalOptions(model=model_name, checkpoint=str(base), device=device, workers=0, linearize=linearize)
    search = SearchOptions(vector=str(tau), forget="digits:val", retain="digits:test")
    started = time.perf_counter()
    result = search_coefficient(options, search)
    return time.perf_counter() - started, {"forward_passes": result.forward_passes,
                                           "chosen": result.chosen.coef if result.chosen else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="negmerge-tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    configure(quiet=True)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = models.create_model(args.model, device=device)
    train_set = datasets.load_dataset("digits", "train")
    head = build_head(model, models.tokenizer_for(args.model), train_set.classnames, train_set.templates, device)
    size = model.visual.image_size if isinstance(model.visual.image_size, tuple) else (model.visual.image_size,) * 2
    images = torch.randn(args.batch, 3, *size, device=device)
    labels = torch.randint(len(train_set.classnames), (args.batch,), device=device)
    standard = step_seconds(model, head, images, labels, False, args.repeats)
    linear = step_seconds(model, head, images, labels, True, args.repeats)

    with tempfile.TemporaryDirectory() as folder:
        base, tau = Path(folder) / "base.safetensors", Path(folder) / "tau.safetensors"
        fresh = models.create_model(args.model)
        models.save_checkpoint(fresh, base, {"format": "pt"})
        generator = torch.Generator().manual_seed(1)
        vector = {k: (1e-3 * torch.randn(v.shape, generator=generator) if k.startswith("visual.") else torch.zeros_like(v))
                  for k, v in fresh.state_dict().items() if v.is_floating_point()}
        save_state_dict(vector, tau, {"negmerge.kind": "task_vector"})
        standard_search, standard_info = search_seconds(args.model, base, tau, False, args.device)
        linear_search, linear_info = search_seconds(args.model, base, tau, True, args.device)

    print(json.dumps({
        "model": args.model, "device": args.device, "batch": args.batch,
        "step_seconds": {"standard": round(standard, 4), "linear": round(linear, 4),
                         "linear_over_standard": round(linear / standard, 2)},
        "search_seconds_21_lambdas": {"standard": round(standard_search, 2), "linear_one_pass": round(linear_search, 2),
                                      "standard_over_linear": round(standard_search / linear_search, 2)},
        "forward_passes": {"standard": standard_info["forward_passes"], "linear": linear_info["forward_passes"]},
    }, indent=2))


if __name__ == "__main__":
    main()
