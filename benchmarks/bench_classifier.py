"""Classifier training and evaluation speed (CPU, or CUDA with --device cuda): images/s of negmerge's training step
(classifier/train.py: augmentation, DataLoader, SGD, objective) and evaluation (test_metrics), each
beside a baseline measured in the same run: the raw torch step / forward of the same model on a
pre-made batch. Ratios show what the pipeline costs on top of the model itself.

    PYTHONPATH=. python benchmarks/bench_classifier.py [--steps 5] [--threads 2]
    PYTHONPATH=. python benchmarks/bench_classifier.py --device cuda --steps 50 --workers 8
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from negmerge_cli.classifier.data import Augment, ImageArrayDataset
from negmerge_cli.classifier.models import create_classifier
from negmerge_cli.classifier.train import ClassifierSettings, test_metrics, train_classifier

BATCH = 128


def _data(size: int, count: int) -> ImageArrayDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return ImageArrayDataset(images, rng.integers(0, 10, count), (0.5,) * 3, (0.5,) * 3, Augment())


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _raw_train(model, steps: int, size: int, device: str) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(BATCH, 3, size, size, device=device), torch.randint(0, 10, (BATCH,), device=device)
    model.train()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    _synchronize(device)
    return steps * BATCH / (time.perf_counter() - started)


@torch.no_grad()
def _raw_eval(model, batches: int, size: int, device: str) -> float:
    x = torch.randn(BATCH, 3, size, size, device=device)
    model.eval()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(batches):
        model(x)
    _synchronize(device)
    return batches * BATCH / (time.perf_counter() - started)


def bench(name: str, size: int, steps: int, device: str, workers: int) -> list[tuple]:
    data = _data(size, steps * BATCH)
    model = create_classifier(name, 10).to(device)
    _raw_train(model, 2, size, device)  # warm-up (cuDNN autotuning, allocator)
    raw_train = _raw_train(model, steps, size, device)
    settings = ClassifierSettings(lr=0.01, wd=5e-4, label_smoothing=0, seed=0, epochs=None, steps=steps,
                                  batch_size=BATCH, workers=workers)
    ours_train = train_classifier(model, data, range(len(data)), settings, device)["images_per_s"]
    raw_eval = _raw_eval(model, steps, size, device)
    started = time.perf_counter()
    test_metrics(model, data.with_augment(None), 10, device=device, batch_size=BATCH)
    ours_eval = len(data) / (time.perf_counter() - started)
    return [(name, size, "train", ours_train, raw_train), (name, size, "eval", ours_eval, raw_eval)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name, size in (("resnet18-cifar", 32), ("resnet8-cifar", 32), ("resnet8-cifar", 8))
            for row in bench(name, size, args.steps, args.device, args.workers)]
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{where}, {args.threads} thread(s), {args.workers} loader worker(s), batch {BATCH}, {args.steps} batches each")
    print(f"{'model':16} {'px':>3} {'task':6} {'negmerge img/s':>15} {'raw torch img/s':>16} {'ratio':>6}")
    for name, size, task, ours, raw in rows:
        print(f"{name:16} {size:>3} {task:6} {ours:>15.1f} {raw:>16.1f} {ours / raw:>6.2f}")


if __name__ == "__main__":
    main()
