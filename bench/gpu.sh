#!/usr/bin/env bash
# The GPU benchmark, for a machine with one NVIDIA GPU and PyTorch, timm, Lightning installed,
# and no network. Runs the CUDA tests (tests/train/test_cuda.py), the benchmark (at most 8 minutes;
# bench/results/gpu.json, gpu.md), then `dermaseg plan` on the real set (gpu_plan.yaml,
# gpu_plan.json): its batch-size probe and, on the GPU, the compiled step and whether
# train.compile pays over the planned run (plan.json's "compile", printed at the end); all
# within $DEADLINE_S seconds (default 570), $PLAN_S of them (default 200; 320 with
# PLAN_ISIC=1) kept for the plan.
#
#   bash bench/gpu.sh                  # real set: $DERMASEG_REAL or ./local-data/derm-real
#   bash bench/gpu.sh --no-compile     # any option of bench/gpu_bench.py
#   PLAN_ONLY=1 bash bench/gpu.sh      # the plan alone (no CUDA tests, no benchmark)
#   PLAN_ISIC=1 bash bench/gpu.sh      # plan for a synthetic set the size of ISIC 2018 (2,594
#                                      # training + 100 validation images at 512 px, made here;
#                                      # gpu_plan_isic.yaml/.json) instead of the real set
#   PLAN_ONLY=1 bash bench/gpu.sh --smoke   # CPU dry run: 64 px, plan --probe-compile on the CPU
#
# The whole ISIC-sized run, plan then train against the path before: bash bench/gpu_run.sh.
#
# To carry the real images with the checkout (git ignores local-data/):
#   mkdir -p local-data && cp -r ../shared/data/derm-real local-data/
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEADLINE_S="${DEADLINE_S:-570}"  # everything ends by then (seconds since the start)
PLAN_ONLY="${PLAN_ONLY:-0}"
PLAN_ISIC="${PLAN_ISIC:-0}"
# Kept for the plan: batch probe, then compiling (a minute or more); the ISIC-sized set is made
# first (about a minute).
PLAN_S="${PLAN_S:-$([ "$PLAN_ISIC" = 1 ] && echo 320 || echo 200)}"
PLAN_MINUTES="${PLAN_MINUTES:-5}"
PLAN_SIZE="${PLAN_SIZE:-512}"
PLAN_SUFFIX=""
PLAN_ARGS=()
ISIC_TRAIN=2594; ISIC_VAL=100
case " $* " in *" --smoke "*)  # CPU: the compiled step is measured only when asked
  PLAN_SIZE=64; PLAN_SUFFIX="_smoke"; PLAN_ARGS=(--probe-compile); ISIC_TRAIN=116; ISIC_VAL=4 ;;
esac

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

status=0
if [ "$PLAN_ONLY" != 1 ]; then
  echo; echo "== CUDA tests (tests/train/test_cuda.py)"
  timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/train/test_cuda.py
  tests_status=$?

  # The benchmark gets what is left before the deadline, less $PLAN_S for the plan, at most 470 s.
  bench_s=$((DEADLINE_S - SECONDS - PLAN_S))
  [ "$bench_s" -gt 470 ] && bench_s=470
  echo; echo "== bench/gpu_bench.py (limit ${bench_s} s)"
  timeout --kill-after=10 "$bench_s" "$PY" bench/gpu_bench.py --budget-s $((bench_s - 30)) "$@"
  status=$?
  [ "$status" = 124 ] && echo "gpu_bench.py: stopped at its ${bench_s} s limit"
  [ "$tests_status" = 0 ] || status=1
fi

# `dermaseg plan` on this GPU (batch-size probe, compiled step, the decision), on the real set
# when it is here (or the ISIC-sized synthetic set, PLAN_ISIC=1) and time is left.
REAL="${DERMASEG_REAL:-local-data/derm-real}"
left=$((DEADLINE_S - SECONDS))
if { [ "$PLAN_ISIC" = 1 ] || [ -d "$REAL" ]; } && [ "$left" -gt 60 ]; then
  work="$(mktemp -d)"
  name="gpu_plan${PLAN_SUFFIX}"
  source="$REAL"; split=()
  if [ "$PLAN_ISIC" = 1 ]; then  # the plan reads the counts: a synthetic set of that size
    name="gpu_plan_isic${PLAN_SUFFIX}"; source="$work/raw"
    split=(--val "$("$PY" -c "print($ISIC_VAL / ($ISIC_TRAIN + $ISIC_VAL))")" --test 0)
    echo; echo "== synthetic set of $ISIC_TRAIN + $ISIC_VAL images"
    timeout 150 "$PY" -m dermaseg data synth -n $((ISIC_TRAIN + ISIC_VAL)) -o "$source" \
      >"$work/synth.log" 2>&1 || tail -5 "$work/synth.log"
  fi
  [ -n "$PLAN_SUFFIX" ] && name="gpu_plan_smoke"  # git ignores the smoke results
  left=$((DEADLINE_S - SECONDS))
  echo; echo "== dermaseg plan (${left} s left)"
  timeout 90 "$PY" -m dermaseg data prepare "$source" -o "$work/prep" --size "$PLAN_SIZE" \
    "${split[@]}" >"$work/prepare.log" 2>&1 || tail -5 "$work/prepare.log"
  timeout $((left - 30)) "$PY" -m dermaseg plan --data "$work/prep" --minutes "$PLAN_MINUTES" \
    -o "bench/results/$name.yaml" --force "${PLAN_ARGS[@]}" || status=1
  echo; echo "== the plan's compilation decision (bench/results/$name.json \"compile\")"
  "$PY" bench/gpu_plan_compile.py "bench/results/$name.json" || status=1
  rm -rf "$work"
fi
exit "$status"
