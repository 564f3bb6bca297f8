// Fused attention for bf16 [B, L, H, E] on Intel AMX: every product (q·kᵀ and p·v forward; the backward's
// recomputed q·kᵀ, dO·vᵀ, dS·k, Pᵀ·dO and dSᵀ·q) is an AMX tile multiply (bf16 × bf16 → f32), the softmax and its
// gradient run in f32 on AVX-512, and p / dS are rounded to bf16 for the products that take them (as PyTorch's CPU
// flash attention does under autocast). E % 32 == 0. Without AMX (or the kernel's permission to use it) the
// entry points report that and the caller keeps the f32 kernel (cpu_attention.cc).
//
// Layouts: AMX multiplies A [M × K] (row-major bf16) by B in "VNNI" pairs, B'[k/2][n][2] = (B[k][n], B[k+1][n]).
// For x·kᵀ that is k itself read as 32-bit words and transposed; for p·v it is v with row pairs interleaved. The
// backward's Pᵀ·dO and dSᵀ·q are computed transposed (dVᵀ = dOᵀ·P, dKᵀ = qᵀ·dS), so P and dS are only ever
// written row-major or row-pair interleaved, both straight from the registers that compute them.
#include "cpu_attention.h"

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define WM_AMX 1
#endif

namespace {

using namespace wm_attention;
using bf16 = uint16_t;

#ifdef WM_AMX

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Every tile 16 rows × 64 bytes: C tiles 0-3 (a 2 × 2 block of 16 × 16 f32), A tiles 4-5, B tiles 6-7.
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// The tile configuration is per thread and other code on XLA's threads (oneDNN) sets its own: load ours for every
// (batch, head) pair and release the tiles after it.
struct TileScope {
  TileScope() {
    TileConfig cfg{};
    cfg.palette = 1;
    for (int t = 0; t < 8; ++t) cfg.colsb[t] = 64, cfg.rows[t] = 16;
    _tile_loadconfig(&cfg);
  }
  ~TileScope() { _tile_release(); }
};

// C (+)= A·B for a 16·MT × 16·NT block of C: A rows lda elements apart, B as VNNI pair rows ldb elements apart.
template <int MT, int NT>
inline void amx_block(int64_t K, const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c, int64_t ldc,
                      bool acc) {
  const int64_t sa = 2 * lda, sb = 2 * ldb, sc = 4 * ldc;
  if (acc) {
    _tile_loadd(0, c, sc);
    if constexpr (NT > 1) _tile_loadd(1, c + 16, sc);
    if constexpr (MT > 1) _tile_loadd(2, c + 16 * ldc, sc);
    if constexpr (MT > 1 && NT > 1) _tile_loadd(3, c + 16 * ldc + 16, sc);
  } else {
    _tile_zero(0);
    if constexpr (NT > 1) _tile_zero(1);
    if constexpr (MT > 1) _tile_zero(2);
    if constexpr (MT > 1 && NT > 1) _tile_zero(3);
  }
  for (int64_t k = 0; k < K; k += 32) {
    _tile_loadd(4, a + k, sa);
    _tile_loadd(6, b + k / 2 * ldb, sb);
    if constexpr (MT > 1) _tile_loadd(5, a + 16 * lda + k, sa);
    if constexpr (NT > 1) _tile_loadd(7, b + k / 2 * ldb + 32, sb);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NT > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (MT > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (MT > 1 && NT > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, sc);
  if constexpr (NT > 1) _tile_stored(1, c + 16, sc);
  if constexpr (MT > 1) _tile_stored(2, c + 16 * ldc, sc);
  if constexpr (MT > 1 && NT > 1) _tile_stored(3, c + 16 * ldc + 16, sc);
}

// C[M×N] (+)= A[M×K]·B[K×N], B given as VNNI pairs. M, N % 16 == 0, K % 32 == 0. The tile loads and stores are
// inline assembly the compiler cannot see into: the barriers keep plain loads and stores on either side in order.
void amx_gemm(int64_t M, int64_t N, int64_t K, const bf16* a, int64_t lda, const bf16* b, int64_t ldb, float* c,
              int64_t ldc, bool acc) {
  asm volatile("" ::: "memory");
  for (int64_t m = 0; m < M; m += 32)
    for (int64_t n = 0; n < N; n += 32) {
      const bf16 *am = a + m * lda, *bn = b + 2 * n;
      float* cmn = c + m * ldc + n;
      const bool two_m = m + 32 <= M, two_n = n + 32 <= N;
      if (two_m && two_n) amx_block<2, 2>(K, am, lda, bn, ldb, cmn, ldc, acc);
      else if (two_m) amx_block<2, 1>(K, am, lda, bn, ldb, cmn, ldc, acc);
      else if (two_n) amx_block<1, 2>(K, am, lda, bn, ldb, cmn, ldc, acc);
      else amx_block<1, 1>(K, am, lda, bn, ldb, cmn, ldc, acc);
    }
  asm volatile("" ::: "memory");
}

inline float to_f32(bf16 x) {
  uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline bf16 to_bf16(float f) {  // round to nearest even (inputs are finite)
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<bf16>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}
inline const bf16* row_of(const bf16* x, const Dims& d, int64_t L, int64_t b, int64_t h, int64_t l) {
  return x + ((b * L + l) * d.H + h) * d.E;
}

// Packs of pair (b, h)'s [L, E] slice, zero beyond row L up to `rows`:
// row-major [rows × E] (an A operand)
void pack_rows(const bf16* x, const Dims& d, int64_t L, int64_t b, int64_t h, int64_t rows, bf16* out) {
  for (int64_t l = 0; l < L; ++l) std::memcpy(out + l * d.E, row_of(x, d, L, b, h, l), 2 * d.E);
  std::fill(out + L * d.E, out + rows * d.E, bf16{0});
}
// transposed [E × rows] (the A operand of dVᵀ = dOᵀ·P and dKᵀ = qᵀ·dS)
void pack_transposed(const bf16* x, const Dims& d, int64_t L, int64_t b, int64_t h, int64_t rows, bf16* out) {
  std::fill(out, out + d.E * rows, bf16{0});
  for (int64_t l = 0; l < L; ++l) {
    const bf16* src = row_of(x, d, L, b, h, l);
    for (int64_t e = 0; e < d.E; ++e) out[e * rows + l] = src[e];
  }
}
// B operand of x·yᵀ: y's rows as 32-bit words, transposed to [E/2 × rows] words
void pack_words_transposed(const bf16* x, const Dims& d, int64_t L, int64_t b, int64_t h, int64_t rows, bf16* out) {
  uint32_t* o = reinterpret_cast<uint32_t*>(out);
  const int64_t E2 = d.E / 2;
  std::fill(o, o + E2 * rows, 0u);
  for (int64_t l = 0; l < L; ++l) {
    const bf16* src = row_of(x, d, L, b, h, l);
    for (int64_t e = 0; e < E2; ++e) std::memcpy(o + e * rows + l, src + 2 * e, 4);
  }
}

// 32 bf16 of row a and 32 of row b interleaved (a0 b0 a1 b1 ...): the low and high halves.
inline void interleave(__m512i a, __m512i b, bf16* out) {
  alignas(64) static const uint16_t lo[32] = {0,  32, 1,  33, 2,  34, 3,  35, 4,  36, 5,  37, 6,  38, 7,  39,
                                              8,  40, 9,  41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                              24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  _mm512_storeu_si512(out, _mm512_permutex2var_epi16(a, _mm512_load_si512(lo), b));
  _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(a, _mm512_load_si512(hi), b));
}
// B operand of p·y: y's row pairs interleaved, [rows/2 × 2E]
void pack_row_pairs(const bf16* x, const Dims& d, int64_t L, int64_t b, int64_t h, int64_t rows, bf16* out) {
  const __m512i zero = _mm512_setzero_si512();
  for (int64_t l = 0; l < rows; l += 2) {
    const bf16* r0 = l < L ? row_of(x, d, L, b, h, l) : nullptr;
    const bf16* r1 = l + 1 < L ? row_of(x, d, L, b, h, l + 1) : nullptr;
    for (int64_t e = 0; e < d.E; e += 32)
      interleave(r0 ? _mm512_loadu_si512(r0 + e) : zero, r1 ? _mm512_loadu_si512(r1 + e) : zero, out + l * d.E + 2 * e);
  }
}
// Two f32 rows (16 columns each) rounded to bf16 and interleaved: 64 bytes of a VNNI pair row.
inline void store_pair(v16 a, v16 b, bf16* out) {
  alignas(64) static const uint16_t idx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                               8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i ab = (__m512i)_mm512_cvtne2ps_pbh((__m512)b, (__m512)a);  // a in the low half
  _mm512_storeu_si512(out, _mm512_permutexvar_epi16(_mm512_load_si512(idx), ab));
}
inline void store_bf16(v16 x, bf16* out) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), (__m256i)_mm512_cvtneps_pbh((__m512)x));
}

// Per-thread scratch, grown as needed.
struct Scratch {
  std::vector<bf16> h;
  std::vector<float> f;
};

// Lq rows padded to 32 (the K of dVᵀ / dKᵀ), keys to 32 (the K of p·v); columns at or past `valid` get no weight.
void forward_pair(const Dims& d, int64_t pair, const bf16* q, const bf16* k, const bf16* v, bf16* o, float* lse,
                  Scratch& sc) {
  const int64_t b = pair / d.H, h = pair % d.H, E = d.E, Lq = d.Lq, Lk = d.Lk;
  const int64_t Qp = round_up(Lq, 32), Kp = round_up(Lk, 32);
  sc.h.resize(Qp * E + 2 * Kp * E + kBlock * Kp);
  sc.f.resize(kBlock * Kp + kBlock * E);
  bf16 *qb = sc.h.data(), *kt = qb + Qp * E, *vp = kt + Kp * E, *pb = vp + Kp * E;
  float *s = sc.f.data(), *ob = s + kBlock * Kp;
  pack_rows(q, d, Lq, b, h, Qp, qb);
  pack_words_transposed(k, d, Lk, b, h, Kp, kt);
  pack_row_pairs(v, d, Lk, b, h, Kp, vp);
  TileScope tiles;
  for (int64_t i0 = 0; i0 < Lq; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, Qp - i0);
    amx_gemm(rows, Kp, E, qb + i0 * E, E, kt, 2 * Kp, s, Kp, false);
    for (int64_t i = 0; i < rows; ++i) {
      float* row = s + i * Kp;
      std::fill(row + d.valid, row + Kp, -1e30f);
      v16 mv = splat(-INFINITY);
      for (int64_t j = 0; j < Kp; j += W) mv = mv > load(row + j) ? mv : load(row + j);
      float mx = mv[0];
      for (int t = 1; t < W; ++t) mx = std::max(mx, mv[t]);
      v16 sum = splat(0.0f);
      for (int64_t j = 0; j < Kp; j += W) {
        const v16 e = exp_v((load(row + j) - mx) * d.scale);
        sum += e;
        store_bf16(e, pb + i * Kp + j);
      }
      float total = 0.0f;
      for (int t = 0; t < W; ++t) total += sum[t];
      row[0] = mx * d.scale + std::log(total);  // the row's log-sum-exp, kept where the logits were
      row[1] = 1.0f / total;
    }
    amx_gemm(rows, E, Kp, pb, Kp, vp, 2 * E, ob, E, false);
    for (int64_t i = 0; i < rows && i0 + i < Lq; ++i) {
      const float inv = s[i * Kp + 1];
      bf16* dst = o + ((b * Lq + i0 + i) * d.H + h) * E;
      for (int64_t e = 0; e < E; ++e) dst[e] = to_bf16(ob[i * E + e] * inv);
      lse[pair * Lq + i0 + i] = s[i * Kp];
    }
  }
}

void backward_pair(const Dims& d, int64_t pair, const bf16* q, const bf16* k, const bf16* v, const bf16* o,
                   const float* lse, const bf16* dout, bf16* dq, bf16* dk, bf16* dv, Scratch& sc) {
  const int64_t b = pair / d.H, h = pair % d.H, E = d.E, Lq = d.Lq, Lk = d.Lk;
  const int64_t Qp = round_up(Lq, 32), Kp = round_up(Lk, 32);
  sc.h.resize(4 * Qp * E + 3 * Kp * E + 3 * kBlock * Kp);
  sc.f.resize(2 * Kp * E + 2 * kBlock * Kp + kBlock * E + 2 * Qp);
  bf16 *qb = sc.h.data(), *qt = qb + Qp * E, *dob = qt + Qp * E, *dot = dob + Qp * E, *kt = dot + Qp * E;
  bf16 *vt = kt + Kp * E, *kp = vt + Kp * E, *pp = kp + Kp * E, *dsb = pp + kBlock * Kp, *dsp = dsb + kBlock * Kp;
  float *dKt = sc.f.data(), *dVt = dKt + Kp * E, *s = dVt + Kp * E, *dp = s + kBlock * Kp, *dqb = dp + kBlock * Kp;
  float *delta = dqb + kBlock * E, *l = delta + Qp;
  pack_rows(q, d, Lq, b, h, Qp, qb);
  pack_transposed(q, d, Lq, b, h, Qp, qt);
  pack_rows(dout, d, Lq, b, h, Qp, dob);
  pack_transposed(dout, d, Lq, b, h, Qp, dot);
  pack_words_transposed(k, d, Lk, b, h, Kp, kt);
  pack_words_transposed(v, d, Lk, b, h, Kp, vt);
  pack_row_pairs(k, d, Lk, b, h, Kp, kp);
  for (int64_t i = 0; i < Qp; ++i) {  // delta_i = rowsum(dO ∘ O); padding rows: no probability, no gradient
    float acc = 0.0f;
    if (i < Lq) {
      const bf16 *oi = row_of(o, d, Lq, b, h, i), *di = dob + i * E;
      for (int64_t e = 0; e < E; ++e) acc += to_f32(oi[e]) * to_f32(di[e]);
    }
    delta[i] = acc;
    l[i] = i < Lq ? lse[pair * Lq + i] : 1e30f;
  }
  TileScope tiles;
  for (int64_t i0 = 0; i0 < Qp; i0 += kBlock) {
    const int64_t rows = std::min<int64_t>(kBlock, Qp - i0);
    amx_gemm(rows, Kp, E, qb + i0 * E, E, kt, 2 * Kp, s, Kp, false);   // logits, recomputed
    amx_gemm(rows, Kp, E, dob + i0 * E, E, vt, 2 * Kp, dp, Kp, false);  // dP = dO·vᵀ
    for (int64_t i = 0; i < rows; i += 2) {
      float *s0 = s + i * Kp, *s1 = s0 + Kp, *g0 = dp + i * Kp, *g1 = g0 + Kp;
      std::fill(s0 + d.valid, s0 + Kp, -1e30f);
      std::fill(s1 + d.valid, s1 + Kp, -1e30f);
      const float l0 = l[i0 + i], l1 = l[i0 + i + 1];
      const v16 d0 = splat(delta[i0 + i]), d1 = splat(delta[i0 + i + 1]);
      for (int64_t j = 0; j < Kp; j += W) {
        const v16 p0 = exp_v(load(s0 + j) * d.scale - l0), p1 = exp_v(load(s1 + j) * d.scale - l1);
        const v16 ds0 = p0 * (load(g0 + j) - d0), ds1 = p1 * (load(g1 + j) - d1);
        store_pair(p0, p1, pp + i * Kp + 2 * j);
        store_pair(ds0, ds1, dsp + i * Kp + 2 * j);
        store_bf16(ds0, dsb + i * Kp + j);
        store_bf16(ds1, dsb + (i + 1) * Kp + j);
      }
    }
    amx_gemm(E, Kp, rows, dot + i0, Qp, pp, 2 * Kp, dVt, Kp, i0 > 0);  // dVᵀ += dOᵀ·P
    amx_gemm(E, Kp, rows, qt + i0, Qp, dsp, 2 * Kp, dKt, Kp, i0 > 0);  // dKᵀ += qᵀ·dS
    amx_gemm(rows, E, Kp, dsb, Kp, kp, 2 * E, dqb, E, false);          // dQ = dS·k
    for (int64_t i = 0; i < rows && i0 + i < Lq; ++i) {
      bf16* dst = dq + ((b * Lq + i0 + i) * d.H + h) * E;
      for (int64_t e = 0; e < E; ++e) dst[e] = to_bf16(dqb[i * E + e] * d.scale);
    }
  }
  for (int64_t j = 0; j < Lk; ++j) {
    bf16 *gk = dk + ((b * Lk + j) * d.H + h) * E, *gv = dv + ((b * Lk + j) * d.H + h) * E;
    for (int64_t e = 0; e < E; ++e) {
      gk[e] = to_bf16(dKt[e * Kp + j] * d.scale);
      gv[e] = to_bf16(dVt[e * Kp + j]);
    }
  }
}

ffi::Error check(const Dims& d) {
  if (d.E % 32 != 0 || d.valid < 1 || d.valid > d.Lk)
    return ffi::Error::InvalidArgument("AMX attention needs a head width divisible by 32");
  return ffi::Error::Success();
}

#endif  // WM_AMX

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k, ffi::Buffer<ffi::BF16> v,
                   ffi::ResultBuffer<ffi::BF16> o, ffi::ResultBuffer<ffi::F32> lse, int64_t valid) {
#ifdef WM_AMX
  const Dims d = dims_of(q, k, valid);
  if (auto err = check(d); err.failure()) return err;
  const bf16 *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  bf16* op = o->typed_data();
  float* lp = lse->typed_data();
  parallel_pairs(pool, d.B * d.H, [&](int64_t pair) {
    thread_local Scratch sc;
    forward_pair(d, pair, qp, kp, vp, op, lp, sc);
  });
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("the attention kernels were built without AMX");
#endif
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> q, ffi::Buffer<ffi::BF16> k,
                    ffi::Buffer<ffi::BF16> v, ffi::Buffer<ffi::BF16> o, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::BF16> dout, ffi::ResultBuffer<ffi::BF16> dq, ffi::ResultBuffer<ffi::BF16> dk,
                    ffi::ResultBuffer<ffi::BF16> dv, int64_t valid) {
#ifdef WM_AMX
  const Dims d = dims_of(q, k, valid);
  if (auto err = check(d); err.failure()) return err;
  const bf16 *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *opp = o.typed_data();
  const bf16* dop = dout.typed_data();
  const float* lp = lse.typed_data();
  bf16 *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_pairs(pool, d.B * d.H, [&](int64_t pair) {
    thread_local Scratch sc;
    backward_pair(d, pair, qp, kp, vp, opp, lp, dop, dqp, dkp, dvp, sc);
  });
  return ffi::Error::Success();
#else
  return ffi::Error::Internal("the attention kernels were built without AMX");
#endif
}

}  // namespace

// 1 when this build has the AMX kernels and Linux lets the process use AMX tiles (arch_prctl
// ARCH_REQ_XCOMP_PERM for XTILEDATA; a no-op when XLA's oneDNN asked first), else 0.
extern "C" int wm_attention_amx_ready() {
#ifdef WM_AMX
  constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
  return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0 ? 1 : 0;
#else
  return 0;
#endif
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmAttentionForwardBf16, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("valid"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmAttentionBackwardBf16, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("valid"));
