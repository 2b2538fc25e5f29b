#!/usr/bin/env bash
# Train phantom64 on one lent GPU inside one 10-minute call (docs/TRAINING.md, "On a
# GPU"): build, make the phantom data, then two stage-1 variants side by side (A: the
# 3-D patch discriminator on, B: off, same width and schedule), each followed by its
# stage 2. Step counts come from a short probe of both variants running together, so
# each schedule ends inside its time share; a SIGTERM at the share's end still saves
# and exports (the loop stops cleanly). The two checkpoints come back in half
# precision, tarred and split into 15 MB parts under $OUT, the logs in $OUT/logs.tar:
#   cat $OUT/runs.tar.part-* | tar -x
#
#   OUT=/tmp/out scripts/train_phantom64_gpu.sh [STAGE1_S] [STAGE2_S]
#
# A dry run of the plumbing on a CPU (minutes, a tiny model):
#   BUILD=0 DEVICE=cpu CONFIG=tiny PER_CLASS=8 B1=2 B2=2 PYTHON=.venv/bin/python \
#     scripts/train_phantom64_gpu.sh 40 30
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/lddm-train}
PY=${PYTHON:-python3}
S1=${1:-200}
S2=${2:-150}
DATA=${DATA:-/tmp/phantom64}
RUNS=${RUNS:-/tmp/runs}
CONFIG=${CONFIG:-configs/phantom64-gpu.json}
B1=${B1:-32}
B2=${B2:-64}
DEVICE=${DEVICE:-cuda}
PER_CLASS=${PER_CLASS:-800}
if [[ $CONFIG == *.json ]]; then model=(--config "$CONFIG"); else model=(--preset "$CONFIG"); fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS"
t0=$SECONDS
say() { echo "[$((SECONDS - t0)) s] $*"; }

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
if [[ ${BUILD:-1} == 0 ]]; then
  :
elif ! timeout 150 "$PY" -m pip install --no-deps --no-build-isolation -e . >"$OUT/build.log" 2>&1; then
  tail -n 20 "$OUT/build.log"
  LDDM_BUILD_CUDA=0 timeout 90 "$PY" -m pip install --no-deps --no-build-isolation -e . \
    >>"$OUT/build.log" 2>&1 || exit 1
fi
say "built; backends: $("$PY" -c 'import lddm_fast; print(lddm_fast.ops.available_backends())')"

# The same data as the CPU model's (the generator is deterministic in its seed).
"$PY" -m lddm_fast phantom "$DATA" --benign "$PER_CLASS" --malignant "$PER_CLASS" --normal 0 --layout busv \
  --splits 0.6,0.05,0.35 --workers 12 --quiet >"$OUT/data.log" 2>&1 &
data_pid=$!
# Meanwhile the GPU checks of the last session's two untested fixes.
par=()
"$PY" -c "import xdist" 2>/dev/null && par=(-n 4)
timeout 100 "$PY" -m pytest -q -rfE -p no:cacheprovider "${par[@]}" \
  tests/diffusion/test_graph_runner.py tests/kernels/test_cuda_ops.py \
  "tests/test_build.py::test_extension_brings_no_copy_of_the_cpp_runtime" >"$OUT/tests.log" 2>&1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log" | tail -15
wait "$data_pid" || { tail "$OUT/data.log"; exit 1; }
say "data: $(tail -1 "$OUT/data.log")"

# SIGTERM to a trainer's main process (not its loader workers) SECONDS after its
# training loop started (READY, its log.jsonl, exists; setup such as the latent cache
# is not counted): it finishes its step, saves, exports and exits.
stop_after() {  # stop_after SECONDS READY PID
  (while [[ ! -e $2 ]] && kill -0 "$3"; do sleep 1; done; sleep "$1"; kill -TERM "$3") \
    >/dev/null 2>&1 &
}

ae() {  # ae NAME STEPS EXTRA... (stage 1 of one variant)
  local name=$1 steps=$2
  shift 2
  exec "$PY" -m lddm_fast train-ae --data "$DATA" --out "$RUNS/$name" "${model[@]}" \
    --steps "$steps" --batch-size $B1 --lr 4e-4 --warmup 50 --checkpoint-every 100000 \
    --eval-clips 64 --workers 5 --seed 0 --device "$DEVICE" --quiet --ssim-weight 0.2 "$@"
}
probe=12
ae probe_a $probe --adv-weight 0.5 >"$OUT/probe_a.log" 2>&1 &
pa=$!
ae probe_b $probe >"$OUT/probe_b.log" 2>&1 &
wait "$pa" $! || { tail -n 20 "$OUT"/probe_*.log; exit 1; }
# Steps that fit the share, from the steady-state step time of the probe (last 6 steps).
plan() {
  "$PY" - "$RUNS/$1/log.jsonl" "$2" <<'EOF'
import json, statistics, sys
rows = [json.loads(x) for x in open(sys.argv[1]) if '"step_s"' in x]
step_s = statistics.median(r["step_s"] for r in rows[-6:])
print(max(100, int(float(sys.argv[2]) / step_s)))
EOF
}
steps_a=$(plan probe_a $((S1 - 25))) || exit 1
steps_b=$(plan probe_b $((S1 - 25))) || exit 1
say "stage 1 plan: A $steps_a steps, B $steps_b steps of $B1 clips"

ae ae_a "$steps_a" --adv-weight 0.5 --adv-start $((steps_a / 3)) >"$OUT/ae_a.log" 2>&1 &
pa=$!
stop_after "$S1" "$RUNS/ae_a/log.jsonl" $pa
ta=$!
ae ae_b "$steps_b" >"$OUT/ae_b.log" 2>&1 &
pb=$!
stop_after "$S1" "$RUNS/ae_b/log.jsonl" $pb
wait "$pa" "$pb"
kill "$ta" $! 2>/dev/null
say "stage 1 done"
for v in a b; do tail -1 "$RUNS/ae_$v/log.jsonl"; echo; done

ldm() {  # ldm NAME (stage 2 on top of ae_NAME)
  exec "$PY" -m lddm_fast train-diffusion --data "$DATA" --autoencoder "$RUNS/ae_$1" \
    --out "$RUNS/ldm_$1" --steps 2400 --batch-size $B2 --lr 4e-4 --warmup 200 \
    --checkpoint-every 800 --eval-clips 64 --cache-variants 3 --preview-images 0 \
    --workers 6 --seed 0 --device "$DEVICE" --quiet
}
ldm a >"$OUT/ldm_a.log" 2>&1 &
pa=$!
stop_after "$S2" "$RUNS/ldm_a/log.jsonl" $pa
ta=$!
ldm b >"$OUT/ldm_b.log" 2>&1 &
pb=$!
stop_after "$S2" "$RUNS/ldm_b/log.jsonl" $pb
wait "$pa" "$pb"
kill "$ta" $! 2>/dev/null
say "stage 2 done"
for v in a b; do tail -1 "$RUNS/ldm_$v/log.jsonl" 2>/dev/null; echo; done

mkdir -p "$RUNS/pack"
for v in a b; do
  # Stage 1's checkpoint when stage 2 did not export one: trained work is never lost.
  ckpt="$RUNS/ldm_$v/checkpoint"
  [[ -f $ckpt/meta.json ]] || ckpt="$RUNS/ae_$v/checkpoint"
  [[ -f $ckpt/meta.json ]] || continue
  "$PY" -m lddm_fast.train.bundle --checkpoint "$ckpt" --out "$RUNS/pack/run_$v" \
    --dtype float16 >/dev/null
  for stage in ae ldm; do
    [[ -f $RUNS/${stage}_$v/log.jsonl ]] && cp "$RUNS/${stage}_$v/log.jsonl" "$RUNS/pack/run_$v/${stage}_log.jsonl"
  done
done
tar -C "$RUNS/pack" -cf - . | split -b 15M - "$OUT/runs.tar.part-"
# At most 8 files come back from a lent machine: the logs travel as one tar.
tar -C "$OUT" -cf "$OUT/logs.tar" $(cd "$OUT" && ls ./*.log) && rm "$OUT"/*.log
ls -la "$OUT"
say "end"
