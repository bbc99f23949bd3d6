/* backward.c: backward kernels of the trainer (see backward.h for the contract: packed rows,
 * gradients accumulate, NULL gradients are skipped, nothing allocates).
 *
 * Matrix products go to OpenBLAS sgemm like the forward; the rest are plain loops, parallel
 * over tokens or (row, kv head) with OpenMP where outputs are disjoint. Each backward follows
 * its forward op's formula in common/kernels.c; the derivation is in a comment where it is
 * not obvious. */
#include "backward.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* ---- linear ---- */

void mr_matmul_wt_backward(float *dx, float *dw, float *db, const float *dy, const float *x,
                           const float *w, int n, int in, int out) {
    if (n <= 0) return;
    if (dx) /* dx (n, in) += dy (n, out) . W (out, in) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in,
                    1.0f, dx, in);
    if (dw) /* dW (out, in) += dy^T (out, n) . x (n, in) */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in,
                    1.0f, dw, in);
    if (db)
        for (int i = 0; i < n; i++)
            for (int j = 0; j < out; j++) db[j] += dy[(size_t)i * out + j];
}

/* ---- RMSNorm ----
 * y_j = x_j r g_j, r = (mean(x^2) + eps)^-1/2, g = w + offset.
 * dx_j = r g_j dy_j - x_j r^3 / d * sum_k dy_k g_k x_k;  dw_j = sum_rows dy_j x_j r. */
void mr_rmsnorm_backward(float *dx, float *dw, const float *dy, const float *x, const float *w,
                         int n, int d, float eps, float w_offset) {
    if (dx) {
#pragma omp parallel for schedule(static) if (n > 16)
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * d, *gi = dy + (size_t)i * d;
            double ss = 0.0, dot = 0.0;
            for (int j = 0; j < d; j++) {
                ss += (double)xi[j] * xi[j];
                dot += (double)gi[j] * (w[j] + w_offset) * xi[j];
            }
            double r = 1.0 / sqrt(ss / d + eps);
            float c = (float)(r * r * r * dot / d);
            float *dxi = dx + (size_t)i * d;
            for (int j = 0; j < d; j++)
                dxi[j] += (float)r * gi[j] * (w[j] + w_offset) - c * xi[j];
        }
    }
    if (dw) {
        for (int i = 0; i < n; i++) {
            const float *xi = x + (size_t)i * d, *gi = dy + (size_t)i * d;
            double ss = 0.0;
            for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
            float r = (float)(1.0 / sqrt(ss / d + eps));
            for (int j = 0; j < d; j++) dw[j] += gi[j] * xi[j] * r;
        }
    }
}

/* ---- attention ----
 * Per query: z_j = cap tanh(scale q.k_j / cap) (or scale q.k_j), p = softmax(z) over the
 * visible keys, out = sum_j p_j v_j.  Backward: dv_j += p_j dout; dp_j = dout.v_j;
 * dz_j = p_j (dp_j - sum_k p_k dp_k); ds_j = dz_j (1 - (z_j/cap)^2); dq += scale ds_j k_j;
 * dk_j += scale ds_j q. */

size_t mr_attention_backward_scratch(int max_len) {
    return (size_t)omp_get_max_threads() * 3 * (size_t)max_len;
}

/* Probabilities of one query (same arithmetic as attend_one in common/kernels.c); also keeps
 * the capped logits in z for the softcap derivative. Masked keys get p = 0. */
static void attn_probs(float *p, float *z, const float *q, const float *k, int n_keys,
                       int kv_stride, int head_dim, int q_pos, const mr_attn_args *a) {
    float mx = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        if (a->window > 0 && q_pos - j >= a->window) {
            p[j] = -INFINITY;
            z[j] = 0.0f;
            continue;
        }
        const float *kj = k + (size_t)j * kv_stride;
        float s = 0.0f;
        for (int i = 0; i < head_dim; i++) s += q[i] * kj[i];
        s *= a->scale;
        if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
        p[j] = z[j] = s;
        if (s > mx) mx = s;
    }
    float sum = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        float e = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n_keys; j++) p[j] *= inv;
}

void mr_attention_backward(const mr_attn_args *a, const float *dout, float *dq, float *dk,
                           float *dv, float *scratch) {
    int group = a->n_heads / a->n_kv, hd = a->head_dim;
    int q_stride = a->n_heads * hd, kv_stride = a->n_kv * hd;
    int n_items = a->n_rows * a->n_kv;
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++) {
        int r = it / a->n_kv, kvh = it % a->n_kv;
        float *p = scratch + (size_t)omp_get_thread_num() * 3 * a->max_len;
        float *z = p + a->max_len, *dp = z + a->max_len;
        int from = a->q_from ? a->q_from[r] : 0;
        int qo = a->q_off ? a->q_off[r] : a->off[r];
        size_t kv0 = (size_t)a->off[r] * kv_stride + (size_t)kvh * hd;
        const float *kr = a->k + kv0, *vr = a->v + kv0;
        float *dkr = dk + kv0, *dvr = dv + kv0;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            for (int t = from; t < a->len[r]; t++) {
                size_t qi = (size_t)(qo + t - from) * q_stride + (size_t)h * hd;
                const float *qv = a->q + qi, *go = dout + qi;
                float *dqv = dq + qi;
                int n_keys = t + 1;
                attn_probs(p, z, qv, kr, n_keys, kv_stride, hd, t, a);
                double pdp = 0.0;
                for (int j = 0; j < n_keys; j++) {
                    if (p[j] == 0.0f) continue;
                    const float *vj = vr + (size_t)j * kv_stride;
                    float *dvj = dvr + (size_t)j * kv_stride;
                    float dpj = 0.0f;
                    for (int i = 0; i < hd; i++) {
                        dpj += go[i] * vj[i];
                        dvj[i] += p[j] * go[i];
                    }
                    dp[j] = dpj;
                    pdp += (double)p[j] * dpj;
                }
                for (int j = 0; j < n_keys; j++) {
                    if (p[j] == 0.0f) continue;
                    float ds = p[j] * (dp[j] - (float)pdp);
                    if (a->softcap > 0.0f) {
                        float th = z[j] / a->softcap;
                        ds *= 1.0f - th * th;
                    }
                    ds *= a->scale;
                    const float *kj = kr + (size_t)j * kv_stride;
                    float *dkj = dkr + (size_t)j * kv_stride;
                    for (int i = 0; i < hd; i++) {
                        dqv[i] += ds * kj[i];
                        dkj[i] += ds * qv[i];
                    }
                }
            }
        }
    }
}

/* ---- gated activations ---- */

void mr_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], sg = 1.0f / (1.0f + expf(-g));
        if (dup) dup[i] += dout[i] * g * sg;
        if (dgate) dgate[i] += dout[i] * up[i] * sg * (1.0f + g * (1.0f - sg));
    }
}

/* gelu(g) = g/2 (1 + tanh(u)), u = c (g + 0.044715 g^3);
 * gelu'(g) = (1 + tanh u)/2 + g/2 (1 - tanh^2 u) c (1 + 3 * 0.044715 g^2). */
void mr_geglu_tanh_backward(float *dgate, float *dup, const float *dout, const float *gate,
                            const float *up, size_t n) {
    const float c = 0.7978845608028654f;
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i], th = tanhf(c * (g + 0.044715f * g * g * g));
        if (dup) dup[i] += dout[i] * 0.5f * g * (1.0f + th);
        float dg = 0.5f * (1.0f + th) +
                   0.5f * g * (1.0f - th * th) * c * (1.0f + 3.0f * 0.044715f * g * g);
        if (dgate) dgate[i] += dout[i] * up[i] * dg;
    }
}

/* ---- embedding ---- */

void mr_embedding_backward(float *dE, const float *dx, const int32_t *ids, int n_tok, int d,
                           float scale) {
    for (int t = 0; t < n_tok; t++) {
        float *e = dE + (size_t)ids[t] * d;
        const float *g = dx + (size_t)t * d;
        for (int j = 0; j < d; j++) e[j] += scale * g[j];
    }
}

/* ---- pooling (mean or constant weights) ---- */

void mr_pool_backward(float *dx, const float *dy, const int32_t *off, const int32_t *nq,
                      const int32_t *np, const int32_t *ns, int n_rows, int d, int r,
                      const float *weights, const int32_t *new_off) {
    for (int i = 0; i < n_rows; i++) {
        int src = off[i], dst = new_off[i], groups = (np[i] + r - 1) / r;
        for (size_t j = 0; j < (size_t)nq[i] * d; j++)
            dx[(size_t)src * d + j] += dy[(size_t)dst * d + j];
        for (int g = 0; g < groups; g++) {
            int t0 = src + nq[i] + g * r, t1 = t0 + r < src + nq[i] + np[i] ? t0 + r
                                                                           : src + nq[i] + np[i];
            const float *gg = dy + (size_t)(dst + nq[i] + g) * d;
            double wsum = 0.0; /* as mr_pool: weights normalised per group, mean if they sum 0 */
            if (weights)
                for (int t = t0; t < t1; t++) wsum += weights[t];
            for (int t = t0; t < t1; t++) {
                float w = wsum > 0.0 ? (float)(weights[t] / wsum) : 1.0f / (float)(t1 - t0);
                for (int j = 0; j < d; j++) dx[(size_t)t * d + j] += w * gg[j];
            }
        }
        size_t s0 = (size_t)(src + nq[i] + np[i]) * d, d0 = (size_t)(dst + nq[i] + groups) * d;
        for (size_t j = 0; j < (size_t)ns[i] * d; j++) dx[s0 + j] += dy[d0 + j];
    }
}

/* ---- exit head ---- */

float mr_exit_head(float *xn, const float *x, const float *fnorm, const float *head, int d,
                   float eps, float w_offset, float cap) {
    mr_rmsnorm(xn, x, fnorm, 1, d, eps, w_offset);
    float s = mr_dot(xn, head, d);
    return cap > 0.0f ? cap * tanhf(s / cap) : s;
}

void mr_exit_head_backward(float *dx, float *dfnorm, float *dhead, float ds, float s,
                           const float *x, const float *fnorm, const float *head, int d,
                           float eps, float w_offset, float cap) {
    if (cap > 0.0f) {
        float th = s / cap;
        ds *= 1.0f - th * th;
    }
    /* score = xn . head with xn = rmsnorm(x): d xn = ds * head */
    double ss = 0.0;
    for (int j = 0; j < d; j++) ss += (double)x[j] * x[j];
    float r = (float)(1.0 / sqrt(ss / d + eps));
    if (dhead)
        for (int j = 0; j < d; j++) dhead[j] += ds * x[j] * r * (fnorm[j] + w_offset);
    float dxn[d];
    for (int j = 0; j < d; j++) dxn[j] = ds * head[j];
    mr_rmsnorm_backward(dx, dfnorm, dxn, x, fnorm, 1, d, eps, w_offset);
}

/* ---- LoRA ---- */

void mr_lora(float *y, float *t, const float *x, const float *A, const float *B, int n, int in,
             int out, int rank, float scale) {
    if (n <= 0) return;
    mr_matmul_wt(t, x, A, n, in, rank, 0.0f);
    /* y += scale * t B^T: sgemm with alpha = scale (mr_matmul_wt has alpha 1) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, rank, scale, t, rank, B, rank,
                1.0f, y, out);
}

void mr_lora_backward(float *dx, float *dA, float *dB, const float *dy, const float *x,
                      const float *t, const float *A, const float *B, int n, int in, int out,
                      int rank, float scale, float *dt) {
    if (n <= 0) return;
    /* dB (out, rank) += scale dy^T t */
    if (dB)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, rank, n, scale, dy, out, t,
                    rank, 1.0f, dB, rank);
    /* dt (n, rank) = scale dy B */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, rank, out, scale, dy, out, B, rank,
                0.0f, dt, rank);
    mr_matmul_wt_backward(dx, dA, NULL, dt, x, A, n, in, rank);
}

/* ---- listwise loss ---- */

void mr_softmax(float *p, const float *s, int G) {
    float mx = s[0];
    for (int j = 1; j < G; j++) mx = s[j] > mx ? s[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < G; j++) sum += exp((double)s[j] - mx);
    for (int j = 0; j < G; j++) p[j] = (float)(exp((double)s[j] - mx) / sum);
}

double mr_softmax_xent(float *ds, const float *s, const float *target, int G, float weight) {
    float mx = s[0];
    for (int j = 1; j < G; j++) mx = s[j] > mx ? s[j] : mx;
    double sum = 0.0;
    for (int j = 0; j < G; j++) sum += exp((double)s[j] - mx);
    double lse = mx + log(sum), loss = 0.0;
    for (int j = 0; j < G; j++) {
        double tj = target ? target[j] : (j == 0);
        loss -= tj * ((double)s[j] - lse);
        if (ds) ds[j] += weight * (float)(exp((double)s[j] - lse) - tj);
    }
    return loss;
}
