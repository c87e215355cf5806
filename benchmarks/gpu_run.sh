#!/usr/bin/env bash
# Throughput of the quick-suite workload on a GPU: cambench vs pytorch-grad-cam + Quantus (resnet50, 224x224),
# with GPU utilisation (nvidia-smi dmon in the background + torch.cuda.utilization sampled in a thread) and
# the floor (forward-equivalents per image x per-image time of a large inference batch).
#
#   bash benchmarks/gpu_run.sh                 # from the repository root; writes results/gpu_run/
#   IMAGES=64 PRECISION=bf16 bash benchmarks/gpu_run.sh
#
# Needs: a CUDA GPU, nvidia-smi, the project's dependencies (+ `pip install nvidia-ml-py` for
# torch.cuda.utilization). Everything printed is also kept in results/gpu_run/*.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-results/gpu_run}
IMAGES=${IMAGES:-32}       # images per pipeline (the peer runs them one by one: keep it moderate)
STEPS=${STEPS:-24}         # deletion/insertion steps (a multiple of 3 for Quantus PixelFlipping)
SAMPLES=${SAMPLES:-4}      # max-sensitivity samples
CHUNK=${CHUNK:-256}        # forward batch of the extra forwards (Score-/Ablation-CAM, both sides)
PRECISION=${PRECISION:-fp32}
export TQDM_DISABLE=1
mkdir -p "$OUT"

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"

echo "== GPU utilisation log (nvidia-smi dmon, 1 s)"
nvidia-smi dmon -s um -d 1 -o T > "$OUT/dmon.txt" &
DMON=$!
trap 'kill $DMON 2>/dev/null || true' EXIT

run() {  # name, extra args
  local name=$1; shift
  echo "== $name"
  python benchmarks/pipeline_speed.py --model resnet50 --size 224 --images "$IMAGES" --steps "$STEPS" \
    --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda --gpu-util --floor-batch 256 "$@" \
    | tee "$OUT/$name.txt"
}

# 1. both pipelines, fp32 (the headline ratio)
run both_fp32 --precision fp32
# 2. cambench alone in the requested precision, 4x the images (steady-state throughput, distance to the floor)
run cambench_${PRECISION} --precision "$PRECISION" --skip-peer --images $((IMAGES * 4))
# 3. the runner end to end on the packaged quick suite (units, store, report), one GPU
python run_bench.py run quick --device cuda --precision "$PRECISION" --out "$OUT/quick_suite" --fresh --quiet \
  | tee "$OUT/quick_suite.txt"

kill $DMON 2>/dev/null || true
trap - EXIT
echo "== GPU utilisation over the whole script (nvidia-smi dmon: mean/max SM %, mean memory-controller %)"
awk '!/^#/ && NF>3 {n++; sm+=$3; mem+=$4; if ($3>mx) mx=$3} END {if (n) printf "samples %d  sm mean %.1f%%  sm max %d%%  mem mean %.1f%%\n", n, sm/n, mx, mem/n}' \
  "$OUT/dmon.txt" | tee "$OUT/dmon_summary.txt"
echo "== summary"
grep -hE "^(pipeline|cambench|peer|floor unit|speed-up|Pearson)" "$OUT"/both_fp32.txt "$OUT"/cambench_${PRECISION}.txt
