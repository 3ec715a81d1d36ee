"""The Omniglot one-shot network (Differentiable plasticity 4.3; SPEC.md §5.6).

A conv embedding (4 layers of 3x3 convolutions, stride 2, 64 channels, tanh,
'VALID' padding: 31 -> 15 -> 7 -> 3 -> 1) maps each step's image to
e_t [64]; a plastic output layer reads it:

    y_t    = softmax(e_t @ (W + alpha * Hebb_tm1) + 1000 * label_t)
    Hebb_t = Hebb_tm1 + eta * y_t * (e_t - y_t * Hebb_tm1)      (Oja, per synapse)

with `plasticity.plastic_drive` and `plasticity.hebbian_update(rule="oja")`
(pre = e_t, post = y_t), Hebb = 0 at the episode start. On presentation steps
the label clamps y_t to it, so the trace stores the embedding of each
character in its label's column; on the unlabelled test step y_T reads the
stored columns. `plastic=False` is the non-plastic baseline (the same conv
net, y_t = softmax(e_t @ W + 1000 * label_t)).

The convolutions are Flax `nn.Conv` layers; by default (`conv_impl="patches"`)
each computes its 3x3 stride-2 'VALID' convolution as nine strided slices and
one matmul (`patch_conv`, the same numbers): XLA:CPU runs the backward pass of
`lax.conv_general_dilated` inside a `lax.scan` (the trainer's chunks) about
15x slower than outside it (measured: 0.50 vs 0.035 s for 96 images), the
matmul form runs at full speed (0.022 s). `conv_impl="xla"` keeps XLA's
convolution (e.g. on GPU).

Init as the reference: W [64, n] ~ 0.01 N(0, 1); alpha [64, n] ~ 0.01 U(0, 1)
(`alpha_kind="full"`) or one shared scalar 0.01 (`single`); eta = 0.01; the
convolutions as PyTorch's default (kernel and bias U(-1/sqrt(fan_in),
1/sqrt(fan_in))). No output bias.

`OmniglotNet` maps ONE episode, images [T, 31, 31] and labels [T, n], to the
logits [T, n] (y_t = softmax(logits_t)); batch with `jax.vmap`.
"""

from __future__ import annotations

from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from bpm_jax import cells, plasticity
from bpm_jax.config import PlasticityConfig

Array = jax.Array
IMAGE_SIDE = 31
LABEL_SCALE = 1000.0  # The label's factor: it clamps the output on presentation steps.
ALPHA_KINDS = ("full", "single")


ConvImpl = Literal["patches", "xla"]
CONV_IMPLS = ("patches", "xla")


def patch_conv(
  lhs: Array,
  rhs: Array,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count: int = 1,
  precision=None,
) -> Array:
  """`lax.conv_general_dilated` for Flax's NHWC x HWIO convolutions as slices + one matmul.

  Covers 'VALID' padding without dilation or groups (the embedding's layers);
  anything else goes to `lax.conv_general_dilated`.

  Args:
    lhs: [N, H, W, C] inputs.
    rhs: [kh, kw, C, F] kernel.
    window_strides: (sh, sw).
    padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
      precision: as `lax.conv_general_dilated` (Flax passes them).

  Returns:
    [N, H', W', F], H' = (H - kh) // sh + 1.
  """
  dilated = any(d not in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
  if padding != "VALID" or dilated or feature_group_count != 1 or lhs.ndim != 4:
    return jax.lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
    )
  (kh, kw, channels, features), (sh, sw) = rhs.shape, window_strides
  out_h, out_w = (lhs.shape[1] - kh) // sh + 1, (lhs.shape[2] - kw) // sw + 1
  patches = jnp.concatenate(
    [
      lhs[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw, :]
      for i in range(kh)
      for j in range(kw)
    ],
    axis=-1,
  )  # [N, H', W', kh * kw * C], ordered as the kernel's (kh, kw, C).
  return jnp.matmul(patches, rhs.reshape(kh * kw * channels, features), precision=precision)


def embedding_sizes(side: int = IMAGE_SIDE, num_layers: int = 4) -> list[int]:
  """Spatial sizes through the 'VALID' 3x3 stride-2 convolutions: [31, 15, 7, 3, 1]."""
  sizes = [side]
  for _ in range(num_layers):
    sizes.append((sizes[-1] - 3) // 2 + 1)
  return sizes


class ConvEmbedding(nn.Module):
  """images [..., 31, 31] -> embeddings [..., features].

  Attributes:
    features: channels of every layer (paper 64); the embedding size.
    num_layers: 3x3 stride-2 'VALID' convolutions with tanh (paper 4: 31 -> 1).
    conv_impl: `patches` (`patch_conv`: fast in XLA:CPU loops) or `xla`; same numbers.
  """

  features: int = 64
  num_layers: int = 4
  conv_impl: ConvImpl = "patches"

  @nn.compact
  def __call__(self, images: Array) -> Array:
    batch, side = images.shape[:-2], images.shape[-2:]
    if side[0] != side[1] or embedding_sizes(side[0], self.num_layers)[-1] != 1:
      raise ValueError(
        f"images of {side} do not shrink to 1 x 1 through {self.num_layers} 3x3 stride-2 "
        f"convolutions (sizes {embedding_sizes(side[0], self.num_layers)}); use 31 x 31."
      )
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"conv_impl={self.conv_impl!r} is not one of {CONV_IMPLS}.")
    conv = patch_conv if self.conv_impl == "patches" else None
    x = images.reshape((-1,) + side + (1,))
    for layer in range(self.num_layers):
      fan_in = 9 * x.shape[-1]
      x = nn.Conv(
        self.features,
        (3, 3),
        strides=(2, 2),
        padding="VALID",
        kernel_init=cells.torch_kernel_init,
        bias_init=cells.torch_bias_init(fan_in),
        conv_general_dilated=conv,
        name=f"conv{layer}",
      )(x)
      x = jnp.tanh(x)
    return x.reshape(batch + (self.features,))


def output_step(
  params: plasticity.PlasticParams,
  hebb_tm1: Array | None,
  embedding: Array,
  label: Array,
  alpha_kind: str,
  label_scale: float = LABEL_SCALE,
) -> tuple[Array | None, Array]:
  """One step of the (plastic) output layer.

  Args:
    params: w [E, n], alpha [E, n] or [] and eta [] (None for the baseline).
    hebb_tm1: [E, n] Hebb_tm1 (None: no plasticity).
    embedding: [E] e_t.
    label: [n] label_t (one-hot, or zeros on the test step).
    alpha_kind: `full` or `single`.
    label_scale: the label's factor (1000).

  Returns:
    (Hebb_t [E, n] or None, logits_t [n]); y_t = softmax(logits_t).
  """
  logits = plasticity.plastic_drive(embedding, params.w, params.alpha, hebb_tm1, alpha_kind)
  logits = logits + label_scale * label
  if hebb_tm1 is None:
    return None, logits
  y = jax.nn.softmax(logits)
  return plasticity.hebbian_update(hebb_tm1, embedding, y, params.eta, "oja", 0.0), logits


class OmniglotNet(nn.Module):
  """Conv embedding + (plastic) softmax output layer for one episode (module docstring).

  Attributes:
    n_way: output units (labels).
    plastic: Oja-plastic output layer (True) or plain weights (the baseline).
    alpha_kind: `full` ([E, n]) or `single` (one shared scalar).
    init_scale: W ~ init_scale * N(0, 1), alpha ~ init_scale * U(0, 1) (single: = init_scale).
    eta_init: initial Oja rate eta.
    features: embedding size E (conv channels).
    label_scale: the label's factor (1000).
    conv_impl: how the convolutions are computed (`ConvEmbedding`; same numbers).
  """

  n_way: int = 5
  plastic: bool = True
  alpha_kind: str = "full"
  init_scale: float = 0.01
  eta_init: float = 0.01
  features: int = 64
  label_scale: float = LABEL_SCALE
  conv_impl: ConvImpl = "patches"

  def __post_init__(self):
    if self.alpha_kind not in ALPHA_KINDS:
      raise ValueError(
        f"{type(self).__name__}.alpha_kind={self.alpha_kind!r} is not one of {ALPHA_KINDS}."
      )
    super().__post_init__()

  @property
  def plasticity_config(self) -> PlasticityConfig:
    """Oja rule, scalar eta (the output layer's variant of SPEC §2.2)."""
    network = "plastic" if self.plastic else "rnn"
    return PlasticityConfig(network=network, rule="oja", alpha_kind=self.alpha_kind)

  @nn.compact
  def __call__(self, images: Array, labels: Array) -> Array:
    """images [T, 31, 31], labels [T, n] -> logits [T, n] (Hebb_0 = 0)."""
    if labels.ndim != 2 or labels.shape[-1] != self.n_way or labels.shape[0] != images.shape[0]:
      raise ValueError(
        f"labels have shape {labels.shape}; expected [T, n_way] = [{images.shape[0]}, "
        f"{self.n_way}]."
      )
    embeddings = ConvEmbedding(self.features, conv_impl=self.conv_impl, name="embedding")(
      images
    )  # [T, E]
    config = self.plasticity_config
    scale = self.init_scale
    alpha_init = (
      cells.constant(scale) if self.alpha_kind == "single" else cells.uniform_range(0.0, scale)
    )
    params = cells.declare_plastic_params(
      self,
      self.features,
      self.n_way,
      config,
      nn.initializers.normal(stddev=scale),
      alpha_init,
      self.eta_init,
      self.eta_init,
      jnp.float32,
    )
    hebb = plasticity.init_traces(config, self.features, self.n_way).hebb
    alpha_kind, label_scale = self.alpha_kind, self.label_scale

    def step(hebb, inputs):
      return output_step(params, hebb, *inputs, alpha_kind, label_scale)

    _, logits = jax.lax.scan(step, hebb, (embeddings, labels))
    return logits


def binary_cross_entropy(logits: Array, target: Array) -> Array:
  """Mean over units of -[t log y + (1 - t) log(1 - y)], y = softmax(logits) (PyTorch BCELoss).

  Args:
    logits: [n] final-step logits.
    target: [n] one-hot target.

  Returns:
    [] loss. log y and log(1 - y) are computed from the logits (stable) and
    clamped at -100 as PyTorch's BCELoss does.
  """
  log_y = jax.nn.log_softmax(logits)
  others = jnp.where(jnp.eye(logits.shape[-1], dtype=bool), -jnp.inf, logits[None, :])
  log_not_y = jax.nn.logsumexp(others, axis=-1) - jax.nn.logsumexp(logits)  # log(1 - y_j).
  log_y, log_not_y = jnp.maximum(log_y, -100.0), jnp.maximum(log_not_y, -100.0)
  return -jnp.mean(target * log_y + (1.0 - target) * log_not_y)
