"""Tests of the PTB language model (bpm_jax.lm) and its trainer (train.lm*).

Everything runs on a small generated corpus (tmp dirs); nothing reads a real PTB.
"""

import functools
import json
import math
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from bpm_jax import lm, ptb
from bpm_jax.config import NETWORKS
from tests.plastic_params import with_plasticity
from train import lm as train_lm
from train import lm_config, lm_learner, lm_train
from train import metrics as metrics_lib
from train import run as run_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny model that escapes the unigram plateau within ~100 SGD steps.
TINY = dict(
  hidden_size=16,
  batch_size=8,
  unroll=10,
  eval_batch_size=4,
  init_scale=0.5,
  chunk_size=2,
  progress=False,
)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  """8 fixed 5-word sentences over 30 words, drawn at random, one per line."""
  rng = random.Random(0)
  words = [f"w{i}" for i in range(30)]
  sentences = [" ".join(rng.sample(words, 5)) for _ in range(8)]
  directory = tmp_path_factory.mktemp("corpus")
  for split, count in (("train", 1500), ("valid", 150), ("test", 150)):
    with open(directory / f"{split}.txt", "w") as f:
      f.write("\n".join(rng.choice(sentences) for _ in range(count)) + "\n")
  return str(directory)


def unigram_perplexity(corpus: ptb.Corpus, split: str) -> float:
  probs = np.bincount(corpus.train, minlength=corpus.vocab_size) / len(corpus.train)
  return float(np.exp(-np.mean(np.log(probs[corpus.split(split)]))))


# --------------------------------------------------------------------------
# Model.


@pytest.mark.parametrize("network", NETWORKS)
def test_carry_over_two_halves_equals_one_pass(network):
  config = lm.LMConfig(vocab_size=20, hidden_size=8, network=network, init_scale=0.5)
  model = lm.PlasticLSTMLanguageModel(config)
  tokens = jax.random.randint(jax.random.key(1), (3, 12), 0, 20)
  carry0 = model.initialize_carry(3)
  params = with_plasticity(model.init(jax.random.key(0), carry0, tokens[:, :1])["params"])
  apply = jax.jit(model.apply)
  carry_full, logits_full = apply({"params": params}, carry0, tokens)
  carry_half, logits_a = apply({"params": params}, carry0, tokens[:, :6])
  carry_two, logits_b = apply({"params": params}, carry_half, tokens[:, 6:])
  np.testing.assert_allclose(
    np.concatenate([logits_a, logits_b], axis=1), logits_full, rtol=1e-5, atol=1e-5
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), carry_two, carry_full
  )
  assert logits_full.shape == (3, 12, 20)
  if network != "rnn":
    assert float(jnp.abs(carry_full[0].traces.hebb).max()) > 1e-3
  # The carry matters: the second half from a zero state differs.
  _, logits_fresh = apply({"params": params}, carry0, tokens[:, 6:])
  assert float(jnp.abs(logits_fresh - logits_b).max()) > 1e-4


def test_lm_config_variants():
  for network in NETWORKS:
    pcfg = lm.LMConfig(vocab_size=10, network=network).plasticity_config()
    assert pcfg.network == network and pcfg.rule == "clip"
    assert pcfg.fan_out == (network in ("modplast", "retromod"))
    assert pcfg.eta_kind == ("full" if network == "plastic" else "scalar")
    # SPEC §4: one tanh modulator from h_t, full alpha, trace bound c = 2.0,
    # plasticity on the cell-candidate path only (the defaults Table 1 runs with).
    assert pcfg.modulation_fn == "tanh" and pcfg.num_modulators == 1
    assert pcfg.alpha_kind == "full" and not pcfg.partial_modulation
  train_defaults = lm_config.LMTrainConfig(data_dir="ptb").model_config(10)
  assert train_defaults.clip_value == 2.0 and train_defaults.plastic_gates is False
  with pytest.raises(ValueError, match="network"):
    lm.LMConfig(vocab_size=10, network="lstm")
  with pytest.raises(ValueError, match="dropout_rate"):
    lm.LMConfig(vocab_size=10, dropout_rate=1.0)


def test_param_counts_by_hand():
  v, h = 10000, 200
  layer = 4 * h * h + 4 * h + 4 * h * h  # input kernel (E = H) + bias, gates + W.
  rnn = v * h + 2 * layer + h * v + v
  expected = {
    "rnn": rnn,
    "plastic": rnn + 2 * (2 * h * h),  # alpha + per-connection eta.
    "modplast": rnn + 2 * (h * h + h + 1 + h + h),  # alpha, W_mod, b_mod, fan-out.
    "retromod": rnn + 2 * (h * h + h + 1 + h + h + 1),  # + scalar eta.
  }
  for network, count in expected.items():
    config = lm.LMConfig(vocab_size=v, hidden_size=h, network=network)
    assert lm.count_params(config) == count, network
    groups = lm.param_breakdown(config)
    assert groups["total"] == count
    assert groups["plasticity"] == count - rnn


def test_parameter_matching_paper_size():
  target = lm.PAPER_TARGET_PARAMS
  sizes = lm.match_hidden_sizes(target, 10000)
  assert set(sizes) == set(NETWORKS)
  assert 195 <= sizes["plastic"] < sizes["modplast"] <= sizes["retromod"] < sizes["rnn"] <= 210
  for network, hidden in sizes.items():
    count = lm.count_params(lm.LMConfig(vocab_size=10000, hidden_size=hidden, network=network))
    assert abs(count - target) / target <= 0.005, (network, hidden, count)
  report = lm.param_report([lm.LMConfig(10000, h, network=n) for n, h in sizes.items()], target)
  assert "retromod" in report and "plasticity" in report


def test_parameter_matching_fixed_embedding_and_failure():
  sizes = lm.match_hidden_sizes(2_000_000, 5000, networks=("rnn", "retromod"), embed_size=150)
  for network, hidden in sizes.items():
    count = lm.count_params(lm.LMConfig(5000, hidden, embed_size=150, network=network))
    assert abs(count - 2_000_000) / 2_000_000 <= 0.005
  with pytest.raises(ValueError, match="from target_params"):
    lm.match_hidden_sizes(3000, 50, networks=("rnn",))


# --------------------------------------------------------------------------
# Training pieces.


def test_sgd_update_clip_and_l2():
  params = {"a": jnp.array([1.0, -2.0]), "b": jnp.array(3.0)}
  grads = {"a": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}
  hparams = lm_learner.LMHParams(learning_rate=0.5, l2_penalty=0.1, grad_clip_norm=2.0)
  new, norm = jax.jit(lm_learner.sgd_step)(params, grads, hparams)
  g = np.array([3.0 + 0.1, -0.2, 4.0 + 0.3])
  assert float(norm) == pytest.approx(np.linalg.norm(g), rel=1e-6)
  step = 0.5 * g * 2.0 / np.linalg.norm(g)
  np.testing.assert_allclose(
    np.append(new["a"], new["b"]), np.array([1.0, -2.0, 3.0]) - step, rtol=1e-6
  )
  # Below the clip norm the gradient is used as is.
  small = {"a": jnp.array([0.1, 0.0]), "b": jnp.array(0.0)}
  hparams = lm_learner.LMHParams(learning_rate=1.0, l2_penalty=0.0, grad_clip_norm=2.0)
  new, _ = lm_learner.sgd_step(params, small, hparams)
  np.testing.assert_allclose(new["a"], [0.9, -2.0], rtol=1e-6)


@pytest.mark.parametrize("clip", [0.05, 100.0])  # The clip acts / does not.
def test_train_step_equals_the_old_sgd_formula(clip):
  """The optax chain of `make_optimizer` pinned to the hand-written update it
  replaced: g' = g + l2 theta; theta -= lr * clip / max(|g'|, clip) * g'."""
  lr, l2 = 0.7, 0.01
  config = lm.LMConfig(vocab_size=12, hidden_size=4, network="modplast", init_scale=0.5)
  model = lm.PlasticLSTMLanguageModel(config)
  state = lm_learner.init_state(model, jax.random.key(0))
  tokens = jax.random.randint(jax.random.key(1), (3, 7), 0, 12)
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  carry = model.initialize_carry(3)
  hparams = lm_learner.LMHParams(
    learning_rate=jnp.float32(lr), l2_penalty=jnp.float32(l2), grad_clip_norm=jnp.float32(clip)
  )
  grads = jax.grad(lambda p: lm_learner.lm_loss(p, model, carry, inputs, targets)[0])(state.params)
  # The old formula in NumPy (float64), from the same float32 gradient.
  theta = [np.asarray(t, np.float64) for t in jax.tree.leaves(state.params)]
  g = [np.asarray(x, np.float64) + l2 * t for x, t in zip(jax.tree.leaves(grads), theta)]
  norm = np.sqrt(sum(np.sum(np.square(x)) for x in g))
  assert (norm > clip) == (clip < 1.0)
  expected = [t - lr * clip / max(norm, clip) * x for t, x in zip(theta, g)]
  step = jax.jit(functools.partial(lm_learner.train_step, model))
  new_state, _, metrics = step(state, carry, inputs, targets, hparams)
  assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-6)
  assert int(new_state.step) == 1
  for got, want in zip(jax.tree.leaves(new_state.params), expected):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_train_chunk_carries_the_state_from_one_minibatch_to_the_next():
  """h, c, Hebb and E go on from minibatch to minibatch (SPEC §5.7): the scan
  of `train_chunk` equals `train_step` by hand with each step's carry passed
  on, and differs from the same steps started from a zero carry."""
  config = lm.LMConfig(vocab_size=12, hidden_size=6, network="retromod", init_scale=0.5)
  model = lm.PlasticLSTMLanguageModel(config)
  state = lm_learner.init_state(model, jax.random.key(0))
  state = state.replace(params=with_plasticity(state.params))
  tokens = np.asarray(jax.random.randint(jax.random.key(1), (3, 3 * 5 + 1), 0, 12))
  split = lm_learner.Split.from_ids(tokens.T.reshape(-1), batch_size=3, unroll=5)
  assert len(split) == 3
  hparams = lm_learner.LMHParams(learning_rate=0.5, l2_penalty=0.0, grad_clip_norm=5.0)
  carry0 = model.initialize_carry(3)
  chunk = jax.jit(functools.partial(lm_learner.train_chunk, model))
  got_state, got_carry, got = chunk(
    state, carry0, split.inputs, split.targets, split.active, hparams
  )
  step = jax.jit(functools.partial(lm_learner.train_step, model))
  by_hand, fresh = state, state
  carry, nll, fresh_nll = carry0, [], []
  for t in range(3):
    by_hand, carry, metrics = step(by_hand, carry, split.inputs[t], split.targets[t], hparams)
    nll.append(float(metrics["nll"]))
    fresh, _, metrics = step(fresh, carry0, split.inputs[t], split.targets[t], hparams)
    fresh_nll.append(float(metrics["nll"]))
  np.testing.assert_allclose(np.asarray(got["nll"]), nll, rtol=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    (got_state.params, got_carry),
    (by_hand.params, carry),
  )
  # Traces built up over the three minibatches (E's rate starts at 0.01).
  assert float(jnp.abs(got_carry[0].traces.hebb).max()) > 1e-4
  assert float(jnp.abs(got_carry[0].traces.elig).max()) > 1e-4
  # A zero carry at each minibatch is another run from the second one on.
  assert fresh_nll[0] == pytest.approx(nll[0], rel=1e-6)
  assert abs(fresh_nll[2] - nll[2]) > 1e-3


def test_the_host_loop_carries_the_state_across_chunks(corpus_dir, tmp_path):
  """Chunks of 1 minibatch (the carry crosses the host loop at every step)
  give the run of chunks of 4 (it crosses inside the compiled scan)."""
  results = []
  for chunk_size in (1, 4):
    config = lm_config.LMTrainConfig(
      data_dir=corpus_dir,
      network="modplast",
      epochs=1,
      max_steps_per_epoch=4,
      max_eval_minibatches=2,
      **dict(TINY, chunk_size=chunk_size),
    )
    results.append(lm_train.train_and_evaluate(config, str(tmp_path / f"chunk{chunk_size}")))
  one, four = results
  assert int(one["state"].step[0]) == int(four["state"].step[0]) == 4
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
    one["state"].params,
    four["state"].params,
  )
  assert one["valid_ppl"][0] == pytest.approx(four["valid_ppl"][0], rel=1e-4)


def test_old_config_json_gets_the_fields_it_predates():
  saved = lm_config.LMTrainConfig(data_dir="ptb", hidden_size=16).to_dict()
  del saved["plastic_gates"], saved["alpha_kind"]  # Not fields before the split.
  config = lm_config.LMTrainConfig.from_dict(lm_config.LMTrainConfig.saved_settings(saved))
  assert config == lm_config.LMTrainConfig(data_dir="ptb", hidden_size=16)
  assert config.model_config(10).plastic_gates is False
  assert config.model_config(10).alpha_kind == "full"


def test_learning_rate_schedule():
  config = lm_config.LMTrainConfig(learning_rate=1.0, lr_decay=0.5, decay_after_epoch=5)
  assert [config.learning_rate_at(e) for e in (1, 5, 6, 8)] == [1.0, 1.0, 0.5, 0.125]


def test_bound_eta_projection():
  config = lm.LMConfig(vocab_size=10, hidden_size=4, network="retromod")
  params = {"lstm_0": {"eta": jnp.array(4.0), "w": jnp.full((4, 4), 7.0)}}
  projected = lm_learner.project_params(params, config, bound_eta=True)
  assert float(projected["lstm_0"]["eta"]) == 1.0
  assert float(projected["lstm_0"]["w"][0, 0]) == 7.0
  assert float(lm_learner.project_params(params, config, False)["lstm_0"]["eta"]) == 4.0
  plastic = config.replace(network="plastic")
  assert float(lm_learner.project_params(params, plastic, True)["lstm_0"]["eta"]) == 4.0


# --------------------------------------------------------------------------
# Whole runs.


@pytest.mark.parametrize("network", NETWORKS)
def test_each_variant_runs_two_steps(corpus_dir, tmp_path, network):
  config = lm_config.LMTrainConfig(
    data_dir=corpus_dir,
    network=network,
    epochs=1,
    max_steps_per_epoch=2,
    max_eval_minibatches=5,
    **TINY,
  )
  results = lm_train.train_and_evaluate(config, str(tmp_path))
  assert results["steps"] == 2
  assert results["tokens_trained"] == 2 * 8 * 10
  assert results["valid_tokens_scored"] == results["test_tokens_scored"] == 5 * 4 * 10
  for value in results["valid_ppl"] + results["test_ppl"]:
    assert math.isfinite(value) and 1.0 < value < 200.0
  assert int(results["state"].step[0]) == 2
  for name in ("config.json", "metrics.csv", "results.json"):
    assert os.path.exists(tmp_path / name), name
  assert os.path.isdir(tmp_path / "checkpoints" / "1")
  with open(tmp_path / "config.json") as f:
    saved = json.load(f)
  assert saved["model"]["network"] == network and saved["model"]["hidden_size"] == 16


def test_learns_and_resumes(corpus_dir, tmp_path):
  corpus = ptb.load_corpus(corpus_dir)
  unigram = unigram_perplexity(corpus, "valid")
  assert unigram > 15.0
  config = lm_config.LMTrainConfig(data_dir=corpus_dir, network="retromod", epochs=1, **TINY)
  first = lm_train.train_and_evaluate(config, str(tmp_path))
  steps_per_epoch = first["steps"]
  assert 100 <= steps_per_epoch <= 120
  # A second call without --resume refuses to overwrite the run.
  with pytest.raises(ValueError, match="--resume"):
    lm_train.train_and_evaluate(config.replace(epochs=2), str(tmp_path))
  second = lm_train.train_and_evaluate(config.replace(epochs=2, resume=True), str(tmp_path))
  assert second["steps"] == 2 * steps_per_epoch
  assert len(second["valid_ppl_per_epoch"]) == 2
  assert second["valid_ppl_per_epoch"][0] == first["valid_ppl"]
  # Well below the unigram perplexity (the corpus allows ~1.4).
  assert second["valid_ppl"][0] < 0.25 * unigram
  assert second["test_ppl"][0] < 0.25 * unigram
  assert second["valid_tokens_scored"] == 22 * 4 * 10  # The whole split, cut to B x T.
  # Wall time and tokens/s cover both sessions' training chunks.
  assert second["seeds"] == [0] and second["epochs"] == 2
  assert second["train_seconds"] > first["train_seconds"] > 0.0
  tokens = second["tokens_trained"]
  assert second["tokens_per_s"] == pytest.approx(tokens / second["train_seconds"])
  assert second["settings"]["network"] == "retromod" and second["settings"]["epochs"] == 2
  rows = metrics_lib.read_csv(str(tmp_path / "metrics.csv"))
  assert sum(not math.isnan(r["test_ppl"]) for r in rows) == 1  # Old test row dropped.
  assert [int(r["step"]) for r in rows] == sorted(int(r["step"]) for r in rows)
  # Changing a model setting on resume is refused.
  with pytest.raises(ValueError, match="differs"):
    lm_train.train_and_evaluate(
      config.replace(epochs=3, resume=True, init_scale=0.3), str(tmp_path)
    )


def test_nan_guard(corpus_dir, tmp_path):
  config = lm_config.LMTrainConfig(
    data_dir=corpus_dir,
    network="retromod",
    epochs=1,
    max_steps_per_epoch=6,
    learning_rate=1e38,
    **TINY,
  )
  with pytest.raises(run_lib.NonFiniteError, match="Non-finite .* epoch 1"):
    lm_train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints" / "1")


def test_target_params_sets_hidden_size(corpus_dir):
  corpus = ptb.load_corpus(corpus_dir)
  config = lm_config.LMTrainConfig(data_dir=corpus_dir, network="modplast", target_params=2_000_000)
  model_config = config.resolve_model_config(corpus.vocab_size)
  assert model_config.hidden_size > 100
  assert abs(lm.count_params(model_config) - 2_000_000) <= 0.005 * 2_000_000
  given = config.replace(hidden_size=100).resolve_model_config(corpus.vocab_size)
  assert given.hidden_size == 100  # An explicit H wins over the target.
  default = lm_config.LMTrainConfig(data_dir=corpus_dir, network="rnn")
  assert default.target_params == lm.PAPER_TARGET_PARAMS
  assert (
    default.replace(target_params=0).resolve_model_config(corpus.vocab_size).hidden_size
    == lm_config.DEFAULT_HIDDEN_SIZE
  )


# --------------------------------------------------------------------------
# Command line.


def parse(argv):
  fv = flags.FlagValues()
  train_lm.define_flags(fv)
  fv(["train.lm"] + argv)
  return fv


def test_bad_flags_rejected(corpus_dir, tmp_path):
  with pytest.raises(flags.IllegalFlagValueError, match="rnn|plastic|modplast|retromod"):
    parse(["--network=lstm"])
  with pytest.raises(ValueError) as info:
    train_lm.config_from_flags(parse([f"--workdir={tmp_path}"]))
  assert "--data_dir is required" in str(info.value) and "ptb.train.txt" in str(info.value)
  with pytest.raises(FileNotFoundError, match="simple-examples"):
    train_lm.config_from_flags(parse([f"--workdir={tmp_path}", f"--data_dir={tmp_path / 'nope'}"]))
  with pytest.raises(ValueError, match="--epochs=0 is invalid"):
    train_lm.config_from_flags(
      parse([f"--workdir={tmp_path}", f"--data_dir={corpus_dir}", "--epochs=0"])
    )
  with pytest.raises(ValueError, match="--workdir is required"):
    train_lm.config_from_flags(parse([f"--data_dir={corpus_dir}"]))
  config = train_lm.config_from_flags(
    parse(
      [f"--workdir={tmp_path}", f"--data_dir={corpus_dir}", "--network=plastic", "--hidden_size=32"]
    )
  )
  assert config.network == "plastic" and config.hidden_size == 32


def test_resume_flag_takes_the_saved_settings(corpus_dir, tmp_path):
  saved = lm_config.LMTrainConfig(
    data_dir=str(corpus_dir), network="retromod", hidden_size=12, epochs=2
  )
  (tmp_path / "config.json").write_text(
    json.dumps({"train": saved.to_dict(), "network": "retromod"})
  )
  # `--workdir=DIR --resume` alone continues the saved run (its data directory too).
  config = train_lm.config_from_flags(parse([f"--workdir={tmp_path}", "--resume", "--epochs=3"]))
  assert config == saved.replace(resume=True, epochs=3)
  # Without --resume the saved file is not read.
  with pytest.raises(ValueError, match="--data_dir is required"):
    train_lm.config_from_flags(parse([f"--workdir={tmp_path}"]))
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="config.json"):
    train_lm.config_from_flags(parse([f"--workdir={tmp_path}", "--resume"]))


def test_cli_fails_fast_without_data(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "train.lm",
      f"--workdir={workdir}",
      f"--data_dir={tmp_path / 'missing'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode != 0
  assert "does not exist" in result.stderr and "ptb.train.txt" in result.stderr
  assert not workdir.exists()
