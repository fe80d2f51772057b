"""Classifier evaluation speed: images per second of the unlearning metrics (Dr, Df, Dtest forward
passes + MIA SVM) on the shipped digits, per model, and optionally the full classifier demo's time.

    python benchmarks/bench_classifier_eval.py [--device cpu|cuda] [--repeats 3] [--demo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench_eval(model_name: str, device: str, repeats: int) -> dict:
    import torch

    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.evaluate import UnlearningSets
    from negmerge_cli.classifier.models import create_classifier
    from negmerge_cli.classifier.split import make_forget_split

    data = open_classifier_data("digits")
    split = make_forget_split(data, fraction=0.1, seed=0)
    sets = UnlearningSets.build(data, split, batch_size=256, workers=0, budget=1 << 30)
    torch.manual_seed(0)
    model = create_classifier(model_name, data.num_classes).to(device).eval()
    sets.evaluate(model, torch.device(device), "warm-up")  # fills the image cache
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sets.evaluate(model, torch.device(device), "bench")
        times.append(time.perf_counter() - started)
    best = min(times)
    return {"model": model_name, "device": device, "images": sets.n_images, "best_s": round(best, 3),
            "images_per_s": round(sets.n_images / best, 1)}


def bench_demo() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "negmerge_cli", "demo", "--scenario", "classifier", "-q", "-w",
                        str(Path(folder) / "demo")], check=True)
        return {"full_demo_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="also time the full classifier demo")
    args = parser.parse_args()
    results = [bench_eval(name, args.device, args.repeats) for name in ("resnet8-cifar", "resnet18-cifar")]
    if args.demo:
        results.append(bench_demo())
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
