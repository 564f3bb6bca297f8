// Fused CPU attention (forward and backward) as XLA FFI custom calls: softmax(q·kᵀ·scale)·v for f32 [B, L, H, E].
//
// Why: XLA:CPU runs attention as separate ops (matmul, max, exp, sum, matmul), each a pass over a [B, H, L, L]
// tensor in memory; here every (batch, head) pair is processed in query blocks whose logits stay in cache, with
// register-tiled products and a vectorised exp (flash attention's recomputation scheme for the backward).
// Built on first use by worldmodel/kernels/__init__.py with the host compiler (-march=native); E % 16 == 0.
#include "cpu_attention.h"

namespace {

using namespace wm_attention;

// C[M×N] (+)= A·B with A(m, k) = a[m·sam + k·sak] (strides allow a transposed A), B row-major [K×N] (ldb), C [ldc].
// N % W == 0. Register tile: MR rows × NV vectors (kRows × kVecs below), the K loop innermost.
template <int MR, int NV>
inline void tile(int K, const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c, int64_t ldc,
                 bool acc) {
  v16 r[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) r[i][j] = acc ? load(c + i * ldc + W * j) : splat(0.0f);
  for (int k = 0; k < K; ++k) {
    const float* bk = b + k * ldb;
    v16 bv[NV];
    for (int j = 0; j < NV; ++j) bv[j] = load(bk + W * j);
    for (int i = 0; i < MR; ++i) {
      v16 ai = splat(a[i * sam + k * sak]);
      for (int j = 0; j < NV; ++j) r[i][j] += ai * bv[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NV; ++j) store(c + i * ldc + W * j, r[i][j]);
}

// Widest tile first: with AVX-512's 32 registers a 6 × 4-vector tile (24 accumulators) does 24 FMAs per 10 loads;
// AVX2's 16 hold 6 × 2 (12 accumulators; 4 × 2 was 1.6× slower on Zen 3).
#ifdef __AVX512F__
constexpr int kRows = 6, kVecs = 4;
#else
constexpr int kRows = 6, kVecs = 2;
#endif

template <int MR>
inline void row_block(int N, int K, const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c,
                      int64_t ldc, bool acc) {
  int n = 0;
  for (; n + kVecs * W <= N; n += kVecs * W) tile<MR, kVecs>(K, a, sam, sak, b + n, ldb, c + n, ldc, acc);
  for (; n + 2 * W <= N; n += 2 * W) tile<MR, 2>(K, a, sam, sak, b + n, ldb, c + n, ldc, acc);
  for (; n < N; n += W) tile<MR, 1>(K, a, sam, sak, b + n, ldb, c + n, ldc, acc);
}

void gemm(int M, int N, int K, const float* a, int64_t sam, int64_t sak, const float* b, int64_t ldb, float* c,
          int64_t ldc, bool acc) {
  int m = 0;
  for (; m + kRows <= M; m += kRows) row_block<kRows>(N, K, a + m * sam, sam, sak, b, ldb, c + m * ldc, ldc, acc);
  for (; m + 2 <= M; m += 2) row_block<2>(N, K, a + m * sam, sam, sak, b, ldb, c + m * ldc, ldc, acc);
  for (; m < M; ++m) row_block<1>(N, K, a + m * sam, sam, sak, b, ldb, c + m * ldc, ldc, acc);
}

// Copies the [L, E] slice of pair (b, h) out of a [B, L, H, E] array, optionally transposed to [E, L] and scaled.
void pack(const float* x, const Dims& d, int64_t L, int64_t b, int64_t h, float* out, bool transpose, float s = 1.0f) {
  const int64_t E = d.E, H = d.H;
  for (int64_t l = 0; l < L; ++l) {
    const float* src = x + ((b * L + l) * H + h) * E;
    if (transpose)
      for (int64_t e = 0; e < E; ++e) out[e * L + l] = src[e] * s;
    else
      for (int64_t e = 0; e < E; ++e) out[l * E + e] = src[e] * s;
  }
}

void unpack(const float* in, const Dims& d, int64_t L, int64_t b, int64_t h, float* x) {
  for (int64_t l = 0; l < L; ++l) std::memcpy(x + ((b * L + l) * d.H + h) * d.E, in + l * d.E, d.E * sizeof(float));
}

// Row-wise softmax numerators in place: s ← exp(s − m) with m the row max (stored), returns through m / den.
void softmax_rows(float* s, int rows, int64_t Lk, float* m, float* den) {
  for (int i = 0; i < rows; ++i) {
    float* row = s + i * Lk;
    v16 mv = splat(-INFINITY);
    for (int64_t j = 0; j < Lk; j += W) mv = mv > load(row + j) ? mv : load(row + j);
    float mx = mv[0];
    for (int t = 1; t < W; ++t) mx = std::max(mx, mv[t]);
    v16 sum = splat(0.0f);
    for (int64_t j = 0; j < Lk; j += W) {
      v16 e = exp_v(load(row + j) - mx);
      store(row + j, e);
      sum += e;
    }
    float total = 0.0f;
    for (int t = 0; t < W; ++t) total += sum[t];
    m[i] = mx;
    den[i] = total;
  }
}

void forward_pair(const Dims& d, int64_t pair, const float* q, const float* k, const float* v, float* o, float* lse,
                  std::vector<float>& buf) {
  const int64_t b = pair / d.H, h = pair % d.H, E = d.E, Lq = d.Lq, Lk = d.Lk;
  buf.resize(Lq * E + 2 * Lk * E + kBlock * Lk + kBlock * E + 2 * kBlock);
  float *qs = buf.data(), *kt = qs + Lq * E, *vv = kt + Lk * E, *s = vv + Lk * E, *ob = s + kBlock * Lk;
  float *m = ob + kBlock * E, *den = m + kBlock;
  pack(q, d, Lq, b, h, qs, false, d.scale);
  pack(k, d, Lk, b, h, kt, true);
  pack(v, d, Lk, b, h, vv, false);
  float* lse_pair = lse + pair * Lq;  // lse is [B, H, Lq]
  for (int64_t i0 = 0; i0 < Lq; i0 += kBlock) {
    const int rows = static_cast<int>(std::min<int64_t>(kBlock, Lq - i0));
    gemm(rows, Lk, E, qs + i0 * E, E, 1, kt, Lk, s, Lk, false);
    mask_padding(s, rows, d);
    softmax_rows(s, rows, Lk, m, den);
    gemm(rows, E, Lk, s, Lk, 1, vv, E, ob, E, false);
    for (int i = 0; i < rows; ++i) {
      const float inv = 1.0f / den[i];
      float* dst = o + ((b * Lq + i0 + i) * d.H + h) * E;
      for (int64_t e = 0; e < E; ++e) dst[e] = ob[i * E + e] * inv;
      lse_pair[i0 + i] = m[i] + std::log(den[i]);
    }
  }
}

void backward_pair(const Dims& d, int64_t pair, const float* q, const float* k, const float* v, const float* o,
                   const float* lse, const float* dout, float* dq, float* dk, float* dv, std::vector<float>& buf) {
  const int64_t b = pair / d.H, h = pair % d.H, E = d.E, Lq = d.Lq, Lk = d.Lk;
  buf.resize(2 * Lq * E + 5 * Lk * E + 2 * kBlock * Lk + kBlock * E + Lq);
  float *qs = buf.data(), *dO = qs + Lq * E, *kk = dO + Lq * E, *kt = kk + Lk * E, *vt = kt + Lk * E;
  float *dK = vt + Lk * E, *dV = dK + Lk * E, *p = dV + Lk * E, *ds = p + kBlock * Lk, *dqb = ds + kBlock * Lk;
  float* delta = dqb + kBlock * E;
  pack(q, d, Lq, b, h, qs, false, d.scale);
  pack(dout, d, Lq, b, h, dO, false);
  pack(k, d, Lk, b, h, kk, false);
  pack(k, d, Lk, b, h, kt, true);
  pack(v, d, Lk, b, h, vt, true);
  for (int64_t i = 0; i < Lq; ++i) {  // delta_i = rowsum(dO ∘ O) = rowsum(P ∘ dP)
    const float* oi = o + ((b * Lq + i) * d.H + h) * E;
    float acc = 0.0f;
    for (int64_t e = 0; e < E; ++e) acc += oi[e] * dO[i * E + e];
    delta[i] = acc;
  }
  const float* lse_pair = lse + pair * Lq;
  for (int64_t i0 = 0; i0 < Lq; i0 += kBlock) {
    const int rows = static_cast<int>(std::min<int64_t>(kBlock, Lq - i0));
    gemm(rows, Lk, E, qs + i0 * E, E, 1, kt, Lk, p, Lk, false);  // logits, recomputed
    mask_padding(p, rows, d);
    for (int i = 0; i < rows; ++i) {
      const float l = lse_pair[i0 + i];
      for (int64_t j = 0; j < Lk; j += W) store(p + i * Lk + j, exp_v(load(p + i * Lk + j) - l));
    }
    gemm(Lk, E, rows, p, 1, Lk, dO + i0 * E, E, dV, E, i0 > 0);  // dV += Pᵀ·dO
    gemm(rows, Lk, E, dO + i0 * E, E, 1, vt, Lk, ds, Lk, false);  // dP = dO·Vᵀ
    for (int i = 0; i < rows; ++i) {
      const v16 di = splat(delta[i0 + i]);
      for (int64_t j = 0; j < Lk; j += W) {
        float* x = ds + i * Lk + j;
        store(x, load(p + i * Lk + j) * (load(x) - di));  // dS = P ∘ (dP − delta)
      }
    }
    gemm(rows, E, Lk, ds, Lk, 1, kk, E, dqb, E, false);  // dQ = dS·K·scale
    for (int i = 0; i < rows; ++i) {
      float* dst = dq + ((b * Lq + i0 + i) * d.H + h) * E;
      for (int64_t e = 0; e < E; ++e) dst[e] = dqb[i * E + e] * d.scale;
    }
    gemm(Lk, E, rows, ds, 1, Lk, qs + i0 * E, E, dK, E, i0 > 0);  // dK += dSᵀ·(Q·scale)
  }
  unpack(dK, d, Lk, b, h, dk);
  unpack(dV, d, Lk, b, h, dv);
}

ffi::Error check(const Dims& d) {
  if (d.E % 16 != 0 || d.Lk % 16 != 0 || d.valid < 1 || d.valid > d.Lk)
    return ffi::Error::InvalidArgument("fused CPU attention needs head width and key length divisible by 16");
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse, int64_t valid) {
  const Dims d = dims_of(q, k, valid);
  if (auto err = check(d); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();
  parallel_pairs(pool, d.B * d.H, [&](int64_t pair) {
    thread_local std::vector<float> buf;
    forward_pair(d, pair, qp, kp, vp, op, lp, buf);
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse, ffi::Buffer<ffi::F32> dout,
                    ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk, ffi::ResultBuffer<ffi::F32> dv,
                    int64_t valid) {
  const Dims d = dims_of(q, k, valid);
  if (auto err = check(d); err.failure()) return err;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *opp = o.typed_data();
  const float *lp = lse.typed_data(), *dop = dout.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  parallel_pairs(pool, d.B * d.H, [&](int64_t pair) {
    thread_local std::vector<float> buf;
    backward_pair(d, pair, qp, kp, vp, opp, lp, dop, dqp, dkp, dvp, buf);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmAttentionForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("valid"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(WmAttentionBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("valid"));
