"""Merge speed as a user sees it: the ``negmerge merge`` command, timed from the shell, against ``cat``.

Every run is a fresh process, timed from start to exit; its CPU time (user + system, all threads)
and peak RSS come from ``wait4``. The command's start-up (Python, Typer, torch) is measured in the
same run as the same command on two tiny inputs and subtracted, as the issue does. The floor is
``cat FILES > /dev/null`` over the same bytes (page cache warm). Kinds, interleaved, ``--repeat``
times each, best kept (the machine is shared, so ratios are against the floor of the same run):

- ``cold``: the digest cache emptied first (``NEGMERGE_CACHE_DIR`` at an empty folder), so every
  input is hashed (SHA-256) while the merge streams;
- ``warm``: the same command again, the inputs' digests cached;
- ``--no-hash``: no digests at all.

Two more floors, measured in the same run (imports excluded), show what no merge on this machine
can beat, whatever its code: ``hash floor``, the SHA-256 of every input on all cores (what a cold
merge must pay beside reading), and ``arithmetic floor``, the method's own kernels run over slices
already in memory (what the merge must compute, on the one thread the engine computes on when on
the CPU). Where the floors alone exceed a target ratio against ``cat``, the target is out of
reach on this machine; the command's distance from them is what the code still costs.

``--in-process`` adds the library-level kinds (``merge_vectors`` called in an interpreter whose
imports are done before the clock starts, against a Python ``pread`` floor and the naive
load-stack-reduce): they leave out what the command pays on top (start-up, option parsing).

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
import time
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


# -- the command, as a user runs it ------------------------------------------------------------
REPO = Path(__file__).resolve().parent.parent


def command_line() -> list[str]:
    """The installed console script if there is one, else ``python -m negmerge_cli``."""
    script = shutil.which("negmerge")
    return [script] if script else [sys.executable, "-m", "negmerge_cli"]


def timed(argv: list[str], env: dict[str, str] | None = None) -> dict:
    """Wall time, CPU time and peak RSS of one process; ``error`` if it failed."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        lines = stderr.decode(errors="replace").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {child.returncode}"}
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024}


def run_cli(kind: str, paths: list[Path], tiny: list[Path], args: argparse.Namespace, tree: Path = REPO) -> dict:
    """One run of ``kind`` with the package of the checkout ``tree``."""
    cache = args.workdir / "cache"
    out = args.workdir / "out.safetensors"
    if kind == "cat":
        return timed(["cat", *map(str, paths)])
    if kind in ("hash_floor", "arith_floor"):
        return run_child(kind, paths, Path(), args.cli_method, "cpu", cache)
    if kind in ("cold", "startup"):  # start-up on an empty cache too: nothing of the big inputs known
        shutil.rmtree(cache, ignore_errors=True)
    # a previous output is removed first, so that its page cache is free memory again: otherwise,
    # on a machine short of free memory, writing the new one waits for reclaim (noise, not us)
    out.unlink(missing_ok=True)
    inputs = tiny if kind == "startup" else paths
    extra = ["--no-hash"] if kind == "nohash" else []
    argv = [*command_line(), "merge", "-m", args.cli_method, "-o", str(out), "-f", *extra, *map(str, inputs)]
    env = {**os.environ, "NEGMERGE_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tree), os.environ.get("PYTHONPATH")]))}
    return timed(argv, env)


CLI_LABELS = {"cat": "cat FILES > /dev/null", "hash_floor": "hash floor: SHA-256 of the inputs, all cores",
              "arith_floor": "arithmetic floor: the method's kernels, slices in memory", "startup": "start-up (2 tiny inputs)", "cold": "merge, cold digest cache",
              "warm": "merge, warm digest cache", "nohash": "merge --no-hash"}


def cli_rows(k: int, paths: list[Path], tiny: list[Path], args: argparse.Namespace) -> list[dict]:
    """Each kind ``args.repeat`` times, interleaved (with ``--before``, that tree's runs beside
    this one's); the fastest run of each, net of the start-up of the same tree."""
    trees = {"": REPO, **({"before:": args.before} if args.before else {})}
    kinds = ["cat", "hash_floor", "arith_floor"] + [f"{tag} {kind}".strip() for tag in trees for kind in ("startup", *args.kinds.split(","))]
    best: dict[str, dict] = {kind: {"runs": []} for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            tag, _, plain = kind.rpartition(" ")
            run = run_cli(plain, paths, tiny, args, trees[tag])
            entry = best[kind]
            if "error" in run:
                entry["error"] = run["error"]
                continue
            entry["runs"].append(round(run["wall_s"], 3))
            if run["wall_s"] <= entry.get("wall_s", float("inf")):
                entry.update(wall_s=run["wall_s"])
            entry["cpu_s"] = min(entry.get("cpu_s", float("inf")), run["cpu_s"])
            entry["peak_rss_mb"] = max(entry.get("peak_rss_mb", 0), run["peak_rss_mb"])
    floor = best["cat"]
    rows = []
    for kind in kinds:
        tag, _, plain = kind.rpartition(" ")
        startup = best[f"{tag} startup".strip()]
        row = {"k": k, "what": f"{tag} {CLI_LABELS[plain]}".strip(), **best[kind]}
        if "wall_s" in row and "wall_s" in floor and "wall_s" in startup:
            started = plain not in ("cat", "startup", *FLOORS)  # a floor's timing excludes its imports already
            net = row["wall_s"] - (startup["wall_s"] if started else 0)
            net_cpu = row["cpu_s"] - (startup["cpu_s"] if started else 0)
            row.update(net_s=net, net_cpu_s=net_cpu, x_cat=net / floor["wall_s"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def print_cli_table(rows: list[dict]) -> None:
    print("\n| k | command | best wall s | minus start-up s | x cat (wall) | CPU s minus start-up | peak RSS MB "
          "| all runs s |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "wall_s" not in row:
            print(f"| {row['k']} | {row['what']} | {row.get('error', '')} | | | | | |")
            continue
        ratio = f"{row['x_cat']:.2f}" if "x_cat" in row else ""
        net = f"{row['net_s']:.2f}" if "net_s" in row else ""
        cpu = f"{row['net_cpu_s']:.2f}" if "net_cpu_s" in row else f"{row['cpu_s']:.2f}"
        print(f"| {row['k']} | {row['what']} | {row['wall_s']:.2f} | {net} | {ratio} | {cpu} "
              f"| {row['peak_rss_mb']:.0f} | {' '.join(map(str, row['runs']))} |")


# -- in the library (--in-process) ----------------------------------------------------------------
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


def measure_hash_floor(paths: list[str], out: str, method: str, device: str) -> None:
    """SHA-256 of every file, one file per thread on every core (hashlib releases the GIL)."""
    import hashlib
    from concurrent.futures import ThreadPoolExecutor

    def digest(path: str) -> str:
        sha, buffer = hashlib.sha256(), bytearray(1 << 20)
        with open(path, "rb", buffering=0) as handle:
            while count := handle.readinto(buffer):
                sha.update(memoryview(buffer)[:count])
        return sha.hexdigest()

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(digest, sorted(paths, key=os.path.getsize, reverse=True)))


ARITH_SLICE = 1 << 18  # the engine's CPU slice (streaming.MAX_SLICE_ELEMENTS)


def measure_arith_floor(paths: list[str], out: str, method: str, device: str) -> None:
    """The method's per-tensor pass (if any) and ``merge_chunk`` over as many elements as one input
    holds, on k slices already in memory (reused for every slice, so they stay in the CPU caches):
    no reading, converting, writing, hashing or checking."""
    import torch

    from negmerge_cli.arithmetic.methods import Chunk, create_method

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))  # as the engine computes on the CPU
    merger = create_method(method)
    numel = sum(_numel(paths[0]).values())
    generator = torch.Generator().manual_seed(0)
    slices = [torch.randn(ARITH_SLICE, generator=generator) for _ in paths]

    def read_taus(index: int):  # one input's slices, for a method's per-tensor pass (TIES' top-k)
        return (slices[index][: min(ARITH_SLICE, numel - start)] for start in range(0, numel, ARITH_SLICE))

    merger.prepare("floor", numel, len(paths), read_taus)  # the inputs as one tensor
    for start in range(0, numel, ARITH_SLICE):
        stop = min(start + ARITH_SLICE, numel)
        chunk = Chunk("floor", start, stop, len(paths))
        merger.merge_chunk(chunk, (s[: stop - start] for s in slices))  # the first is changed in place: harmless


def _numel(path: str) -> dict[str, int]:
    from math import prod

    from safetensors import safe_open

    with safe_open(path, "pt") as handle:
        return {name: prod(handle.get_slice(name).get_shape()) for name in handle.keys()}


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


FLOORS = ("hash_floor", "arith_floor")
MEASURE = {"hash_floor": "hash_floor", "arith_floor": "arith_floor", "floor": "read_floor", "cold": "ours", "warm": "ours", "nohash": "ours_nohash", "naive": "naive"}


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


def in_process(ks: list[int], inputs: list[Path], args: argparse.Namespace) -> None:
    methods = args.method or ["negmerge"]
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    naive_limit = args.naive_limit_gb or 0.8 * ram_gb
    file_gb = inputs[0].stat().st_size / 1e9
    print(f"\n# in-process (start-up excluded); process baseline RSS (python + torch) {baseline_rss_mb():.0f} MB; "
          f"device {args.device}", flush=True)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, action="append", help="number of vectors (repeatable; default 12)")
    parser.add_argument("--scale", type=float, default=1.0, help="width scale of the model (1.0 = ViT-B/32)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/negmerge-bench"))
    parser.add_argument("--cli-method", default="negmerge", help="the merge method the command runs")
    parser.add_argument("--kinds", default="cold,warm,nohash", help="runs of the command to time, besides cat and "
                        "the start-up: any of cold, warm, nohash (comma-separated)")
    parser.add_argument("--before", type=Path, help="another checkout (its root) to time beside this one")
    parser.add_argument("--in-process", action="store_true", help="also time merge_vectors in-process")
    parser.add_argument("--method", action="append", help="in-process: merge methods to time (default: negmerge)")
    parser.add_argument("--device", default="cpu", help="in-process: the device")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the best is reported")
    parser.add_argument("--naive-limit-gb", type=float, default=None,
                        help="skip the naive way when it needs more than this (default: 80%% of RAM)")
    args = parser.parse_args()
    ks = args.k or [12]
    # made in a child process: this one stays small, so that the peak RSS its children report
    # (which counts what they were before exec) is theirs alone
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_merge as b; "
            f"from pathlib import Path; b.make_inputs(Path({str(args.workdir / f'scale{args.scale}')!r}), {max(ks)}, "
            f"{args.scale}); b.make_inputs(Path({str(args.workdir / 'tiny')!r}), 2, 0.02)")
    subprocess.run([sys.executable, "-c", code], check=True)
    inputs = sorted((args.workdir / f"scale{args.scale}").glob("tau*.safetensors"))[: max(ks)]
    tiny = sorted((args.workdir / "tiny").glob("tau*.safetensors"))[:2]
    print(f"# input file size {inputs[0].stat().st_size / 1e6:.0f} MB; {os.cpu_count()} CPUs; best of {args.repeat}; "
          f"command: {' '.join(command_line())}", flush=True)
    rows = []
    for k in ks:
        timed(["cat", *map(str, inputs[:k])])  # warm the page cache
        rows += cli_rows(k, inputs[:k], tiny, args)
    print_cli_table(rows)
    if args.in_process:
        in_process(ks, inputs, args)


if __name__ == "__main__":
    main()
