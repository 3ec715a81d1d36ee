"""The PTB host loop: epochs of jitted chunks over the run scaffold (`train.run`).

    config = LMTrainConfig(data_dir="/path/to/ptb", network="modplast", epochs=1)
    results = train_and_evaluate(config, workdir)   # {"valid_ppl": ..., "test_ppl": ...}

An epoch runs as a few jitted `lax.scan`s over chunks of `chunk_size`
minibatches (`train.lm_learner.train_chunk`; the progress bar advances per
chunk; a short last chunk is padded with skipped steps so one program serves
all chunks); `num_seeds` independent models are trained in one `vmap`ped
program on the same minibatches. h, c, Hebb and E are reset to zero at the
start of each epoch and of each evaluation.
Perplexity = exp(mean NLL per token) over all evaluated tokens; valid/test are
cut into B = eval_batch_size streams and T-step minibatches like the training
data, so the last `< B * T + B` tokens of a split are not scored.

Outputs in the workdir: config.json ({"train": the LMTrainConfig, "model":
the LMConfig, "num_params", "network", "steps_per_epoch"}), metrics.csv
(+ TensorBoard events), one orbax checkpoint per epoch in checkpoints/
(`--resume` continues after the last complete epoch; each checkpoint's
metadata holds config.json's contents too), results.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from bpm_jax import lm, ptb
from train import devices as devices_lib
from train import distributed
from train import lm_learner as learner_lib
from train import metrics as metrics_lib
from train import run as run_lib
from train.lm_config import RUN_CONTROL_FIELDS, LMHParams, LMTrainConfig
from train.lm_learner import LMTrainState, Split

PyTree = Any

RESULTS_JSON = "results.json"


# --------------------------------------------------------------------------
# The seed-vmapped programs of one model.


def init_states(model_config: lm.LMConfig, seed: int, num_seeds: int) -> LMTrainState:
  """Seed-stacked initial LMTrainState [S, ...]; model s from key(seed + s)."""
  model = lm.PlasticLSTMLanguageModel(model_config)
  return learner_lib.init_states(model, run_lib.seed_keys(seed, num_seeds))


def abstract_state(model_config: lm.LMConfig, num_seeds: int) -> LMTrainState:
  """Shapes/dtypes of the seed-stacked LMTrainState (for restoring)."""
  return jax.eval_shape(lambda: init_states(model_config, 0, num_seeds))


def initial_carry(model_config: lm.LMConfig, batch_size: int, num_seeds: int) -> lm.Carry:
  """[S, B, ...] zero carry of B streams per seed."""
  carry = lm.PlasticLSTMLanguageModel(model_config).initialize_carry(batch_size)
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (num_seeds,) + x.shape), carry)


def compiled_chunk(
  model_config: lm.LMConfig,
  bound_eta: bool,
  state: LMTrainState,
  carry: lm.Carry,
  chunk: Split,
  hparams: LMHParams,
):
  """(the compiled seed-vmapped `train_chunk` for these shapes, compile seconds).

  Called as `fn(state, carry, chunk.inputs, chunk.targets, chunk.active, hparams)`.
  """
  model = lm.PlasticLSTMLanguageModel(model_config)
  num_seeds = jax.tree.leaves(state)[0].shape[0]
  build = lambda: devices_lib.vmap_over_agents(
    functools.partial(learner_lib.train_chunk, model, bound_eta=bound_eta),
    (0, 0, None, None, None, None),
    num_seeds,
  )
  return run_lib.compiled(
    ("lm_train_chunk", model_config, bound_eta, devices_lib.placement_key(num_seeds)),
    build,
    state,
    carry,
    chunk.inputs,
    chunk.targets,
    chunk.active,
    hparams,
  )


def perplexity(model_config: lm.LMConfig, params: PyTree, split: Split) -> np.ndarray:
  """[S] perplexities of the seed-stacked `params` on `split`."""
  model = lm.PlasticLSTMLanguageModel(model_config)
  num_seeds = jax.tree.leaves(params)[0].shape[0]
  build = lambda: devices_lib.vmap_over_agents(
    functools.partial(learner_lib.evaluate, model), (0, None, None, None), num_seeds
  )
  fn, _ = run_lib.compiled(
    ("lm_evaluate", model_config, devices_lib.placement_key(num_seeds)),
    build,
    params,
    split.inputs,
    split.targets,
    split.active,
  )
  nll = np.asarray(
    distributed.to_host(fn(params, split.inputs, split.targets, split.active)), np.float64
  )
  return np.exp(nll / split.num_tokens)


# --------------------------------------------------------------------------
# Data, metrics, saved settings.


@dataclasses.dataclass
class _Data:
  """The minibatches of a run; valid and test padded to one length (one program)."""

  corpus: ptb.Corpus
  train: Split
  valid: Split
  test: Split
  steps_per_epoch: int
  chunk_size: int


def _load_data(config: LMTrainConfig) -> _Data:
  ptb.find_split_files(config.data_dir)  # Fail fast, before reading or writing.
  corpus = ptb.load_corpus(config.data_dir)
  train = Split.from_ids(corpus.train, config.batch_size, config.unroll)
  valid = Split.from_ids(corpus.valid, config.eval_batch_size, config.unroll)
  test = Split.from_ids(corpus.test, config.eval_batch_size, config.unroll)
  if config.max_eval_minibatches:
    valid = valid.slice(0, config.max_eval_minibatches)
    test = test.slice(0, config.max_eval_minibatches)
  eval_length = max(len(valid), len(test))
  steps_per_epoch = len(train)
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  return _Data(
    corpus,
    train,
    valid.padded(eval_length),
    test.padded(eval_length),
    steps_per_epoch,
    min(config.chunk_size, steps_per_epoch),
  )


def metric_fieldnames(num_seeds: int) -> list[str]:
  per_seed = [
    f"{name}_seed{s}" for name in ("train_ppl", "valid_ppl", "test_ppl") for s in range(num_seeds)
  ]
  return [
    "step",
    "epoch",
    "learning_rate",
    "train_ppl",
    "valid_ppl",
    "test_ppl",
    "grad_norm",
    "tokens_per_s",
  ] + per_seed


def valid_history(path: str, num_seeds: int) -> list[list[float]]:
  """[epochs][S] validation perplexities recorded in a metrics CSV."""
  if not os.path.exists(path):
    return []
  rows = metrics_lib.read_csv(path)
  return [
    [row[f"valid_ppl_seed{s}"] for s in range(num_seeds)]
    for row in rows
    if not math.isnan(row.get("valid_ppl", math.nan))
  ]


def training_time(path: str, tokens_per_step: int) -> tuple[float, float]:
  """(seconds, tokens/s) of the training chunks recorded in a metrics CSV.

  Summed over every session of a resumed run: each chunk row holds its step
  count (the step difference to the row before) and its tokens/s. Evaluation
  time is not included. (nan, nan) without chunk rows.
  """
  if not os.path.exists(path):
    return math.nan, math.nan
  seconds, tokens, previous = 0.0, 0, 0
  for row in metrics_lib.read_csv(path):
    rate = row.get("tokens_per_s", math.nan)
    if math.isnan(rate) or rate <= 0:
      continue
    step = int(row["step"])
    chunk_tokens = (step - previous) * tokens_per_step
    seconds += chunk_tokens / rate
    tokens += chunk_tokens
    previous = step
  if not tokens:
    return math.nan, math.nan
  return seconds, tokens / seconds


def saved_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
  """The LMTrainConfig fields of a config.json's contents (its "train" entry)."""
  return LMTrainConfig.saved_settings(payload["train"])


def saved_run_settings(payload: Mapping[str, Any]) -> dict[str, Any]:
  """`saved_settings` plus the data's `vocab_size` (what a resume is checked against)."""
  return dict(saved_settings(payload), vocab_size=payload.get("model", {}).get("vocab_size"))


def load_config(workdir: str) -> LMTrainConfig:
  """The LMTrainConfig saved in `workdir`: config.json's, else the latest checkpoint's."""
  payload, _ = run_lib.saved_payload(workdir)
  return LMTrainConfig.from_dict(saved_settings(payload))


def _fmt(values: np.ndarray) -> str:
  values = np.asarray(values, np.float64).reshape(-1)
  if values.size == 1:
    return f"{values[0]:.2f}"
  return f"{values.mean():.2f} (seeds {', '.join(f'{v:.2f}' for v in values)})"


def _per_seed(name: str, values: np.ndarray) -> dict[str, float]:
  """{name: mean, name_seed{s}: value of seed s}."""
  row = {name: float(np.mean(values))}
  row.update({f"{name}_seed{s}": float(v) for s, v in enumerate(values)})
  return row


# --------------------------------------------------------------------------
# The run.


def _train_epoch(
  run: run_lib.Run,
  config: LMTrainConfig,
  model_config: lm.LMConfig,
  data: _Data,
  state: LMTrainState,
  epoch: int,
  progress: metrics_lib.Progress,
) -> tuple[LMTrainState, list[dict[str, Any]]]:
  """The chunks of 1-based `epoch`; returns (state, its metric rows, not written)."""
  hparams = config.hparams(epoch)
  learning_rate = float(hparams.learning_rate)
  carry = initial_carry(model_config, config.batch_size, config.num_seeds)
  tokens_per_step = config.num_seeds * config.batch_size * config.unroll
  rows = []
  done = 0
  while done < data.steps_per_epoch:
    n = min(data.chunk_size, data.steps_per_epoch - done)
    chunk = data.train.slice(done, done + n).padded(data.chunk_size)
    fn, _ = compiled_chunk(model_config, config.bound_eta, state, carry, chunk, hparams)
    watch = metrics_lib.Stopwatch()
    state, carry, metrics = fn(state, carry, chunk.inputs, chunk.targets, chunk.active, hparams)
    metrics = jax.tree.map(lambda m: m[:, :n], distributed.to_host(metrics))
    seconds = watch.lap()  # Leaves of `metrics`: [S, n].
    run.check_finite(
      metrics["finite"],
      describe=lambda bad, seeds: (
        f"training loss or gradient at epoch {epoch}, minibatch {done + bad} "
        f"(seed index {seeds}, network {config.network}, learning rate "
        f"{learning_rate:.4g})"
      ),
      good_rows=lambda bad: rows,
      lost="this epoch was not saved",
      hint="Lower --learning_rate, --grad_clip_norm or --clip_value.",
    )
    done += n
    train_ppl = np.exp(np.mean(np.asarray(metrics["nll"], np.float64), axis=1))  # [S]
    row = {
      "step": int(distributed.to_host(state.step)[0]),
      "epoch": epoch - 1 + done / data.steps_per_epoch,
      "learning_rate": learning_rate,
      "train_ppl": float(np.mean(train_ppl)),
      "grad_norm": float(np.mean(metrics["grad_norm"])),
      "tokens_per_s": tokens_per_step * n / seconds,
    }
    row.update({f"train_ppl_seed{s}": float(p) for s, p in enumerate(train_ppl)})
    rows.append(row)
    progress.update(n, train_ppl=row["train_ppl"], tok_per_s=row["tokens_per_s"])
  return state, rows


def train_and_evaluate(config: LMTrainConfig, workdir: str) -> dict[str, Any]:
  """Trains `config.num_seeds` language models on PTB; evaluates valid and test.

  Args:
    config: the run.
    workdir: output directory (config.json, metrics.csv, TensorBoard events,
      checkpoints/, results.json).

  Returns:
    The contents of results.json: "valid_ppl" [S] (last epoch), "test_ppl" [S],
    "valid_ppl_per_epoch" [epochs][S], "seeds" [S], "hidden_size",
    "num_params", "epochs", "steps", "tokens_trained", "train_seconds" and
    "tokens_per_s" (training chunks of every session, evaluation excluded),
    "settings" (the run's config); plus "state", the seed-stacked LMTrainState.

  Raises:
    FileNotFoundError / ValueError: missing or malformed data (before any
      output is written).
    NonFiniteError: NaN/inf loss or gradient (nothing of that epoch is saved).
    checkpoint_lib.CheckpointError: unreadable checkpoint on --resume.
    ValueError / run_lib.WorkdirError / run_lib.NothingToDo: the workdir rules
      (see `train.run.claim_workdir`).
  """
  data = _load_data(config)
  model_config = config.resolve_model_config(data.corpus.vocab_size)
  num_params = lm.count_params(model_config)
  with run_lib.Run.for_config(
    workdir,
    config,
    unit="epoch",
    run_control=RUN_CONTROL_FIELDS,
    read_saved=saved_run_settings,
    extra_settings={"vocab_size": data.corpus.vocab_size},  # Another vocabulary: a mismatch.
    outputs=(RESULTS_JSON,),
  ) as run:
    state, metadata = run.restore_or_init(
      abstract_state=lambda: abstract_state(model_config, config.num_seeds),
      init=lambda: init_states(model_config, config.seed, config.num_seeds),
    )
    start_epoch = int(metadata["epoch"]) if metadata is not None else 0
    start_step = int(distributed.to_host(state.step)[0])
    run.write_config(
      {
        "train": config.to_dict(),
        "model": dataclasses.asdict(model_config),
        "num_params": num_params,
        "network": config.network,
        "steps_per_epoch": data.steps_per_epoch,
      }
    )
    run.open_metrics(
      metric_fieldnames(config.num_seeds),  # Drops an earlier test row.
      keep=lambda row: int(float(row["step"])) <= start_step and not row.get("test_ppl"),
    )
    print(
      metrics_lib.format_config(
        dict(
          config.to_dict(),
          hidden_size=model_config.hidden_size,
          embed_size=model_config.embedding_size,
          vocab_size=data.corpus.vocab_size,
          num_params=num_params,
          steps_per_epoch=data.steps_per_epoch,
        ),
        f"PTB language model ({config.network}). Workdir: {run.workdir}",
      ),
      flush=True,
    )
    num_seeds = config.num_seeds
    print(devices_lib.describe(num_seeds, devices_lib.agent_mesh(num_seeds)) + ".", flush=True)
    if start_epoch:
      print(f"Resuming after epoch {start_epoch} (step {start_step}).", flush=True)

    progress = run.progress(
      config.epochs * data.steps_per_epoch,
      start_epoch * data.steps_per_epoch,
      config.progress,
      desc=config.network,
    )
    for epoch in range(start_epoch + 1, config.epochs + 1):
      state, rows = _train_epoch(run, config, model_config, data, state, epoch, progress)
      valid_ppl = perplexity(model_config, state.params, data.valid)
      rows[-1].update(_per_seed("valid_ppl", valid_ppl))
      run.write_rows(rows)
      run.save(
        epoch,
        state,
        {
          "epoch": epoch,
          "step": int(distributed.to_host(state.step)[0]),
          "valid_ppl": valid_ppl.tolist(),
        },
      )
      progress.write(
        f"epoch {epoch}/{config.epochs}: lr {rows[-1]['learning_rate']:.4g}"
        f"  train ppl {rows[-1]['train_ppl']:.2f} (last chunk)"
        f"  valid ppl {_fmt(valid_ppl)}"
      )
    run.close_progress()

    test_ppl = perplexity(model_config, state.params, data.test)
    # metrics.csv is process 0's: it tells the others of a multi-process run.
    history = distributed.broadcast_json(
      valid_history(run.metrics_path, config.num_seeds) if run.writes else None
    )
    final_valid = (
      history[-1] if history else perplexity(model_config, state.params, data.valid).tolist()
    )
    step = int(distributed.to_host(state.step)[0])
    run.write_rows([dict(step=step, epoch=config.epochs, **_per_seed("test_ppl", test_ppl))])
    seconds, tokens_per_s = (
      training_time(run.metrics_path, config.num_seeds * config.batch_size * config.unroll)
      if run.writes
      else (math.nan, math.nan)
    )
    results = {
      "network": config.network,
      "seeds": [config.seed + s for s in range(config.num_seeds)],
      "hidden_size": model_config.hidden_size,
      "num_params": num_params,
      "epochs": config.epochs,
      "train_seconds": seconds,
      "tokens_per_s": tokens_per_s,
      "settings": config.to_dict(),
      "steps": step,
      "tokens_trained": step * config.batch_size * config.unroll,
      "valid_ppl": final_valid,
      "test_ppl": test_ppl.tolist(),
      "valid_tokens_scored": data.valid.num_tokens,
      "test_tokens_scored": data.test.num_tokens,
      "valid_tokens_total": len(data.corpus.valid),
      "test_tokens_total": len(data.corpus.test),
      "valid_ppl_per_epoch": history,
    }
    if run.writes:
      with open(os.path.join(run.workdir, RESULTS_JSON), "w") as f:
        json.dump(results, f, indent=2)
    partial = (
      f" (first {config.max_eval_minibatches} minibatches: "
      f"{data.valid.num_tokens} / {data.test.num_tokens} tokens)"
      if config.max_eval_minibatches
      else ""
    )
    print(
      f"{config.network}: valid ppl {_fmt(np.asarray(final_valid))}, "
      f"test ppl {_fmt(test_ppl)}{partial} after {step} steps",
      flush=True,
    )
    return dict(results, state=state)
