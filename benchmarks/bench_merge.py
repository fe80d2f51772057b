"""Streaming merge vs the read floor and the naive load-stack-reduce, on ViT-B/32-sized vectors.

Each measurement runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own; Python, torch
and negmerge_cli are imported before the clock starts (start-up is bench_startup.py's business).
Every kind of run is repeated ``--repeat`` times, interleaved, and the best time is kept; figures
are reported as ratios against the best read floor of the same invocation (machines are noisy).

The CPU time of each run (user + system, all threads) is reported too: on a shared machine it
is steadier than the wall clock. Kinds: ``read floor`` (pread of every input into one buffer, page cache warm); ``cold cache`` (the
digest cache emptied first: every input hashed while streaming); ``warm cache`` (the digests of
the inputs known: no hashing of inputs); ``--no-hash``; the naive load-stack-reduce.

    python benchmarks/bench_merge.py --k 12 --repeat 5 --workdir /tmp/negmerge-bench
    python benchmarks/bench_merge.py --k 5 --scale 0.1      # a quick, smaller run

The vectors have the tensor names and shapes of OpenCLIP ViT-B/32's image encoder (about 88M
float32 parameters, about 350 MB a file); values are random with exact zeros and both signs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

# Shapes of open_clip ViT-B-32 `visual.*` (width 768, 12 layers, patch 32, 224 px, embed 512).
WIDTH, LAYERS, PATCHES, EMBED = 768, 12, 50, 512


def vit_b32_visual_shapes(scale: float = 1.0) -> dict[str, tuple[int, ...]]:
    width = max(8, int(WIDTH * scale) // 8 * 8)
    shapes = {
        "visual.class_embedding": (width,),
        "visual.positional_embedding": (PATCHES, width),
        "visual.proj": (width, EMBED),
        "visual.conv1.weight": (width, 3, 32, 32),
        "visual.ln_pre.weight": (width,), "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,), "visual.ln_post.bias": (width,),
    }
    for layer in range(LAYERS):
        prefix = f"visual.transformer.resblocks.{layer}."
        shapes.update({
            prefix + "ln_1.weight": (width,), prefix + "ln_1.bias": (width,),
            prefix + "attn.in_proj_weight": (3 * width, width), prefix + "attn.in_proj_bias": (3 * width,),
            prefix + "attn.out_proj.weight": (width, width), prefix + "attn.out_proj.bias": (width,),
            prefix + "ln_2.weight": (width,), prefix + "ln_2.bias": (width,),
            prefix + "mlp.c_fc.weight": (4 * width, width), prefix + "mlp.c_fc.bias": (4 * width,),
            prefix + "mlp.c_proj.weight": (width, 4 * width), prefix + "mlp.c_proj.bias": (width,),
        })
    return shapes


def make_inputs(folder: Path, k: int, scale: float) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    shapes = vit_b32_visual_shapes(scale)
    paths = []
    for index in range(k):
        path = folder / f"tau{index:02d}.safetensors"
        if not path.exists():
            generator = torch.Generator().manual_seed(index)
            tensors = {}
            for name, shape in shapes.items():
                values = torch.randn(shape, generator=generator) * 1e-3
                values[torch.rand(shape, generator=generator) < 0.05] = 0.0
                tensors[name] = values
            save_file(tensors, str(path))
        paths.append(path)
    return paths


# -- measurements (each runs in its own subprocess) -------------------------------------------
def measure_read_floor(paths: list[str], out: str, method: str, device: str) -> None:
    buffer = bytearray(64 << 20)
    view = memoryview(buffer)
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        offset = 0
        while count := os.preadv(fd, [view], offset):
            offset += count
        os.close(fd)


def measure_ours(paths: list[str], out: str, method: str, device: str, hash_inputs: bool = True) -> None:
    from negmerge_cli.stages import StreamOptions, merge_vectors

    merge_vectors(paths, out, method, options=StreamOptions(device=device, force=True, hash_inputs=hash_inputs))


def measure_ours_nohash(paths: list[str], out: str, method: str, device: str) -> None:
    measure_ours(paths, out, method, device, hash_inputs=False)


def measure_naive(paths: list[str], out: str, method: str, device: str) -> None:
    """Load every vector whole, stack each tensor across inputs, reduce (the obvious way)."""
    import torch
    from safetensors.torch import load_file, save_file

    loaded = [load_file(p) for p in paths]
    result = {}
    for name in loaded[0]:
        stacked = torch.stack([tensors[name] for tensors in loaded]).to(device)
        signs = torch.sign(stacked).sum(0)
        mean = stacked.sum(0) / len(paths)
        result[name] = torch.where(signs.abs() == len(paths), mean, 0.0).cpu()
    save_file(result, out)


MEASURE = {"floor": "read_floor", "cold": "ours", "warm": "ours", "nohash": "ours_nohash", "naive": "naive"}


def run_child(kind: str, paths: list[Path], out: Path, method: str, device: str, cache: Path) -> dict:
    code = (
        "import json, resource, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import bench_merge as b\n"
        "import torch, negmerge_cli.stages, negmerge_cli.arithmetic.methods\n"  # start-up excluded from the timing
        f"paths = {[str(p) for p in paths]!r}\n"
        "def cpu():\n"
        "    usage = resource.getrusage(resource.RUSAGE_SELF)\n"
        "    return usage.ru_utime + usage.ru_stime\n"
        "start, cpu_start = time.perf_counter(), cpu()\n"
        f"b.measure_{MEASURE[kind]}(paths, {str(out)!r}, {method!r}, {device!r})\n"
        "wall, cpu_s = time.perf_counter() - start, cpu() - cpu_start\n"
        "print(json.dumps({'wall_s': wall, 'cpu_s': cpu_s, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
    )
    if kind == "cold":
        shutil.rmtree(cache, ignore_errors=True)
    # a previous output is removed first, so that its page cache is free memory again: otherwise,
    # on a machine short of free memory, writing the new one waits for reclaim (noise, not us)
    if out.suffix == ".safetensors":
        out.unlink(missing_ok=True)
    env = {**os.environ, "NEGMERGE_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_rss_mb() -> float:
    code = "import resource, torch, negmerge_cli.stages.merge; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def best_runs(kinds: list[tuple[str, str]], paths: list[Path], args: argparse.Namespace) -> dict[str, dict]:
    """Each (kind, method) ``args.repeat`` times, interleaved; the fastest run of each, with all times."""
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for kind, method in kinds:
            out = args.workdir / ("naive.safetensors" if kind == "naive" else "out.safetensors")
            run = run_child(kind, paths, out, method, args.device, args.workdir / "cache")
            key = f"{kind} {method}"
            entry = best.setdefault(key, {"kind": kind, "method": method, "runs": []})
            if "error" in run:
                entry["error"] = run["error"]
                continue
            entry["runs"].append(round(run["wall_s"], 3))
            best_cpu = min(entry.get("cpu_s", float("inf")), run["cpu_s"])
            peak = max(entry.get("peak_rss_mb", 0), run["peak_rss_mb"])
            if run["wall_s"] <= entry.get("wall_s", float("inf")):
                entry.update(run)
            entry.update(cpu_s=best_cpu, peak_rss_mb=peak)
    return best


LABELS = {"floor": "read floor", "cold": "cold cache", "warm": "warm cache", "nohash": "--no-hash",
          "naive": "naive load+stack"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, action="append", help="number of vectors (repeatable; default 5 and 30)")
    parser.add_argument("--scale", type=float, default=1.0, help="width scale of the model (1.0 = ViT-B/32)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/negmerge-bench"))
    parser.add_argument("--method", action="append", help="merge methods to time (default: negmerge)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the best is reported")
    parser.add_argument("--naive-limit-gb", type=float, default=None,
                        help="skip the naive way when it needs more than this (default: 80%% of RAM)")
    args = parser.parse_args()
    ks = args.k or [5, 30]
    methods = args.method or ["negmerge"]
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    naive_limit = args.naive_limit_gb or 0.8 * ram_gb
    inputs = make_inputs(args.workdir / f"scale{args.scale}", max(ks), args.scale)
    file_gb = inputs[0].stat().st_size / 1e9
    print(f"# input file size {file_gb * 1000:.0f} MB; process baseline RSS (python + torch) {baseline_rss_mb():.0f} MB; "
          f"device {args.device}; {os.cpu_count()} CPUs; best of {args.repeat}", flush=True)
    rows = []
    for k in ks:
        paths = inputs[:k]
        run_child("floor", paths, Path(), "", args.device, args.workdir / "cache")  # warm the page cache
        kinds = [("floor", "")] + [(kind, m) for m in methods for kind in ("cold", "warm")] + [("nohash", methods[0])]
        if 2 * k * file_gb < naive_limit:  # every vector loaded, plus the stacked copy of them
            kinds.append(("naive", "negmerge"))
        best = best_runs(kinds, paths, args)
        floor = best["floor "]["wall_s"]
        for entry in best.values():
            row = {"k": k, "what": f"{LABELS[entry['kind']]} {entry['method']}".strip(), **entry}
            if "wall_s" in row:
                row["x_floor"] = row["wall_s"] / floor
                row["cpu_x_floor"] = row["cpu_s"] / best["floor "]["cpu_s"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| k | what | best wall s | x read floor | best CPU s | CPU x floor | peak RSS MB | all runs s |\n"
          "|---|---|---|---|---|---|---|---|")
    for row in rows:
        wall = f"{row['wall_s']:.2f}" if "wall_s" in row else row.get("error", "")
        ratio = f"{row['x_floor']:.2f}" if "x_floor" in row else ""
        cpu = f"{row['cpu_s']:.2f} | {row['cpu_x_floor']:.2f}" if "cpu_s" in row else " | "
        rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else ""
        print(f"| {row['k']} | {row['what']} | {wall} | {ratio} | {cpu} | {rss} | {' '.join(map(str, row['runs']))} |")


if __name__ == "__main__":
    main()
