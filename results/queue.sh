#!/usr/bin/env bash
# The project's long reproduction runs, in priority order, one at a time.
#
#   nohup nice -n 10 bash results/queue.sh > "${RUNS:-$HOME/bpm_runs}/queue.log" 2>&1 &
#
# Every run resumes where it stopped (`--resume` when its workdir has a
# complete checkpoint), so a session that finds the machine as the last one left it just
# starts the queue again. A finished run is marked `$RUNS/<name>.done` and
# skipped; a run that fails is logged and the queue moves on (it is retried
# next time). Logs: `$RUNS/<name>.log`. Workdirs stay outside git; what a
# finished run produced is copied into results/ at once by the script there
# (results/ptb_small/make_table.py, results/maze/make_figure.py,
# results/cue_reward/make_figure.py, each with --collect): commit it.
#
# A job waits while any `python -m train.*` or `benchmarks.*` runs (so a
# restarted queue never runs two at once, nor starts a job during a benchmark).
#
# Stop the queue before editing this file (bash reads a script as it runs it).
#
# Environment: RUNS (workdirs, default ~/bpm_runs), PTB (the Penn Treebank
# directory, default ../shared/data/ptb), QUEUE_ONLY (run only the jobs whose
# name matches this regex).
set -u
cd "$(dirname "$0")/.."
RUNS="${RUNS:-$HOME/bpm_runs}"
PTB="${PTB:-$(cd .. && pwd)/shared/data/ptb}"
mkdir -p "$RUNS"
# The project's environment (README setup): activated here if not already.
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
  . .venv/bin/activate
fi
if ! python -c "import jax, bpm_jax" 2> /dev/null; then
  echo "$(date -u +%FT%TZ) queue: python cannot import jax and bpm_jax; set up the" \
    "environment first (README: python3 -m venv .venv && pip install -e \".[dev]\")." >&2
  exit 1
fi

# job NAME MODULE ARGS...: runs `python -m MODULE ARGS` in $RUNS/NAME.
job() {
  job_in "$1" "$@"
}

# job_in DIR NAME MODULE ARGS...: as job, in the workdir $RUNS/DIR (a later
# job may continue an earlier one's run, e.g. to more epochs).
job_in() {
  local dir="$RUNS/$1" name="$2"
  shift 2
  if [[ -e "$RUNS/$name.done" ]] || [[ ! "$name" =~ ${QUEUE_ONLY:-.} ]]; then
    return 0
  fi
  # One run at a time: wait for a run this queue did not start (a queue
  # restarted while its last job still runs), then look again.
  while pgrep -f "python[0-9.]* -m (train|benchmarks)\." > /dev/null; do
    sleep 60
  done
  if [[ -e "$RUNS/$name.done" ]]; then
    return 0
  fi
  # Resume from the newest complete checkpoint; a run stopped before its first
  # one starts again (--overwrite removes only that run's own files).
  local resume=() found
  python -c "import sys; from train import checkpoint as c
sys.exit(0 if c.latest_step(sys.argv[1]) is not None else 3)" "$dir/checkpoints"
  found=$?
  if ((found == 0)); then
    resume=(--resume)
  elif ((found != 3)); then
    echo "$(date -u +%FT%TZ) FAILED $name (cannot read $dir/checkpoints; nothing was run)"
    return 0
  elif [[ -d "$dir" ]]; then
    resume=(--overwrite)
  fi
  echo "$(date -u +%FT%TZ) start $name: python -m $* ${resume[*]}"
  python -m "$@" --workdir="$dir" "${resume[@]}" --noprogress >> "$RUNS/$name.log" 2>&1
  local status=$?
  if ((status == 0)); then
    touch "$RUNS/$name.done"
    echo "$(date -u +%FT%TZ) done $name"
    collect "$dir" "$@"
  else
    echo "$(date -u +%FT%TZ) FAILED $name (exit $status; see $RUNS/$name.log)"
  fi
}

# collect DIR MODULE ARGS...: a finished run's results are copied into the
# repository's tree at once (results/<figure>/ with its script's --collect),
# so they outlive a machine that is not handed back (the workdirs and .done
# marks go with the machine).
collect() {
  local dir="$1" script
  case "$2 $*" in
    "train.lm "*) script=results/ptb_small/make_table.py ;;
    *--env=GridMaze-v0*) script=results/maze/make_figure.py ;;
    *--env=CueReward-v0*) script=results/cue_reward/make_figure.py ;;
    *) return 0 ;;
  esac
  python "$script" --collect "$dir" > /dev/null \
    || echo "$(date -u +%FT%TZ) FAILED to collect $dir ($script --collect)"
}

LM=(train.lm --data_dir="$PTB")

# The work is cut into rounds of 1-2 hours; a later round continues an
# earlier round's run (job_in: same workdir, more epochs or iterations).
# Table 1 (issue 18) comes before the longer A2C rounds, as it is the one
# that fits this machine.

# Backpropamine Table 1, small model (issue 18). The LSTM's seed 0 at the
# defaults (L2 1e-6) overfits (valid ppl 116.9 at epoch 9, train ~40): first
# a small grid on the L2 penalty, seed 0, screened on the validation
# perplexity after 6 epochs (the first decayed epoch; the default run moved
# by 1.6 ppl after it), one variant at a time; the chosen setting's screen
# then continues to 13 epochs (`ptb_final`) and seeds 1 and 2 follow.
# The LSTM: 1e-6 117.63, 1e-5 116.22, 1e-4 111.30, 3e-4 111.66: chosen 1e-4
# (results/ptb_small/README.md). The plastic variants: 1e-4 and 3e-4, which
# bracket the LSTM's optimum (their default, 1e-6, was 6 ppl worse for the
# LSTM, is not screened); `ptb_chosen` runs the finals at the best one.
# plastic's screens put its optimum at or below 1e-4 (1e-4 111.66, 3e-4
# 116.30), the grid's edge: 3e-5 was added for every plastic variant so that
# the grid brackets it.
ptb_screen() {  # NETWORK L2...: 6-epoch screens
  local network="$1" l2
  shift
  for l2 in "$@"; do
    job "ptb_${network}_l2_${l2}_e6_seed0" "${LM[@]}" --network="$network" --seed=0 \
      --l2_penalty="$l2" --epochs=6
  done
}

ptb_final() {  # NETWORK L2 SEED: 13 epochs at the chosen setting (seed 0 continues its screen)
  local name="ptb_$1_l2_$2_seed$3" dir="ptb_$1_l2_$2_seed$3"
  if (($3 == 0)); then
    dir="ptb_$1_l2_$2_e6_seed0"
  fi
  job_in "$dir" "$name" "${LM[@]}" --network="$1" --seed="$3" --l2_penalty="$2" --epochs=13
}

# The plastic variants' finals at the L2 their screens chose (the rule of
# make_table.py: lowest validation perplexity after epoch 6, seed 0); skipped,
# and tried again by the next queue, until every screen in PLASTIC_L2S of the
# network is done.
PLASTIC_L2S=(3e-5 1e-4 3e-4)
ptb_chosen() {  # NETWORK SEED...
  local network="$1" best l2 seed status screens=() collected
  shift
  # Each screen's workdir, or what was collected of it into the repository
  # when the workdir went with an earlier machine.
  for l2 in "${PLASTIC_L2S[@]}"; do
    collected=$(python -c "import sys; sys.path.insert(0, 'results/ptb_small'); import make_table
print(make_table.screen_folder(sys.argv[1], float(sys.argv[2])))" "$network" "$l2")
    if [[ ! -d "$RUNS/ptb_${network}_l2_${l2}_e6_seed0" && -d "$collected" ]]; then
      screens+=("$collected")
    else
      screens+=("$RUNS/ptb_${network}_l2_${l2}_e6_seed0")
    fi
  done
  best=$(python results/ptb_small/make_table.py --best_screen "${screens[@]}")
  status=$?
  if ((status == 3)); then
    echo "$(date -u +%FT%TZ) skip ptb_chosen $network $* (its screens are not done)"
    return 0
  elif ((status != 0)); then
    echo "$(date -u +%FT%TZ) FAILED ptb_chosen $network $* (make_table.py --best_screen" \
      "exit $status; nothing was run)"
    return 0
  fi
  local i
  l2=
  for i in "${!screens[@]}"; do
    [[ "${screens[i]}" == "$best" ]] && l2="${PLASTIC_L2S[i]}"
  done
  if [[ -z "$l2" ]]; then
    echo "$(date -u +%FT%TZ) FAILED ptb_chosen $network $* (--best_screen printed $best," \
      "none of the screens given; nothing was run)"
    return 0
  fi
  for seed in "$@"; do
    ptb_final "$network" "$l2" "$seed"
  done
}

# Backpropamine Fig. 2 (issue 19): the maze at the paper's settings (the
# defaults of GridMaze-v0), 3 seeds vmapped per network type.
maze() {  # NETWORK ITERATIONS
  job_in "maze_$1_3seeds" "maze_$1_3seeds_to$2" train.a2c --env=GridMaze-v0 --network="$1" \
    --num_seeds=3 --iterations="$2" --checkpoint_every=500
}

# More seeds of the two networks the paper's test compares (with 3 agents per
# network the smallest rank-sum p is 0.1; with 5 it is 0.008): one agent per
# run, seeds 3 and 4 (agent k of a run has the key of --seed=k alone).
maze_one() {  # NETWORK SEED ITERATIONS
  job_in "maze_$1_seed$2" "maze_$1_seed$2_to$3" train.a2c --env=GridMaze-v0 --network="$1" \
    --seed="$2" --iterations="$3" --checkpoint_every=500
}

# Backpropamine Fig. 1 (issue 19): cue-reward at the paper's settings (the
# defaults of CueReward-v0, the reference's baseline). Seed 1 of modplast
# (seeds 0-2 at chance through 7.8k iterations, seed 0 through 17.2k).
cue() {  # NETWORK SEED ITERATIONS
  job_in "cue_$1_batch0_seed$2" "cue_$1_batch0_seed$2_to$3" train.a2c --env=CueReward-v0 \
    --network="$1" --seed="$2" --iterations="$3" --checkpoint_every=500
}

# The baseline A/B (issue 19): 3 seeds vmapped with each episode's own V_t.
own() {  # ENV NETWORK ITERATIONS (workdirs cue_... / maze_..., as the other jobs')
  local short=cue
  [[ "$1" == GridMaze-v0 ]] && short=maze
  job_in "${short}_$2_own_3seeds" "${short}_$2_own_3seeds_to$3" train.a2c --env="$1" \
    --network="$2" --baseline=own --num_seeds=3 --iterations="$3" --checkpoint_every=500
}

# Done, and in results/ (they are not listed any more, so that a new
# machine, which has none of their workdirs or .done marks, does not run
# them again): ptb_rnn_seed0, the LSTM's screens (1e-5, 1e-4, 3e-4),
# ptb_final rnn 1e-4 0, 1 and 2; the plastic, modplast and retromod screens
# (3e-5, 1e-4, 3e-4) and ptb_chosen plastic, modplast and retromod 0 and 1
# (all 1e-4); maze
# modplast/plastic/rnn/retromod with 3 seeds to 10000 and modplast/plastic
# seeds 3 and 4 to 10000. ptb_chosen of seed 2 reads a screen's
# collected folder where its workdir is gone.
#
# Table 1 first (issue 18): it can be finished on this machine (~2.5 h of
# runs left on 2026-12-07 19:50: seed 2 of the plastic variants, ~45-67 min
# each, as measured); the full-length A2C runs take far longer
# (results/cue_reward/ and results/maze/ READMEs). Each job fits in one
# session (a 13-epoch run 42-67 min), as a machine is not always handed
# back. Then cue-reward modplast seed 1, the run that can show whether
# Fig. 1's learning appears at all (at chance through 17.2k iterations of
# seed 0), to 60k before the other A2C rounds.
for network in plastic modplast retromod; do
  ptb_chosen "$network" 2
done
cue modplast 1 30000
cue modplast 1 60000
own GridMaze-v0 modplast 10000
cue rnn 0 30000
own CueReward-v0 modplast 20000
for network in modplast plastic rnn retromod; do
  maze "$network" 25000
done
for seed in 3 4; do
  maze_one modplast "$seed" 25000
  maze_one plastic "$seed" 25000
done
