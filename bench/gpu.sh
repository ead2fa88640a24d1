#!/usr/bin/env bash
# The GPU benchmark, for a machine with one NVIDIA GPU and PyTorch, timm, Lightning installed,
# and no network. Runs the CUDA tests (tests/train/test_cuda.py), the benchmark (at most 8 minutes;
# bench/results/gpu.json, gpu.md), then `dermaseg plan`'s batch-size probe on the real set
# (gpu_plan.yaml, gpu_plan.json); all within $DEADLINE_S seconds (default 570).
#
#   bash bench/gpu.sh                  # real set: $DERMASEG_REAL or ./local-data/derm-real
#   bash bench/gpu.sh --no-compile     # any option of bench/gpu_bench.py
#
# To carry the real images with the checkout (git ignores local-data/):
#   mkdir -p local-data && cp -r ../shared/data/derm-real local-data/
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-570}"  # everything ends by then (seconds since the start)
PLAN_SIZE="${PLAN_SIZE:-512}"
PLAN_SUFFIX=""
case " $* " in *" --smoke "*) PLAN_SIZE=64; PLAN_SUFFIX="_smoke" ;; esac

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

echo; echo "== CUDA tests (tests/train/test_cuda.py)"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/train/test_cuda.py
tests_status=$?

# The benchmark gets what is left before the deadline, less 100 s for the plan, at most 470 s.
bench_s=$((DEADLINE_S - SECONDS - 100))
[ "$bench_s" -gt 470 ] && bench_s=470
echo; echo "== bench/gpu_bench.py (limit ${bench_s} s)"
timeout --kill-after=10 "$bench_s" "$PY" bench/gpu_bench.py --budget-s $((bench_s - 30)) "$@"
status=$?
[ "$status" = 124 ] && echo "gpu_bench.py: stopped at its ${bench_s} s limit"
[ "$tests_status" = 0 ] || status=1

# `dermaseg plan` on this GPU (its batch-size probe), when the real set is here and time is left.
REAL="${DERMASEG_REAL:-local-data/derm-real}"
left=$((DEADLINE_S - SECONDS))
if [ -d "$REAL" ] && [ "$left" -gt 60 ]; then
  echo; echo "== dermaseg plan (${left} s left)"
  work="$(mktemp -d)"
  timeout 60 "$PY" -m dermaseg data prepare "$REAL" -o "$work/prep" --size "$PLAN_SIZE" \
    >"$work/prepare.log" 2>&1 || tail -5 "$work/prepare.log"
  timeout $((left - 30)) "$PY" -m dermaseg plan --data "$work/prep" --minutes 5 \
    -o "bench/results/gpu_plan${PLAN_SUFFIX}.yaml" --force || status=1
  rm -rf "$work"
fi
exit "$status"
