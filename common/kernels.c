/* kernels.c: fp32 CPU kernels of the forward pass (see kernels.h for the packed-row layout).
 *
 * Matrix products call OpenBLAS sgemm, which is where the time goes; the rest are simple loops
 * over contiguous memory that -O2 -march=native vectorises, parallel over tokens or over
 * (row, head) pairs with OpenMP. Nothing here allocates. */
#include "kernels.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

void mr_matmul_wt(float *y, const float *x, const float *w, int n, int in, int out, float beta) {
    if (n <= 0 || out <= 0) return;
    if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.0f, w, in, x, 1, beta, y, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta,
                y, out);
}

void mr_rmsnorm(float *y, const float *x, const float *w, int n, int d, float eps,
                float w_offset) {
#pragma omp parallel for schedule(static) if (n > 16)
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        double ss = 0.0;
        for (int j = 0; j < d; j++) ss += (double)xi[j] * xi[j];
        float r = (float)(1.0 / sqrt(ss / d + eps));
        for (int j = 0; j < d; j++) yi[j] = xi[j] * r * (w[j] + w_offset);
    }
}

void mr_rope_table(float *cos_sin, int max_pos, int head_dim, double theta) {
    int half = head_dim / 2;
    for (int p = 0; p < max_pos; p++) {
        for (int i = 0; i < half; i++) {
            double inv = pow(theta, -2.0 * i / head_dim);
            cos_sin[((size_t)p * half + i) * 2] = (float)cos(p * inv);
            cos_sin[((size_t)p * half + i) * 2 + 1] = (float)sin(p * inv);
        }
    }
}

/* (a, b) -> (a c - b s, b c + a s) per pair, with s's sign flipped by dir = -1: the inverse
 * rotation (its transpose), which is RoPE's backward. Negating s is exact, so both
 * directions round as if written out. */
static void rope_rotate(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                        const float *cos_sin, float dir) {
    int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n_tok > 16)
    for (int t = 0; t < n_tok; t++) {
        const float *cs = cos_sin + (size_t)pos[t] * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float c = cs[2 * i], s = dir * cs[2 * i + 1];
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

void mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
             const float *cos_sin) {
    rope_rotate(x, pos, n_tok, n_heads, head_dim, cos_sin, 1.0f);
}

void mr_rope_inverse(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
                     const float *cos_sin) {
    rope_rotate(x, pos, n_tok, n_heads, head_dim, cos_sin, -1.0f);
}

float mr_dot(const float *a, const float *b, int d) {
    double s = 0.0;
    for (int i = 0; i < d; i++) s += (double)a[i] * b[i];
    return (float)s;
}

enum { ATT_JB = 32 }; /* keys per register block of the logits */

/* Per thread: K transposed (head_dim, max_len), the logits (max_len), ATT_JB floats of padding. */
static size_t att_thread_floats(int max_len, int head_dim) {
    return (size_t)(head_dim + 1) * (size_t)max_len + ATT_JB;
}

size_t mr_attention_scratch(int max_len, int head_dim) {
    return (size_t)omp_get_max_threads() * att_thread_floats(max_len, head_dim);
}

/* Softmax in place over the logits p[j0..n) (entries before j0 are masked), with the optional
 * logit softcap; p[0..j0) are set to 0. */
static void softmax_masked(float *p, int j0, int n, float softcap) {
    float mx = -INFINITY, sum = 0.0f;
    for (int j = 0; j < j0; j++) p[j] = 0.0f;
    if (softcap > 0.0f)
        for (int j = j0; j < n; j++) p[j] = softcap * tanhf(p[j] / softcap);
    for (int j = j0; j < n; j++) mx = p[j] > mx ? p[j] : mx;
    for (int j = j0; j < n; j++) sum += p[j] = expf(p[j] - mx);
    float inv = 1.0f / sum;
    for (int j = j0; j < n; j++) p[j] *= inv;
}

/* out (hd) = sum over j in [j0, n) of p[j] * v_j, where v_j = vp + j * stride for j < pl (a
 * shared prefix) and vr + (j - pl) * stride after; head_dim multiples of ATT_IB accumulate a
 * block at a time in registers. */
enum { ATT_IB = 64 };
static void weighted_sum(float *out, const float *p, const float *vp, int pl, const float *vr,
                         int j0, int n, int stride, int hd) {
    int ja = j0, jb = n < pl ? n : pl;     /* prefix keys [ja, jb) */
    int jc = j0 > pl ? j0 : pl;            /* own keys [jc, n) */
    if (hd % ATT_IB) {
        memset(out, 0, sizeof(float) * (size_t)hd);
        for (int j = ja; j < jb; j++)
            for (int i = 0; i < hd; i++) out[i] += p[j] * vp[(size_t)j * stride + i];
        for (int j = jc; j < n; j++)
            for (int i = 0; i < hd; i++) out[i] += p[j] * vr[(size_t)(j - pl) * stride + i];
        return;
    }
    for (int i0 = 0; i0 < hd; i0 += ATT_IB) {
        float acc[ATT_IB] = {0};
        for (int j = ja; j < jb; j++) {
            const float *vj = vp + (size_t)j * stride + i0;
            for (int i = 0; i < ATT_IB; i++) acc[i] += p[j] * vj[i];
        }
        for (int j = jc; j < n; j++) {
            const float *vj = vr + (size_t)(j - pl) * stride + i0;
            for (int i = 0; i < ATT_IB; i++) acc[i] += p[j] * vj[i];
        }
        memcpy(out + i0, acc, sizeof acc);
    }
}

/* Every head of kv head kvh in row r. K (the shared prefix's keys, then the row's own) is first
 * transposed into kt (head_dim, keys) so that the logits of a query are head_dim contiguous
 * axpys (vectorised, no horizontal sums); p (keys) holds one query's logits, then its
 * probabilities. */
static void attend_kv_head(const mr_attn_args *a, int r, int kvh, float *kt, float *p) {
    int hd = a->head_dim, group = a->n_heads / a->n_kv, len = a->len[r];
    int pl = a->pre_len ? a->pre_len[r] : 0, nk = pl + len;
    int q_stride = a->n_heads * hd, kv_stride = a->n_kv * hd;
    int from = a->q_from ? a->q_from[r] : 0, qo = a->q_off ? a->q_off[r] : a->off[r];
    const float *kr = a->k + (size_t)a->off[r] * kv_stride + (size_t)kvh * hd;
    const float *vr = a->v + (size_t)a->off[r] * kv_stride + (size_t)kvh * hd;
    const float *kp = pl ? a->k + (size_t)a->pre_off[r] * kv_stride + (size_t)kvh * hd : NULL;
    const float *vp = pl ? a->v + (size_t)a->pre_off[r] * kv_stride + (size_t)kvh * hd : NULL;
    for (int j = 0; j < pl; j++)
        for (int i = 0; i < hd; i++) kt[(size_t)i * nk + j] = kp[(size_t)j * kv_stride + i];
    for (int j = 0; j < len; j++)
        for (int i = 0; i < hd; i++) kt[(size_t)i * nk + pl + j] = kr[(size_t)j * kv_stride + i];
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        for (int t = from; t < len; t++) {
            size_t qi = (size_t)(qo + t - from);
            const float *qv = a->q + qi * q_stride + (size_t)h * hd;
            float *out = a->out + qi * q_stride + (size_t)h * hd;
            int tp = pl + t; /* the query's position among the keys */
            int n = tp + 1, j0 = a->window > 0 && tp - a->window + 1 > 0 ? tp - a->window + 1 : 0;
            /* logits in blocks of ATT_JB keys held in registers across the head_dim loop; a
             * block may read up to ATT_JB - 1 floats past the row of kt (scratch is padded) */
            for (int jb = j0; jb < n; jb += ATT_JB) {
                float acc[ATT_JB] = {0};
                for (int i = 0; i < hd; i++) {
                    float qs = qv[i] * a->scale;
                    const float *kti = kt + (size_t)i * nk + jb;
                    for (int jj = 0; jj < ATT_JB; jj++) acc[jj] += qs * kti[jj];
                }
                memcpy(p + jb, acc, sizeof(float) * (size_t)(n - jb < ATT_JB ? n - jb : ATT_JB));
            }
            softmax_masked(p, j0, n, a->softcap);
            weighted_sum(out, p, vp, pl, vr, j0, n, kv_stride, hd);
            if (a->last_probs && t == len - 1) {
                float *lp = a->last_probs + a->off[r];
                for (int j = pl; j < n; j++) lp[j - pl] += p[j];
            }
        }
    }
}

void mr_attention(const mr_attn_args *a) {
    if (a->last_probs) {
        for (int r = 0; r < a->n_rows; r++)
            memset(a->last_probs + a->off[r], 0, sizeof(float) * (size_t)a->len[r]);
    }
    /* Work items are (row, kv head); the last-query probabilities of a row are summed over its
     * heads, so one thread owns all heads of a row when they are requested. */
    int per_row = a->last_probs ? 1 : a->n_kv;
    int n_items = a->n_rows * per_row;
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++) {
        int r = it / per_row;
        float *kt = a->scratch +
                    (size_t)omp_get_thread_num() * att_thread_floats(a->max_len, a->head_dim);
        float *p = kt + (size_t)a->head_dim * a->max_len;
        if (a->last_probs) {
            for (int kvh = 0; kvh < a->n_kv; kvh++) attend_kv_head(a, r, kvh, kt, p);
        } else {
            attend_kv_head(a, r, it % per_row, kt, p);
        }
    }
}

int mr_pool(float *y, const float *x, const int32_t *off, const int32_t *nq, const int32_t *np,
            const int32_t *ns, int n_rows, int d, int r, const float *weights, float *tmp,
            int32_t *new_off, int32_t *new_np) {
    size_t row = sizeof(float) * (size_t)d;
    int out = 0;
    for (int i = 0; i < n_rows; i++) {
        int src = off[i], q = nq[i], p = np[i], groups = (p + r - 1) / r;
        memmove(y + (size_t)out * d, x + (size_t)src * d, row * q);
        for (int g = 0; g < groups; g++) {
            int t0 = src + q + g * r, t1 = t0 + r < src + q + p ? t0 + r : src + q + p;
            double wsum = 0.0;
            if (weights)
                for (int t = t0; t < t1; t++) wsum += weights[t];
            float *acc = tmp ? tmp : y + (size_t)(out + q + g) * d;
            memset(acc, 0, row);
            for (int t = t0; t < t1; t++) {
                float w = wsum > 0.0 ? (float)(weights[t] / wsum) : 1.0f / (float)(t1 - t0);
                const float *xt = x + (size_t)t * d;
                for (int j = 0; j < d; j++) acc[j] += w * xt[j];
            }
            if (tmp) memcpy(y + (size_t)(out + q + g) * d, tmp, row);
        }
        memmove(y + (size_t)(out + q + groups) * d, x + (size_t)(src + q + p) * d, row * ns[i]);
        new_off[i] = out;
        new_np[i] = groups;
        out += q + groups + ns[i];
    }
    return out;
}

/* e^x for the GLU activations, in a form the compiler vectorises (libm's expf is a call per
 * element): x = n ln2 + r with |r| <= ln2 / 2 (n rounded by the 1.5 * 2^23 trick), e^r by its
 * degree-6 Taylor polynomial (relative error below 2e-7), 2^n built in the exponent bits. x is
 * clamped to [-87, 88], where e^x stays a normal float. Branch-free so loops vectorise. */
static inline float exp_vec(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 +
              r * (1.0f / 720))))));
    /* a NaN x (an overflowing model) is carried by p; its n must not reach the int
     * conversion, which is undefined for NaN (UBSan: a left shift of INT_MIN + 127) */
    int32_t bits = ((int32_t)(n == n ? n : 0.0f) + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

void mr_swiglu(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + exp_vec(-g)) * up[i];
    }
}

void mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for simd schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        /* 0.5 (1 + tanh(u)) = 1 / (1 + e^(-2u)) */
        float u = c * (g + 0.044715f * g * g * g);
        out[i] = g / (1.0f + exp_vec(-2.0f * u)) * up[i];
    }
}

void mr_add(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}
