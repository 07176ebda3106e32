#!/usr/bin/env bash
# GPU checks and benchmarks: one script for when a GPU machine is lent (DESIGN section 9), under 8 minutes.
#
#   bash benchmarks/gpu_suite.sh            # PYTHON=/path/to/python to use another interpreter
#
# A sequence of steps, each with its own time limit (the limits add up to well under 8 minutes, so that other
# steps can be added). A failing or timed-out step is reported and the next one still runs; the script exits
# non-zero if any step failed. Results go to benchmarks/results/*gpu*.json.
#
# With a CUDA device:
#   body        benchmarks/gpu_body.py: the fused (compiled) Body against the eager one on the device (outputs,
#               gradients, running statistics), Body train step eager vs fused with its roofline against the
#               device's copy bandwidth, refined/vanilla train steps of both pairs with the fused path on and off
#   throughput  benchmarks/train_throughput.py: shipped-pair images/s and model FLOP utilisation
#   pipeline    benchmarks/pipeline_scale.py: plain vs capture forward, view bytes, per-image metrics and peak
#               memory of vit_base_patch16_224, refiner_vit_l at 448 px and vit_large_patch14_dinov2 at 518 px
#   analyze     refiner analyze --device cuda over 64 dataset images of a ViT-B (the whole CLI pipeline on the GPU)
# Without one: the body and pipeline steps' CPU paths at small shapes (about 40 s on an idle 2-core CPU), so that
# the script itself stays tested.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY="$PYTHON"
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
failed=()

# step NAME SECONDS COMMAND...: run one step under its own time limit and record whether it failed.
step() {
  local name=$1 limit=$2
  shift 2
  local t0
  t0=$(date +%s)
  echo "== step $name (limit ${limit} s)"
  timeout "$limit" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    failed+=("$name (exit $rc$([ "$rc" -eq 124 ] && echo ', timed out'))")
  fi
  echo "== step $name: exit $rc in $(( $(date +%s) - t0 )) s"
}

echo "gpu_suite: $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  "$PY" -c "import torch; print('device:', torch.cuda.get_device_name(), '| torch', torch.__version__)"
  step body 180 "$PY" benchmarks/gpu_body.py
  step throughput 90 "$PY" benchmarks/train_throughput.py --chunks 5 --steps 20 \
    --out benchmarks/results/train_throughput_gpu.json
  step pipeline 150 "$PY" benchmarks/pipeline_scale.py --device cuda --repeats 2
  step analyze 40 "$PY" -m refiner_cli analyze --model "random:vit_base_patch16_224" --dataset cluttered-mnist \
    --max-images 64 --batch-size 32 --per-image 1 --no-bundle --device cuda --out "$(mktemp -d)/analyze-gpu"
else
  echo "no CUDA device: running the CPU path only (small shapes, eager Body)"
  step body 300 "$PY" benchmarks/gpu_body.py --quick
  step pipeline 120 "$PY" benchmarks/pipeline_scale.py --quick --device cpu
fi
echo "gpu_suite: done in $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'gpu_suite: FAILED steps: %s\n' "${failed[*]}"
  exit 1
fi
