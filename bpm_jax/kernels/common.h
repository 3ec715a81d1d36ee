// What the fused CPU kernels share (plastic_step.cc: the plastic RNN;
// plastic_lstm.cc: the plastic LSTM): the network codes, the thread-pool
// loop over shards of episodes, the clip and its JAX-convention gradient,
// and the leading "agent" dims of vmapped calls.

#ifndef BPM_JAX_KERNELS_COMMON_H_
#define BPM_JAX_KERNELS_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace bpm_kernels {

namespace ffi = xla::ffi;

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

inline int64_t NumShards(ffi::ThreadPool& pool, int64_t batch) {
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

// Leading "agent" dims. Under `jax.vmap` (seeds, sweeps) every operand gets
// the same leading dims (vmap_method="broadcast_all"), and each agent's
// slice of each buffer is contiguous: agent a of a buffer of `count` entries
// starts at a * count / num_agents.
struct Agents {
  int64_t num = 1;
  template <typename Buf>
  float* At(Buf& buf, int64_t a) const {
    return const_cast<float*>(buf.typed_data()) + a * (buf.element_count() / num);
  }
  float* At(F32Ret* buf, int64_t a) const {  // result buffers
    return (**buf).typed_data() + a * ((**buf).element_count() / num);
  }
};


}  // namespace bpm_kernels

#endif  // BPM_JAX_KERNELS_COMMON_H_
