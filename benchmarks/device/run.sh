#!/usr/bin/env bash
# GPU benchmarks of fairopt, ready to run once on a fresh GPU machine. Installs nothing: it uses the first python that
# imports torch, timm and fairopt's own dependencies (the repository goes on PYTHONPATH, so fairopt need not be
# installed), and stops with one clear line when there is none.
#
#   bash benchmarks/device/run.sh                        # the CelebA-shaped ResNet-18 step table on CUDA (< 3 min)
#   bash benchmarks/device/run.sh --device cpu --quick   # smoke test on a CPU
#   PYTHON=/path/to/python bash benchmarks/device/run.sh # choose the interpreter
#
# Arguments go to benchmarks/device/image_step.py. With $OUT set (a folder), the table is also written there as
# image_step.txt and image_step.json.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

CHECK='import torch, timm, numpy, cooper, fairopt.vision'
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
    echo "run.sh: no python here imports torch, timm, numpy, cooper (cooper-optim) and fairopt's modules; set PYTHON=/path/to/python of an environment that has them (e.g. a carried venv)" >&2
    exit 2
fi

echo "# python: $PY ($("$PY" -c 'import sys, torch, timm; print(sys.version.split()[0], "torch", torch.__version__, "timm", timm.__version__)'))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/# gpu: /' || true
fi

ARGS=("$@")
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    ARGS+=(--json "$OUT/image_step.json")
    # 170 s: the whole run stays under 3 minutes even if a step is far slower than expected
    timeout 170 "$PY" benchmarks/device/image_step.py "${ARGS[@]}" | tee "$OUT/image_step.txt"
else
    timeout 170 "$PY" benchmarks/device/image_step.py "${ARGS[@]}"
fi
