/* cuda/kernels.cuh: the device kernels of the CUDA scorer (common/backend_cuda.cu), the GPU
 * counterparts of common/kernels.c on the same packed, unpadded row layout.
 *
 * Precision: the residual stream, Q/K/V, GEMM outputs, softmax, norms and scores are f32;
 * only GEMM inputs (normed activations, attention output, MLP activation, weights) are bf16.
 * No fast-math intrinsics (expf, tanhf as the CPU uses them). Included by backend_cuda.cu
 * only; every kernel is static to that translation unit. */
#ifndef MR_CUDA_KERNELS_CUH
#define MR_CUDA_KERNELS_CUH

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

/* ---- reductions (blockDim.x a multiple of 32, sh of 33 floats) ---- */

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ float block_sum(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* sh may still be read by a previous reduction */
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}
__device__ float block_max(float v, float *sh) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    if (w == 0) {
        float t = lane < nw ? sh[lane] : -INFINITY;
        t = warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    return sh[32];
}

/* ---- embedding: x (n, d) f32 = embed[ids] * scale; embed (vocab, d) bf16 or f32 ---- */

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<bf16>(bf16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void k_embed(float *x, const T *emb, const int32_t *ids, int d, float scale) {
    size_t t = blockIdx.x;
    const T *e = emb + (size_t)ids[t] * d;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float v = to_f<T>(e[j]);
        x[t * d + j] = scale != 1.0f ? v * scale : v;
    }
}

/* ---- RMSNorm with residual (one block per token) ----
 * if y: x += post_w ? rmsnorm(y, post_w) : y      (gemma2's post norms)
 * if next_w: xn = bf16(rmsnorm(x, next_w))        (the next sub-layer's input)
 * w_off is 1 for gemma2's (1 + w) form. */
__global__ void k_resid_norm(float *x, const float *y, const float *post_w, const float *next_w,
                             bf16 *xn, int d, float eps, float w_off) {
    __shared__ float sh[33];
    size_t t = blockIdx.x;
    float *xt = x + t * d;
    if (y) {
        const float *yt = y + t * d;
        float r = 1.0f;
        if (post_w) {
            float ss = 0.0f;
            for (int j = threadIdx.x; j < d; j += blockDim.x) ss += yt[j] * yt[j];
            ss = block_sum(ss, sh);
            r = (float)(1.0 / sqrt((double)ss / d + eps));
        }
        for (int j = threadIdx.x; j < d; j += blockDim.x)
            xt[j] += post_w ? yt[j] * r * (post_w[j] + w_off) : yt[j];
    }
    if (next_w) {
        float ss = 0.0f;
        for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xt[j] * xt[j];
        ss = block_sum(ss, sh);
        float r = (float)(1.0 / sqrt((double)ss / d + eps));
        for (int j = threadIdx.x; j < d; j += blockDim.x)
            xn[t * d + j] = __float2bfloat16(xt[j] * r * (next_w[j] + w_off));
    }
}

/* ---- small elementwise kernels ---- */

/* y (n, ldy) columns [0, out) += b */
__global__ void k_add_bias(float *y, int ldy, const float *b, int n, int out) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * out) return;
    size_t t = i / out;
    int j = (int)(i % out);
    y[t * ldy + j] += b[j];
}

__global__ void k_to_bf16(bf16 *y, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2bfloat16(x[i]);
}

/* ---- FP8 (e4m3) quantization, per tensor ----
 * k_amax: max |x| over n bf16 values into *amax, as the bits of a non-negative float (those
 * order like unsigned ints; the caller zeroes *amax). k_quant_e4m3: y = e4m3(x / s) with
 * s = amax / 448 (e4m3's largest finite value; saturating), and *scale = s for the GEMM.
 * Both take 8 values per thread (n % 8 == 0, 16-byte aligned). */
#define E4M3_MAX 448.0f

__global__ void k_amax(const bf16 *x, size_t n, unsigned *amax) {
    __shared__ float sh[33];
    float m = 0.0f;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n;
         i += (size_t)gridDim.x * blockDim.x * 8) {
        uint4 u = *(const uint4 *)(x + i);
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 f = __bfloat1622float2(h[j]);
            m = fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
        }
    }
    m = block_max(m, sh);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

__device__ __forceinline__ float e4m3_scale(const unsigned *amax) {
    float a = __uint_as_float(*amax);
    return a > 0.0f && isfinite(a) ? a / E4M3_MAX : 1.0f;
}

__global__ void k_quant_e4m3(uint8_t *y, const bf16 *x, size_t n, const unsigned *amax,
                             float *scale) {
    const float s = e4m3_scale(amax), inv = 1.0f / s;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale = s;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; i < n;
         i += (size_t)gridDim.x * blockDim.x * 8) {
        uint4 u = *(const uint4 *)(x + i);
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
        uint8_t o[8];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float2 f = __bfloat1622float2(h[j]);
            o[2 * j] = __nv_cvt_float_to_fp8(f.x * inv, __NV_SATFINITE, __NV_E4M3);
            o[2 * j + 1] = __nv_cvt_float_to_fp8(f.y * inv, __NV_SATFINITE, __NV_E4M3);
        }
        *(uint2 *)(y + i) = *(const uint2 *)o;
    }
}

/* RoPE (rotate-half) in place on heads [0, n_heads) of x (n, ld); cs (max_pos, hd/2, 2). */
__global__ void k_rope(float *x, int ld, const int32_t *pos, int n, int n_heads, int hd,
                       const float *cs) {
    int half = hd / 2;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * n_heads * half) return;
    size_t t = i / ((size_t)n_heads * half);
    int h = (int)(i / half % n_heads), k = (int)(i % half);
    const float *c = cs + ((size_t)pos[t] * half + k) * 2;
    float *v = x + t * ld + (size_t)h * hd;
    float a = v[k], b = v[k + half];
    v[k] = a * c[0] - b * c[1];
    v[k + half] = b * c[0] + a * c[1];
}

/* act (n, dff) bf16 = act(gate) * up, gu (n, 2 dff) f32 = [gate | up] */
__global__ void k_glu(bf16 *act, const float *gu, int n, int dff, int gelu_tanh) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * dff) return;
    size_t t = i / dff;
    int j = (int)(i % dff);
    float g = gu[t * 2 * dff + j], u = gu[t * 2 * dff + dff + j], o;
    if (gelu_tanh) {
        const float c = 0.7978845608028654f;
        o = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g))) * u;
    } else {
        o = g / (1.0f + expf(-g)) * u;
    }
    act[i] = __float2bfloat16(o);
}

/* ---- width compression, pruning and last-token gathers (one block per output token) ----
 * y[o] = sum over t in [src[o], src[o] + cnt[o]) of w_t x[t], w_t = weights[t] / sum(weights)
 * over the group (its mean when weights is NULL or the group's weights sum to 0): mr_pool's
 * rule. cnt 1 (or cnt NULL) is an exact copy, whatever its weight. y must not alias x. */
__global__ void k_pool(float *y, const float *x, int d, const int32_t *src, const int32_t *cnt,
                       const float *weights) {
    size_t o = blockIdx.x;
    int t0 = src[o], n = cnt ? cnt[o] : 1;
    double ws = 0.0;
    if (weights && n > 1)
        for (int t = 0; t < n; t++) ws += weights[t0 + t];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = 0.0f;
        for (int t = 0; t < n; t++) {
            float w = ws > 0.0 ? (float)(weights[t0 + t] / ws) : 1.0f / (float)n;
            acc += w * x[(size_t)(t0 + t) * d + j];
        }
        y[o * d + j] = acc;
    }
}

__global__ void k_gather_bf16(bf16 *y, const bf16 *x, int d, const int32_t *src) {
    size_t o = blockIdx.x;
    for (int j = threadIdx.x; j < d; j += blockDim.x) y[o * d + j] = x[(size_t)src[o] * d + j];
}

/* ---- exit heads: one block per row ----
 * s = dot(rmsnorm(x_last, final_norm), head + sum of active deltas), softcapped. */
struct exit_heads {
    const float *head;                  /* (d) */
    const float *delta[16];             /* (d) each, n_delta of them */
    int n_delta;
};
__global__ void k_exit(const float *x, int d, const int32_t *off, const int32_t *len,
                       int last_mode, const float *fnorm, float eps, float w_off, exit_heads h,
                       float cap, float *score) {
    __shared__ float sh[33];
    int r = blockIdx.x;
    size_t t = last_mode ? (size_t)r : (size_t)(off[r] + len[r] - 1);
    const float *xt = x + t * d;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += xt[j] * xt[j];
    ss = block_sum(ss, sh);
    float rs = (float)(1.0 / sqrt((double)ss / d + eps));
    float dot = 0.0f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float hv = h.head[j];
        for (int a = 0; a < h.n_delta; a++) hv += h.delta[a][j];
        dot += xt[j] * rs * (fnorm[j] + w_off) * hv;
    }
    dot = block_sum(dot, sh);
    if (threadIdx.x == 0) score[r] = cap > 0.0f ? cap * tanhf(dot / cap) : dot;
}

/* ---- attention ----
 * Flash attention over packed rows on the tensor cores (mma.sync m16n8k16: bf16 inputs, f32
 * accumulation). A block takes one tile of up to ATT_BQ consecutive queries of one row and
 * one head (grid (n_tiles, n_heads)), 16 queries per warp. Q (rounded to bf16) stays in
 * shared memory; K and V stream through it BK keys at a time. Per key block a warp computes
 * its 16 x BK scores (S = Q K^T), applies scale, softcap and the causal / sliding-window mask,
 * updates an online softmax (running max and sum per query row) and adds P V, with P rounded
 * to bf16, into an f32 accumulator held in registers (16 x HD per warp).
 * A tile is {key offset of the row's own tokens, position of its first query, number of
 * queries, index of its first query in q/out} with its prefix {key offset, length} beside it
 * (prefix.h, mr_prefix_tiles): key position j < length is the shared query prefix's token j,
 * the rest the row's own token j - length. The full pass uses tiles of every prefix group
 * (prefix {0, 0}) and every row, the deepest layer one tile per row holding its last token
 * only (last-token mode).
 * HD is the head dim (a multiple of 4) rounded up to 32, 64, 128 or 256: the dims past hd
 * are zero in Q, K and V and are not written. Rows are padded by 8 bf16 in shared memory, so
 * the fragment loads (one 32-bit word per lane, rows g = lane / 4) hit 32 distinct banks. */
#define ATT_NW 4
#define ATT_BQ (ATT_NW * 16)

struct att_args {
    const float *q; int q_ld;          /* (n_q, q_ld), head h at column h * hd */
    const float *k, *v; int kv_ld;     /* (n_tok, kv_ld), kv head g at column g * hd */
    bf16 *out; int out_ld;             /* (n_q, out_ld) */
    const int4 *tiles;
    const int2 *pre;                   /* per tile: {prefix key offset, prefix length} */
    int n_heads, n_kv, hd;
    float scale, softcap;
    int window;
};

/* shared memory of k_attention<HD, BK>: Q (ATT_BQ rows), K and V (BK rows each), bf16 */
__host__ __device__ constexpr int att_smem_bytes(int hd, int bk) {
    return (ATT_BQ + 2 * bk) * (hd + 8) * 2;
}

/* d (16x8, f32) += a (16x16, bf16, row-major fragment) * b (16x8, bf16, column fragment) */
__device__ __forceinline__ void mma_bf16(float *d, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

__device__ __forceinline__ uint32_t pack_bf16_raw(bf16 lo, bf16 hi) {
    return (uint32_t)__bfloat16_as_ushort(lo) | (uint32_t)__bfloat16_as_ushort(hi) << 16;
}

/* N rows x HD dims of an f32 matrix (row i at src + i * ld, plus jump floats from row split
 * on: a key block that straddles a shared prefix and the row's own keys; dims past hd and rows
 * past `valid` zero) into bf16 shared memory with row stride HD + 8. Each thread moves
 * N * HD / 512 float4s, 4 loads in flight at a time (the loads are what this kernel waits
 * on). hd is a multiple of 4 and ld, src and jump 16-byte aligned. */
template <int HD, int N>
__device__ __forceinline__ void att_load(bf16 *dst, const float *src, int split, long long jump,
                                         size_t ld, int valid, int hd) {
    constexpr int SP = HD + 8, H4 = HD / 4, PER = N * H4 / (ATT_NW * 32), B = PER < 4 ? PER : 4;
    static_assert(PER % B == 0, "whole batches");
#pragma unroll
    for (int i0 = 0; i0 < PER; i0 += B) {
        float4 v[B];
#pragma unroll
        for (int b = 0; b < B; b++) {
            int i = (i0 + b) * (ATT_NW * 32) + threadIdx.x, r = i / H4, dq = 4 * (i % H4);
            const float *row = src + (size_t)r * ld + (r < split ? 0 : jump);
            v[b] = r < valid && dq < hd ? *(const float4 *)(row + dq)
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int b = 0; b < B; b++) {
            int i = (i0 + b) * (ATT_NW * 32) + threadIdx.x, r = i / H4, dq = 4 * (i % H4);
            *(uint2 *)(dst + r * SP + dq) =
                make_uint2(pack_bf16(v[b].x, v[b].y), pack_bf16(v[b].z, v[b].w));
        }
    }
}

template <int HD, int BK>
__global__ void __launch_bounds__(ATT_NW * 32, HD <= 128 ? 3 : 2) k_attention(att_args a) {
    constexpr int SP = HD + 8, NT = BK / 8, ND = HD / 8;
    constexpr float LOG2E = 1.4426950408889634f;
    extern __shared__ __align__(16) unsigned char att_sm[];
    bf16 *Qs = (bf16 *)att_sm, *Ks = Qs + ATT_BQ * SP, *Vs = Ks + BK * SP;
    const int4 tl = a.tiles[blockIdx.x];
    const int2 pr = a.pre[blockIdx.x];
    const int key_off = tl.x, p0 = tl.y, nq = tl.z, q_base = tl.w, pre_off = pr.x, pre_len = pr.y;
    const int h = blockIdx.y, kvh = h / (a.n_heads / a.n_kv), hd = a.hd;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    const int wq = warp * 16; /* the warp's first query within the tile */

    att_load<HD, ATT_BQ>(Qs, a.q + (size_t)q_base * a.q_ld + (size_t)h * hd, ATT_BQ, 0,
                         (size_t)a.q_ld, nq, hd);
    float o[ND][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < ND; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    const int k_hi = p0 + nq; /* keys [k_lo, k_hi) of the row */
    const int k_lo = a.window > 0 && p0 - a.window + 1 > 0 ? p0 - a.window + 1 : 0;
    const int q_first = p0 + wq, q_last = p0 + min(wq + 15, nq - 1); /* warp's positions */
    const size_t kv_col = (size_t)kvh * hd;
    for (int j0 = k_lo; j0 < k_hi; j0 += BK) {
        __syncthreads(); /* the previous block is consumed */
        /* keys j0 .. j0 + nk - 1: the first `split` from the prefix, the rest the row's own */
        /* key position j's row: pre_off + j below pre_len, key_off + j - pre_len from there;
         * the block's first `split` keys are the prefix's */
        int nk = min(BK, k_hi - j0), split = min(max(pre_len - j0, 0), nk);
        size_t first = (size_t)(split ? pre_off + j0 : key_off + j0 - pre_len) * a.kv_ld + kv_col;
        long long jump = split ? (long long)(key_off - pre_len - pre_off) * a.kv_ld : 0;
        att_load<HD, BK>(Ks, a.k + first, split, jump, (size_t)a.kv_ld, nk, hd);
        att_load<HD, BK>(Vs, a.v + first, split, jump, (size_t)a.kv_ld, nk, hd);
        __syncthreads();
        if (wq >= nq || j0 > q_last) continue; /* no queries, or every key is in the future */
        if (a.window > 0 && j0 + BK - 1 < q_first - a.window + 1) continue; /* all too old */
        float s[NT][4];
#pragma unroll
        for (int n = 0; n < NT; n++) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < HD / 16; kk++) {
            const bf16 *qa = Qs + (wq + g) * SP + kk * 16 + 2 * t4;
            uint32_t af[4] = {*(const uint32_t *)qa, *(const uint32_t *)(qa + 8 * SP),
                              *(const uint32_t *)(qa + 8), *(const uint32_t *)(qa + 8 * SP + 8)};
#pragma unroll
            for (int n = 0; n < NT; n++) {
                const bf16 *kb = Ks + (n * 8 + g) * SP + kk * 16 + 2 * t4;
                mma_bf16(s[n], af, *(const uint32_t *)kb, *(const uint32_t *)(kb + 8));
            }
        }
        /* scale, softcap, mask; element c of tile n: query row g + 8 * (c >> 1), key
         * n * 8 + 2 * t4 + (c & 1) */
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                int qi = wq + g + 8 * (c >> 1), t = p0 + qi, j = j0 + n * 8 + 2 * t4 + (c & 1);
                bool ok = qi < nq && j <= t && (a.window <= 0 || t - j < a.window);
                float v = s[n][c] * a.scale;
                if (a.softcap > 0.0f) v = a.softcap * tanhf(v / a.softcap);
                s[n][c] = ok ? v : -INFINITY;
                mx[c >> 1] = fmaxf(mx[c >> 1], s[n][c]);
            }
        float corr[2], mu[2];
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            float mn = fmaxf(m[r], mx[r]);
            mu[r] = mn == -INFINITY ? 0.0f : mn; /* a row with no visible key yet */
            corr[r] = exp2f((m[r] - mu[r]) * LOG2E); /* 0 while m = -inf */
            m[r] = mn;
            l[r] *= corr[r];
        }
#pragma unroll
        for (int i = 0; i < ND; i++) {
            o[i][0] *= corr[0];
            o[i][1] *= corr[0];
            o[i][2] *= corr[1];
            o[i][3] *= corr[1];
        }
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int c = 0; c < 4; c++) {
                s[n][c] = exp2f((s[n][c] - mu[c >> 1]) * LOG2E);
                l[c >> 1] += s[n][c];
            }
        /* O += P V: P's accumulator layout is the A fragment of keys 16 kk .. 16 kk + 15 */
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t pf[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]),
                              pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
            const bf16 *vb = Vs + (kk * 16 + 2 * t4) * SP + g;
#pragma unroll
            for (int i = 0; i < ND; i++) {
                const bf16 *v = vb + i * 8;
                mma_bf16(o[i], pf, pack_bf16_raw(v[0], v[SP]),
                         pack_bf16_raw(v[8 * SP], v[9 * SP]));
            }
        }
    }
    if (wq >= nq) return;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
#pragma unroll
    for (int r = 0; r < 2; r++) {
        int qi = wq + g + 8 * r;
        if (qi >= nq) continue;
        float inv = 1.0f / l[r];
        bf16 *out = a.out + (size_t)(q_base + qi) * a.out_ld + (size_t)h * hd;
#pragma unroll
        for (int i = 0; i < ND; i++) {
            int dd = i * 8 + 2 * t4;
            if (dd < hd)
                *(__nv_bfloat162 *)(out + dd) =
                    __floats2bfloat162_rn(o[i][2 * r] * inv, o[i][2 * r + 1] * inv);
        }
    }
}

/* Attention of each row's last query to each of its own keys, summed over heads (attention
 * pooling weights, mr_attention's last_probs): one block per row, heads in order so the sums
 * are deterministic. Row r's own tokens are [off[r], off[r] + len[r]) and its shared prefix
 * (NULL pre_off: none) pre_len[r] tokens at pre_off[r]; the softmax spans both, probs get the
 * own keys'. scratch (n_tok) holds one head's own logits at the row's own offset; the prefix's
 * are not stored: each thread folds its prefix keys into a running maximum and a sum of
 * exponentials relative to it (the online softmax), rescaled to the block's maximum after. */
__device__ __forceinline__ float last_logit(const float *qt, const float *kj, int hd, float scale,
                                            float softcap) {
    float dot = 0.0f;
    for (int dd = 0; dd < hd; dd++) dot += qt[dd] * kj[dd];
    float s = dot * scale;
    return softcap > 0.0f ? softcap * tanhf(s / softcap) : s;
}

__global__ void k_last_probs(const float *q, int q_ld, const float *k, int kv_ld,
                             const int32_t *off, const int32_t *len, const int32_t *pre_off,
                             const int32_t *pre_len, int n_heads, int n_kv, int hd, float scale,
                             float softcap, int window, float *scratch, float *probs) {
    __shared__ float sh[33];
    int r = blockIdx.x, o = off[r], L = len[r];
    int pl = pre_off ? pre_len[r] : 0, po = pl ? pre_off[r] : 0, t = pl + L - 1;
    const float *qrow = q + (size_t)(o + L - 1) * q_ld;
    float *sc = scratch + o, *pr = probs + o;
    for (int j = threadIdx.x; j < L; j += blockDim.x) pr[j] = 0.0f;
    for (int h = 0; h < n_heads; h++) {
        int kvh = h / (n_heads / n_kv);
        const float *qt = qrow + (size_t)h * hd;
        size_t col = (size_t)kvh * hd;
        float mx = -INFINITY, pm = -INFINITY, ps = 0.0f; /* ps: sum of exp(logit - pm) */
        for (int j = threadIdx.x; j < pl; j += blockDim.x) { /* prefix keys */
            if (window > 0 && t - j >= window) continue;
            float s = last_logit(qt, k + (size_t)(po + j) * kv_ld + col, hd, scale, softcap);
            if (s > pm) ps = ps * expf(pm - s) + 1.0f, pm = s; /* expf(-inf) = 0 at the first */
            else ps += expf(s - pm);
        }
        for (int j = pl + threadIdx.x; j < pl + L; j += blockDim.x) { /* own keys */
            float s = -INFINITY;
            if (!(window > 0 && t - j >= window))
                s = last_logit(qt, k + (size_t)(o + j - pl) * kv_ld + col, hd, scale, softcap);
            sc[j - pl] = s;
            mx = fmaxf(mx, s);
        }
        mx = block_max(fmaxf(mx, pm), sh); /* finite: the row's last key is never masked */
        float sum = ps > 0.0f ? ps * expf(pm - mx) : 0.0f;
        for (int j = threadIdx.x; j < L; j += blockDim.x) {
            float e = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
            sc[j] = e;
            sum += e;
        }
        sum = block_sum(sum, sh);
        float inv = 1.0f / sum;
        for (int j = threadIdx.x; j < L; j += blockDim.x) pr[j] += sc[j] * inv;
        __syncthreads(); /* the next head writes sc by key position: other threads */
    }
}

#endif
