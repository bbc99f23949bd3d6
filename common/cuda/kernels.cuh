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
 * rule. cnt 1 (or cnt NULL) is an exact copy. y must not alias x. */
__global__ void k_pool(float *y, const float *x, int d, const int32_t *src, const int32_t *cnt,
                       const float *weights) {
    size_t o = blockIdx.x;
    int t0 = src[o], n = cnt ? cnt[o] : 1;
    double ws = 0.0;
    if (weights)
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
 * Flash-style causal attention over packed rows: a block takes one tile of up to ATT_BQ
 * consecutive queries of one row and one head (grid (n_tiles, n_heads)); keys and values
 * stream through shared memory ATT_KT at a time; each warp owns ATT_QPW queries and keeps an
 * online softmax (running max, sum, f32 accumulator split over lanes, DPL dims per lane).
 * Inside a key tile lane j scores key j, so the dot products need no reductions.
 * A tile is {key offset of the row, position of its first query, number of queries, index of
 * its first query in q/out}: the full pass uses tiles of every row, the deepest layer one
 * tile per row holding its last token only (last-token mode). */
#define ATT_NW 4
#define ATT_QPW 4
#define ATT_BQ (ATT_NW * ATT_QPW)
#define ATT_KT 32

struct att_args {
    const float *q; int q_ld;          /* (n_q, q_ld), head h at column h * hd */
    const float *k, *v; int kv_ld;     /* (n_tok, kv_ld), kv head g at column g * hd */
    bf16 *out; int out_ld;             /* (n_q, out_ld) */
    const int4 *tiles;
    int n_heads, n_kv, hd;
    float scale, softcap;
    int window;
};

template <int DPL>
__global__ void __launch_bounds__(ATT_NW * 32) k_attention(att_args a) {
    extern __shared__ float smem[];
    const int hd = a.hd, hdp = hd + 1;
    float *Ks = smem;                          /* (KT, hd + 1) */
    float *Vs = Ks + ATT_KT * hdp;             /* (KT, hd) */
    float *Qs = Vs + ATT_KT * hd;              /* (BQ, hd) */
    const int4 tl = a.tiles[blockIdx.x];
    const int key_off = tl.x, p0 = tl.y, nq = tl.z, q_base = tl.w;
    const int h = blockIdx.y, kvh = h / (a.n_heads / a.n_kv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

    for (int i = threadIdx.x; i < ATT_BQ * hd; i += blockDim.x) {
        int qi = i / hd, dd = i % hd;
        Qs[i] = qi < nq ? a.q[(size_t)(q_base + qi) * a.q_ld + (size_t)h * hd + dd] : 0.0f;
    }
    float m[ATT_QPW], l[ATT_QPW], acc[ATT_QPW][DPL];
#pragma unroll
    for (int i = 0; i < ATT_QPW; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
#pragma unroll
        for (int e = 0; e < DPL; e++) acc[i][e] = 0.0f;
    }
    const int k_hi = p0 + nq; /* keys [k_lo, k_hi) of the row */
    const int k_lo = a.window > 0 && p0 - a.window + 1 > 0 ? p0 - a.window + 1 : 0;
    for (int j0 = k_lo; j0 < k_hi; j0 += ATT_KT) {
        __syncthreads(); /* previous tile consumed (and Qs written on the first pass) */
        for (int i = threadIdx.x; i < ATT_KT * hd; i += blockDim.x) {
            int kk = i / hd, dd = i % hd, j = j0 + kk;
            float kv = 0.0f, vv = 0.0f;
            if (j < k_hi) {
                size_t base = (size_t)(key_off + j) * a.kv_ld + (size_t)kvh * hd + dd;
                kv = a.k[base];
                vv = a.v[base];
            }
            Ks[kk * hdp + dd] = kv;
            Vs[kk * hd + dd] = vv;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ATT_QPW; i++) {
            int qi = warp * ATT_QPW + i;
            if (qi >= nq) break;
            int t = p0 + qi, j = j0 + lane;
            if (t < j0) continue; /* causal: no key of this tile is visible yet */
            bool ok = j <= t && (a.window <= 0 || t - j < a.window);
            float s = -INFINITY;
            if (ok) {
                const float *qv = Qs + qi * hd, *kv = Ks + lane * hdp;
                float dot = 0.0f;
                for (int dd = 0; dd < hd; dd++) dot += qv[dd] * kv[dd];
                s = dot * a.scale;
                if (a.softcap > 0.0f) s = a.softcap * tanhf(s / a.softcap);
            }
            float mt = warp_max(s);
            if (mt == -INFINITY) continue;
            float mn = fmaxf(m[i], mt);
            float corr = expf(m[i] - mn); /* 0 on the first tile (m = -inf) */
            float p = ok ? expf(s - mn) : 0.0f;
            l[i] = l[i] * corr + warp_sum(p);
#pragma unroll
            for (int e = 0; e < DPL; e++) acc[i][e] *= corr;
            for (int kk = 0; kk < ATT_KT; kk++) {
                float pk = __shfl_sync(0xffffffffu, p, kk);
                if (pk == 0.0f) continue; /* uniform across the warp */
#pragma unroll
                for (int e = 0; e < DPL; e++) {
                    int dd = lane + 32 * e;
                    if (dd < hd) acc[i][e] += pk * Vs[kk * hd + dd];
                }
            }
            m[i] = mn;
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_QPW; i++) {
        int qi = warp * ATT_QPW + i;
        if (qi >= nq) break;
        float inv = 1.0f / l[i];
        bf16 *o = a.out + (size_t)(q_base + qi) * a.out_ld + (size_t)h * hd;
#pragma unroll
        for (int e = 0; e < DPL; e++) {
            int dd = lane + 32 * e;
            if (dd < hd) o[dd] = __float2bfloat16(acc[i][e] * inv);
        }
    }
}

/* Attention of each row's last query to each of its keys, summed over heads (attention
 * pooling weights, mr_attention's last_probs): one block per row, heads in order so the sums
 * are deterministic; scratch (n_tok) holds one head's logits at the row's own offset. */
__global__ void k_last_probs(const float *q, int q_ld, const float *k, int kv_ld,
                             const int32_t *off, const int32_t *len, int n_heads, int n_kv,
                             int hd, float scale, float softcap, int window, float *scratch,
                             float *probs) {
    __shared__ float sh[33];
    int r = blockIdx.x, o = off[r], L = len[r], t = L - 1;
    const float *qt = q + (size_t)(o + t) * q_ld;
    float *sc = scratch + o, *pr = probs + o;
    for (int j = threadIdx.x; j < L; j += blockDim.x) pr[j] = 0.0f;
    for (int h = 0; h < n_heads; h++) {
        int kvh = h / (n_heads / n_kv);
        float mx = -INFINITY;
        for (int j = threadIdx.x; j < L; j += blockDim.x) {
            float s = -INFINITY;
            if (!(window > 0 && t - j >= window)) {
                const float *kj = k + (size_t)(o + j) * kv_ld + (size_t)kvh * hd;
                float dot = 0.0f;
                for (int dd = 0; dd < hd; dd++) dot += qt[(size_t)h * hd + dd] * kj[dd];
                s = dot * scale;
                if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
            }
            sc[j] = s;
            mx = fmaxf(mx, s);
        }
        mx = block_max(mx, sh);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < L; j += blockDim.x) {
            float e = sc[j] == -INFINITY ? 0.0f : expf(sc[j] - mx);
            sc[j] = e;
            sum += e;
        }
        sum = block_sum(sum, sh);
        float inv = 1.0f / sum;
        for (int j = threadIdx.x; j < L; j += blockDim.x) pr[j] += sc[j] * inv;
    }
}

#endif
