#!/usr/bin/env bash
# The project's long reproduction runs, in priority order, one at a time.
#
#   nohup nice -n 10 bash results/queue.sh > "${RUNS:-$HOME/bpm_runs}/queue.log" 2>&1 &
#
# Every run resumes where it stopped (`--resume` when its workdir has a
# checkpoint), so a session that finds the machine as the last one left it just
# starts the queue again. A finished run is marked `$RUNS/<name>.done` and
# skipped; a run that fails is logged and the queue moves on (it is retried
# next time). Logs: `$RUNS/<name>.log`. Workdirs stay outside git; what a run
# produced goes into results/ with the scripts there (results/ptb_small/
# make_table.py --collect, results/cue_reward/make_figure.py --workdir).
#
# Environment: RUNS (workdirs, default ~/bpm_runs), PTB (the Penn Treebank
# directory, default ../shared/data/ptb), QUEUE_ONLY (run only the jobs whose
# name matches this regex).
set -u
cd "$(dirname "$0")/.."
RUNS="${RUNS:-$HOME/bpm_runs}"
PTB="${PTB:-$(cd .. && pwd)/shared/data/ptb}"
mkdir -p "$RUNS"

job() {
  local name="$1"
  shift
  local dir="$RUNS/$name"
  if [[ -e "$RUNS/$name.done" ]] || [[ ! "$name" =~ ${QUEUE_ONLY:-.} ]]; then
    return 0
  fi
  local resume=()
  if [[ -d "$dir/checkpoints" ]]; then
    resume=(--resume)
  fi
  echo "$(date -u +%FT%TZ) start $name: python -m $* ${resume[*]}"
  python -m "$@" --workdir="$dir" "${resume[@]}" --noprogress >> "$RUNS/$name.log" 2>&1
  local status=$?
  if ((status == 0)); then
    touch "$RUNS/$name.done"
    echo "$(date -u +%FT%TZ) done $name"
  else
    echo "$(date -u +%FT%TZ) FAILED $name (exit $status; see $RUNS/$name.log)"
  fi
}

# Backpropamine Table 1, small model (issue 18): one seed per variant at the
# default settings first, then seeds 1 and 2 (~1.5 h for the LSTM, ~2 h for a
# plastic variant on 2 cores with the fused kernels).
for seed in 0 1 2; do
  for network in rnn plastic modplast retromod; do
    job "ptb_${network}_seed${seed}" train.lm --data_dir="$PTB" --network="$network" --seed="$seed"
  done
done

# Backpropamine Fig. 1 (issue 19): cue-reward modplast, the reference's
# baseline, seed 1 (seeds 0-2 reached 7.8k iterations at chance), to 30k
# iterations: does it leave chance after ~10k, as one earlier run did?
job cue_modplast_batch0_seed1 train.a2c --env=CueReward-v0 --network=modplast --seed=1 \
  --iterations=30000
