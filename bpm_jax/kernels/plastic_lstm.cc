// Fused CPU kernels of the plastic LSTM's cell path (XLA FFI custom calls).
//
// The math is SPEC.md §4 with the plasticity of §2-3 on the h_tm1 -> cell
// candidate path (not on the gates), trace rule `clip`, tanh modulators.
// Python side, shapes, conventions and the supported configurations:
// bpm_jax/fused_lstm.py.
//
// Per stream b and step t (rows i: presynaptic h_tm1, columns j: units):
//
//   forward
//     [a_i a_f a_o] = x[0:3H] + h_tm1 @ U                    (U: [H, 3H])
//     a_g  = x[3H:] + sum_i h_tm1_i (W_ij + alpha_ij Hebb_ij)
//     i, f, o = sigmoid(a_i, a_f, a_o);  g = tanh(a_g)
//     c = f c_tm1 + i g;  h = o tanh(c)
//     m_k  = tanh(sum_j h_j W_mod_jk + b_mod_k)         (modplast, retromod)
//     r_j  = sum_k m_k V_kj + u_j                         (fan-out)
//     Hebb'_ij = clip(Hebb_ij + eta_ij h_tm1_i g_j, -c, c)        (plastic)
//     Hebb'_ij = clip(Hebb_ij + r_j h_tm1_i g_j, -c, c)           (modplast)
//     Hebb'_ij = clip(Hebb_ij + r_j E_ij, -c, c);                 (retromod,
//     E'_ij    = (1 - eta_ij) E_ij + eta_ij h_tm1_i g_j             old E)
//
//   alpha and eta are [H, H] here (the Python side broadcasts per-neuron
//   alpha and a scalar eta; their cotangents are summed there), and one
//   modulator without fan-out is V = 1, u = 0.
//
//   backward: restates the chain rule of JAX's autodiff of
//   bpm_jax.plasticity.lstm_step (vmapped over the streams), with its
//   conventions at the clip bounds (common.h: ClipGrad). It returns the
//   cotangent of the pre-activations a (= that of x) of every step; the
//   cotangents of U and W are their outer-product sums with h_tm1, which the
//   Python side takes as one matrix product over all steps and streams.
//
// Operand order, shared with bpm_jax/fused_lstm.py (`LstmOperands`, defined
// there once; keep the .Arg<>()/.Ret<>() lists at the end of this file in
// step):
//   x h0 c0 hebb0 elig0 u w alpha eta w_mod b_mod fan_v fan_u clip
//   h c act m g_h g_m g_c g_hebb g_elig
// The forward takes the first fourteen and returns h c act m hebb elig; the
// backward takes all but x and returns the cotangents of h0 .. clip except
// u and w, after g_x.
//
// The forward keeps no trace history. The backward recomputes each stream's
// old traces of steps 1 .. T-1 from hebb0 (and elig0) and the stored h, act
// and m into a per-shard scratch of T - 1 [H, H] slots (the forward's own
// machine code: the same numbers bit for bit), then walks the steps in
// reverse. Streams are split into shards on XLA's intra-op thread pool, each
// shard sums its own parameter cotangents, and the shards are added in a
// fixed order, so the numbers do not depend on which thread ran what.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using namespace bpm_kernels;  // NOLINT: the shared helpers of common.h

namespace {

// Parameters shared by the streams (one agent's).
struct LstmWeights {
  int64_t n = 0, k = 0, network = 0;
  const float* u = nullptr;      // [H, 3H] recurrent weights of i, f, o
  const float* w = nullptr;      // [H, H]
  const float* alpha = nullptr;  // [H, H]
  const float* eta = nullptr;    // [H, H]
  const float* w_mod = nullptr;  // [H, K]
  const float* b_mod = nullptr;  // [K]
  const float* fan_v = nullptr;  // [K, H]
  const float* fan_u = nullptr;  // [H]
  float c = 0.0f;
};

// Per-shard sums of the parameter cotangents computed in the kernel.
struct LstmParamGrads {
  std::vector<float> alpha, eta, w_mod, b_mod, fan_v, fan_u;
  float clip = 0.0f;

  void Reset(int64_t n, int64_t k) {
    alpha.assign(n * n, 0.0f);
    eta.assign(n * n, 0.0f);
    w_mod.assign(n * k, 0.0f);
    b_mod.assign(k, 0.0f);
    fan_v.assign(k * n, 0.0f);
    fan_u.assign(n, 0.0f);
    clip = 0.0f;
  }
};

inline float Sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

// r_j = sum_k m_k V_kj + u_j. Never inlined: the forward and the backward's
// recomputation run the same machine code (the same numbers bit for bit).
__attribute__((noinline)) void Rate(const LstmWeights& p, const float* m, float* rate) {
  const int64_t n = p.n;
  std::copy(p.fan_u, p.fan_u + n, rate);
  for (int64_t k = 0; k < p.k; ++k) {
    const float mk = m[k];
    const float* v = p.fan_v + k * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) rate[j] += mk * v[j];
  }
}

// The trace update of one step of one stream from h_tm1 (hp), the cell
// candidate g and the rate r [H] (modulated). hb, e: old traces; hb_new,
// e_new: new ones (may be hb, e). Never inlined, like Rate.
__attribute__((noinline)) void LstmUpdateTraces(const LstmWeights& p, const float* hp,
                                                const float* g, const float* r,
                                                const float* hb, const float* e,
                                                float* hb_new, float* e_new) {
  const int64_t n = p.n;
  const float c = p.c;
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* hr = hb + i * n;
    const float* er = p.eta + i * n;
    float* out = hb_new + i * n;
    if (p.network == kPlastic) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = Clip(hr[j] + er[j] * (xi * g[j]), c);
    } else if (p.network == kModplast) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = Clip(hr[j] + r[j] * (xi * g[j]), c);
    } else {
      const float* el = e + i * n;
      float* eout = e_new + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float e_old = el[j];
        out[j] = Clip(hr[j] + r[j] * e_old, c);
        eout[j] = (1.0f - er[j]) * e_old + er[j] * (xi * g[j]);
      }
    }
  }
}

// One step of one stream. hb, e: old traces; hb_new, e_new: new ones (may be
// hb, e). Writes h, c [H], act [4H] (i, f, o, g), m [K] (0 unless modulated).
// acc [4H], rate [H]: scratch.
void LstmStepForward(const LstmWeights& p, const float* hp, const float* cp,
                     const float* x, const float* hb, const float* e, float* h,
                     float* c, float* act, float* m, float* hb_new, float* e_new,
                     float* acc, float* rate) {
  const int64_t n = p.n, n3 = 3 * n;
  std::copy(x, x + 4 * n, acc);
  float* acc_g = acc + n3;
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* ur = p.u + i * n3;
#pragma omp simd
    for (int64_t j = 0; j < n3; ++j) acc[j] += xi * ur[j];
    const float* wr = p.w + i * n;
    const float* al = p.alpha + i * n;
    const float* hr = hb + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc_g[j] += xi * (wr[j] + al[j] * hr[j]);
  }
  for (int64_t j = 0; j < n3; ++j) act[j] = Sigmoid(acc[j]);
  for (int64_t j = 0; j < n; ++j) act[n3 + j] = std::tanh(acc_g[j]);
  const float *gi = act, *gf = act + n, *go = act + 2 * n, *gg = act + n3;
  for (int64_t j = 0; j < n; ++j) {
    c[j] = gf[j] * cp[j] + gi[j] * gg[j];
    h[j] = go[j] * std::tanh(c[j]);
  }
  if (p.network == kPlastic) {
    std::fill(m, m + p.k, 0.0f);
  } else {
    for (int64_t k = 0; k < p.k; ++k) {
      float s = 0.0f;
      for (int64_t j = 0; j < n; ++j) s += h[j] * p.w_mod[j * p.k + k];
      m[k] = std::tanh(s + p.b_mod[k]);
    }
    Rate(p, m, rate);
  }
  LstmUpdateTraces(p, hp, gg, rate, hb, e, hb_new, e_new);
}

// Scratch vectors of one shard's backward pass.
struct LstmScratch {
  std::vector<float> col, row, g_rate, g_g, g_mod, rate;
  explicit LstmScratch(int64_t n, int64_t k)
      : col(n), row(n), g_rate(n), g_g(n), g_mod(k), rate(n) {}
};

// Backward of LstmStepForward for one stream.
//   hp, cp: h_tm1, c_tm1; h, c, act, m: the step's outputs; hb, e: old traces.
//   g_tr, g_el: in: cotangents of the new traces; out: of the old ones.
//   g_h: in: all of h_t's cotangent (clobbered). g_c: in: c_t's cotangent
//   from the next step; out: c_tm1's. g_m: m_t's cotangent [K].
//   Writes g_a [4H] (cotangent of the pre-activations) and g_hp [H] (of
//   h_tm1); adds the kernel's parameter cotangents to pg.
void LstmStepBackward(const LstmWeights& p, const float* hp, const float* cp,
                      const float* h, const float* c, const float* act,
                      const float* m, const float* hb, const float* e, float* g_tr,
                      float* g_el, float* g_h, float* g_c, const float* g_m,
                      float* g_a, float* g_hp, LstmParamGrads& pg, LstmScratch& s) {
  const int64_t n = p.n, n3 = 3 * n, kk = p.k;
  const bool modulated = p.network != kPlastic;
  const float cv = p.c;
  const float* g = act + n3;
  float* rate = s.rate.data();
  float *col = s.col.data(), *row = s.row.data(), *g_rate = s.g_rate.data(),
        *g_g = s.g_g.data();
  if (modulated) Rate(p, m, rate);
  std::fill(col, col + n, 0.0f);
  std::fill(g_rate, g_rate + n, 0.0f);
  float g_clip = 0.0f;

  // Pass 1: backward of the trace updates.
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* hr = hb + i * n;
    const float* er = p.eta + i * n;
    float* gt = g_tr + i * n;
    float* ge_eta = pg.eta.data() + i * n;
    float row_sum = 0.0f, c_sum = 0.0f;
    if (p.network == kPlastic) {
#pragma omp simd reduction(+ : row_sum, c_sum)
      for (int64_t j = 0; j < n; ++j) {
        float c_factor;
        const float gv = gt[j];
        const float gz = gv * ClipGrad(hr[j] + er[j] * (xi * g[j]), cv, &c_factor);
        c_sum += gv * c_factor;
        gt[j] = gz;
        ge_eta[j] += gz * (xi * g[j]);
        const float ge = gz * er[j];
        col[j] += xi * ge;
        row_sum += ge * g[j];
      }
    } else if (p.network == kModplast) {
#pragma omp simd reduction(+ : row_sum, c_sum)
      for (int64_t j = 0; j < n; ++j) {
        float c_factor;
        const float gv = gt[j];
        const float gz = gv * ClipGrad(hr[j] + rate[j] * (xi * g[j]), cv, &c_factor);
        c_sum += gv * c_factor;
        gt[j] = gz;
        col[j] += xi * gz;
        row_sum += gz * (rate[j] * g[j]);
      }
    } else {
      const float* el = e + i * n;
      float* ge = g_el + i * n;
#pragma omp simd reduction(+ : row_sum, c_sum)
      for (int64_t j = 0; j < n; ++j) {
        float c_factor;
        const float gv = gt[j];
        const float g_e = ge[j];
        const float gz = gv * ClipGrad(hr[j] + rate[j] * el[j], cv, &c_factor);
        c_sum += gv * c_factor;
        gt[j] = gz;
        g_rate[j] += gz * el[j];
        ge[j] = gz * rate[j] + (1.0f - er[j]) * g_e;
        ge_eta[j] += g_e * (xi * g[j] - el[j]);
        const float gee = g_e * er[j];
        col[j] += xi * gee;
        row_sum += gee * g[j];
      }
    }
    row[i] = row_sum;
    g_clip += c_sum;
  }
  pg.clip += g_clip;
  for (int64_t i = 0; i < n; ++i) g_hp[i] = row[i];
  if (p.network == kModplast) {
    for (int64_t j = 0; j < n; ++j) {
      g_rate[j] = g[j] * col[j];
      g_g[j] = rate[j] * col[j];
    }
  } else {
    std::copy(col, col + n, g_g);
  }

  // The modulators: r = m V + u, m = tanh(h W_mod + b_mod).
  if (modulated) {
    float* g_mod = s.g_mod.data();
    for (int64_t k = 0; k < kk; ++k) {
      const float* v = p.fan_v + k * n;
      float* gv = pg.fan_v.data() + k * n;
      float sum = g_m[k];
      for (int64_t j = 0; j < n; ++j) {
        sum += g_rate[j] * v[j];
        gv[j] += m[k] * g_rate[j];
      }
      g_mod[k] = sum * (1.0f - m[k] * m[k]);
      pg.b_mod[k] += g_mod[k];
    }
    for (int64_t j = 0; j < n; ++j) {
      pg.fan_u[j] += g_rate[j];
      float sum = 0.0f;
      for (int64_t k = 0; k < kk; ++k) {
        sum += p.w_mod[j * kk + k] * g_mod[k];
        pg.w_mod[j * kk + k] += h[j] * g_mod[k];
      }
      g_h[j] += sum;
    }
  }

  // The LSTM cell: c = f c_tm1 + i g, h = o tanh(c).
  const float *gi = act, *gf = act + n, *go = act + 2 * n;
  for (int64_t j = 0; j < n; ++j) {
    const float tc = std::tanh(c[j]);
    const float g_ct = g_c[j] + g_h[j] * go[j] * (1.0f - tc * tc);
    g_a[j] = g_ct * g[j] * gi[j] * (1.0f - gi[j]);
    g_a[n + j] = g_ct * cp[j] * gf[j] * (1.0f - gf[j]);
    g_a[2 * n + j] = g_h[j] * tc * go[j] * (1.0f - go[j]);
    g_a[n3 + j] = (g_g[j] + g_ct * gi[j]) * (1.0f - g[j] * g[j]);
    g_c[j] = g_ct * gf[j];
  }

  // Pass 2: backward of a = x + h_tm1 @ [U, W + alpha * Hebb].
  const float* g_ag = g_a + n3;
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* ur = p.u + i * n3;
    const float* wr = p.w + i * n;
    const float* al = p.alpha + i * n;
    const float* hr = hb + i * n;
    float* gt = g_tr + i * n;
    float* ga = pg.alpha.data() + i * n;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n3; ++j) sum += ur[j] * g_a[j];
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) {
      const float xg = xi * g_ag[j];
      gt[j] += al[j] * xg;
      ga[j] += xg * hr[j];
      sum += (wr[j] + al[j] * hr[j]) * g_ag[j];
    }
    g_hp[i] += sum;
  }
}

// Checks the shapes; finds H, K, the number of agents (from clip [...]) and
// the batch size B (per agent).
ffi::Error LstmShapes(const F32& u, const F32& b_mod, const F32& clip, const F32& h0,
                      int64_t network, int64_t* n, int64_t* k, Agents* agents,
                      int64_t* batch) {
  auto dims = u.dimensions();
  const int64_t rank = dims.size();
  if (rank < 2 || dims[rank - 1] != 3 * dims[rank - 2]) {
    return ffi::Error::InvalidArgument("fused plastic LSTM kernel: u must be [..., H, 3H].");
  }
  if (network < kPlastic || network > kRetromod) {
    return ffi::Error::InvalidArgument("fused plastic LSTM kernel: unknown network.");
  }
  *n = dims[rank - 2];
  agents->num = clip.element_count();
  if (agents->num < 1 || u.element_count() != agents->num * *n * 3 * *n ||
      b_mod.element_count() % agents->num != 0 ||
      h0.element_count() % (agents->num * *n) != 0) {
    return ffi::Error::InvalidArgument(
        "fused plastic LSTM kernel: operands do not share their leading dims.");
  }
  *k = b_mod.element_count() / agents->num;
  *batch = h0.element_count() / (agents->num * *n);
  return ffi::Error::Success();
}

LstmWeights AgentLstmWeights(const Agents& ag, int64_t a, int64_t n, int64_t k,
                             int64_t network, const F32& u, const F32& w,
                             const F32& alpha, const F32& eta, const F32& w_mod,
                             const F32& b_mod, const F32& fan_v, const F32& fan_u,
                             const F32& clip) {
  LstmWeights p;
  p.n = n;
  p.k = k;
  p.network = network;
  p.u = ag.At(u, a);
  p.w = ag.At(w, a);
  p.alpha = ag.At(alpha, a);
  p.eta = ag.At(eta, a);
  p.w_mod = ag.At(w_mod, a);
  p.b_mod = ag.At(b_mod, a);
  p.fan_v = ag.At(fan_v, a);
  p.fan_u = ag.At(fan_u, a);
  p.c = ag.At(clip, a)[0];
  return p;
}

ffi::Error LstmFwdImpl(ffi::ThreadPool pool, F32 x, F32 h0, F32 c0, F32 hebb0,
                       F32 elig0, F32 u, F32 w, F32 alpha, F32 eta, F32 w_mod,
                       F32 b_mod, F32 fan_v, F32 fan_u, F32 clip, F32Ret h_out,
                       F32Ret c_out, F32Ret act_out, F32Ret m_out, F32Ret hebb_out,
                       F32Ret elig_out, int64_t network) {
  int64_t n, k, batch;
  Agents ag;
  if (auto err = LstmShapes(u, b_mod, clip, h0, network, &n, &k, &ag, &batch);
      err.failure()) {
    return err;
  }
  const bool retro = network == kRetromod;
  const int64_t nn = n * n, num_shards = NumShards(pool, batch);
  const int64_t steps = x.element_count() / (ag.num * batch * 4 * n);
  for (int64_t a = 0; a < ag.num; ++a) {
    const LstmWeights p = AgentLstmWeights(ag, a, n, k, network, u, w, alpha, eta,
                                           w_mod, b_mod, fan_v, fan_u, clip);
    const float *xa = ag.At(x, a), *h0a = ag.At(h0, a), *c0a = ag.At(c0, a),
                *hb0 = ag.At(hebb0, a), *e0 = ag.At(elig0, a);
    float *h_all = ag.At(&h_out, a), *c_all = ag.At(&c_out, a),
          *act_all = ag.At(&act_out, a), *m_all = ag.At(&m_out, a),
          *hb_run = ag.At(&hebb_out, a), *e_run = ag.At(&elig_out, a);
    if (!retro) e_run[0] = 0.0f;
    ParallelFor(pool, num_shards, [&](int64_t shard) {
      int64_t start, stop;
      ShardRange(shard, num_shards, batch, &start, &stop);
      std::vector<float> acc(4 * n), rate(n);
      for (int64_t b = start; b < stop; ++b) {
        float* hb = hb_run + b * nn;  // the running traces
        float* e = retro ? e_run + b * nn : nullptr;
        const float* hb_old = hb0 + b * nn;
        const float* e_old = retro ? e0 + b * nn : nullptr;
        const float *hp = h0a + b * n, *cp = c0a + b * n;
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t tb = t * batch + b;
          float *h = h_all + tb * n, *c = c_all + tb * n;
          LstmStepForward(p, hp, cp, xa + tb * 4 * n, hb_old, e_old, h, c,
                          act_all + tb * 4 * n, m_all + tb * k, hb, e, acc.data(),
                          rate.data());
          hp = h;
          cp = c;
          hb_old = hb;
          e_old = e;
        }
        if (steps == 0) {
          std::memcpy(hb, hb0 + b * nn, nn * sizeof(float));
          if (retro) std::memcpy(e, e0 + b * nn, nn * sizeof(float));
        }
      }
    });
  }
  return ffi::Error::Success();
}

ffi::Error LstmBwdImpl(ffi::ThreadPool pool, F32 h0, F32 c0, F32 hebb0, F32 elig0,
                       F32 u, F32 w, F32 alpha, F32 eta, F32 w_mod, F32 b_mod,
                       F32 fan_v, F32 fan_u, F32 clip, F32 h_in, F32 c_in,
                       F32 act_in, F32 m_in, F32 g_h_in, F32 g_m_in, F32 g_c_T,
                       F32 g_hebb_T, F32 g_elig_T, F32Ret g_x_out, F32Ret g_h0_out,
                       F32Ret g_c0_out, F32Ret g_hebb0_out, F32Ret g_elig0_out,
                       F32Ret g_alpha_out, F32Ret g_eta_out, F32Ret g_w_mod_out,
                       F32Ret g_b_mod_out, F32Ret g_fan_v_out, F32Ret g_fan_u_out,
                       F32Ret g_clip_out, int64_t network) {
  int64_t n, k, batch;
  Agents ag;
  if (auto err = LstmShapes(u, b_mod, clip, h0, network, &n, &k, &ag, &batch);
      err.failure()) {
    return err;
  }
  const bool retro = network == kRetromod;
  const bool modulated = network != kPlastic;
  const int64_t nn = n * n, num_shards = NumShards(pool, batch);
  const int64_t steps = h_in.element_count() / (ag.num * batch * n);
  // Old traces of steps 1 .. T-1, recomputed per stream (slot t - 1: step t's).
  const int64_t slots = std::max<int64_t>(steps, 1) - 1;
  for (int64_t a = 0; a < ag.num; ++a) {
    const LstmWeights p = AgentLstmWeights(ag, a, n, k, network, u, w, alpha, eta,
                                           w_mod, b_mod, fan_v, fan_u, clip);
    const float *h0a = ag.At(h0, a), *c0a = ag.At(c0, a), *hb0 = ag.At(hebb0, a),
                *e0 = ag.At(elig0, a), *h_all = ag.At(h_in, a), *c_all = ag.At(c_in, a),
                *act_all = ag.At(act_in, a), *m_all = ag.At(m_in, a),
                *g_h_all = ag.At(g_h_in, a), *g_m_all = ag.At(g_m_in, a),
                *g_cT = ag.At(g_c_T, a), *g_hT = ag.At(g_hebb_T, a),
                *g_eT = ag.At(g_elig_T, a);
    float *g_x = ag.At(&g_x_out, a), *g_h0 = ag.At(&g_h0_out, a),
          *g_c0 = ag.At(&g_c0_out, a), *g_hb0 = ag.At(&g_hebb0_out, a),
          *g_e0 = ag.At(&g_elig0_out, a);
    std::vector<LstmParamGrads> shard_grads(num_shards);
    ParallelFor(pool, num_shards, [&](int64_t shard) {
      int64_t start, stop;
      ShardRange(shard, num_shards, batch, &start, &stop);
      LstmParamGrads& pg = shard_grads[shard];
      pg.Reset(n, k);
      LstmScratch scratch(n, k);
      std::vector<float> g_h(n), g_next(n), rate(n);
      std::vector<float> hb_seq(slots * nn), e_seq(retro ? slots * nn : 0);
      for (int64_t b = start; b < stop; ++b) {
        auto row_of = [&](const float* all, int64_t t, int64_t width) {
          return all + (t * batch + b) * width;
        };
        auto h_before = [&](int64_t t) {
          return t > 0 ? row_of(h_all, t - 1, n) : h0a + b * n;
        };
        auto c_before = [&](int64_t t) {
          return t > 0 ? row_of(c_all, t - 1, n) : c0a + b * n;
        };
        auto hb_at = [&](int64_t t) {
          return t == 0 ? hb0 + b * nn : hb_seq.data() + (t - 1) * nn;
        };
        auto e_at = [&](int64_t t) -> const float* {
          return !retro ? nullptr : t == 0 ? e0 + b * nn : e_seq.data() + (t - 1) * nn;
        };
        for (int64_t t = 0; t + 1 < steps; ++t) {  // step t's new traces
          if (modulated) Rate(p, row_of(m_all, t, k), rate.data());
          LstmUpdateTraces(p, h_before(t), row_of(act_all, t, 4 * n) + 3 * n,
                           rate.data(), hb_at(t), e_at(t), hb_seq.data() + t * nn,
                           retro ? e_seq.data() + t * nn : nullptr);
        }
        float* g_tr = g_hb0 + b * nn;  // the running trace cotangents
        float* g_el = retro ? g_e0 + b * nn : nullptr;
        if (g_tr != g_hT + b * nn) std::memcpy(g_tr, g_hT + b * nn, nn * sizeof(float));
        if (retro && g_el != g_eT + b * nn) {
          std::memcpy(g_el, g_eT + b * nn, nn * sizeof(float));
        }
        float* g_c = g_c0 + b * n;  // the running cotangent of c
        std::copy(g_cT + b * n, g_cT + (b + 1) * n, g_c);
        std::fill(g_next.begin(), g_next.end(), 0.0f);  // h_t's via step t+1
        for (int64_t t = steps - 1; t >= 0; --t) {
          const float* gh = row_of(g_h_all, t, n);
          for (int64_t j = 0; j < n; ++j) g_h[j] = gh[j] + g_next[j];
          LstmStepBackward(p, h_before(t), c_before(t), row_of(h_all, t, n),
                           row_of(c_all, t, n), row_of(act_all, t, 4 * n),
                           row_of(m_all, t, k), hb_at(t), e_at(t), g_tr, g_el,
                           g_h.data(), g_c, row_of(g_m_all, t, k),
                           g_x + (t * batch + b) * 4 * n, g_next.data(), pg, scratch);
        }
        std::copy(g_next.begin(), g_next.end(), g_h0 + b * n);
      }
    });
    if (!retro) g_e0[0] = 0.0f;
    // The shards' parameter cotangents, added in shard order.
    struct Out {
      float* dst;
      const std::vector<float> LstmParamGrads::*src;
    };
    const Out outs[] = {
        {ag.At(&g_alpha_out, a), &LstmParamGrads::alpha},
        {ag.At(&g_eta_out, a), &LstmParamGrads::eta},
        {ag.At(&g_w_mod_out, a), &LstmParamGrads::w_mod},
        {ag.At(&g_b_mod_out, a), &LstmParamGrads::b_mod},
        {ag.At(&g_fan_v_out, a), &LstmParamGrads::fan_v},
        {ag.At(&g_fan_u_out, a), &LstmParamGrads::fan_u},
    };
    for (const Out& out : outs) {
      const int64_t size = (shard_grads[0].*out.src).size();
      std::fill(out.dst, out.dst + size, 0.0f);
      for (const LstmParamGrads& pg : shard_grads) {
        const std::vector<float>& v = pg.*out.src;
        for (int64_t q = 0; q < size; ++q) out.dst[q] += v[q];
      }
    }
    float g_clip = 0.0f;
    for (const LstmParamGrads& pg : shard_grads) g_clip += pg.clip;
    ag.At(&g_clip_out, a)[0] = g_clip;
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticLstmFwd, LstmFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // x [T, B, 4H]: x_t W_x + b, gates i, f, o, g
        .Arg<F32>()  // h0 [B, H]
        .Arg<F32>()  // c0 [B, H]
        .Arg<F32>()  // hebb0 [B, H, H]
        .Arg<F32>()  // elig0 [B, H, H] or [1]
        .Arg<F32>()  // u [H, 3H]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta [H, H]
        .Arg<F32>()  // w_mod [H, K]
        .Arg<F32>()  // b_mod [K]
        .Arg<F32>()  // fan_v [K, H]
        .Arg<F32>()  // fan_u [H]
        .Arg<F32>()  // clip []
        .Ret<F32>()  // h [T, B, H]
        .Ret<F32>()  // c [T, B, H]
        .Ret<F32>()  // act [T, B, 4H]: i, f, o, g
        .Ret<F32>()  // m [T, B, K]
        .Ret<F32>()  // hebb_T [B, H, H]
        .Ret<F32>()  // elig_T [B, H, H] or [1]
        .Attr<int64_t>("network"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticLstmBwd, LstmBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // h0 [B, H]
        .Arg<F32>()  // c0 [B, H]
        .Arg<F32>()  // hebb0 [B, H, H]
        .Arg<F32>()  // elig0 [B, H, H] or [1]
        .Arg<F32>()  // u [H, 3H]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta [H, H]
        .Arg<F32>()  // w_mod [H, K]
        .Arg<F32>()  // b_mod [K]
        .Arg<F32>()  // fan_v [K, H]
        .Arg<F32>()  // fan_u [H]
        .Arg<F32>()  // clip []
        .Arg<F32>()  // h [T, B, H]
        .Arg<F32>()  // c [T, B, H]
        .Arg<F32>()  // act [T, B, 4H]
        .Arg<F32>()  // m [T, B, K]
        .Arg<F32>()  // g_h [T, B, H]
        .Arg<F32>()  // g_m [T, B, K]
        .Arg<F32>()  // g_c_T [B, H]
        .Arg<F32>()  // g_hebb_T [B, H, H]
        .Arg<F32>()  // g_elig_T [B, H, H] or [1]
        .Ret<F32>()  // g_x [T, B, 4H]
        .Ret<F32>()  // g_h0 [B, H]
        .Ret<F32>()  // g_c0 [B, H]
        .Ret<F32>()  // g_hebb0 [B, H, H]
        .Ret<F32>()  // g_elig0 [B, H, H] or [1]
        .Ret<F32>()  // g_alpha [H, H]
        .Ret<F32>()  // g_eta [H, H]
        .Ret<F32>()  // g_w_mod [H, K]
        .Ret<F32>()  // g_b_mod [K]
        .Ret<F32>()  // g_fan_v [K, H]
        .Ret<F32>()  // g_fan_u [H]
        .Ret<F32>()  // g_clip []
        .Attr<int64_t>("network"));
