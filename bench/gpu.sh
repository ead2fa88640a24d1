#!/usr/bin/env bash
# The GPU benchmark, for a machine with one NVIDIA GPU and PyTorch, timm, Lightning installed,
# and no network. Finishes within 8 minutes; writes bench/results/gpu.json and gpu.md.
#
#   bash bench/gpu.sh                  # real set: $DERMASEG_REAL or ./local-data/derm-real
#   bash bench/gpu.sh --no-compile     # any option of bench/gpu_bench.py
#
# To carry the real images with the checkout (git ignores local-data/):
#   mkdir -p local-data && cp -r ../shared/data/derm-real local-data/
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv \
  || echo "nvidia-smi: not available"

# The checkout's sources, without installing (pip would need network for its build backend).
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" - <<'PYEOF'
import importlib.util
import torch
need = ("torch", "torchvision", "timm", "lightning", "torchmetrics", "yaml", "numpy", "PIL",
        "tqdm", "matplotlib")
missing = [name for name in need if importlib.util.find_spec(name) is None]
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
print("missing modules: " + (", ".join(missing) if missing else "none"))
PYEOF

timeout --kill-after=10 470 "$PY" bench/gpu_bench.py "$@"
status=$?
[ "$status" = 124 ] && echo "gpu_bench.py: stopped at the 470 s limit"
exit "$status"
