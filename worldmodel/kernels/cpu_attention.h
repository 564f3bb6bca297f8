// Shared by the fused CPU attention kernels (cpu_attention.cc: f32 with AVX2 / AVX-512 FMAs; cpu_attention_amx.cc:
// bf16 products on Intel AMX): native vectors, a vectorised exp, the problem's dimensions, the (batch, head) loop.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace wm_attention {

namespace ffi = xla::ffi;

// One native vector: 16 floats with AVX-512, else 8 (GCC splits wider generic vectors badly: 70x slower on AVX2).
#ifdef __AVX512F__
constexpr int W = 16;
#else
constexpr int W = 8;
#endif
typedef float v16 __attribute__((vector_size(4 * W)));
typedef int32_t i16 __attribute__((vector_size(4 * W)));

inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }
// x − 0 is x for every x (−0 included), so this compiles to one broadcast; `v16{} + x` kept a scalar add (0 + −0 = +0).
inline v16 splat(float x) { return x - v16{}; }

// e^x for x <= 0 (softmax arguments): 2^n · p(r), r = x − n·ln2 in [−ln2/2, ln2/2], degree-6 polynomial (rel. error
// ~2e-7); arguments below −87 give ~1e-38 instead of 0, which the sums cannot tell apart.
inline v16 exp_v(v16 x) {
  x = x < -87.0f ? splat(-87.0f) : x;
  const v16 magic = splat(12582912.0f);  // 1.5·2^23: adding it rounds to the nearest integer
  v16 n = x * 1.44269504f + magic;
  n = n - magic;
  v16 r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  v16 p = splat(1.0f / 720) * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  i16 bits = (__builtin_convertvector(n, i16) + 127) << 23;
  v16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

constexpr int kBlock = 64;  // query rows per block: a 64 × L logits block stays in L2

struct Dims {
  int64_t B, Lq, Lk, H, E;
  float scale;
  int64_t valid;  // keys at positions >= valid are padding (masked out)
};

// The problem's dimensions from q [B, Lq, H, E] and k [B, Lk, H, E] (any element type); scale 1/√E.
template <typename Buffer>
Dims dims_of(const Buffer& q, const Buffer& k, int64_t valid) {
  auto qd = q.dimensions(), kd = k.dimensions();
  return Dims{qd[0], qd[1], kd[1], qd[2], qd[3], 1.0f / std::sqrt(static_cast<float>(qd[3])), valid};
}

// Padding keys get a logit far below any real one (exp → ~1e-38, nothing in the sums).
inline void mask_padding(float* s, int rows, const Dims& d) {
  for (int i = 0; i < rows; ++i)
    for (int64_t j = d.valid; j < d.Lk; ++j) s[i * d.Lk + j] = -1e30f;
}

// Runs fn(pair) for every (batch, head) pair on the calling thread and on helpers from XLA's intra-op pool. The
// caller waits only for helpers that have started: a queued helper may never run while the pool's threads are
// busy (e.g. in another custom call waiting the same way), so the caller must not wait for it. Helpers that start
// after the caller has finished return without touching `fn`.
template <typename F>
void parallel_pairs(ffi::ThreadPool pool, int64_t pairs, const F& fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::mutex mu;
    std::condition_variable cv;
    int active = 0;
    bool closed = false;
  };
  auto st = std::make_shared<State>();
  const F* f = &fn;
  int helpers = static_cast<int>(std::min<int64_t>(pool.num_threads(), pairs - 1));
  for (int t = 0; t < helpers; ++t)
    pool.Schedule([st, f, pairs] {
      {
        std::lock_guard<std::mutex> lock(st->mu);
        if (st->closed) return;
        ++st->active;
      }
      for (int64_t p; (p = st->next.fetch_add(1)) < pairs;) (*f)(p);
      std::lock_guard<std::mutex> lock(st->mu);
      if (--st->active == 0) st->cv.notify_one();
    });
  for (int64_t p; (p = st->next.fetch_add(1)) < pairs;) fn(p);
  std::unique_lock<std::mutex> lock(st->mu);
  st->closed = true;
  st->cv.wait(lock, [&] { return st->active == 0; });
}


}  // namespace wm_attention
