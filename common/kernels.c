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

void mr_rope(float *x, const int32_t *pos, int n_tok, int n_heads, int head_dim,
             const float *cos_sin) {
    int half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n_tok > 16)
    for (int t = 0; t < n_tok; t++) {
        const float *cs = cos_sin + (size_t)pos[t] * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float c = cs[2 * i], s = cs[2 * i + 1];
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

float mr_dot(const float *a, const float *b, int d) {
    double s = 0.0;
    for (int i = 0; i < d; i++) s += (double)a[i] * b[i];
    return (float)s;
}

/* One query of one head against keys [0, n_keys) of its row: softmax-weighted sum of values.
 * p (n_keys) receives the probabilities. */
static void attend_one(float *out, const float *q, const float *k, const float *v, int n_keys,
                       int kv_stride, int head_dim, int q_pos, const mr_attn_args *a,
                       float *p) {
    float mx = -INFINITY;
    for (int j = 0; j < n_keys; j++) {
        float s;
        if (a->window > 0 && q_pos - j >= a->window) {
            p[j] = -INFINITY;
            continue;
        }
        const float *kj = k + (size_t)j * kv_stride;
        s = 0.0f;
        for (int i = 0; i < head_dim; i++) s += q[i] * kj[i];
        s *= a->scale;
        if (a->softcap > 0.0f) s = a->softcap * tanhf(s / a->softcap);
        p[j] = s;
        if (s > mx) mx = s;
    }
    float sum = 0.0f;
    for (int j = 0; j < n_keys; j++) {
        float e = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
        p[j] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    memset(out, 0, sizeof(float) * head_dim);
    for (int j = 0; j < n_keys; j++) {
        p[j] *= inv;
        if (p[j] == 0.0f) continue;
        const float *vj = v + (size_t)j * kv_stride;
        float w = p[j];
        for (int i = 0; i < head_dim; i++) out[i] += w * vj[i];
    }
}

void mr_attention(const mr_attn_args *a) {
    int group = a->n_heads / a->n_kv;
    int q_stride = a->n_heads * a->head_dim, kv_stride = a->n_kv * a->head_dim;
    if (a->last_probs) {
        for (int r = 0; r < a->n_rows; r++)
            memset(a->last_probs + a->off[r], 0, sizeof(float) * (size_t)a->len[r]);
    }
    /* Work items are (row, head); the last-query probabilities of a row are summed over its
     * heads, so one thread owns all heads of a row when they are requested. */
    int per_row = a->last_probs ? 1 : a->n_heads;
    int n_items = a->n_rows * per_row;
#pragma omp parallel for schedule(dynamic, 1)
    for (int it = 0; it < n_items; it++) {
        int r = it / per_row;
        int h0 = a->last_probs ? 0 : it % per_row, h1 = a->last_probs ? a->n_heads : h0 + 1;
        float *p = a->scratch + (size_t)omp_get_thread_num() * a->max_len;
        int from = a->q_from ? a->q_from[r] : 0;
        int qo = a->q_off ? a->q_off[r] : a->off[r];
        const float *kr = a->k + (size_t)a->off[r] * kv_stride;
        const float *vr = a->v + (size_t)a->off[r] * kv_stride;
        for (int h = h0; h < h1; h++) {
            int kvh = h / group;
            for (int t = from; t < a->len[r]; t++) {
                size_t qi = (size_t)(qo + t - from);
                attend_one(a->out + qi * q_stride + (size_t)h * a->head_dim,
                           a->q + qi * q_stride + (size_t)h * a->head_dim,
                           kr + (size_t)kvh * a->head_dim, vr + (size_t)kvh * a->head_dim,
                           t + 1, kv_stride, a->head_dim, t, a, p);
                if (a->last_probs && t == a->len[r] - 1) {
                    float *lp = a->last_probs + a->off[r];
                    for (int j = 0; j <= t; j++) lp[j] += p[j];
                }
            }
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

void mr_swiglu(float *out, const float *gate, const float *up, size_t n) {
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

void mr_geglu_tanh(float *out, const float *gate, const float *up, size_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for schedule(static) if (n > 4096)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = 0.5f * g * (1.0f + tanhf(c * (g + 0.044715f * g * g * g))) * up[i];
    }
}

void mr_add(float *x, const float *y, size_t n) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}
