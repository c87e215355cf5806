#!/usr/bin/env bash
# Everything this project measures on a GPU, in one script (sized for a ~10-minute lease):
#   1. gpu_check.py: CUDA maps and metrics equal the CPU ones (channels_last, TF32 off), CUDA-only paths run;
#   2. pipeline_speed.py: the quick-suite workload, cambench vs pytorch-grad-cam + Quantus (resnet50,
#      224x224, fp32), throughput, GPU utilisation, floor;
#   3. metrics_speed.py: deletion+insertion AUC, 8 methods, 147 steps, against Quantus (resnet50, 224x224);
#   4. pipeline_speed.py on the 7 gradient methods only, then cambench alone in $PRECISION on 4x the images;
#   5. the packaged quick suite through the runner on CUDA, compared with the committed CPU reference
#      leaderboard (needs the CPU-trained shapes_cnn in $CAMBENCH_CACHE to compare like with like);
#   6. road_speed.py on CUDA: ROAD with the batched CG imputer vs pytorch-grad-cam (target >= 50x);
#   7. pipeline_speed.py in bf16 on BOTH sides (the peer's no-gradient forwards autocast too), then cambench
#      alone in bf16 with --compile (torch.compile, CUDA graphs, cuDNN autotuning) against step 4's bf16;
#   8. one shard of the full sweep (suites/sweep-gpu.toml with $IMAGENET_ROOT, else the synthetic stand-in)
#      through the runner in bf16 with --compile: wall time and images/s per shard.
# Each step has its own time limit and failure does not stop the next one.
#
#   bash benchmarks/gpu_run.sh                 # from the repository root; writes results/gpu_run/
#   IMAGES=16 PRECISION=bf16 bash benchmarks/gpu_run.sh
#   ONLY="gpu_check quick_suite quick_vs_cpu_reference" bash benchmarks/gpu_run.sh
#   ONLY="road_speed pipeline_bf16_peer cambench_bf16_compile sweep_shard" bash benchmarks/gpu_run.sh
#
# Needs: a CUDA GPU, nvidia-smi, the project's dependencies and test extra (grad-cam, quantus) and
# nvidia-ml-py (torch.cuda.utilization). Everything printed is also kept in $RES/*.txt. Steps 1-5: about
# 5 minutes on an H200 with the defaults (benchmarks/RESULTS.md; raw logs of that run in benchmarks/h200/);
# steps 6-8 are new and not yet measured (budget: their limits, about 15 minutes; run them with ONLY=...).
set -uo pipefail
cd "$(dirname "$0")/.."

RES=${RES:-results/gpu_run}
IMAGES=${IMAGES:-8}        # images per pipeline (the peer runs them one by one: keep it moderate)
STEPS=${STEPS:-24}         # deletion/insertion steps (a multiple of 3 for Quantus PixelFlipping)
SAMPLES=${SAMPLES:-4}      # max-sensitivity samples
CHUNK=${CHUNK:-256}        # forward batch of the extra forwards (both sides)
PRECISION=${PRECISION:-bf16}
ROAD_IMAGES=${ROAD_IMAGES:-4}    # road_speed images (the CPU measurement's setting; try 32 for throughput)
SWEEP_LIMIT=${SWEEP_LIMIT:-16}   # images of the sweep shard timing (--limit: one unit of 16 images, ~2 min)
if [[ -n "${IMAGENET_ROOT:-}" ]]; then SWEEP=${SWEEP:-sweep-gpu}; else SWEEP=${SWEEP:-sweep-gpu-synthetic}; fi
export TQDM_DISABLE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
mkdir -p "$RES"

step() {  # name, time limit (s), command...   (ONLY="name ..." runs only the steps named)
  local name=$1 limit=$2; shift 2
  if [[ -n "${ONLY:-}" && " $ONLY " != *" $name "* ]]; then return 0; fi
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$RES/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$RES/gpu.txt"
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" | tee -a "$RES/gpu.txt"
nvidia-smi dmon -s um -d 1 -o T > "$RES/dmon.txt" 2>/dev/null &
DMON=$!
trap 'kill $DMON 2>/dev/null || true' EXIT

step gpu_check "${T_CHECK:-100}" python benchmarks/gpu_check.py
step pipeline_fp32 "${T_PIPE:-200}" python benchmarks/pipeline_speed.py --model resnet50 --size 224 \
  --images "$IMAGES" --steps "$STEPS" --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda \
  --gpu-util --floor-batch 256 --precision fp32
step metrics_speed "${T_METRICS:-90}" python benchmarks/metrics_speed.py --model resnet50 --batch "${MBATCH:-4}" \
  --chunk 1024 --device cuda
step pipeline_gradient "${T_GRAD:-60}" python benchmarks/pipeline_speed.py --model resnet50 --size 224 \
  --images "$IMAGES" --steps "$STEPS" --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda \
  --gpu-util --floor-batch 256 --precision fp32 --methods gradcam,gradcampp,xgradcam,hirescam,layercam,eigencam,eigengradcam
step cambench_"$PRECISION" "${T_ALONE:-60}" python benchmarks/pipeline_speed.py --model resnet50 --size 224 \
  --images $((IMAGES * 4)) --steps "$STEPS" --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda \
  --gpu-util --floor-batch 256 --precision "$PRECISION" --skip-peer
step quick_suite "${T_SUITE:-150}" python run_bench.py run quick --device cuda --out "$RES/quick_suite" --fresh \
  --quiet --no-plots
step quick_vs_cpu_reference 20 python - "$RES/quick_suite/leaderboard.csv" results/reference/quick-leaderboard.csv <<'EOF'
import sys
import pandas as pd
gpu, cpu = (pd.read_csv(p) for p in sys.argv[1:3])
key = ["model", "dataset", "method", "metric"]
m = gpu.merge(cpu, on=key, suffixes=("_cuda", "_cpu"))
m["diff"] = (m["mean_cuda"] - m["mean_cpu"]).abs()
print(f"rows: cuda {len(gpu)}, cpu reference {len(cpu)}, matched {len(m)}")
device_bound = m["metric"].isin(["latency_ms", "peak_memory_mb"])
print(m[~device_bound].groupby("metric")["diff"].max().sort_values(ascending=False).to_string())
print(m[~device_bound].sort_values("diff", ascending=False)[key + ["mean_cuda", "mean_cpu"]].head(15).to_string())
EOF

step road_speed "${T_ROAD:-120}" python benchmarks/road_speed.py --device cuda --images "$ROAD_IMAGES" --repeats 3
step pipeline_bf16_peer "${T_PIPE16:-200}" python benchmarks/pipeline_speed.py --model resnet50 --size 224 \
  --images "$IMAGES" --steps "$STEPS" --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda \
  --gpu-util --floor-batch 256 --precision bf16 --peer-precision same
step cambench_bf16_compile "${T_COMPILE:-180}" python benchmarks/pipeline_speed.py --model resnet50 --size 224 \
  --images $((IMAGES * 4)) --steps "$STEPS" --samples "$SAMPLES" --chunk "$CHUNK" --batch 16 --device cuda \
  --gpu-util --floor-batch 256 --precision bf16 --skip-peer --compile
step sweep_shard "${T_SWEEP:-300}" bash -c '
  t0=$(date +%s.%N)
  python run_bench.py run "$0" --device cuda --limit "$1" --precision bf16 --compile --out "$2/sweep_shard" \
    --fresh --quiet --no-plots
  rc=$?
  python - "$0" "$1" "$t0" "$(date +%s.%N)" <<PY
import sys
suite, n, t0, t1 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"sweep shard: {suite}, {n} images in {t1 - t0:.1f} s = {n / (t1 - t0):.2f} images/s "
      f"(1000 images: {1000 * (t1 - t0) / n / 60:.1f} min on this GPU, model load and compile included)")
PY
  exit $rc' "$SWEEP" "$SWEEP_LIMIT" "$RES"

kill $DMON 2>/dev/null || true
trap - EXIT
echo "== GPU utilisation over the whole script (nvidia-smi dmon: mean/max SM %, mean memory-controller %)"
awk '!/^#/ && NF>3 {n++; sm+=$3; mem+=$4; if ($3>mx) mx=$3} END {if (n) printf "samples %d  sm mean %.1f%%  sm max %d%%  mem mean %.1f%%\n", n, sm/n, mx, mem/n}' \
  "$RES/dmon.txt" | tee "$RES/dmon_summary.txt"
echo "== summary"
grep -hE "^(done|pipeline|cambench|peer|floor unit|speed-up|imputation alone|Pearson|gpu_check|sweep shard)" "$RES"/*.txt
