#!/usr/bin/env bash
# One-shot GPU check: prints the environment; the shared-GPU memory cap (issue 13: `python3 -m
# bench.gpu_share`, two trials at GPU 0.5, one outgrowing its share must fail alone with its out-of-memory
# failed record while the other completes); then the throughput table of the fast data path (issue 7:
# `python3 -m bench.throughput --gpu-defaults`, reference style vs ours, crops and tokens, GPU utilisation,
# MFU). Installs nothing from the network and finishes in under 7 minutes on one GPU. Exit code: non-zero
# when the shared-GPU check failed (after the throughput table, which runs either way).
#
#   bash bench/gpu_check.sh [extra bench.throughput flags, e.g. --images 1000 --peak-tflops 989]
#
# Python packages the GPU machine lacks (open_clip_torch, ftfy, wcwidth) travel as wheels in .whl/
# (see docs/speed.md); they are installed offline into /tmp/site.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"

echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || echo "nvidia-smi unavailable"
"$PY" - <<'PYEOF'
import os, platform
import torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"cuda {torch.version.cuda}, cpus {os.cpu_count()}")
print(f"cuda available: {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()})" if torch.cuda.is_available() else "")
import open_clip
print(f"open_clip {open_clip.__version__}")
PYEOF

echo "== shared GPU: two trials at 0.5, one outgrows its share"
share_rc=0
timeout 200 "$PY" -m bench.gpu_share || share_rc=$?

echo "== throughput (reference style vs ours)"
timeout 280 "$PY" -m bench.throughput --gpu-defaults "$@"
exit "$share_rc"
