#!/usr/bin/env bash
# The GPU checks of a session lent a device machine, in one call of the device tool (about 7 minutes
# on an H100 with the sizes below; its limit is 10): the CUDA tests, the merge against `cat` with the
# arithmetic on CUDA, and the throughput of our loops against bare ones on CUDA. Each part has its
# own time limit, so one that hangs cannot take the others' time. Logs go to $OUT (the device tool's
# folder that comes back), else /tmp/gpu-check.
#
#   bash benchmarks/gpu_check.sh                       # on the device machine, from the repo root
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh    # the same steps, small, on a CPU (a smoke run)
#
# The device image lacks a few of our dependencies: carry them as wheels in .whl/ (docs/scale-out.md,
# "On a lent GPU"); they are installed to /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

part() {  # part NAME SECONDS COMMAND...: run one check under its limit, its log in $OUT/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local code=$?
    tail -n 25 "$OUT/$name.txt"
    echo "== $name: exit $code"
}

{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"; } \
    | tee "$OUT/device.txt"

part cuda-tests 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py

if [ -n "$QUICK" ]; then
    merge_size=(--k 3 --scale 0.1 --repeat 1)
    throughput_size=(--steps 6 --warmup 2 --repeats 1 --workers 0 --eval-images 64)
else
    merge_size=(--k 12 --repeat 3)
    throughput_size=(--clip-model ViT-S-32 --classifier resnet18-cifar --clip-batch 128 --classifier-batch 256
                     --workers 0,4,8 --repeats 2)
fi
# the command as users run it: `merge` puts the arithmetic on CUDA when there is one (--device auto)
part merge 200 python3 benchmarks/bench_merge.py "${merge_size[@]}" --kinds cold,warm --workdir /tmp/negmerge-bench
part throughput 240 python3 benchmarks/bench_throughput.py --device "$DEVICE" "${throughput_size[@]}" \
    --json "$OUT/throughput.json"
