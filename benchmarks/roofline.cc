// What this CPU does at most, for the roofline of benchmarks/a2c_roofline.py.
//
//   g++ -O3 -march=native -fno-trapping-math -fopenmp-simd -std=c++17 -pthread \
//       benchmarks/roofline.cc -o /tmp/roofline && /tmp/roofline 1 2
//
// For each thread count given on the command line (each thread on its own
// data, all at once, as the fused kernels' shards run):
//   fma:  the peak arithmetic rate, GFLOP/s: 12 independent vectors of 8
//         floats per thread, each updated v = v * a + b (one fused
//         multiply-add, 2 flops per lane) 20 million times.
//   rmw:  the rate of the fused kernels' inner loops, GB/s, for working sets
//         per thread from 32 KiB (L1) to 64 MiB (DRAM): y[i] = y[i] + s * x[i]
//         over two arrays that fill the working set, repeated for ~0.3 s;
//         every pass reads both arrays and writes y (12 bytes per element).
// Prints one line per measurement: `fma THREADS GFLOPS` and
// `rmw THREADS KIB GBPS`. Nothing is asserted.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

// Runs body(thread) on `threads` threads started together; returns seconds.
template <typename Body>
double RunThreads(int threads, Body body) {
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      ready.fetch_add(1);
      while (!go.load()) {
      }
      body(t);
    });
  }
  while (ready.load() < threads) {
  }
  const auto start = Clock::now();
  go.store(true);
  for (auto& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Keeps the compiler from dropping a result.
volatile float sink;

typedef float Vec8 __attribute__((vector_size(32)));

// 12 independent chains of 8 lanes, in registers (GCC vector extensions;
// with the two constants they fit AVX2's 16 registers).
__attribute__((noinline)) void FmaChains(long iterations, float a, float b) {
  constexpr int kChains = 12;
  Vec8 v[kChains];
  for (int k = 0; k < kChains; ++k) v[k] = Vec8{} + (1.0f + 1e-3f * k);
  const Vec8 va = Vec8{} + a, vb = Vec8{} + b;
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int k = 0; k < kChains; ++k) v[k] = v[k] * va + vb;
  }
  float s = 0.0f;
  for (int k = 0; k < kChains; ++k) {
    for (int l = 0; l < 8; ++l) s += v[k][l];
  }
  sink = s;
}

__attribute__((noinline)) void Rmw(float* __restrict y, const float* __restrict x,
                                   long n, float s, long passes) {
  for (long p = 0; p < passes; ++p) {
#pragma omp simd
    for (long i = 0; i < n; ++i) y[i] = y[i] + s * x[i];
    asm volatile("" : : "r"(y) : "memory");  // one real pass over memory each time
  }
}

double FmaGflops(int threads) {
  const long iterations = 20000000;
  const double seconds =
      RunThreads(threads, [&](int) { FmaChains(iterations, 0.9999f, 1e-4f); });
  return 2.0 * 96 * iterations * threads / seconds / 1e9;  // 12 chains x 8 lanes
}

double RmwGbps(int threads, long kib) {
  const long n = kib * 1024 / (2 * sizeof(float));  // x and y share the set
  std::vector<std::vector<float>> xs(threads), ys(threads);
  for (int t = 0; t < threads; ++t) {
    xs[t].assign(n, 1.0f);
    ys[t].assign(n, 0.0f);
  }
  // ~0.3 s at 20 GB/s per thread, at least 3 passes.
  const long passes = std::max(3L, static_cast<long>(6e9 / (12.0 * n)));
  auto body = [&](int t) { Rmw(ys[t].data(), xs[t].data(), n, 1e-6f, passes); };
  RunThreads(threads, [&](int t) { Rmw(ys[t].data(), xs[t].data(), n, 1e-6f, 1); });
  const double seconds = RunThreads(threads, body);
  return 12.0 * n * passes * threads / seconds / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> thread_counts;
  for (int a = 1; a < argc; ++a) thread_counts.push_back(std::atoi(argv[a]));
  if (thread_counts.empty()) thread_counts = {1};
  for (int threads : thread_counts) {
    std::printf("fma %d %.1f\n", threads, FmaGflops(threads));
    std::fflush(stdout);
    for (long kib : {32L, 160L, 480L, 1024L, 2048L, 4096L, 65536L}) {
      std::printf("rmw %d %ld %.1f\n", threads, kib, RmwGbps(threads, kib));
      std::fflush(stdout);
    }
  }
  return 0;
}
