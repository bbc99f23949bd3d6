/* data.c: tokenized training data and batch order of `mrank train` (see data.h): jsonl and
 * text readers on the engine's input builders (common/input.h), and the seeded stream of
 * examples. Not here: checkpoints (checkpoint.c), passes and losses. */
#include "data.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "input.h"
#include "prng.h"

/* ---- batch order ---- */

uint64_t mr_seed_mix(uint64_t seed, uint64_t a, uint64_t b) {
    uint64_t s = seed;
    uint64_t x = mr_prng_next(&s) ^ a;
    s = x;
    x = mr_prng_next(&s) ^ b;
    s = x;
    return mr_prng_next(&s);
}

int mr_stream_index(uint64_t seed, int n, int64_t i) {
    /* Feistel-free: a seeded permutation per epoch by sorting keys would cost O(n log n) per
     * call; instead an affine map a*j + b mod n with gcd(a, n) = 1, a and b drawn per epoch. */
    if (n <= 1) return 0;
    int64_t e = i / n, j = i % n;
    uint64_t r = mr_seed_mix(seed, 0x5eed0000ull + (uint64_t)e, 7);
    uint64_t a = 1 + r % (uint64_t)(n - 1), b = (r >> 32) % (uint64_t)n;
    for (;;) {
        uint64_t x = a, y = (uint64_t)n;
        while (y) {
            uint64_t t = x % y;
            x = y, y = t;
        }
        if (x == 1) break;
        a = a % (uint64_t)(n - 1) + 1;
    }
    return (int)((a * (uint64_t)j + b) % (uint64_t)n);
}

/* ---- LM text ---- */

/* path:line: ids's vocabulary fault (mr_input_check_vocab), when it has one. */
static int check_vocab(const mr_ids *ids, int vocab_size, const char *what, int index,
                       const char *path, int lineno, mr_err *err) {
    mr_err e = {0};
    if (vocab_size <= 0 || !mr_input_check_vocab(ids, vocab_size, what, index, &e)) return 0;
    return mr_err_set(err, e.code, "%s:%d: %.200s", path, lineno, e.msg);
}

int mr_lm_data_load(mr_lm_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int seq_len, int vocab_size, mr_err *err) {
    memset(d, 0, sizeof *d);
    if (seq_len < 2) return mr_err_set(err, MR_EINVAL, "seq_len must be >= 2");
    FILE *f = fopen(path, "r");
    if (!f) return mr_err_errno(err, "%s", path);
    mr_ids all = {0};
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int rc = 0, lineno = 0;
    size_t cap_off = 0;
    while ((n = getline(&line, &cap, f)) > 0 && !rc) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
        if (!n) continue;
        mr_ids doc = {0};
        if ((rc = mr_ids_push(&doc, bos)) ||
            (rc = mr_tokenizer_encode(t, line, (size_t)n, &doc, err)) ||
            (rc = check_vocab(&doc, vocab_size, "text", -1, path, lineno, err))) {
            mr_ids_close(&doc);
            break;
        }
        /* cut into sequences of at most seq_len (each >= 2 tokens) */
        for (size_t s = 0; s + 1 < doc.n && !rc; s += (size_t)seq_len) {
            size_t e = s + (size_t)seq_len < doc.n ? s + (size_t)seq_len : doc.n;
            if (e - s < 2) break;
            if ((size_t)d->n + 2 > cap_off) {
                cap_off = cap_off ? 2 * cap_off : 1024;
                int64_t *o = realloc(d->off, sizeof(int64_t) * cap_off);
                if (!o) {
                    rc = mr_err_set(err, MR_ENOMEM, "out of memory");
                    break;
                }
                d->off = o;
            }
            d->off[d->n] = (int64_t)all.n;
            for (size_t i = s; i < e && !rc; i++) rc = mr_ids_push(&all, doc.v[i]);
            d->n++;
            d->off[d->n] = (int64_t)all.n;
        }
        mr_ids_close(&doc);
    }
    free(line);
    fclose(f);
    d->ids = all.v;
    if (!rc && d->n == 0) rc = mr_err_set(err, MR_EINVAL, "%s: no text", path);
    if (rc) {
        if (!err || !err->code) mr_err_set(err, rc, "%s: out of memory", path);
        mr_lm_data_close(d);
    }
    return rc;
}

void mr_lm_data_close(mr_lm_data *d) {
    if (!d) return;
    free(d->ids);
    free(d->off);
    memset(d, 0, sizeof *d);
}

/* ---- re-ranking jsonl ---- */

static void example_close(mr_rr_example *e) {
    mr_ids_close(&e->q);
    mr_ids_close(&e->s);
    for (int i = 0; i < e->n_pos + e->n_neg; i++) mr_ids_close(&e->p[i]);
    free(e->p);
    free(e->score);
}

/* Number of strings in a, or -1 when a is not an array of strings (a shape check, not an
 * error code: the caller reports MR_EFORMAT with the line). */
static int str_array(const cJSON *a) {
    if (!cJSON_IsArray(a)) return -1;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) if (!cJSON_IsString(x)) return -1;
    return cJSON_GetArraySize(a);
}

int mr_rr_data_load(mr_rr_data *d, const char *path, const mr_tokenizer *t, int32_t bos,
                    int query_max, int max_len, int row_max, int vocab_size, mr_err *err) {
    memset(d, 0, sizeof *d);
    FILE *f = fopen(path, "r");
    if (!f) return mr_err_errno(err, "%s", path);
    char *line = NULL;
    size_t cap = 0, cap_ex = 0;
    ssize_t n;
    int rc = 0, lineno = 0, first_line = 0, first_scored = 0;
    while ((n = getline(&line, &cap, f)) > 0 && !rc) {
        lineno++;
        cJSON *j = cJSON_ParseWithLength(line, (size_t)n);
        if (!j) {
            int blank = 1;
            for (ssize_t i = 0; i < n; i++) blank &= line[i] == ' ' || line[i] == '\n' || line[i] == '\r' || line[i] == '\t';
            if (blank) continue;
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: not JSON", path, lineno);
            break;
        }
        const cJSON *q = cJSON_GetObjectItemCaseSensitive(j, "query");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(j, "pos");
        const cJSON *neg = cJSON_GetObjectItemCaseSensitive(j, "neg");
        const cJSON *ps = cJSON_GetObjectItemCaseSensitive(j, "pos_scores");
        const cJSON *ns = cJSON_GetObjectItemCaseSensitive(j, "neg_scores");
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        int np = str_array(pos), nn = neg ? str_array(neg) : 0;
        if (!cJSON_IsString(q) || np < 1 || nn < 0 || (pr && !cJSON_IsString(pr))) {
            cJSON_Delete(j);
            rc = mr_err_set(err, MR_EFORMAT,
                            "%s:%d: need \"query\" (string), \"pos\" (non-empty string array), "
                            "\"neg\" (string array)", path, lineno);
            break;
        }
        int scored = ps || ns;
        if (scored && (cJSON_GetArraySize(ps) != np || cJSON_GetArraySize(ns) != nn)) {
            cJSON_Delete(j);
            rc = mr_err_set(err, MR_EFORMAT, "%s:%d: pos_scores/neg_scores must match pos/neg",
                            path, lineno);
            break;
        }
        /* the teacher term is per batch: one unscored example would drop it for its batch */
        if (!first_line) {
            first_line = lineno, first_scored = scored;
        } else if (scored != first_scored) {
            cJSON_Delete(j);
            rc = mr_err_set(err, MR_EFORMAT,
                            "%s:%d: %s pos_scores/neg_scores but line %d %s: every line or none "
                            "must carry teacher scores", path, lineno, scored ? "has" : "has no",
                            first_line, first_scored ? "has" : "does not");
            break;
        }
        if ((size_t)d->n == cap_ex) {
            cap_ex = cap_ex ? 2 * cap_ex : 256;
            mr_rr_example *e = realloc(d->ex, sizeof *e * cap_ex);
            if (!e) {
                cJSON_Delete(j);
                rc = mr_err_set(err, MR_ENOMEM, "out of memory");
                break;
            }
            d->ex = e;
        }
        mr_rr_example *e = &d->ex[d->n];
        memset(e, 0, sizeof *e);
        e->p = calloc((size_t)(np + nn), sizeof *e->p);
        e->score = scored ? calloc((size_t)(np + nn), sizeof(float)) : NULL;
        if (!e->p || (scored && !e->score)) rc = mr_err_set(err, MR_ENOMEM, "out of memory");
        int tq = 0, qm = query_max < max_len ? query_max : max_len;
        if (!rc) rc = mr_input_query(t, bos, q->valuestring, qm * 4 / 3 + 1, &e->q, &tq, err);
        if (!rc)
            rc = mr_input_suffix(t, pr ? pr->valuestring : MR_DEFAULT_PROMPT, &e->s, err);
        if (!rc) rc = check_vocab(&e->q, vocab_size, "query", -1, path, lineno, err);
        if (!rc) rc = check_vocab(&e->s, vocab_size, "prompt", -1, path, lineno, err);
        for (int i = 0; i < np + nn && !rc; i++) {
            const char *side = i < np ? "pos" : "neg";
            int k = i < np ? i : i - np;
            const cJSON *s = cJSON_GetArrayItem(i < np ? pos : neg, k);
            rc = mr_input_passage(t, s->valuestring, max_len, e->q.n, &e->p[i], &tq, err);
            if (!rc) rc = check_vocab(&e->p[i], vocab_size, side, k, path, lineno, err);
            size_t len = e->q.n + e->p[i].n + e->s.n;
            if (!rc && row_max > 0 && len > (size_t)row_max)
                rc = mr_err_set(err, MR_ERANGE,
                                "%s:%d: query + %s[%d] + prompt are %zu tokens (prompt %zu), "
                                "over the %d a training row may have (--max-len + 128)",
                                path, lineno, side, k, len, e->s.n, row_max);
            if (!rc && scored) {
                const cJSON *v = cJSON_GetArrayItem(i < np ? ps : ns, k);
                if (!cJSON_IsNumber(v))
                    rc = mr_err_set(err, MR_EFORMAT, "%s:%d: scores must be numbers", path,
                                    lineno);
                else if (!isfinite((float)v->valuedouble))
                    rc = mr_err_set(err, MR_EFORMAT, "%s:%d: %s_scores[%d]: %g is not a finite "
                                    "float", path, lineno, side, k, v->valuedouble);
                else
                    e->score[i] = (float)v->valuedouble;
            }
        }
        e->n_pos = np, e->n_neg = nn;
        cJSON_Delete(j);
        d->n++;
        if (rc) break;
    }
    free(line);
    fclose(f);
    if (!rc && d->n == 0) rc = mr_err_set(err, MR_EINVAL, "%s: no examples", path);
    if (rc) mr_rr_data_close(d);
    return rc;
}

void mr_rr_data_close(mr_rr_data *d) {
    if (!d) return;
    for (int i = 0; i < d->n; i++) example_close(&d->ex[i]);
    free(d->ex);
    memset(d, 0, sizeof *d);
}

int mr_rr_group(const mr_rr_example *ex, int G, uint64_t *rng, mr_row *rows, float *teacher) {
    int pick[512];
    int p = (int)(mr_prng_next(rng) % (uint64_t)ex->n_pos);
    pick[0] = p;
    int nn = ex->n_neg;
    for (int g = 1; g < G && g < 512; g++) {
        int j;
        if (nn == 0) { /* no negatives: other positives stand in (degenerate but valid) */
            j = (int)(mr_prng_next(rng) % (uint64_t)ex->n_pos);
        } else if (nn >= G - 1) { /* without replacement: rejection on the few picked */
            for (;;) {
                j = ex->n_pos + (int)(mr_prng_next(rng) % (uint64_t)nn);
                int dup = 0;
                for (int k = 1; k < g; k++) dup |= pick[k] == j;
                if (!dup) break;
            }
        } else {
            j = ex->n_pos + (g - 1 < nn ? g - 1 : (int)(mr_prng_next(rng) % (uint64_t)nn));
        }
        pick[g] = j;
    }
    for (int g = 0; g < G; g++) {
        const mr_ids *pp = &ex->p[pick[g]];
        rows[g] = (mr_row){ex->q.v, (int)ex->q.n, pp->v, (int)pp->n, ex->s.v, (int)ex->s.n};
        if (teacher && ex->score) teacher[g] = ex->score[pick[g]];
    }
    return ex->score != NULL;
}
