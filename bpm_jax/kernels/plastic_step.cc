// Fused CPU kernels of the plastic RNN (XLA FFI custom calls).
//
// The math is SPEC.md §2-3 for the papers' configuration of the plastic RNN:
// alpha `full`, trace rule `clip`, one modulator m = tanh(h @ w_mod + b_mod)
// without fan-out, scalar eta. Python side, shapes, conventions and the
// supported configurations: bpm_jax/fused_step.py.
//
// Per episode b (rows i: presynaptic h_tm1, columns j: postsynaptic h_t):
//
//   forward
//     a_j   = x_j + sum_i h_tm1_i (W_ij + alpha_ij Hebb_ij)   (x = x_t W_in + b)
//     h_j   = tanh(a_j)
//     m     = tanh(sum_j h_j w_mod_j + b_mod)              (modplast, retromod)
//     r     = eta (plastic) | m (modplast, retromod)
//     d_ij  = h_tm1_i h_j (plastic, modplast) | E_ij (retromod: the OLD E)
//     Hebb'_ij = clip(Hebb_ij + r d_ij, -c, c)
//     E'_ij    = (1 - eta) E_ij + eta h_tm1_i h_j        (retromod)
//
//   backward: restates the chain rule of JAX's autodiff of
//   bpm_jax.plasticity.rnn_step (vmapped over the episodes), including its
//   conventions at the clip bounds (cotangent 1 inside, 0.5 on a bound, 0
//   outside; the clip value c receives the rest).
//
// Operand order, shared with bpm_jax/fused_step.py (`Operands`, defined there
// once; keep the .Arg<>()/.Ret<>() lists at the end of this file in step):
//   x h0 hebb0 elig0 w alpha eta w_mod b_mod clip h m hebb_hist elig_hist
//   g_h g_m g_hebb g_elig
// Each handler takes the operands it uses in that order: the forward the
// first ten, the backward all but x, hebb0 and elig0. The backward returns
// the cotangents of the forward's operands, in the forward's order.
//
// Two handlers, BpmPlasticSeqFwd/Bwd: T steps of B episodes in one call. Each
// episode's [H, H] traces stay in the core's cache for the whole sequence.
// The steps are cut into segments of `segment` (k) steps (the last may be
// shorter); the forward writes the old traces of each segment's first step
// (steps 0, k, 2k, ...) to a checkpoint buffer [ceil(T / k), B, H, H] (unless
// save_history=0). The backward takes the segments last to first: per
// episode it recomputes the old traces of the segment's other steps from its
// checkpoint and the stored h and m (UpdateTraces, the forward's own
// arithmetic: the same numbers bit for bit) into a scratch of k - 1 [H, H]
// slots per shard, which stays in cache, and walks them in reverse. k = 1
// keeps every step's old traces (no recomputation). One step inside a
// `lax.scan` (a rollout that samples actions step by step) is the case T=1,
// its old traces being the one checkpoint.
//
// The per-episode step functions may write the new traces over the old ones
// and the old traces' cotangents over the new ones': every loop reads an
// element before it writes the same element, and reads no other.
//
// Episodes are split into shards that run on XLA's intra-op thread pool;
// each shard sums its own copy of the parameter gradients and the shards are
// added in a fixed order, so the numbers do not depend on which thread ran
// what.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common.h"

namespace ffi = xla::ffi;
using namespace bpm_kernels;  // NOLINT: the shared helpers of common.h

namespace {

// Parameters shared by the episodes.
struct Weights {
  int64_t n = 0;
  int64_t network = 0;
  const float* w = nullptr;  // [H, H]
  const float* alpha = nullptr;
  const float* w_mod = nullptr;
  float eta = 0.0f, b_mod = 0.0f, c = 0.0f;
};

// Per-shard sums of the parameter cotangents.
struct ParamGrads {
  std::vector<float> w, alpha, w_mod;
  float eta = 0.0f, b_mod = 0.0f, clip = 0.0f;

  void Reset(int64_t n) {
    w.assign(n * n, 0.0f);
    alpha.assign(n * n, 0.0f);
    w_mod.assign(n, 0.0f);
    eta = b_mod = clip = 0.0f;
  }
};

// The trace update of one step of one episode, from h_tm1 (hp), h_t (h) and
// the rate r (eta, or m_t if modulated). hb, e: old traces; hb_new, e_new: new
// traces (may be hb, e). The backward pass calls it again on the stored h and
// m to recompute a segment's traces. Elementwise, without sums, and never
// inlined: both passes run the same machine code (the same fused multiply-adds
// where the compiler contracts), so they get the same numbers bit for bit.
__attribute__((noinline)) void UpdateTraces(const Weights& p, const float* hp,
                                            const float* h, float r,
                                            const float* hb, const float* e,
                                            float* hb_new, float* e_new) {
  const int64_t n = p.n;
  const float c = p.c, eta = p.eta;
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* hr = hb + i * n;
    float* out = hb_new + i * n;
    if (p.network != kRetromod) {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) out[j] = Clip(hr[j] + r * (xi * h[j]), c);
    } else {
      const float* er = e + i * n;
      float* eout = e_new + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const float e_old = er[j];
        out[j] = Clip(hr[j] + r * e_old, c);
        eout[j] = (1.0f - eta) * e_old + eta * (xi * h[j]);
      }
    }
  }
}

// One step of one episode. hb, e: old traces; hb_new, e_new: new traces (may
// be hb, e). acc: scratch [H]. Writes h [H]; returns m (0 if not modulated).
float StepForward(const Weights& p, const float* hp, const float* x,
                  const float* hb, const float* e, float* h, float* hb_new,
                  float* e_new, float* acc) {
  const int64_t n = p.n;
  std::copy(x, x + n, acc);
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* al = p.alpha + i * n;
    const float* hr = hb + i * n;
    const float* wr = p.w + i * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) acc[j] += xi * (wr[j] + al[j] * hr[j]);
  }
  for (int64_t j = 0; j < n; ++j) h[j] = std::tanh(acc[j]);
  float r = p.eta, m = 0.0f;
  if (p.network != kPlastic) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) s += h[j] * p.w_mod[j];
    m = std::tanh(s + p.b_mod);
    r = m;
  }
  UpdateTraces(p, hp, h, r, hb, e, hb_new, e_new);
  return m;
}

// Backward of StepForward for one episode.
//   g_tr, g_el: in: cotangents of the new traces; out: of the old ones.
//   g_h: in: all of h_t's cotangent (clobbered). g_m: m_t's cotangent.
//   Writes g_a [H] (cotangent of a = of x) and g_hp [H] (of h_tm1);
//   adds the parameter cotangents to pg. col, row: scratch [H].
void StepBackward(const Weights& p, const float* hp, const float* h, float m,
                  const float* hb, const float* e, float* g_tr, float* g_el,
                  float* g_h, float g_m, float* g_a, float* g_hp, ParamGrads& pg,
                  float* col, float* row) {
  const int64_t n = p.n;
  const bool retro = p.network == kRetromod;
  const bool modulated = p.network != kPlastic;
  const float c = p.c, eta = p.eta;
  const float r = modulated ? m : eta;
  std::fill(col, col + n, 0.0f);
  float g_rate = 0.0f, g_c = 0.0f, g_eta_e = 0.0f;

  // Pass 1: backward of the trace updates.
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* hr = hb + i * n;
    float* gt = g_tr + i * n;
    float row_sum = 0.0f, rate_sum = 0.0f, c_sum = 0.0f, eta_sum = 0.0f;
    if (!retro) {
#pragma omp simd reduction(+ : row_sum, c_sum)
      for (int64_t j = 0; j < n; ++j) {
        float c_factor;
        const float g = gt[j];
        const float gz = g * ClipGrad(hr[j] + r * (xi * h[j]), c, &c_factor);
        c_sum += g * c_factor;
        gt[j] = gz;
        col[j] += xi * gz;
        row_sum += gz * h[j];
      }
    } else {
      const float* er = e + i * n;
      float* ge = g_el + i * n;
#pragma omp simd reduction(+ : row_sum, rate_sum, c_sum, eta_sum)
      for (int64_t j = 0; j < n; ++j) {
        float c_factor;
        const float g = gt[j];
        const float g_e = ge[j];
        const float gz = g * ClipGrad(hr[j] + r * er[j], c, &c_factor);
        c_sum += g * c_factor;
        gt[j] = gz;
        rate_sum += gz * er[j];
        ge[j] = gz * r + (1.0f - eta) * g_e;
        eta_sum += g_e * (xi * h[j] - er[j]);
        col[j] += xi * g_e;
        row_sum += g_e * h[j];
      }
      g_rate += rate_sum;
      g_eta_e += eta_sum;
    }
    row[i] = row_sum;
    g_c += c_sum;
  }

  // Cotangents of h_t, the rate and h_tm1 (outer-product part).
  const float scale = retro ? eta : r;  // the rate on outer(h_tm1, h_t)
  for (int64_t j = 0; j < n; ++j) g_h[j] += scale * col[j];
  for (int64_t i = 0; i < n; ++i) g_hp[i] = scale * row[i];
  if (!retro) {
    float s = 0.0f;
    for (int64_t j = 0; j < n; ++j) s += col[j] * h[j];
    g_rate = s;
  } else {
    pg.eta += g_eta_e;
  }
  if (modulated) {
    const float g_s = (g_m + g_rate) * (1.0f - m * m);
    for (int64_t j = 0; j < n; ++j) {
      pg.w_mod[j] += h[j] * g_s;
      g_h[j] += p.w_mod[j] * g_s;
    }
    pg.b_mod += g_s;
  } else {
    pg.eta += g_rate;
  }
  pg.clip += g_c;
  for (int64_t j = 0; j < n; ++j) g_a[j] = g_h[j] * (1.0f - h[j] * h[j]);

  // Pass 2: backward of a = x + h_tm1 @ (W + alpha * Hebb).
  for (int64_t i = 0; i < n; ++i) {
    const float xi = hp[i];
    const float* al = p.alpha + i * n;
    const float* hr = hb + i * n;
    float* gt = g_tr + i * n;
    float* ga = pg.alpha.data() + i * n;
    const float* wr = p.w + i * n;
    float* gw = pg.w.data() + i * n;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < n; ++j) {
      const float xg = xi * g_a[j];
      gt[j] += al[j] * xg;
      ga[j] += xg * hr[j];
      gw[j] += xg;
      s += (wr[j] + al[j] * hr[j]) * g_a[j];
    }
    g_hp[i] += s;
  }
}

// Adds the shards' parameter cotangents in shard order into the outputs.
void SumShards(const std::vector<ParamGrads>& shards, int64_t n, float* g_w,
               float* g_alpha, float* g_w_mod, float* g_eta, float* g_b_mod,
               float* g_clip) {
  std::fill(g_w, g_w + n * n, 0.0f);
  std::fill(g_alpha, g_alpha + n * n, 0.0f);
  std::fill(g_w_mod, g_w_mod + n, 0.0f);
  float eta = 0.0f, b_mod = 0.0f, clip = 0.0f;
  for (const ParamGrads& pg : shards) {
    for (int64_t k = 0; k < n * n; ++k) g_w[k] += pg.w[k];
    for (int64_t k = 0; k < n * n; ++k) g_alpha[k] += pg.alpha[k];
    for (int64_t k = 0; k < n; ++k) g_w_mod[k] += pg.w_mod[k];
    eta += pg.eta;
    b_mod += pg.b_mod;
    clip += pg.clip;
  }
  *g_eta = eta;
  *g_b_mod = b_mod;
  *g_clip = clip;
}

// Checks the shapes, finds H and the number of agents (from alpha
// [..., H, H] and eta [...]) and the batch size B (per agent).
ffi::Error Shapes(const F32& alpha, const F32& eta, const F32& h, int64_t network,
                  int64_t* n, Agents* agents, int64_t* batch) {
  auto dims = alpha.dimensions();
  const int64_t rank = dims.size();
  if (rank < 2 || dims[rank - 1] != dims[rank - 2]) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: alpha must be [..., H, H].");
  }
  if (network < kPlastic || network > kRetromod) {
    return ffi::Error::InvalidArgument("fused plastic kernel: unknown network.");
  }
  *n = dims[rank - 1];
  agents->num = eta.element_count();
  if (agents->num < 1 || alpha.element_count() != agents->num * *n * *n ||
      h.element_count() % (agents->num * *n) != 0) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: operands do not share their leading dims.");
  }
  *batch = h.element_count() / (agents->num * *n);
  return ffi::Error::Success();
}

Weights AgentWeights(const Agents& ag, int64_t a, int64_t n, int64_t network,
                     const F32& w, const F32& alpha, const F32& eta,
                     const F32& w_mod, const F32& b_mod, const F32& clip) {
  Weights p;
  p.n = n;
  p.network = network;
  p.w = ag.At(w, a);
  p.alpha = ag.At(alpha, a);
  p.w_mod = ag.At(w_mod, a);
  p.eta = ag.At(eta, a)[0];
  p.b_mod = ag.At(b_mod, a)[0];
  p.c = ag.At(clip, a)[0];
  return p;
}

// ---------------------------------------------------------------- sequences

// Asks Linux for transparent huge pages on a large fresh output buffer. The
// trace checkpoints (576 MB at T=120, B=30, H=200 with k = 1) are allocated
// anew by XLA on every call; touching them in 4 KiB pages costs ~140,000 page
// faults, about as long as the whole backward pass (at k = 1). A hint only:
// without it (or off Linux) the numbers are the same, just slower.
void AdviseHugePages(float* data, int64_t count) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = begin + static_cast<uintptr_t>(count) * sizeof(float);
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t last = end & ~(kHuge - 1);
  if (last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
}

// The number of segments of `steps` steps of `segment` steps each (the last
// one may be shorter): the forward keeps the old traces of the first step of
// each segment, the checkpoints [num_segments, B, H, H].
inline int64_t NumSegments(int64_t steps, int64_t segment) {
  return (steps + segment - 1) / segment;
}

ffi::Error CheckSegment(int64_t segment) {
  if (segment < 1) {
    return ffi::Error::InvalidArgument("fused plastic kernel: segment must be >= 1.");
  }
  return ffi::Error::Success();
}

// Whether a checkpoint buffer holds num_segments x B x H x H per agent.
bool CheckpointsFit(const F32& hist, const Agents& ag, int64_t num_segments,
                    int64_t batch, int64_t nn) {
  return static_cast<int64_t>(hist.element_count()) ==
         ag.num * num_segments * batch * nn;
}

ffi::Error SeqFwdImpl(ffi::ThreadPool pool, F32 x, F32 h0, F32 hebb0, F32 elig0,
                      F32 w, F32 alpha, F32 eta, F32 w_mod, F32 b_mod, F32 clip,
                      F32Ret h_out, F32Ret m_out, F32Ret hebb_out,
                      F32Ret elig_out, F32Ret hebb_hist, F32Ret elig_hist,
                      int64_t network, int64_t save_history, int64_t segment) {
  int64_t n, batch;
  Agents ag;
  if (auto err = Shapes(alpha, eta, h0, network, &n, &ag, &batch); err.failure()) {
    return err;
  }
  if (auto err = CheckSegment(segment); err.failure()) return err;
  const bool retro = network == kRetromod;
  const int64_t nn = n * n, num_shards = NumShards(pool, batch);
  const int64_t steps = x.element_count() / (ag.num * batch * n);
  const bool save = save_history != 0;
  if (save) {
    const int64_t num_segments = NumSegments(steps, segment);
    if (!CheckpointsFit(*hebb_hist, ag, num_segments, batch, nn) ||
        (retro && !CheckpointsFit(*elig_hist, ag, num_segments, batch, nn))) {
      return ffi::Error::InvalidArgument(
          "fused plastic kernel: the trace checkpoints must be "
          "[ceil(T / segment), B, H, H].");
    }
    AdviseHugePages(hebb_hist->typed_data(), hebb_hist->element_count());
    if (retro) AdviseHugePages(elig_hist->typed_data(), elig_hist->element_count());
  } else {
    hebb_hist->typed_data()[0] = 0.0f;
  }
  for (int64_t a = 0; a < ag.num; ++a) {
    const Weights p = AgentWeights(ag, a, n, network, w, alpha, eta, w_mod, b_mod,
                                   clip);
    const float *xa = ag.At(x, a), *h0a = ag.At(h0, a), *hb0 = ag.At(hebb0, a),
                *e0 = ag.At(elig0, a);
    float *h_all = ag.At(&h_out, a), *m_all = ag.At(&m_out, a),
          *hb_run = ag.At(&hebb_out, a), *e_run = ag.At(&elig_out, a),
          *hb_hist = ag.At(&hebb_hist, a), *e_hist = ag.At(&elig_hist, a);
    if (!retro) e_run[0] = 0.0f;
    if (!retro || !save) e_hist[0] = 0.0f;
    ParallelFor(pool, num_shards, [&](int64_t shard) {
      int64_t start, stop;
      ShardRange(shard, num_shards, batch, &start, &stop);
      std::vector<float> acc(n);
      for (int64_t b = start; b < stop; ++b) {
        float* hb = hb_run + b * nn;  // the running traces
        float* e = retro ? e_run + b * nn : nullptr;
        // Step 0 reads the initial traces, later steps update in place (one
        // pass per step, also when T = 1).
        const float* hb_old = hb0 + b * nn;
        const float* e_old = retro ? e0 + b * nn : nullptr;
        const float* hp = h0a + b * n;
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t tb = t * batch + b;
          if (save && t % segment == 0) {  // a checkpoint for the backward pass
            const int64_t sb = (t / segment) * batch + b;
            std::memcpy(hb_hist + sb * nn, hb_old, nn * sizeof(float));
            if (retro) std::memcpy(e_hist + sb * nn, e_old, nn * sizeof(float));
          }
          float* h = h_all + tb * n;
          m_all[tb] = StepForward(p, hp, xa + tb * n, hb_old, e_old, h, hb, e,
                                  acc.data());
          hp = h;
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

ffi::Error SeqBwdImpl(ffi::ThreadPool pool, F32 h0, F32 w, F32 alpha, F32 eta,
                      F32 w_mod, F32 b_mod, F32 clip, F32 h_in, F32 m_in,
                      F32 hebb_hist, F32 elig_hist, F32 g_h_in, F32 g_m_in,
                      F32 g_hebb_T, F32 g_elig_T, F32Ret g_x_out, F32Ret g_h0_out,
                      F32Ret g_hebb0_out, F32Ret g_elig0_out, F32Ret g_w_out,
                      F32Ret g_alpha_out, F32Ret g_eta_out, F32Ret g_w_mod_out,
                      F32Ret g_b_mod_out, F32Ret g_clip_out, int64_t network,
                      int64_t segment) {
  int64_t n, batch;
  Agents ag;
  if (auto err = Shapes(alpha, eta, h0, network, &n, &ag, &batch); err.failure()) {
    return err;
  }
  if (auto err = CheckSegment(segment); err.failure()) return err;
  const bool retro = network == kRetromod;
  const bool modulated = network != kPlastic;
  const int64_t nn = n * n, num_shards = NumShards(pool, batch);
  const int64_t steps = h_in.element_count() / (ag.num * batch * n);
  const int64_t num_segments = NumSegments(steps, segment);
  if (!CheckpointsFit(hebb_hist, ag, num_segments, batch, nn) ||
      (retro && !CheckpointsFit(elig_hist, ag, num_segments, batch, nn))) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: the trace checkpoints must be "
        "[ceil(T / segment), B, H, H].");
  }
  // Old traces of the steps of a segment after its first, recomputed from
  // the checkpoint (segment - 1 slots per shard, reused by all its segments).
  const int64_t slots = std::min(segment, std::max<int64_t>(steps, 1)) - 1;
  for (int64_t a = 0; a < ag.num; ++a) {
    const Weights p = AgentWeights(ag, a, n, network, w, alpha, eta, w_mod, b_mod,
                                   clip);
    const float *h0a = ag.At(h0, a), *h_all = ag.At(h_in, a), *m_all = ag.At(m_in, a),
                *hb_hist = ag.At(hebb_hist, a), *e_hist = ag.At(elig_hist, a),
                *g_h_all = ag.At(g_h_in, a), *g_m_all = ag.At(g_m_in, a),
                *g_hT = ag.At(g_hebb_T, a), *g_eT = ag.At(g_elig_T, a);
    float *g_x = ag.At(&g_x_out, a), *g_h0 = ag.At(&g_h0_out, a),
          *g_hb0 = ag.At(&g_hebb0_out, a), *g_e0 = ag.At(&g_elig0_out, a);
    std::vector<ParamGrads> shard_grads(num_shards);
    ParallelFor(pool, num_shards, [&](int64_t shard) {
      int64_t start, stop;
      ShardRange(shard, num_shards, batch, &start, &stop);
      ParamGrads& pg = shard_grads[shard];
      pg.Reset(n);
      std::vector<float> col(n), row(n), g_h(n), g_next(n);
      std::vector<float> hb_seg(slots * nn), e_seg(retro ? slots * nn : 0);
      auto h_before = [&](int64_t t, int64_t b) {  // h_tm1 of step t
        return t > 0 ? h_all + ((t - 1) * batch + b) * n : h0a + b * n;
      };
      for (int64_t b = start; b < stop; ++b) {
        float* g_tr = g_hb0 + b * nn;  // the running trace cotangents
        float* g_el = retro ? g_e0 + b * nn : nullptr;
        if (g_tr != g_hT + b * nn) std::memcpy(g_tr, g_hT + b * nn, nn * sizeof(float));
        if (retro && g_el != g_eT + b * nn) {
          std::memcpy(g_el, g_eT + b * nn, nn * sizeof(float));
        }
        std::fill(g_next.begin(), g_next.end(), 0.0f);  // h_t's cotangent via step t+1
        for (int64_t s = num_segments - 1; s >= 0; --s) {
          const int64_t t0 = s * segment, t1 = std::min(steps, t0 + segment);
          const float* hb_ck = hb_hist + (s * batch + b) * nn;
          const float* e_ck = retro ? e_hist + (s * batch + b) * nn : nullptr;
          // Old traces of step t: the checkpoint (t = t0) or slot t - t0 - 1,
          // recomputed from the stored h and m as the forward computed them.
          auto hb_at = [&](int64_t t) {
            return t == t0 ? hb_ck : hb_seg.data() + (t - t0 - 1) * nn;
          };
          auto e_at = [&](int64_t t) {
            return !retro ? nullptr : t == t0 ? e_ck : e_seg.data() + (t - t0 - 1) * nn;
          };
          for (int64_t t = t0; t + 1 < t1; ++t) {  // slot t - t0: step t's new traces
            const int64_t tb = t * batch + b;
            UpdateTraces(p, h_before(t, b), h_all + tb * n,
                         modulated ? m_all[tb] : p.eta, hb_at(t), e_at(t),
                         hb_seg.data() + (t - t0) * nn,
                         retro ? e_seg.data() + (t - t0) * nn : nullptr);
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const int64_t tb = t * batch + b;
            for (int64_t j = 0; j < n; ++j) g_h[j] = g_h_all[tb * n + j] + g_next[j];
            StepBackward(p, h_before(t, b), h_all + tb * n, m_all[tb], hb_at(t),
                         e_at(t), g_tr, g_el, g_h.data(), g_m_all[tb], g_x + tb * n,
                         g_next.data(), pg, col.data(), row.data());
          }
        }
        std::copy(g_next.begin(), g_next.end(), g_h0 + b * n);
      }
    });
    if (!retro) g_e0[0] = 0.0f;
    SumShards(shard_grads, n, ag.At(&g_w_out, a), ag.At(&g_alpha_out, a),
              ag.At(&g_w_mod_out, a), ag.At(&g_eta_out, a), ag.At(&g_b_mod_out, a),
              ag.At(&g_clip_out, a));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticSeqFwd, SeqFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // x [T, B, H]: x_t W_in + b
        .Arg<F32>()  // h0 [B, H]
        .Arg<F32>()  // hebb0 [B, H, H]
        .Arg<F32>()  // elig0 [B, H, H] or [1]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta []
        .Arg<F32>()  // w_mod [H]
        .Arg<F32>()  // b_mod []
        .Arg<F32>()  // clip []
        .Ret<F32>()  // h [T, B, H]
        .Ret<F32>()  // m [T, B]
        .Ret<F32>()  // hebb_T [B, H, H]
        .Ret<F32>()  // elig_T [B, H, H] or [1]
        .Ret<F32>()  // hebb_hist [S, B, H, H]: Hebb_tm1 of steps 0, k, 2k.., or [1]
        .Ret<F32>()  // elig_hist [S, B, H, H] or [1]
        .Attr<int64_t>("network")
        .Attr<int64_t>("save_history")
        .Attr<int64_t>("segment"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticSeqBwd, SeqBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // h0 [B, H]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta []
        .Arg<F32>()  // w_mod [H]
        .Arg<F32>()  // b_mod [] (unused: m is an operand)
        .Arg<F32>()  // clip []
        .Arg<F32>()  // h [T, B, H]
        .Arg<F32>()  // m [T, B]
        .Arg<F32>()  // hebb_hist [S, B, H, H] (S = ceil(T / segment))
        .Arg<F32>()  // elig_hist [S, B, H, H] or [1]
        .Arg<F32>()  // g_h [T, B, H]
        .Arg<F32>()  // g_m [T, B]
        .Arg<F32>()  // g_hebb_T [B, H, H]
        .Arg<F32>()  // g_elig_T [B, H, H] or [1]
        .Ret<F32>()  // g_x [T, B, H]
        .Ret<F32>()  // g_h0 [B, H]
        .Ret<F32>()  // g_hebb0 [B, H, H]
        .Ret<F32>()  // g_elig0 [B, H, H] or [1]
        .Ret<F32>()  // g_w [H, H]
        .Ret<F32>()  // g_alpha [H, H]
        .Ret<F32>()  // g_eta []
        .Ret<F32>()  // g_w_mod [H]
        .Ret<F32>()  // g_b_mod []
        .Ret<F32>()  // g_clip []
        .Attr<int64_t>("network")
        .Attr<int64_t>("segment"));
