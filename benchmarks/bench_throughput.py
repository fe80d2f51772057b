"""Training and evaluation throughput of negmerge's loops against bare PyTorch / open_clip loops
in the same run (images/s of each, and their ratio): CLIP finetune (``clip.train``), CLIP eval
(``clip.eval_run._evaluate_one``: ImageCache decode, zero-shot head, forward), classifier finetune
(``classifier.train``), classifier eval (``classifier.evaluate.UnlearningSets``: Dr, Df, Dtest);
and the DataLoader alone (decode + augment) with 0, 1 and 2 workers. The bare loops, written
plainly here, use the same model, batch, optimizer, transforms and workers. Data are JPEG (CLIP)
and PNG (classifier) folders written to a temp dir, so decoding is real.

    PYTHONPATH=. python benchmarks/bench_throughput.py                  # CPU, ~8 minutes on 2 busy cores
    PYTHONPATH=. python benchmarks/bench_throughput.py --device cuda --clip-model ViT-S-32 \\
        --classifier resnet18-cifar --clip-batch 128 --classifier-batch 256 --workers 0,4,8

Finetune rates leave out the first ``--warmup`` steps of each run (a timestamp per step; ours
through its progress callback); eval rates are whole evaluations. Every loop runs once untimed,
then ours and bare alternate (order flipped each repeat), best of ``--repeats``. Rates are per
wall second and per CPU second of this process (steadier on a shared machine; workers' CPU left
out). The classifier fine-tune crosses an epoch boundary, as fine-tunes on a forget set do often.
Ours draws live progress bars to /dev/null, as at a terminal (``--no-bars``: as under ``-q``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from rich.console import Console
from torch.utils.data import DataLoader, RandomSampler, Subset

from negmerge_cli.core.output import output

LR, WD, CLASSES = 1e-5, 0.1, ("disc", "square", "stripes", "cross")
RANDAUG = "rand-m5-n2-mstd0.5"


# -- data: image folders written as files ----------------------------------------------------------


def _image(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    cy, cx = rng.uniform(0.3, 0.7, 2)
    shapes = ((yy - cy) ** 2 + (xx - cx) ** 2 < 0.05, (abs(yy - cy) < 0.2) & (abs(xx - cx) < 0.2),
              (xx * 8).astype(int) % 2 == 0, (abs(yy - cy) < 0.06) | (abs(xx - cx) < 0.06))
    image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
    image[shapes[label % 4], label % 3] = 230
    return image


def write_folder(root: Path, count: int, size: int, suffix: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % len(CLASSES)
        (root / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(rng, label, size)).save(root / CLASSES[label] / f"{index:05d}{suffix}", quality=90)
    return root



class StepClock:
    """Timestamps of every progress advance of our loops (one per optimizer step). Our loops do not
    wait for the GPU each step (they read the loss every few), so the two marks a rate is taken
    between wait for it here, as the bare loops' do: :meth:`start` says which."""

    def __init__(self, bars: bool):
        self.marks: list[tuple[float, float]] = []
        self._synced_marks, self._device = (), torch.device("cpu")
        out = output()
        self._progress = out.progress
        out.progress = self.progress  # this process only: the benchmark's own instrument
        out.quiet = not bars
        if bars:  # a terminal that is never shown: Rich draws and refreshes as it would for a person
            out.console = Console(file=open(os.devnull, "w"), force_terminal=True, width=120)

    @contextlib.contextmanager
    def progress(self, description: str, total: int, unit: str = "items"):
        with self._progress(description, total, unit) as advance:
            def timed(n, note=None):
                advance(n, note)
                if len(self.marks) in self._synced_marks:
                    _sync(self._device)
                self.marks.append(_now())

            yield timed

    def start(self, warmup: int, steps: int, device: torch.device) -> None:
        """A new run: marks from none, waiting for ``device`` at the two a rate is taken between."""
        self.marks, self._synced_marks, self._device = [], (warmup - 1, steps - 1), device


def _now() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: what a busy shared machine disturbs least)."""
    return time.perf_counter(), time.process_time()


def steady_rate(marks: list[tuple[float, float]], warmup: int, batch: int) -> tuple[float, float]:
    """Images per wall second and per CPU second between the end of step ``warmup`` and the last."""
    images = (len(marks) - warmup) * batch
    return tuple(images / (end - start) for start, end in zip(marks[warmup - 1], marks[-1]))


def _timed(call) -> tuple[float, float]:
    """(wall, CPU) seconds of ``call()``."""
    started = _now()
    call()
    return tuple(end - start for start, end in zip(started, _now()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loader(data, batch: int, workers: int, sampler=None) -> DataLoader:
    return DataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers,
                      pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)


# -- CLIP ------------------------------------------------------------------------------------------


def clip_finetune(ours: bool, model, head, data, batch: int, workers: int, steps: int, warmup: int, device,
                  clock) -> list:
    """Step marks of one fine-tune; ``data``: ours an ImageSet, bare a torchvision ImageFolder, same
    files and transform."""
    from negmerge_cli.clip import train
    from negmerge_cli.training.distributed import Ranks

    if ours:
        clock.start(warmup, steps, device)
        settings = train.TrainSettings(lr=LR, wd=WD, label_smoothing=0.0, seed=0, steps=steps, batch_size=batch,
                                       workers=workers)
        train.train_image_encoder(model, head, data, settings, device, Ranks())
        return clock.marks
    torch.manual_seed(0)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    visual = model.visual.train()
    parameters = list(visual.parameters())
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=LR, weight_decay=WD)
    sampler = RandomSampler(data, generator=torch.Generator().manual_seed(0))
    head, marks = head.to(device), []
    for images, labels in _loader(data, batch, workers, sampler):
        optimizer.zero_grad(set_to_none=True)
        features = visual(images.to(device, non_blocking=True))
        loss = F.cross_entropy(F.normalize(features, dim=-1) @ head.t(), labels.to(device, non_blocking=True))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if len(marks) in (warmup - 1, steps - 1):  # the two marks a rate is taken between
            _sync(device)
        marks.append(_now())
    visual.eval()
    return marks


def clip_eval(ours: bool, model, name: str, data, batch: int, workers: int, device) -> tuple[float, float]:
    """(wall, CPU) seconds of one evaluation from the files: decode, zero-shot head, forward, accuracy.
    ``data``: ours an ImageSet, bare a torchvision ImageFolder of the same folder."""
    from negmerge_cli.clip import eval_run, models
    from negmerge_cli.training.options import EvalOptions

    if ours:
        options = EvalOptions(model=name, checkpoint="random-init", device=str(device), batch_size=batch,
                              workers=workers)
        return _timed(lambda: eval_run._evaluate_one(data, model, None, options))

    @torch.no_grad()
    def bare():
        classnames = [name_.replace("_", " ") for name_ in data.classes]
        head = _bare_head(model, models.tokenizer_for(name), classnames, ("a photo of a {}.",), device)
        correct = 0
        for images, labels in DataLoader(data, batch_size=batch, num_workers=workers,
                                         pin_memory=torch.cuda.is_available()):
            features = F.normalize(model.encode_image(images.to(device, non_blocking=True)), dim=-1)
            correct += int(((features @ head.t()).argmax(1).cpu() == labels).sum())

    return _timed(bare)


def _bare_head(model, tokenizer, classnames, templates, device) -> torch.Tensor:
    rows = []
    for classname in classnames:
        text = model.encode_text(tokenizer([t.format(classname) for t in templates]).to(device))
        rows.append(F.normalize(F.normalize(text, dim=-1).mean(0), dim=-1))
    return torch.stack(rows) * model.logit_scale.exp()


# -- classifier ------------------------------------------------------------------------------------


def classifier_finetune(ours: bool, model, dataset, batch: int, workers: int, steps: int, warmup: int, device,
                        clock) -> list:
    from negmerge_cli.classifier.train import MOMENTUM, ClassifierSettings, train_classifier

    indices = range(len(dataset))
    if ours:
        clock.start(warmup, steps, device)
        settings = ClassifierSettings(lr=0.01, wd=5e-4, label_smoothing=0.0, seed=0, epochs=None, steps=steps,
                                      batch_size=batch, workers=workers)
        train_classifier(model, dataset, indices, settings, device)
        return clock.marks
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=MOMENTUM, weight_decay=5e-4)
    model.to(device).train()
    loader = _loader(dataset, batch, workers, RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
    marks = []
    while len(marks) < steps:  # epochs as the loop needs them; persistent workers carry over
        for images, labels in loader:
            loss = F.cross_entropy(model(images.to(device, non_blocking=True)), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if len(marks) in (warmup - 1, steps - 1):
                _sync(device)
            marks.append(_now())
            if len(marks) == steps:
                break
    return marks


def classifier_eval(ours: bool, model, data, split, batch: int, workers: int, device) -> tuple[float, float]:
    """(wall, CPU) seconds of the Dr, Df and Dtest prediction passes of one evaluation (the MIA SVM,
    the same sklearn call for both, left out)."""
    from negmerge_cli.classifier.evaluate import UnlearningSets, predict

    def ours_():
        sets = UnlearningSets.build(data, split, batch, workers, budget=4 << 30)
        for subset in (sets.retain, sets.forget, sets.test):
            predict(model, subset, device)
        _sync(device)

    @torch.no_grad()
    def bare():
        model.eval()
        view = data.train_eval_view()
        for dataset, indices in ((view, sorted(split.retain_indices)), (view, sorted(split.forget_indices)),
                                 (data.test, range(len(data.test)))):
            for images, labels in DataLoader(Subset(dataset, list(indices)), batch_size=batch, num_workers=workers,
                                             pin_memory=torch.cuda.is_available()):
                logits = model(images.to(device, non_blocking=True)).float()
                labels = labels.to(device)
                logits.softmax(-1).gather(1, labels[:, None])[:, 0].double().cpu().numpy()
                (logits.argmax(-1) == labels).cpu().numpy()

    return _timed(ours_ if ours else bare)



def loader_rate(dataset, batch: int, workers: int) -> float:
    """Images/s of one epoch of a DataLoader over ``dataset`` (decode + transform, worker start-up
    included)."""
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for _ in loader:
        pass
    return len(dataset) / (time.perf_counter() - started)



def interleaved(tasks: dict, args) -> dict:
    """Best (wall, CPU) rate of ours and bare per loop and worker count, alternating the two."""
    rates: dict = {}
    for workers in args.workers:
        for name, task in ((n, t) for n, t in tasks.items() if args.only in n):
            for ours in (True, False):
                task(ours, workers)  # untimed run of each: lazy imports, allocator, page cache
            for repeat in range(args.repeats):
                for ours in ((True, False) if repeat % 2 == 0 else (False, True)):
                    rate, key = task(ours, workers), (name, workers, "ours" if ours else "bare")
                    rates[key] = tuple(max(a, b) for a, b in zip(rates.get(key, (0.0, 0.0)), rate))
                    print(f"  {key}: {rate[0]:.1f} img/s, {rate[1]:.1f} img/CPU-s", file=sys.stderr, flush=True)
    return rates


def run(args, work: Path) -> dict:
    from torchvision.datasets import ImageFolder

    from negmerge_cli.classifier.data import open_classifier_data
    from negmerge_cli.classifier.models import create_classifier
    from negmerge_cli.classifier.split import make_forget_split
    from negmerge_cli.clip import datasets, models, sweep_run
    from negmerge_cli.clip.evaluate import _AsUint8, split_eval_transform
    from negmerge_cli.clip.zeroshot import build_head
    from negmerge_cli.training.options import FinetuneOptions

    device, clock = torch.device(args.device), StepClock(args.bars)
    write_folder(work / "clip", args.steps * args.clip_batch, args.image_px, ".jpg")  # one epoch per run
    write_folder(work / "eval", args.eval_images, args.image_px, ".jpg", seed=1)
    write_folder(work / "cls" / "train", args.steps * args.classifier_batch // 2, 32, ".png")  # two epochs
    write_folder(work / "cls" / "test", args.eval_images // 4, 32, ".png", seed=1)

    model = models.create_model(args.clip_model, device=device)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    options = FinetuneOptions(model=args.clip_model, data=str(work / "clip"), output=str(work / "out"))
    augment = sweep_run.train_transform(model, options, RANDAUG, "folder")
    preprocess = models.transforms_for(model, train=False)
    train_sets = {True: datasets.load_dataset(str(work / "clip"), "test").with_transform(augment),
                  False: ImageFolder(str(work / "clip"), transform=augment)}
    eval_sets = {True: datasets.load_dataset(str(work / "eval"), "test"),
                 False: ImageFolder(str(work / "eval"), transform=preprocess)}
    head = build_head(model, models.tokenizer_for(args.clip_model), eval_sets[True].classnames,
                      eval_sets[True].templates)
    started = time.perf_counter()
    cls_data = open_classifier_data(str(work / "cls"))
    cls_decode = (len(cls_data.train) + len(cls_data.test)) / (time.perf_counter() - started)
    split = make_forget_split(cls_data, fraction=0.1, seed=0)
    classifier = create_classifier(args.classifier, cls_data.num_classes).to(device)
    cls_base = {k: v.clone() for k, v in classifier.state_dict().items()}

    def clip_ft(ours, workers):
        model.load_state_dict(base)
        marks = clip_finetune(ours, model, head, train_sets[ours], args.clip_batch, workers, args.steps,
                              args.warmup, device, clock)
        return steady_rate(marks, args.warmup, args.clip_batch)

    def cls_ft(ours, workers):
        classifier.load_state_dict(cls_base)
        marks = classifier_finetune(ours, classifier, cls_data.train, args.classifier_batch, workers, args.steps,
                                    args.warmup, device, clock)
        return steady_rate(marks, args.warmup, args.classifier_batch)

    def clip_ev(ours, workers):
        seconds = clip_eval(ours, model, args.clip_model, eval_sets[ours], args.eval_batch, workers, device)
        return tuple(args.eval_images / s for s in seconds)

    def cls_ev(ours, workers):
        classifier.load_state_dict(cls_base)
        seconds = classifier_eval(ours, classifier, cls_data, split, args.eval_batch, workers, device)
        return tuple((len(cls_data.train) + len(cls_data.test)) / s for s in seconds)

    rates = interleaved({"clip finetune": clip_ft, "clip eval": clip_ev, "classifier finetune": cls_ft,
                         "classifier eval": cls_ev}, args)
    geometry, _ = split_eval_transform(preprocess)
    pipelines = {"clip train (JPEG, RandAugment)": (train_sets[True], args.clip_batch),
                 "clip eval (JPEG, resize, uint8)": (eval_sets[True].with_transform(_AsUint8(geometry)),
                                                     args.eval_batch),
                 "classifier train (crop+flip)": (cls_data.train, args.classifier_batch)}
    loaders = {(name, workers): max(loader_rate(dataset, batch, workers) for _ in range(args.repeats))
               for workers in (0, 1, 2) for name, (dataset, batch) in pipelines.items() if not args.only}
    return {"rates": rates, "loaders": loaders, "classifier_decode_once": cls_decode}


def report(args, figures: dict) -> None:
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} thread(s); CLIP {args.clip_model} batch "
          f"{args.clip_batch}, {args.image_px}px JPEG, {RANDAUG}; classifier {args.classifier} batch "
          f"{args.classifier_batch}, 32px PNG; eval batch {args.eval_batch}; {args.steps} steps ({args.warmup} "
          f"warm-up); best of {args.repeats}; progress bars {'on' if args.bars else 'off'}")
    print(f"{'loop':20} {'workers':>7} {'ours img/s':>11} {'bare img/s':>11} {'ratio':>6} "
          f"{'ours img/CPU-s':>15} {'bare img/CPU-s':>15} {'ratio':>6}")
    rates = figures["rates"]
    for workers in args.workers:
        for name in ("clip finetune", "clip eval", "classifier finetune", "classifier eval"):
            if (name, workers, "ours") not in rates:
                continue
            (ours, ours_cpu), (bare, bare_cpu) = rates[(name, workers, "ours")], rates[(name, workers, "bare")]
            print(f"{name:20} {workers:>7} {ours:>11.1f} {bare:>11.1f} {ours / bare:>6.2f} "
                  f"{ours_cpu:>15.1f} {bare_cpu:>15.1f} {ours_cpu / bare_cpu:>6.2f}")
    print(f"\n{'DataLoader alone (one epoch)':34} {'workers':>7} {'img/s':>9} {'per worker':>11}")
    for (name, workers), rate in figures["loaders"].items():
        print(f"{name:34} {workers:>7} {rate:>9.1f} {rate / max(workers, 1):>11.1f}")
    print(f"classifier images decoded once when the data opens: {figures['classifier_decode_once']:.0f} img/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: no spinning on a shared CPU)")
    parser.add_argument("--clip-model", default="negmerge-tiny-16")
    parser.add_argument("--classifier", default="resnet8-cifar")
    parser.add_argument("--clip-batch", type=int, default=32)
    parser.add_argument("--classifier-batch", type=int, default=32)
    parser.add_argument("--eval-batch", type=int, default=128)
    parser.add_argument("--eval-images", type=int, default=1024)
    parser.add_argument("--image-px", type=int, default=128, help="side of the CLIP JPEGs")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=lambda s: [int(w) for w in s.split(",")], default=[0, 2],
                        help="DataLoader workers of the four loops, comma-separated")
    parser.add_argument("--only", default="", help="only the loops whose name holds this, e.g. 'clip'")
    parser.add_argument("--no-bars", dest="bars", action="store_false", help="ours as under -q (no progress bars)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as work:
        figures = run(args, Path(work))
    report(args, figures)
    if args.json:
        flat = {"rates": [[*k, *v] for k, v in figures["rates"].items()],
                "loaders": [[*k, v] for k, v in figures["loaders"].items()],
                "classifier_decode_once": figures["classifier_decode_once"]}
        args.json.write_text(json.dumps(flat, indent=1))


if __name__ == "__main__":
    main()
