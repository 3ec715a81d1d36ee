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
//   backward: the same chain rule as JAX's autodiff of bpm_jax.plasticity,
//   including its conventions at the clip bounds (cotangent 1 inside, 0.5 on
//   a bound, 0 outside; the clip value c receives the rest).
//
// Two pairs of handlers:
//   BpmPlasticStepFwd/Bwd: one time step of B episodes. Used inside
//     `lax.scan`, e.g. in a rollout that samples actions step by step.
//   BpmPlasticSeqFwd/Bwd: T steps of B episodes in one call (W inside). The
//     forward writes the old traces of every step to a history buffer; the
//     backward walks it in reverse. Each episode's [H, H] traces stay in the
//     core's cache for the whole sequence.
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
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Network : int64_t { kPlastic = 1, kModplast = 2, kRetromod = 3 };

using F32 = ffi::Buffer<ffi::F32>;
using F32Ret = ffi::ResultBuffer<ffi::F32>;

// Runs fn(shard) for shard in [0, num_shards) on the pool and the calling
// thread. Shards are claimed with an atomic counter, so the caller never waits
// for a task that has not started (no deadlock if the pool is busy or is the
// caller's own pool).
template <typename Fn>
void ParallelFor(ffi::ThreadPool& pool, int64_t num_shards, const Fn& fn) {
  if (num_shards <= 1) {
    if (num_shards == 1) fn(0);
    return;
  }
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto work = [shared, num_shards, &fn]() {
    for (int64_t s = shared->next.fetch_add(1); s < num_shards;
         s = shared->next.fetch_add(1)) {
      fn(s);
      shared->done.fetch_add(1, std::memory_order_release);
    }
  };
  // `fn` outlives the tasks: the caller returns only when every shard is done,
  // and a task that starts later finds no shard left and never touches `fn`.
  for (int64_t t = 1; t < num_shards; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  while (shared->done.load(std::memory_order_acquire) < num_shards) {
    std::this_thread::yield();
  }
}

int64_t NumShards(ffi::ThreadPool& pool, int64_t batch) {
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min<int64_t>(threads, batch));
}

// [start, stop) of the episodes of `shard`.
inline void ShardRange(int64_t shard, int64_t num_shards, int64_t batch,
                       int64_t* start, int64_t* stop) {
  *start = batch * shard / num_shards;
  *stop = batch * (shard + 1) / num_shards;
}

inline float Clip(float z, float c) { return std::min(c, std::max(-c, z)); }

// d clip(z, -c, c) / dz as JAX differentiates minimum(c, maximum(-c, z)):
// `maximum`/`minimum` give half the cotangent to each operand on a tie.
// Returns the factor of z's cotangent; *c_factor gets that of c.
inline float ClipGrad(float z, float c, float* c_factor) {
  const float d_max = z > -c ? 1.0f : (z == -c ? 0.5f : 0.0f);
  const float y = std::max(-c, z);
  const float d_min = y < c ? 1.0f : (y == c ? 0.5f : 0.0f);
  *c_factor = (1.0f - d_min) - (1.0f - d_max) * d_min;
  return d_max * d_min;
}

// Parameters shared by the episodes.
struct Weights {
  int64_t n = 0;
  int64_t network = 0;
  const float* w = nullptr;  // [H, H]; nullptr: h_tm1 W is already in x.
  const float* alpha = nullptr;
  const float* w_mod = nullptr;
  float eta = 0.0f, b_mod = 0.0f, c = 0.0f;
};

// Per-shard sums of the parameter cotangents.
struct ParamGrads {
  std::vector<float> w, alpha, w_mod;
  float eta = 0.0f, b_mod = 0.0f, clip = 0.0f;

  void Reset(int64_t n, bool with_w) {
    w.assign(with_w ? n * n : 0, 0.0f);
    alpha.assign(n * n, 0.0f);
    w_mod.assign(n, 0.0f);
    eta = b_mod = clip = 0.0f;
  }
};

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
    if (p.w != nullptr) {
      const float* wr = p.w + i * n;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += xi * (wr[j] + al[j] * hr[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) acc[j] += xi * (al[j] * hr[j]);
    }
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
    float s = 0.0f;
    if (p.w != nullptr) {
      const float* wr = p.w + i * n;
      float* gw = pg.w.data() + i * n;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) {
        const float xg = xi * g_a[j];
        gt[j] += al[j] * xg;
        ga[j] += xg * hr[j];
        gw[j] += xg;
        s += (wr[j] + al[j] * hr[j]) * g_a[j];
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < n; ++j) {
        const float xg = xi * g_a[j];
        gt[j] += al[j] * xg;
        ga[j] += xg * hr[j];
        s += al[j] * hr[j] * g_a[j];
      }
    }
    g_hp[i] += s;
  }
}

// Adds the shards' parameter cotangents in shard order into the outputs.
void SumShards(const std::vector<ParamGrads>& shards, int64_t n, float* g_w,
               float* g_alpha, float* g_w_mod, float* g_eta, float* g_b_mod,
               float* g_clip) {
  if (g_w != nullptr) std::fill(g_w, g_w + n * n, 0.0f);
  std::fill(g_alpha, g_alpha + n * n, 0.0f);
  std::fill(g_w_mod, g_w_mod + n, 0.0f);
  float eta = 0.0f, b_mod = 0.0f, clip = 0.0f;
  for (const ParamGrads& pg : shards) {
    if (g_w != nullptr) {
      for (int64_t k = 0; k < n * n; ++k) g_w[k] += pg.w[k];
    }
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

// Checks Hebb [..., B, H, H] (and E) and fills the weights; w may be null.
ffi::Error MakeWeights(const F32& hebb, const F32& elig, const F32* w,
                       const F32& alpha, const F32& eta, const F32& w_mod,
                       float b_mod, const F32& clip, int64_t network,
                       Weights* p) {
  auto dims = hebb.dimensions();
  const int64_t rank = dims.size();
  if (rank < 3 || dims[rank - 1] != dims[rank - 2]) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: Hebb must be [..., B, H, H].");
  }
  if (network < kPlastic || network > kRetromod) {
    return ffi::Error::InvalidArgument("fused plastic kernel: unknown network.");
  }
  if (network == kRetromod && elig.element_count() != hebb.element_count()) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: retromod needs E of Hebb's shape.");
  }
  p->n = dims[rank - 1];
  if (alpha.element_count() != p->n * p->n || w_mod.element_count() != p->n ||
      (w != nullptr && w->element_count() != p->n * p->n)) {
    return ffi::Error::InvalidArgument(
        "fused plastic kernel: W, alpha must be [H, H] and w_mod [H].");
  }
  p->network = network;
  p->w = w != nullptr ? w->typed_data() : nullptr;
  p->alpha = alpha.typed_data();
  p->w_mod = w_mod.typed_data();
  p->eta = eta.typed_data()[0];
  p->b_mod = b_mod;
  p->c = clip.typed_data()[0];
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- one step

ffi::Error StepFwdImpl(ffi::ThreadPool pool, F32 hebb, F32 elig, F32 h_tm1, F32 x,
                       F32 w, F32 alpha, F32 eta, F32 w_mod, F32 b_mod, F32 clip,
                       F32Ret h_out, F32Ret m_out, F32Ret hebb_out,
                       F32Ret elig_out, int64_t network) {
  Weights p;
  if (auto err = MakeWeights(hebb, elig, &w, alpha, eta, w_mod,
                             b_mod.typed_data()[0], clip, network, &p);
      err.failure()) {
    return err;
  }
  const int64_t n = p.n, batch = h_tm1.element_count() / n;
  const bool retro = network == kRetromod;
  const int64_t num_shards = NumShards(pool, batch);
  ParallelFor(pool, num_shards, [&](int64_t shard) {
    int64_t start, stop;
    ShardRange(shard, num_shards, batch, &start, &stop);
    std::vector<float> acc(n);
    for (int64_t b = start; b < stop; ++b) {
      const int64_t tr = b * n * n;
      m_out->typed_data()[b] = StepForward(
          p, h_tm1.typed_data() + b * n, x.typed_data() + b * n,
          hebb.typed_data() + tr, retro ? elig.typed_data() + tr : nullptr,
          h_out->typed_data() + b * n, hebb_out->typed_data() + tr,
          retro ? elig_out->typed_data() + tr : nullptr, acc.data());
    }
  });
  if (!retro) elig_out->typed_data()[0] = 0.0f;
  return ffi::Error::Success();
}

ffi::Error StepBwdImpl(ffi::ThreadPool pool, F32 hebb, F32 elig, F32 h_tm1,
                       F32 h_in, F32 m_in, F32 w, F32 alpha, F32 eta, F32 w_mod,
                       F32 clip, F32 g_hebb_new, F32 g_elig_new, F32 g_h_in,
                       F32 g_m_in, F32Ret g_hebb_out, F32Ret g_elig_out,
                       F32Ret g_a_out, F32Ret g_h_tm1_out, F32Ret g_w_out,
                       F32Ret g_alpha_out,
                       F32Ret g_eta_out, F32Ret g_w_mod_out, F32Ret g_b_mod_out,
                       F32Ret g_clip_out, int64_t network) {
  Weights p;
  if (auto err = MakeWeights(hebb, elig, &w, alpha, eta, w_mod, 0.0f, clip,
                             network, &p);
      err.failure()) {
    return err;
  }
  const int64_t n = p.n, batch = h_tm1.element_count() / n;
  const bool retro = network == kRetromod;
  const int64_t num_shards = NumShards(pool, batch);
  std::vector<ParamGrads> shard_grads(num_shards);
  ParallelFor(pool, num_shards, [&](int64_t shard) {
    int64_t start, stop;
    ShardRange(shard, num_shards, batch, &start, &stop);
    ParamGrads& pg = shard_grads[shard];
    pg.Reset(n, true);
    std::vector<float> col(n), row(n), g_h(n);
    for (int64_t b = start; b < stop; ++b) {
      const int64_t tr = b * n * n;
      float* g_tr = g_hebb_out->typed_data() + tr;
      float* g_el = retro ? g_elig_out->typed_data() + tr : nullptr;
      if (g_tr != g_hebb_new.typed_data() + tr) {  // not aliased: copy in
        std::memcpy(g_tr, g_hebb_new.typed_data() + tr, n * n * sizeof(float));
      }
      if (retro && g_el != g_elig_new.typed_data() + tr) {
        std::memcpy(g_el, g_elig_new.typed_data() + tr, n * n * sizeof(float));
      }
      std::copy(g_h_in.typed_data() + b * n, g_h_in.typed_data() + (b + 1) * n,
                g_h.data());
      StepBackward(p, h_tm1.typed_data() + b * n, h_in.typed_data() + b * n,
                   m_in.typed_data()[b], hebb.typed_data() + tr,
                   retro ? elig.typed_data() + tr : nullptr, g_tr, g_el,
                   g_h.data(), g_m_in.typed_data()[b],
                   g_a_out->typed_data() + b * n,
                   g_h_tm1_out->typed_data() + b * n, pg, col.data(), row.data());
    }
  });
  if (!retro) g_elig_out->typed_data()[0] = 0.0f;
  SumShards(shard_grads, n, g_w_out->typed_data(), g_alpha_out->typed_data(),
            g_w_mod_out->typed_data(), g_eta_out->typed_data(),
            g_b_mod_out->typed_data(), g_clip_out->typed_data());
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- sequences

// Asks Linux for transparent huge pages on a large fresh output buffer. The
// trace history (576 MB at T=120, B=30, H=200) is allocated anew by XLA on
// every call; touching it in 4 KiB pages costs ~140,000 page faults, about as
// long as the whole backward pass. A hint only: without it (or off Linux) the
// numbers are the same, just slower.
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

ffi::Error SeqFwdImpl(ffi::ThreadPool pool, F32 x, F32 h0, F32 hebb0, F32 elig0,
                      F32 w, F32 alpha, F32 eta, F32 w_mod, F32 b_mod, F32 clip,
                      F32Ret h_out, F32Ret m_out, F32Ret hebb_out,
                      F32Ret elig_out, F32Ret hebb_hist, F32Ret elig_hist,
                      int64_t network) {
  Weights p;
  if (auto err = MakeWeights(hebb0, elig0, &w, alpha, eta, w_mod,
                             b_mod.typed_data()[0], clip, network, &p);
      err.failure()) {
    return err;
  }
  const int64_t n = p.n, nn = n * n, batch = h0.element_count() / n;
  const int64_t steps = x.element_count() / (batch * n);
  const bool retro = network == kRetromod;
  const int64_t num_shards = NumShards(pool, batch);
  AdviseHugePages(hebb_hist->typed_data(), hebb_hist->element_count());
  if (retro) AdviseHugePages(elig_hist->typed_data(), elig_hist->element_count());
  ParallelFor(pool, num_shards, [&](int64_t shard) {
    int64_t start, stop;
    ShardRange(shard, num_shards, batch, &start, &stop);
    std::vector<float> acc(n);
    for (int64_t b = start; b < stop; ++b) {
      float* hb = hebb_out->typed_data() + b * nn;  // the running traces
      float* e = retro ? elig_out->typed_data() + b * nn : nullptr;
      std::memcpy(hb, hebb0.typed_data() + b * nn, nn * sizeof(float));
      if (retro) std::memcpy(e, elig0.typed_data() + b * nn, nn * sizeof(float));
      const float* hp = h0.typed_data() + b * n;
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t tb = t * batch + b;
        // Save the old traces for the backward pass, then update in place.
        std::memcpy(hebb_hist->typed_data() + tb * nn, hb, nn * sizeof(float));
        if (retro) {
          std::memcpy(elig_hist->typed_data() + tb * nn, e, nn * sizeof(float));
        }
        float* h = h_out->typed_data() + tb * n;
        m_out->typed_data()[tb] = StepForward(p, hp, x.typed_data() + tb * n, hb,
                                              e, h, hb, e, acc.data());
        hp = h;
      }
    }
  });
  if (!retro) {
    elig_out->typed_data()[0] = 0.0f;
    elig_hist->typed_data()[0] = 0.0f;
  }
  return ffi::Error::Success();
}

ffi::Error SeqBwdImpl(ffi::ThreadPool pool, F32 h0, F32 h_in, F32 m_in,
                      F32 hebb_hist, F32 elig_hist, F32 w, F32 alpha, F32 eta,
                      F32 w_mod, F32 clip, F32 g_h_in, F32 g_m_in, F32 g_hebb_T,
                      F32 g_elig_T, F32Ret g_x_out, F32Ret g_h0_out,
                      F32Ret g_hebb0_out, F32Ret g_elig0_out, F32Ret g_w_out,
                      F32Ret g_alpha_out, F32Ret g_eta_out, F32Ret g_w_mod_out,
                      F32Ret g_b_mod_out, F32Ret g_clip_out, int64_t network) {
  Weights p;
  if (auto err = MakeWeights(g_hebb_T, g_elig_T, &w, alpha, eta, w_mod, 0.0f,
                             clip, network, &p);
      err.failure()) {
    return err;
  }
  const int64_t n = p.n, nn = n * n, batch = h0.element_count() / n;
  const int64_t steps = h_in.element_count() / (batch * n);
  const bool retro = network == kRetromod;
  const int64_t num_shards = NumShards(pool, batch);
  std::vector<ParamGrads> shard_grads(num_shards);
  ParallelFor(pool, num_shards, [&](int64_t shard) {
    int64_t start, stop;
    ShardRange(shard, num_shards, batch, &start, &stop);
    ParamGrads& pg = shard_grads[shard];
    pg.Reset(n, true);
    std::vector<float> col(n), row(n), g_h(n), g_next(n, 0.0f);
    for (int64_t b = start; b < stop; ++b) {
      float* g_tr = g_hebb0_out->typed_data() + b * nn;  // running cotangents
      float* g_el = retro ? g_elig0_out->typed_data() + b * nn : nullptr;
      if (g_tr != g_hebb_T.typed_data() + b * nn) {
        std::memcpy(g_tr, g_hebb_T.typed_data() + b * nn, nn * sizeof(float));
      }
      if (retro && g_el != g_elig_T.typed_data() + b * nn) {
        std::memcpy(g_el, g_elig_T.typed_data() + b * nn, nn * sizeof(float));
      }
      std::fill(g_next.begin(), g_next.end(), 0.0f);  // h_t's cotangent via step t+1
      for (int64_t t = steps - 1; t >= 0; --t) {
        const int64_t tb = t * batch + b;
        const float* hp = t > 0 ? h_in.typed_data() + (tb - batch) * n
                                : h0.typed_data() + b * n;
        const float* gh = g_h_in.typed_data() + tb * n;
        for (int64_t j = 0; j < n; ++j) g_h[j] = gh[j] + g_next[j];
        StepBackward(p, hp, h_in.typed_data() + tb * n, m_in.typed_data()[tb],
                     hebb_hist.typed_data() + tb * nn,
                     retro ? elig_hist.typed_data() + tb * nn : nullptr, g_tr,
                     g_el, g_h.data(), g_m_in.typed_data()[tb],
                     g_x_out->typed_data() + tb * n, g_next.data(), pg,
                     col.data(), row.data());
      }
      std::copy(g_next.begin(), g_next.end(), g_h0_out->typed_data() + b * n);
    }
  });
  if (!retro) g_elig0_out->typed_data()[0] = 0.0f;
  SumShards(shard_grads, n, g_w_out->typed_data(), g_alpha_out->typed_data(),
            g_w_mod_out->typed_data(), g_eta_out->typed_data(),
            g_b_mod_out->typed_data(), g_clip_out->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticStepFwd, StepFwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // hebb [B, H, H]
        .Arg<F32>()  // elig [B, H, H] (retromod) or [1]
        .Arg<F32>()  // h_tm1 [B, H]
        .Arg<F32>()  // x [B, H]: x_t W_in + b
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta []
        .Arg<F32>()  // w_mod [H]
        .Arg<F32>()  // b_mod []
        .Arg<F32>()  // clip []
        .Ret<F32>()  // h [B, H]
        .Ret<F32>()  // m [B]
        .Ret<F32>()  // hebb_new [B, H, H]
        .Ret<F32>()  // elig_new [B, H, H] or [1]
        .Attr<int64_t>("network"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticStepBwd, StepBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // hebb [B, H, H] (Hebb_tm1)
        .Arg<F32>()  // elig [B, H, H] (E_tm1) or [1]
        .Arg<F32>()  // h_tm1 [B, H]
        .Arg<F32>()  // h [B, H]
        .Arg<F32>()  // m [B]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta []
        .Arg<F32>()  // w_mod [H]
        .Arg<F32>()  // clip []
        .Arg<F32>()  // g_hebb_new [B, H, H]
        .Arg<F32>()  // g_elig_new [B, H, H] or [1]
        .Arg<F32>()  // g_h [B, H] (all of h_t's cotangent)
        .Arg<F32>()  // g_m [B]
        .Ret<F32>()  // g_hebb_old [B, H, H]
        .Ret<F32>()  // g_elig_old [B, H, H] or [1]
        .Ret<F32>()  // g_x [B, H]
        .Ret<F32>()  // g_h_tm1 [B, H]
        .Ret<F32>()  // g_w [H, H]
        .Ret<F32>()  // g_alpha [H, H]
        .Ret<F32>()  // g_eta []
        .Ret<F32>()  // g_w_mod [H]
        .Ret<F32>()  // g_b_mod []
        .Ret<F32>()  // g_clip []
        .Attr<int64_t>("network"));

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
        .Ret<F32>()  // hebb_hist [T, B, H, H]: Hebb_tm1 of each step
        .Ret<F32>()  // elig_hist [T, B, H, H] or [1]
        .Attr<int64_t>("network"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    BpmPlasticSeqBwd, SeqBwdImpl,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<F32>()  // h0 [B, H]
        .Arg<F32>()  // h [T, B, H]
        .Arg<F32>()  // m [T, B]
        .Arg<F32>()  // hebb_hist [T, B, H, H]
        .Arg<F32>()  // elig_hist [T, B, H, H] or [1]
        .Arg<F32>()  // w [H, H]
        .Arg<F32>()  // alpha [H, H]
        .Arg<F32>()  // eta []
        .Arg<F32>()  // w_mod [H]
        .Arg<F32>()  // clip []
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
        .Attr<int64_t>("network"));
