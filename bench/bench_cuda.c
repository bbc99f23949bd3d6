/* bench_cuda.c: throughput of a scorer backend (cuda by default, or cpu) on re-ranking
 * batches: one query with 100 candidate passages per batch.
 *
 *   bench_cuda --model DIR [--backend cuda|cpu] [--lengths uniform|ir] [--ir DIR]
 *              [--queries N] [--cands 100] [--len 224] [--max-len 512] [--exit L]
 *              [--ratio R --compress L] [--dump-rows FILE] [--seeded 7b|small|tiny]
 *              [--drift BACKEND] [--query-len 16] [--prefix-share 1|0]
 *
 * Passage lengths: "uniform" = every passage --len tokens (224); "ir" = drawn (seeded) from
 * the document lengths of a BEIR collection (--ir, default ../shared/data/ir/cranfield), in
 * tokens estimated as ceil(chars / 4) when the model folder has no tokenizer, capped so a row
 * fits --max-len. Token ids are seeded random ids (the timing does not depend on them). Query
 * segment --query-len tokens (16), the same in every row of a batch, as one query's candidates
 * are; suffix 8. --prefix-share 0 makes every row compute its own copy of the query segment
 * (mr_run_opts.no_prefix_share), the path without query-prefix sharing. --seeded writes a
 * seeded checkpoint of that shape into --model first (7b: Mistral-7B shape, bf16; 14.5 GB on
 * disk).
 *
 * Prints pairs/s and TFLOP/s (linear-layer FLOPs, mr_model_row_flops: attention excluded) over
 * the timed batches after one warm-up batch. --dump-rows writes the rows (one JSON line per row:
 * {"q":[..],"p":[..],"s":[..]}) for bench/transformers_gpu.py, which times the same rows.
 * --drift B scores every batch again with backend B (e.g. cuda, against cuda-fp8) and prints
 * how far the timed backend's scores are from B's: max and mean |difference| (the mean also
 * in units of B's score spread per query), mean top-10 overlap and mean Kendall tau per query. */
#define _GNU_SOURCE /* qsort_r */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "backend.h"
#include "model.h"
#include "seeded.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Document lengths (ceil(chars / 4)) of DIR/corpus.jsonl; returns the count. */
static int ir_lengths(const char *dir, int **out) {
    char path[600], *line = NULL;
    size_t cap = 0;
    int n = 0, ncap = 0;
    *out = NULL;
    snprintf(path, sizeof path, "%s/corpus.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        size_t chars = 0;
        const char *keys[2] = {"title", "text"};
        for (int k = 0; k < 2; k++) {
            cJSON *v = cJSON_GetObjectItemCaseSensitive(j, keys[k]);
            if (cJSON_IsString(v)) chars += strlen(v->valuestring) + 1;
        }
        cJSON_Delete(j);
        if (n == ncap) {
            ncap = ncap ? 2 * ncap : 1024;
            int *t = realloc(*out, sizeof(int) * ncap);
            if (!t) break;
            *out = t;
        }
        (*out)[n++] = (int)((chars + 3) / 4);
    }
    free(line);
    fclose(f);
    return n;
}

static void seeded_shape(mr_config *c, const char *shape) {
    *c = (mr_config){.arch = MR_ARCH_LLAMA, .n_layers = 32, .d_model = 4096, .n_heads = 32,
                     .n_kv_heads = 8, .head_dim = 128, .d_ff = 14336, .vocab_size = 32000,
                     .max_pos = 32768, .rope_theta = 10000, .rms_eps = 1e-5f,
                     .bos_token_id = 1, .layer_wise = 1, .start_layer = 8, .layer_sep = 1,
                     .dtype = MR_DT_BF16};
    if (!strcmp(shape, "small")) {
        c->n_layers = 16, c->d_model = 1024, c->n_heads = 16, c->n_kv_heads = 4;
        c->head_dim = 64, c->d_ff = 2816, c->start_layer = 4;
    } else if (!strcmp(shape, "tiny")) {
        c->n_layers = 4, c->d_model = 128, c->n_heads = 4, c->n_kv_heads = 2;
        c->head_dim = 32, c->d_ff = 256, c->vocab_size = 1000, c->start_layer = 1;
    }
}

static int by_score_desc(const void *a, const void *b, void *sc) {
    float x = ((const float *)sc)[*(const int *)a], y = ((const float *)sc)[*(const int *)b];
    return x < y ? 1 : x > y ? -1 : *(const int *)a - *(const int *)b;
}

/* The scores of b (ctx) against those of backend ref_name on the same batches (a context of
 * the timed one's sizes: max_batch tokens, rows up to longest). */
static int report_drift(const mr_backend *b, void *ctx, const char *ref_name, const mr_model *m,
                        const mr_row *rows, int queries, int cands, size_t max_batch, int longest,
                        const mr_run_opts *o) {
    const mr_backend *r = mr_backend_get(ref_name);
    mr_err err = {0};
    void *rc = NULL;
    if (!r || mr_backend_ctx_new(r, m, (int)max_batch, cands, longest, &rc, &err)) {
        fprintf(stderr, "bench_cuda: --drift %s: %s\n", ref_name, r ? err.msg : "not built");
        return 1;
    }
    float *sa = malloc(sizeof(float) * cands), *sb = malloc(sizeof(float) * cands);
    int *ia = malloc(sizeof(int) * cands), *ib = malloc(sizeof(int) * cands);
    double max_d = 0, sum_d = 0, sum_rel = 0, sum_ov = 0, sum_tau = 0;
    int k = cands < 10 ? cands : 10, bad = 0;
    for (int qi = 0; qi < queries && !bad; qi++) {
        const mr_row *batch = rows + (size_t)qi * cands;
        if (mr_backend_score(b, ctx, batch, cands, o, sa, NULL, &err) ||
            mr_backend_score(r, rc, batch, cands, o, sb, NULL, &err)) {
            fprintf(stderr, "bench_cuda: --drift: %s\n", err.msg);
            bad = 1;
            break;
        }
        double mean = 0, var = 0, d = 0;
        for (int i = 0; i < cands; i++) mean += sb[i] / cands;
        for (int i = 0; i < cands; i++) {
            var += (sb[i] - mean) * (sb[i] - mean) / cands;
            double e = fabs((double)sa[i] - sb[i]);
            d += e / cands;
            if (e > max_d) max_d = e;
        }
        sum_d += d;
        sum_rel += var > 0 ? d / sqrt(var) : 0;
        for (int i = 0; i < cands; i++) ia[i] = ib[i] = i;
        qsort_r(ia, (size_t)cands, sizeof *ia, by_score_desc, sa);
        qsort_r(ib, (size_t)cands, sizeof *ib, by_score_desc, sb);
        int ov = 0;
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++) ov += ia[i] == ib[j];
        sum_ov += (double)ov / k;
        long conc = 0, disc = 0;
        for (int i = 0; i < cands; i++)
            for (int j = i + 1; j < cands; j++) {
                double x = (double)sa[i] - sa[j], y = (double)sb[i] - sb[j];
                if (x * y > 0) conc++;
                else if (x * y < 0) disc++;
            }
        sum_tau += conc + disc ? (double)(conc - disc) / (conc + disc) : 1.0;
    }
    if (!bad)
        printf("drift vs %s over %d queries: max |d| %.4g, mean |d| %.4g (%.4f of the score "
               "spread), top-10 overlap %.3f, Kendall tau %.4f\n",
               ref_name, queries, max_d, sum_d / queries, sum_rel / queries, sum_ov / queries,
               sum_tau / queries);
    mr_backend_ctx_free(r, rc);
    free(sa), free(sb), free(ia), free(ib);
    return bad;
}

int main(int argc, char **argv) {
    const char *model = NULL, *backend = "cuda", *lengths = "uniform", *dump = NULL;
    const char *ir = "../shared/data/ir/cranfield", *seeded = NULL, *drift = NULL;
    int queries = 20, cands = 100, len = 224, max_len = 512, exit_l = 0, ratio = 1, comp = -1;
    int nq = 16, share = 1;
    for (int i = 1; i < argc; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int used = 1;
        if (!v) used = 0;
        else if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--backend")) backend = v;
        else if (!strcmp(a, "--lengths")) lengths = v;
        else if (!strcmp(a, "--ir")) ir = v;
        else if (!strcmp(a, "--dump-rows")) dump = v;
        else if (!strcmp(a, "--seeded")) seeded = v;
        else if (!strcmp(a, "--drift")) drift = v;
        else if (!strcmp(a, "--queries")) queries = atoi(v);
        else if (!strcmp(a, "--cands")) cands = atoi(v);
        else if (!strcmp(a, "--len")) len = atoi(v);
        else if (!strcmp(a, "--max-len")) max_len = atoi(v);
        else if (!strcmp(a, "--exit")) exit_l = atoi(v);
        else if (!strcmp(a, "--ratio")) ratio = atoi(v);
        else if (!strcmp(a, "--compress")) comp = atoi(v);
        else if (!strcmp(a, "--query-len")) nq = atoi(v);
        else if (!strcmp(a, "--prefix-share")) share = atoi(v);
        else used = 0;
        if (!used) {
            fprintf(stderr, "usage: see the top of bench/bench_cuda.c (bad argument '%s')\n", a);
            return 2;
        }
    }
    if (nq < 1 || nq > max_len / 2 || (share != 0 && share != 1)) {
        fprintf(stderr, "bench_cuda: --query-len must be 1..max_len/2 and --prefix-share 0 or "
                "1\n");
        return 2;
    }
    if (!model || queries < 1 || cands < 1 || max_len < 32) {
        fprintf(stderr, "bench_cuda: --model DIR is required (see bench/bench_cuda.c)\n");
        return 2;
    }
    const mr_backend *b = mr_backend_get(backend);
    mr_err err = {0};
    if (!b) {
        fprintf(stderr, "bench_cuda: backend '%s' not built (have: %s)\n", backend,
                mr_backend_names());
        return 2;
    }
    if (mr_backend_available(b, &err)) {
        fprintf(stderr, "bench_cuda: backend '%s' unavailable: %s\n", backend, err.msg);
        return 2;
    }
    if (seeded) {
        mr_config c;
        seeded_shape(&c, seeded);
        mkdir(model, 0755);
        fprintf(stderr, "writing a seeded %s checkpoint to %s\n", seeded, model);
        if (mr_seeded_write(&c, model, 7, &err)) {
            fprintf(stderr, "bench_cuda: %s\n", err.msg);
            return 1;
        }
    }
    mr_model m;
    if (mr_model_load(&m, model, NULL, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 1;
    }
    /* rows: queries x cands */
    enum { NS = 8 };
    int *doc_len = NULL, n_docs = 0;
    if (!strcmp(lengths, "ir")) {
        n_docs = ir_lengths(ir, &doc_len);
        if (n_docs == 0) {
            fprintf(stderr, "bench_cuda: no documents in %s/corpus.jsonl\n", ir);
            return 1;
        }
    }
    int n_rows = queries * cands;
    mr_row *rows = calloc((size_t)n_rows, sizeof *rows);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_rows * max_len);
    uint64_t s = 88172645463325252ull;
    int vocab = m.cfg.vocab_size, longest = 0;
    size_t max_batch = 0;
    for (int r = 0; r < n_rows; r++) {
        int np = n_docs ? doc_len[rng(&s) % (uint64_t)n_docs] : len;
        if (np > max_len - nq - NS) np = max_len - nq - NS;
        if (np < 1) np = 1;
        int32_t *t = ids + (size_t)r * max_len;
        for (int i = 0; i < nq + np + NS; i++)
            t[i] = 2 + (int32_t)(rng(&s) % (uint64_t)(vocab - 2));
        t[0] = m.cfg.bos_token_id;
        if (r % cands) /* the batch's query: its first row's segment */
            memcpy(t, ids + (size_t)(r - r % cands) * max_len, sizeof(int32_t) * (size_t)nq);
        rows[r] = (mr_row){t, nq, t + nq, np, t + nq + np, NS};
        if (nq + np + NS > longest) longest = nq + np + NS;
    }
    for (int qi = 0; qi < queries; qi++) {
        size_t tok = 0;
        for (int r = 0; r < cands; r++) tok += nq + rows[qi * cands + r].np + NS;
        if (tok > max_batch) max_batch = tok;
    }
    if (dump) {
        FILE *f = fopen(dump, "w");
        if (!f) {
            perror(dump);
            return 1;
        }
        for (int r = 0; r < n_rows; r++) {
            const mr_row *w = &rows[r];
            const int32_t *seg[3] = {w->q, w->p, w->s};
            int n[3] = {w->nq, w->np, w->ns};
            const char *key[3] = {"q", "p", "s"};
            fputc('{', f);
            for (int k = 0; k < 3; k++) {
                fprintf(f, "%s\"%s\":[", k ? "," : "", key[k]);
                for (int i = 0; i < n[k]; i++) fprintf(f, "%s%d", i ? "," : "", seg[k][i]);
                fputc(']', f);
            }
            fprintf(f, "}\n");
        }
        fclose(f);
    }
    mr_run_opts o;
    mr_run_opts_init(&o, &m);
    if (exit_l > 0) o.exits[0] = exit_l;
    o.ratio = ratio;
    if (comp >= 0) o.n_compress = 1, o.compress_layers[0] = comp;
    o.no_prefix_share = !share;
    void *ctx = NULL;
    if (mr_backend_ctx_new(b, &m, (int)max_batch, cands, longest, &ctx, &err)) {
        fprintf(stderr, "bench_cuda: %s\n", err.msg);
        return 1;
    }
    float *scores = malloc(sizeof(float) * cands * o.n_exits);
    double flops = 0, t0 = 0;
    long pairs = 0;
    long long tl = 0;
    for (int qi = -1; qi < queries; qi++) { /* qi = -1: warm-up on the first batch */
        const mr_row *batch = rows + (size_t)(qi < 0 ? 0 : qi) * cands;
        if (qi == 0) t0 = now();
        if (mr_backend_score(b, ctx, batch, cands, &o, scores, NULL, &err)) {
            fprintf(stderr, "bench_cuda: %s\n", err.msg);
            return 1;
        }
        if (qi < 0) continue;
        pairs += cands;
        long long t = mr_backend_token_layers(b, ctx);
        tl = t < 0 || tl < 0 ? -1 : tl + t;
        for (int r = 0; r < cands; r++)
            flops += mr_model_row_flops(&m, &o, batch[r].nq, batch[r].np, batch[r].ns);
    }
    double dt = now() - t0;
    printf("backend %s (%s)\nmodel %s: %d layers, d %d, exit %d, ratio %d\n", b->name,
           mr_backend_describe(b, ctx), model, m.cfg.n_layers, m.cfg.d_model,
           o.exits[o.n_exits - 1], o.ratio);
    printf("lengths %s: %d queries x %d candidates, longest row %d, largest batch %zu tokens\n",
           n_docs ? ir : "uniform", queries, cands, longest, max_batch);
    printf("pairs/s %.1f  TFLOP/s %.2f (linear layers, every row's own query counted)  "
           "ms/query %.2f\n", pairs / dt, flops / dt / 1e12, dt * 1e3 / queries);
    if (tl >= 0)
        printf("query-prefix sharing %s: %.0f token-layers per query\n", share ? "on" : "off",
               (double)tl / queries);
    int rc = drift ? report_drift(b, ctx, drift, &m, rows, queries, cands, max_batch,
                                   longest, &o) : 0;
    mr_backend_ctx_free(b, ctx);
    mr_model_close(&m);
    free(scores);
    free(rows);
    free(ids);
    free(doc_len);
    return rc;
}
