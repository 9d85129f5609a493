#!/bin/bash
# Issue 15's GPU suite (`vidattn bench --suite gpu`) on a lent device machine, as one prepared command.
#
# The device image (docs: the tool library's device/KINDS.md) has python3 3.12 with torch, transformers, accelerate,
# peft, safetensors and imageio, but not diffusers. Here, once, fetch the missing wheels (pure Python, ~6.5 MB):
#   echo /.whl/ >> .git/info/exclude
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata ftfy==6.3.1 wcwidth
# then call the device tool's run with command "bash benchmarks/gpu_suite.sh", carry [".whl"], timeout_s 570.
# It writes $OUT/bench.json, $OUT/bench.md and $OUT/log.txt (the whole output). Dry run on the CPU:
#   SUITE=cpu PY=.venv/bin/python OUT=/tmp/suite bash benchmarks/gpu_suite.sh
set -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu_suite}
SUITE=${SUITE:-gpu}
PY=${PY:-python3}
LIMIT=${LIMIT:-520}  # seconds for the suite itself, inside the device tool's 600 s per command
mkdir -p "$OUT"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vidattn_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/vidattn_site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  $PY -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), '| diffusers', diffusers.__version__, '| transformers', transformers.__version__)" || exit 1
  # Torch older than 2.13 (the device's was 2.11) has no per-compile recompile budget: vidattn's flex wrapper then
  # shares dynamo's global limit (8 variants), so this harness raises it for its own process.
  timeout "$LIMIT" $PY - --suite "$SUITE" --out "$OUT" <<'PYEOF'
import sys
import torch
from vidattn.kernels.flex import COMPILE_HAS_BUDGET, FLEX_RECOMPILE_LIMIT
if not COMPILE_HAS_BUDGET:
    torch._dynamo.config.recompile_limit = FLEX_RECOMPILE_LIMIT
    print(f"torch {torch.__version__}: no per-compile budget; torch._dynamo.config.recompile_limit = {FLEX_RECOMPILE_LIMIT} here")
from vidattn.cli.main import main
main(["bench", *sys.argv[1:]])
PYEOF
  echo "exit $? at $(date -u +%T)"
} 2>&1 | grep --line-buffered -v 'it/s\]$' | tee "$OUT/log.txt"
