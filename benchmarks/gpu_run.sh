#!/usr/bin/env bash
# The one command for a lent GPU machine (docs/gpu.md): installs the bundle's wheels (no network there), then runs
# benchmarks/gpu_run.py with the core package from src/. Arguments go to gpu_run.py (e.g. --compile, --budget-s).
#   run tool: command "bash benchmarks/gpu_run.sh", carry ["gpu_bundle"], timeout_s 600
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-gpu_bundle}
OUT=${OUT:-runs/gpu_run}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
if [ ! -f "$BUNDLE/manifest.json" ]; then
    echo "no $BUNDLE/manifest.json: build the bundle with 'make gpu-bundle' and carry it" | tee -a "$OUT/run.log"
    exit 2
fi
SITE=$(mktemp -d /tmp/detoxops-site.XXXXXX)
if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/wheels/*.whl \
        >>"$OUT/run.log" 2>&1; then
    echo "installing $BUNDLE/wheels failed (see run.log)" | tee -a "$OUT/run.log"
    exit 2
fi
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PYTHON" -c "import torch, diffusers, pydantic, detoxops; print('python', __import__('sys').version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__, 'pydantic', pydantic.VERSION, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/run.log"
exec "$PYTHON" benchmarks/gpu_run.py --bundle "$BUNDLE" --out "$OUT" --keep-log "$@"
