#!/usr/bin/env bash
# GPU benchmarks of fairopt, ready to run once on a fresh GPU machine: several python benchmarks in sequence, each
# under its own time limit, each printing its own table. Installs nothing: it uses the first python that imports torch,
# timm and fairopt's own dependencies (the repository goes on PYTHONPATH, so fairopt need not be installed), and stops
# with one clear line when there is none.
#
#   bash benchmarks/device/run.sh                        # every benchmark on CUDA (image step: < 3 min)
#   bash benchmarks/device/run.sh --device cpu --quick   # smoke test on a CPU
#   PYTHON=/path/to/python bash benchmarks/device/run.sh # choose the interpreter
#
# Arguments go to every benchmark (each takes --device and --quick). With $OUT set (a folder), each benchmark's table
# is also written there as NAME.txt, and its rows as NAME.json. A benchmark that fails is reported and the next one
# still runs; the exit status is that of the last failure (0 when all ran).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

CHECK='import torch, timm, torchvision, pandas, numpy, cooper, fairopt.vision, fairopt.datasets'
PY=""
for candidate in "${PYTHON:-}" "$ROOT/.venv/bin/python" "$ROOT/venv/bin/python" /work/venv/bin/python python3 python; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
    if "$candidate" -c "$CHECK" >/dev/null 2>&1; then
        PY="$candidate"
        break
    fi
done
if [ -z "$PY" ]; then
    echo "run.sh: no python here imports torch, timm, torchvision, pandas, numpy, cooper (cooper-optim) and fairopt's modules; set PYTHON=/path/to/python of an environment that has them (e.g. a carried venv)" >&2
    exit 2
fi

echo "# python: $PY ($("$PY" -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__)'))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# gpu: /' || true
fi

STATUS=0

# run_bench NAME SECONDS SCRIPT [ARGS...]: one benchmark, its table on stdout (and in $OUT/NAME.txt, .json).
run_bench() {
    local name="$1" limit="$2" script="$3"
    shift 3
    local args=("$@")
    echo "## $name ($script, at most ${limit} s)"
    if [ -n "${OUT:-}" ]; then
        mkdir -p "$OUT"
        args+=(--json "$OUT/$name.json")
        timeout "$limit" "$PY" "$script" "${args[@]}" 2>&1 | tee "$OUT/$name.txt"
    else
        timeout "$limit" "$PY" "$script" "${args[@]}"
    fi
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "## $name failed (exit $rc; 124: over its ${limit} s)" >&2
        STATUS=$rc
    fi
}

# The CelebA-shaped ResNet-18 step, plain vs constrained, and the data path's images/s (issue 12).
run_bench image_step 170 benchmarks/device/image_step.py "$@"
# The fused (G, 9) kernel vs a masking loop, torchmetrics and index_add_, GB/s vs peak; the no-sync step check (issue 13).
KERNEL_ARGS=()
for arg in "$@"; do [ "$arg" = "--quick" ] && KERNEL_ARGS+=(--quick); done
run_bench kernel 230 benchmarks/device/kernel_bench.py "${KERNEL_ARGS[@]}"
# The whole step under torch.compile, with and without CUDA graphs: ms/step, recompiles, cudagraph skips (issue 13).
run_bench compiled_step 170 benchmarks/device/compiled_step.py "$@"
# Further benchmarks go here, one run_bench line each.

exit "$STATUS"
