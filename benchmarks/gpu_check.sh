#!/usr/bin/env bash
# The prepared GPU check of issue 4: A2C throughput and a first cue-reward
# learning run on one accelerator, in about 8 minutes, everything under $OUT.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels   # here, once: the packages the
#                                                 # GPU image lacks, into .whl/
#   # then, with the device tool:
#   #   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Without $OUT it writes to ./gpu_check_out. GPU_CHECK_SMOKE=1 shrinks every size
# (and skips the throughput table) so the script itself can be tried on a CPU.
# The figures are printed and written, never asserted.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--fetch-wheels" ]]; then
  # Pure-Python wheels of what bpm-jax needs beyond the GPU image (see the
  # device tool's KINDS.md): gymnax and its gymnasium, tensorboardX.
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    -d .whl gymnax==1.0.1 gymnasium==1.3.0 farama-notifications==0.0.4 tensorboardX==2.6.4
  ls -l .whl
  exit
fi

OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
exec > >(tee "$OUT/gpu_check.log") 2>&1

if [[ "${GPU_CHECK_SMOKE:-0}" == "1" ]]; then
  SIZE=(--hidden_size=8 --batch_size=4 --episode_length=12 --chunk_size=5 --checkpoint_every=5)
  ITERS=10; LEARN_S=120; SEEDS=2
else
  SIZE=(--chunk_size=200 --checkpoint_every=1000)  # Env defaults: H=200, B=30, T=120.
  ITERS=100000; LEARN_S=150; SEEDS=8
fi

rm -rf /tmp/gpu_check  # Fresh workdirs on every try.
date
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())" || exit

if [[ "${GPU_CHECK_SMOKE:-0}" != "1" ]]; then
  echo "== A2C throughput, batch 30, paper sizes"
  timeout 150 "$PY" -m benchmarks.a2c_throughput --envs=CueReward-v0,GridMaze-v0 \
    --networks=rnn,plastic,modplast,retromod --step_impls=fast,reference --iterations=5
  echo "== many agents in one program (32 seeds x batch 30 = 960 episodes per iteration)"
  timeout 90 "$PY" -m benchmarks.a2c_throughput --envs=CueReward-v0 \
    --networks=modplast,retromod --step_impls=fast --num_seeds=32 --iterations=5
fi

# Learning: the paper's cue-reward settings (SPEC §5.1), modplast against rnn,
# $SEEDS seeds each, each for LEARN_S seconds of wall time (the run is cut off
# there; metrics.csv holds every finished chunk).
for net in modplast rnn; do
  echo "== learning: CueReward-v0 $net, $SEEDS seeds, ${LEARN_S}s"
  timeout "$LEARN_S" "$PY" -m train.a2c --env=CueReward-v0 --network="$net" \
    --num_seeds="$SEEDS" --iterations="$ITERS" "${SIZE[@]}" --noprogress \
    --workdir="/tmp/gpu_check/cue_$net" | grep -v "^  " | tail -n 5
  cp "/tmp/gpu_check/cue_$net/metrics.csv" "$OUT/cue_${net}_metrics.csv" 2>/dev/null
done
"$PY" -m train.plot --workdirs /tmp/gpu_check/cue_modplast /tmp/gpu_check/cue_rnn \
  --out "$OUT/cue_curves.png"
date
