"""Naive NumPy transcription of shared/SPEC.md §1-4, written from the equations.

Deliberately slow and explicit (loops over synapses), independent of
`bpm_jax.plasticity`: the tests pin the JAX code against this.

Conventions (SPEC §1): W[pre, post]; Hebbian product outer(pre, post);
per-neuron values index the postsynaptic neuron. Gate order of the LSTM
input drive: [i, f, o, g].
"""

import math

import numpy as np


def _f(name, v):
  if name == "tanh":
    return math.tanh(v)
  if name == "sigmoid":
    return 1.0 / (1.0 + math.exp(-v))
  return v


def _sigmoid(v):
  return 1.0 / (1.0 + math.exp(-v))


def _alpha(p, alpha_kind, i, j):
  a = np.asarray(p["alpha"])
  if alpha_kind == "full":
    return a[i, j]
  if alpha_kind == "per_neuron":
    return a[0, j]
  return float(a)


def _eta(p, key, i, j):
  e = np.asarray(p[key])
  return float(e) if e.ndim == 0 else e[i, j]


def drive(p, cfg, pre, hebb):
  """sum_i pre_i (W_ij + alpha_ij Hebb_ij) for each post j."""
  w = np.asarray(p["w"])
  n_pre, n_post = w.shape
  out = np.zeros(n_post)
  for j in range(n_post):
    s = 0.0
    for i in range(n_pre):
      eff = w[i, j]
      if hebb is not None:
        eff += _alpha(p, cfg["alpha_kind"], i, j) * hebb[i, j]
      s += pre[i] * eff
    out[j] = s
  return out


def modulators(p, cfg, h):
  """m_k = f(sum_i h_i Wmod_ik + b_k)."""
  wm, bm = np.asarray(p["mod_kernel"]), np.asarray(p["mod_bias"])
  return np.array(
    [
      _f(cfg["modulation_fn"], sum(h[i] * wm[i, k] for i in range(len(h))) + bm[k])
      for k in range(wm.shape[1])
    ]
  )


def rate_of(p, cfg, m, j, n_post):
  """M_t for postsynaptic unit j."""
  if cfg["fan_out"]:
    v, u = np.asarray(p["fanout_kernel"]), np.asarray(p["fanout_bias"])
    return sum(m[k] * v[k, j] for k in range(len(m))) + u[j]
  k = (j * len(m)) // n_post  # modulator k gates the k-th contiguous block
  return m[k]


def rule_update(rule, hebb_ij, r, pre_i, post_j, prod, c):
  """One synapse of SPEC §2.2; `prod` is pre_i*post_j or E_ij."""
  if rule == "clip":
    return min(max(hebb_ij + r * prod, -c), c)
  if rule == "decay":
    return (1.0 - r) * hebb_ij + r * prod
  if rule == "oja":
    return hebb_ij + r * post_j * (pre_i - post_j * hebb_ij)
  if rule == "soft_clip":
    d = r * prod
    v = hebb_ij + max(d, 0.0) * (1.0 - hebb_ij) - max(-d, 0.0) * (hebb_ij + 1.0)
    return min(max(v, -1.0), 1.0)
  raise ValueError(rule)


def traces_step(p, cfg, hebb, elig, pre, post, h_new, c):
  """New (hebb, elig, m) from the old ones (SPEC §2.2, §3.1, §3.2, §3.3)."""
  net = cfg["network"]
  n_pre, n_post = len(pre), len(post)
  k_mod = cfg["num_modulators"]
  if net == "rnn":
    return hebb, elig, np.zeros(k_mod)
  m = np.zeros(k_mod)
  if net in ("modplast", "retromod"):
    m = modulators(p, cfg, h_new)
  new_hebb = np.array(hebb, dtype=np.float64)
  new_elig = None if elig is None else np.array(elig, dtype=np.float64)
  for i in range(n_pre):
    for j in range(n_post):
      modulated = (not cfg["partial_modulation"]) or j < n_post // 2
      prod = pre[i] * post[j]
      if net == "plastic":
        new_hebb[i, j] = rule_update(
          cfg["rule"], hebb[i, j], _eta(p, "eta", i, j), pre[i], post[j], prod, c
        )
      elif net == "modplast":
        r = rate_of(p, cfg, m, j, n_post) if modulated else float(p["plain_eta"])
        new_hebb[i, j] = rule_update(cfg["rule"], hebb[i, j], r, pre[i], post[j], prod, c)
      else:  # retromod: Hebb with the OLD eligibility trace, then E.
        if modulated:
          r = rate_of(p, cfg, m, j, n_post)
          new_hebb[i, j] = rule_update(cfg["rule"], hebb[i, j], r, pre[i], post[j], elig[i, j], c)
        else:
          new_hebb[i, j] = rule_update(
            cfg["rule"], hebb[i, j], float(p["plain_eta"]), pre[i], post[j], prod, c
          )
        eta = _eta(p, "eta", i, j)
        new_elig[i, j] = (1.0 - eta) * elig[i, j] + eta * prod
  return new_hebb, new_elig, m


def rnn_episode(p, cfg, x_drives, c):
  """Plastic RNN over an episode. x_drives [T, H]. Returns hs [T,H], ms [T,K], hebb."""
  n = np.asarray(p["w"]).shape[0]
  h = np.zeros(n)
  hebb = None if cfg["network"] == "rnn" else np.zeros((n, n))
  elig = np.zeros((n, n)) if cfg["network"] == "retromod" else None
  hs, ms = [], []
  for xd in x_drives:
    d = drive(p, cfg, h, hebb)
    h_new = np.array([math.tanh(xd[j] + d[j]) for j in range(n)])
    hebb, elig, m = traces_step(p, cfg, hebb, elig, h, h_new, h_new, c)
    h = h_new
    hs.append(h)
    ms.append(m)
  return np.array(hs), np.array(ms), hebb


def lstm_episode(p, gate_kernel, cfg, x_drives, c):
  """Plastic LSTM (SPEC §4). x_drives [T, 4H] in gate order [i, f, o, g].

  gate_kernel: [H, 3H] non-plastic recurrent weights of i, f, o, or None for
  plastic gates (then p["w"] is [H, 4H] and post = [i, f, o, g]).
  """
  n = x_drives.shape[1] // 4
  n_post = np.asarray(p["w"]).shape[1]
  h, cell = np.zeros(n), np.zeros(n)
  hebb = None if cfg["network"] == "rnn" else np.zeros((n, n_post))
  elig = np.zeros((n, n_post)) if cfg["network"] == "retromod" else None
  hs, ms = [], []
  for xd in x_drives:
    d = drive(p, cfg, h, hebb)
    if gate_kernel is not None:
      gk = np.asarray(gate_kernel)
      rec_gates = [sum(h[i] * gk[i, j] for i in range(n)) for j in range(3 * n)]
      pre_act = xd + np.concatenate([rec_gates, d])
    else:
      pre_act = xd + d
    i_g = np.array([_sigmoid(v) for v in pre_act[:n]])
    f_g = np.array([_sigmoid(v) for v in pre_act[n : 2 * n]])
    o_g = np.array([_sigmoid(v) for v in pre_act[2 * n : 3 * n]])
    g = np.array([math.tanh(v) for v in pre_act[3 * n :]])
    cell = f_g * cell + i_g * g
    h_new = o_g * np.tanh(cell)
    post = g if gate_kernel is not None else np.concatenate([i_g, f_g, o_g, g])
    hebb, elig, m = traces_step(p, cfg, hebb, elig, h, post, h_new, c)
    h = h_new
    hs.append(h)
    ms.append(m)
  return np.array(hs), np.array(ms), hebb
