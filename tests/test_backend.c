/* test_backend.c: the scorer backends through their ops table (backend.h), in two groups.
 *
 * CPU group (no argument; ctest test_backend): the "cpu" table gives exactly mr_model_score's
 * scores, depths and errors, with no CUDA library mapped; CUDA builds load the GPU module on
 * first use. Group "module" (ctest test_backend_module_*): modules the loader must refuse.
 * CUDA group (argument "cuda"; ctest test_backend_cuda): when the build has the CUDA backend
 * and a device is present (cudaGetDeviceCount > 0, through the table's `available` slot), it
 * equals the CPU backend within bf16 tolerances on tiny seeded checkpoints (llama, qwen2,
 * gemma2; f32 and bf16 storage) across exits, widths, both poolings, unmerged and merged
 * adapters and pruning, with query prefixes shared (two per pass) and unshared, with the CPU's
 * token-layer count, and cuda-fp8 is near it. Without a device (or without a CUDA build)
 * each case prints that it did not run and the binary exits 77, which ctest reports as
 * Skipped, never Passed.
 *
 * Tolerance (CUDA vs CPU): per score, |gpu - cpu| <= 3e-2 * max(|cpu|, 1) (CUDA_RTOL,
 * CUDA_FLOOR: the reasons are beside them). Pruning decisions and depths must match where
 * every cut's CPU margin exceeds the summed tolerances of the rows at it (else a borderline
 * row may legitimately flip; then only the count of a top_k cut is checked); each side's
 * depth must be the deepest exit it scored. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend.h"
#include "lora.h"
#include "model.h"
#include "seeded.h"
#include "testutil.h"

enum { MAXR = 12, MAXT = 1024, MAXL = 128 };

static void make_dir(char *dir, size_t n, const char *tag) {
    snprintf(dir, n, "%s/tbk-%d-%s", MR_BINARY_DIR, (int)getpid(), tag);
    mkdir(dir, 0755);
}

static void rm_dir(const char *dir) {
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd)) { /* best effort */ }
}

/* n rows, row i with 3 + 7 * i passage tokens (up to 80: several attention tiles); every
 * third row has another query (5 tokens), so a pass has two shared query prefixes */
static int32_t g_ids[MAXR][96];
static void make_rows(mr_row *rows, int n) {
    static const int32_t q[4] = {1, 10, 11, 12}, q2[5] = {1, 10, 20, 21, 22}, s[3] = {13, 14, 15};
    unsigned st = 9;
    for (int i = 0; i < n; i++) {
        int np = 3 + 7 * i;
        for (int j = 0; j < np; j++) g_ids[i][j] = 2 + (int32_t)((frand(&st) + 1) * 30);
        rows[i] = i % 3 == 2 ? (mr_row){q2, 5, g_ids[i], np, s, 3}
                             : (mr_row){q, 4, g_ids[i], np, s, 3};
    }
}

static void write_adapter(const char *dir, const mr_model *m, float bscale) {
    const mr_config *c = &m->cfg;
    int n = c->n_layers * 3 + m->n_heads_exit;
    int64_t *in = calloc(n, 8), *out = calloc(n, 8);
    char (*names)[64] = calloc(n, 64);
    int i = 0;
    for (int l = 0; l < c->n_layers; l++) {
        snprintf(names[i], 64, "model.layers.%d.self_attn.q_proj", l);
        in[i] = c->d_model, out[i] = c->n_heads * c->head_dim, i++;
        snprintf(names[i], 64, "model.layers.%d.self_attn.v_proj", l); /* fused kv columns */
        in[i] = c->d_model, out[i] = c->n_kv_heads * c->head_dim, i++;
        snprintf(names[i], 64, "model.layers.%d.mlp.up_proj", l); /* fused gate|up columns */
        in[i] = c->d_model, out[i] = c->d_ff, i++;
    }
    for (int k = 0; k < m->n_heads_exit; k++) {
        snprintf(names[i], 64, "lm_head.%d.linear_head", k);
        in[i] = c->d_model, out[i] = 1, i++;
    }
    write_random_adapter(dir, n, names, in, out, bscale);
    free(in), free(out), free(names);
}

/* ---- the option grid ---- */

enum { N_CASES = 9 };
static const char *const CASE_NAMES[N_CASES] = {
    "all exits",       "two exits",        "ratio 2 mean",     "ratio 2 attention",
    "ratio 4 layer 0", "prune top_k",      "prune min_score",  "sigmoid by position",
    "ratio 8 attention + prune"};

static void case_opts(mr_run_opts *o, const mr_model *m, int i) {
    mr_run_opts_init(o, m);
    static const int all[4] = {1, 2, 3, 4};
    o->n_exits = 4;
    memcpy(o->exits, all, sizeof all);
    switch (i) {
    case 0: break;
    case 1: o->n_exits = 2, o->exits[0] = 2, o->exits[1] = 4; break;
    case 2:
    case 3:
        o->n_exits = 2, o->exits[0] = 2, o->exits[1] = 4;
        o->ratio = 2, o->n_compress = 2, o->compress_layers[0] = 1, o->compress_layers[1] = 3;
        o->pooling = i == 3 ? MR_POOL_ATTENTION : MR_POOL_MEAN;
        break;
    case 4: o->n_exits = 1, o->exits[0] = 4, o->ratio = 4, o->n_compress = 1; break;
    case 5:
        o->n_exits = 3, o->exits[0] = 1, o->exits[1] = 2, o->exits[2] = 4;
        o->n_prune = 2;
        o->prune[0] = (mr_prune){.layer = 1, .top_k = 6};
        o->prune[1] = (mr_prune){.layer = 2, .top_k = 3};
        break;
    case 6:
        o->n_exits = 2, o->exits[0] = 2, o->exits[1] = 3;
        o->n_prune = 1;
        o->prune[0] = (mr_prune){.layer = 2, .top_k = 0, .min_score = 0.0f};
        break;
    case 7: o->sigmoid = 1, o->head_by_position = 1, o->n_exits = 2, o->exits[0] = 3,
            o->exits[1] = 4; break;
    case 8:
        o->n_exits = 2, o->exits[0] = 2, o->exits[1] = 4;
        o->ratio = 8, o->n_compress = 1, o->compress_layers[0] = 2;
        o->pooling = MR_POOL_ATTENTION;
        o->n_prune = 1;
        o->prune[0] = (mr_prune){.layer = 2, .top_k = 5};
        break;
    }
}

static void score_with(const mr_backend *b, void *ctx, const mr_row *rows, int n,
                       const mr_run_opts *o, float *sc, int *depth) {
    mr_err err = {0};
    if (mr_backend_score(b, ctx, rows, n, o, sc, depth, &err))
        fail_msg("%s score: %s", b->name, err.msg);
}

/* ---- CPU through the table ---- */

static void test_registry(void **state) {
    const mr_backend *cpu = mr_backend_get("cpu");
    assert_non_null(cpu);
    assert_ptr_equal(cpu, &mr_backend_cpu);
    assert_string_equal(cpu->name, "cpu");
    assert_null(mr_backend_get("tpu"));
    assert_null(mr_backend_get(NULL));
    assert_int_equal(mr_backend_available(cpu, NULL), 0);
    assert_string_equal(mr_backend_describe(cpu, NULL), "cpu");
    int built = strstr(mr_backend_names(), "cuda") != NULL;
    assert_int_equal(mr_backend_get("cuda") != NULL, built);
    assert_int_equal(mr_backend_get("cuda-fp8") != NULL, built);
    mr_backend_ctx_free(cpu, NULL); /* NULL is a no-op */
}

/* 1 when a file whose path contains s is mapped into this process (/proc/self/maps) */
static int mapped(const char *s) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[1024];
    int hit = 0;
    assert_non_null(f);
    while (!hit && fgets(line, sizeof line, f)) hit = strstr(line, s) != NULL;
    fclose(f);
    return hit;
}

/* The GPU backend is a module loaded on first use (common/cuda_module.c), so CPU scoring (the
 * cases before this one) maps no CUDA library. In a CUDA build, asking whether "cuda" can run
 * loads libmrank_cuda.so from beside this binary: the answer is then the module's own (yes, or
 * "no CUDA device"), never a failure to load it, and cuBLASLt is mapped. (Modules it must
 * refuse: test_module_refused, one process each.) */
static void test_cuda_loaded_on_demand(void **state) {
    assert_false(mapped("libcublas"));
    assert_false(mapped("libmrank_cuda"));
    const mr_backend *cuda = mr_backend_get("cuda");
    if (!cuda) {
        printf("[  NOTE    ] no CUDA build: checked only that nothing of CUDA is mapped\n");
        return;
    }
    mr_err err = {0};
    int rc = mr_backend_available(cuda, &err);
    printf("[  NOTE    ] cuda available: %d%s%s\n", rc, rc ? ", " : "", rc ? err.msg : "");
    if (rc) {
        assert_int_equal(rc, MR_EUNSUPPORTED);
        assert_non_null(strstr(err.msg, "no CUDA device"));
    }
    assert_true(mapped("libmrank_cuda.so"));
    assert_true(mapped("libcublasLt"));
}

/* Group "module" (ctest test_backend_module_*, each with its own MR_CUDA_MODULE: loading
 * happens once per process): the CUDA tables, called directly so that every build tests the
 * loader, refuse a module that is missing, from another build, without tables or not mrank's,
 * with MR_EUNSUPPORTED and a message containing g_expect; both tables the same, the refusal
 * repeated on the next call, ctx_new failing the same way, and nothing of CUDA mapped. */
static const char *g_expect;
static void test_module_refused(void **state) {
    mr_err e1 = {0}, e2 = {0}, e3 = {0};
    void *ctx = (void *)&e3;
    assert_int_equal(mr_backend_available(&mr_backend_cuda, &e1), MR_EUNSUPPORTED);
    printf("[  NOTE    ] %s\n", e1.msg);
    assert_non_null(strstr(e1.msg, g_expect));
    assert_non_null(strstr(e1.msg, getenv("MR_CUDA_MODULE")));
    assert_int_equal(mr_backend_available(&mr_backend_cuda_fp8, &e2), MR_EUNSUPPORTED);
    assert_string_equal(e1.msg, e2.msg);
    memset(&e2, 0, sizeof e2);
    assert_int_equal(mr_backend_available(&mr_backend_cuda, &e2), MR_EUNSUPPORTED);
    assert_string_equal(e1.msg, e2.msg);
    /* the table's own slot, not mr_backend_ctx_new (which clears ctx itself) */
    assert_int_equal(mr_backend_cuda.ctx_new(NULL, 64, 4, 32, &ctx, &e3), MR_EUNSUPPORTED);
    assert_null(ctx);
    assert_string_equal(e1.msg, e3.msg);
    assert_false(mapped("libcublas"));
}

static void same_float(float a, float b, const char *what) {
    if (isnan(a) && isnan(b)) return;
    if (memcmp(&a, &b, sizeof a)) fail_msg("%s: %.9g != %.9g", what, a, b);
}

static void test_cpu_equals_model_score(void **state) {
    static const mr_arch arch[3] = {MR_ARCH_LLAMA, MR_ARCH_QWEN2, MR_ARCH_GEMMA2};
    const mr_backend *cpu = mr_backend_get("cpu");
    for (int a = 0; a < 3; a++) {
        char dir[256];
        mr_config cfg;
        mr_model m;
        mr_ctx c;
        mr_err err = {0};
        void *bctx = NULL;
        make_dir(dir, sizeof dir, "cpu");
        tiny_config(&cfg, arch[a], MR_DT_F32);
        assert_int_equal(mr_seeded_write(&cfg, dir, 7, &err), 0);
        assert_int_equal(mr_model_load(&m, dir, NULL, &err), 0);
        assert_int_equal(mr_ctx_init(&c, &m, MAXT, MAXR, MAXL, &err), 0);
        assert_int_equal(mr_backend_ctx_new(cpu, &m, MAXT, MAXR, MAXL, &bctx, &err), 0);
        mr_row rows[MAXR];
        make_rows(rows, MAXR);
        for (int i = 0; i < N_CASES; i++) {
            mr_run_opts o;
            float s1[MAXR * 4], s2[MAXR * 4];
            int d1[MAXR], d2[MAXR];
            case_opts(&o, &m, i);
            assert_int_equal(mr_model_score(&c, rows, MAXR, &o, s1, d1, &err), 0);
            score_with(cpu, bctx, rows, MAXR, &o, s2, d2);
            for (int j = 0; j < MAXR * o.n_exits; j++) same_float(s2[j], s1[j], CASE_NAMES[i]);
            for (int j = 0; j < MAXR; j++) assert_int_equal(d2[j], d1[j]);
        }
        /* errors come through unchanged */
        mr_run_opts o;
        float sc[8];
        mr_run_opts_init(&o, &m);
        o.exits[0] = 9;
        assert_int_equal(mr_backend_score(cpu, bctx, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
        assert_non_null(strstr(err.msg, "exit"));
        assert_int_equal(mr_backend_score(cpu, NULL, rows, 2, &o, sc, NULL, &err), MR_ESTATE);
        /* a context too small is refused at creation */
        void *bad = (void *)1;
        assert_int_equal(mr_backend_ctx_new(cpu, &m, 4, 8, 64, &bad, &err), MR_EINVAL);
        assert_null(bad);
        mr_backend_ctx_free(cpu, bctx);
        mr_ctx_close(&c);
        mr_model_close(&m);
        rm_dir(dir);
    }
}

/* ---- CUDA vs CPU ---- */

static int g_checked;  /* scores compared, for the summary line */
static double g_worst; /* the largest |gpu - cpu| / max(|cpu|, CUDA_FLOOR) seen, likewise */
static int g_skipped; /* CUDA cases that called skip(): main exits 77 when all did */

/* Skips the calling CUDA case WHAT (counted in g_skipped) where the build has no CUDA backend
 * or the machine no device. Only a missing device is a skip: a module that does not load (the
 * table's available slot fails otherwise) fails the case. */
static void require_device(const mr_backend *b, const char *what) {
    mr_err err = {0};
    if (!b) {
        printf("[  NOTE    ] CUDA backend not built (no nvcc at configure time): %s DID NOT RUN\n",
               what);
        g_skipped++;
        skip();
    }
    if (mr_backend_available(b, &err)) {
        if (!strstr(err.msg, "no CUDA device")) fail_msg("%s", err.msg);
        printf("[  NOTE    ] %s: %s DID NOT RUN (needs a GPU)\n", err.msg, what);
        g_skipped++;
        skip();
    }
}

/* Tolerance of one CUDA score against the CPU's: |gpu - cpu| <= CUDA_RTOL * max(|cpu|,
 * CUDA_FLOOR), per score. Both numbers come from an emulation of the GPU's rounding in the
 * float64 oracle (tests/oracle/cuda_rounding.py) on this file's nine checkpoints and cases: every
 * GEMM input (activations and weights) rounded to bf16, q/k/v and the softmax probabilities
 * rounded to bf16 in attention, everything else exact. On an H200 (2026-12-04, 6,522 scores,
 * query prefixes shared and unshared) the worst was 1.47e-2 of max(|cpu|, 1).
 *  - CUDA_RTOL 3e-2: the emulated worst is 1.65e-2 of max(|cpu|, 1) (gemma2 f32, attention
 *    pooling, exit 4); 3e-2 leaves ~2x for what the emulation leaves out (cuBLAS and flash
 *    attention summation orders, the online softmax, fast exp). A wrong kernel is off by O(1).
 *  - CUDA_FLOOR 1: a score's bf16 error comes from the terms of its sums, which are O(1) here
 *    (RMS-normed hidden state times an exit head; scores span 1e-4 to 2.9, median 0.53) however
 *    small the score is: below |score| 1 the emulated absolute error does not shrink (worst
 *    1.65e-2 there), so relative error alone would fail correct near-zero scores. */
#define CUDA_RTOL 3e-2
#define CUDA_FLOOR 1.0

static double cuda_tol(double cpu) { return CUDA_RTOL * fmax(fabs(cpu), CUDA_FLOOR); }

/* 1 when every pruning cut of o is decided by more than the tolerance on the CPU's scores, so
 * the GPU must keep exactly the rows the CPU keeps; 0 when a cut is borderline (two rows on
 * either side of a top_k cut, or a row and a min_score threshold, closer than their summed
 * tolerances): then a row may legitimately flip. */
static int pruning_certain(const mr_run_opts *o, const float *cpu, int n) {
    for (int p = 0; p < o->n_prune; p++) {
        int e = 0;
        while (e < o->n_exits && o->exits[e] != o->prune[p].layer) e++;
        if (e == o->n_exits) fail_msg("prune layer %d is not an exit", o->prune[p].layer);
        if (o->prune[p].top_k == 0) {
            for (int r = 0; r < n; r++) {
                float s = cpu[r * o->n_exits + e];
                if (!isnan(s) && fabs(s - o->prune[p].min_score) < cuda_tol(s)) return 0;
            }
            continue;
        }
        /* rank of each alive row (ties to the lower index, as the engine orders them) */
        for (int r = 0; r < n; r++) {
            float s = cpu[r * o->n_exits + e];
            if (isnan(s)) continue;
            int rank_r = 0;
            for (int q = 0; q < n; q++) {
                float t = cpu[q * o->n_exits + e];
                if (!isnan(t) && (t > s || (t == s && q < r))) rank_r++;
            }
            if (rank_r >= o->prune[p].top_k) continue; /* r is kept: compare with dropped */
            for (int q = 0; q < n; q++) {
                float t = cpu[q * o->n_exits + e];
                if (isnan(t) || q == r) continue;
                int rank_q = 0;
                for (int u = 0; u < n; u++) {
                    float v = cpu[u * o->n_exits + e];
                    if (!isnan(v) && (v > t || (v == t && u < q))) rank_q++;
                }
                if (rank_q >= o->prune[p].top_k && s - t < cuda_tol(s) + cuda_tol(t)) return 0;
            }
        }
    }
    return 1;
}

/* The deepest exit with a score (what depth reports). */
static int deepest_scored(const mr_run_opts *o, const float *s, int r) {
    int d = 0;
    for (int e = 0; e < o->n_exits; e++)
        if (!isnan(s[r * o->n_exits + e])) d = o->exits[e];
    return d;
}

static void compare(const char *what, const mr_run_opts *o, const float *cpu, const float *gpu,
                    const int *dc, const int *dg, int n) {
    int certain = pruning_certain(o, cpu, n);
    for (int e = 0; e < o->n_exits; e++) {
        int nan_c = 0, nan_g = 0;
        for (int r = 0; r < n; r++) {
            float c = cpu[r * o->n_exits + e], g = gpu[r * o->n_exits + e];
            nan_c += isnan(c);
            nan_g += isnan(g);
            if (isnan(c) || isnan(g)) {
                if (certain && isnan(c) != isnan(g))
                    fail_msg("%s: exit %d row %d: cpu %g gpu %g (pruning differs)", what,
                             o->exits[e], r, c, g);
                continue;
            }
            g_checked++;
            double rel = fabs(g - c) / fmax(fabs(c), CUDA_FLOOR);
            if (rel > g_worst) g_worst = rel;
            if (!(fabs(g - c) <= cuda_tol(c)))
                fail_msg("%s: exit %d row %d: gpu %.6g cpu %.6g (tol %.3g)", what, o->exits[e],
                         r, g, c, cuda_tol(c));
        }
        /* the number of rows scored here: top_k cuts fix it whichever rows they keep; a
         * borderline min_score cut may change it */
        int all_top_k = 1;
        for (int p = 0; p < o->n_prune; p++) all_top_k &= o->prune[p].top_k > 0;
        if (certain || all_top_k) assert_int_equal(nan_g, nan_c);
    }
    /* depth: each side reports the deepest exit it scored; equal on both sides unless a
     * borderline pruning cut let a row flip (checked above) */
    for (int r = 0; r < n; r++) {
        if (dc[r] != deepest_scored(o, cpu, r))
            fail_msg("%s: row %d cpu depth %d, deepest scored exit %d", what, r, dc[r],
                     deepest_scored(o, cpu, r));
        if (dg[r] != deepest_scored(o, gpu, r))
            fail_msg("%s: row %d gpu depth %d, deepest scored exit %d", what, r, dg[r],
                     deepest_scored(o, gpu, r));
        if (certain && dc[r] != dg[r])
            fail_msg("%s: row %d depth gpu %d cpu %d", what, r, dg[r], dc[r]);
    }
}

/* 1 when a and b (n scores) leave the same entries NaN: the same rows scored at every exit */
static int same_scored(const float *a, const float *b, int n) {
    for (int k = 0; k < n; k++)
        if (isnan(a[k]) != isnan(b[k])) return 0;
    return 1;
}

static void parity_model(const mr_backend *cuda, const char *tag, const char *dir,
                         const mr_model_opts *mo, uint32_t mask) {
    mr_model m;
    mr_err err = {0};
    void *cc = NULL, *gc = NULL;
    const mr_backend *cpu = mr_backend_get("cpu");
    assert_int_equal(mr_model_load(&m, dir, mo, &err), 0);
    assert_int_equal(mr_backend_ctx_new(cpu, &m, MAXT, MAXR, MAXL, &cc, &err), 0);
    if (mr_backend_ctx_new(cuda, &m, MAXT, MAXR, MAXL, &gc, &err))
        fail_msg("cuda ctx: %s", err.msg);
    mr_row rows[MAXR];
    make_rows(rows, MAXR);
    for (int i = 0; i < N_CASES; i++) {
        mr_run_opts o;
        float sc[MAXR * 4], sg[MAXR * 4];
        int dc[MAXR], dg[MAXR];
        char what[160];
        case_opts(&o, &m, i);
        o.adapter_mask = mask;
        snprintf(what, sizeof what, "%s / %s", tag, CASE_NAMES[i]);
        score_with(cpu, cc, rows, MAXR, &o, sc, dc);
        score_with(cuda, gc, rows, MAXR, &o, sg, dg);
        compare(what, &o, sc, sg, dc, dg, MAXR);
        /* the same layout (and, with pruning, the same rows kept at every exit: then the same
         * prefixes are kept too): the same tokens through each layer's K/V */
        int same_kept = same_scored(sc, sg, MAXR * o.n_exits);
        long long tl_shared = mr_backend_token_layers(cuda, gc);
        if (same_kept) assert_int_equal(tl_shared, mr_backend_token_layers(cpu, cc));
        /* every row with its own copy of the query: both layouts against the CPU */
        mr_run_opts ou = o;
        char what_u[200];
        ou.no_prefix_share = 1;
        snprintf(what_u, sizeof what_u, "%s, prefix unshared", what);
        score_with(cuda, gc, rows, MAXR, &ou, sg, dg);
        compare(what_u, &ou, sc, sg, dc, dg, MAXR);
        /* sharing took effect: with the same rows kept by both passes (a borderline row may
         * flip between them), 12 rows under two queries put fewer tokens through the layers */
        same_kept = same_kept && same_scored(sc, sg, MAXR * o.n_exits);
        if (same_kept && !(tl_shared < mr_backend_token_layers(cuda, gc)))
            fail_msg("%s: token-layers shared %lld, unshared %lld", what, tl_shared,
                     mr_backend_token_layers(cuda, gc));
        /* one row alone and a subset: packing must not matter on the GPU either */
        score_with(cuda, gc, rows + 3, 1, &o, sg, dg);
        score_with(cpu, cc, rows + 3, 1, &o, sc, dc);
        compare(what, &o, sc, sg, dc, dg, 1);
    }
    /* validation errors are the CPU's */
    mr_run_opts o;
    float sc[8];
    mr_run_opts_init(&o, &m);
    o.ratio = 3;
    assert_int_equal(mr_backend_score(cuda, gc, rows, 2, &o, sc, NULL, &err), MR_EINVAL);
    mr_backend_ctx_free(cuda, gc);
    mr_backend_ctx_free(cpu, cc);
    mr_model_close(&m);
}

static void test_cuda_equals_cpu(void **state) {
    const mr_backend *cuda = mr_backend_get("cuda");
    mr_err err = {0};
    require_device(cuda, "the CUDA parity test");
    static const mr_arch arch[3] = {MR_ARCH_LLAMA, MR_ARCH_QWEN2, MR_ARCH_GEMMA2};
    static const char *const an[3] = {"llama", "qwen2", "gemma2"};
    for (int a = 0; a < 3; a++)
        for (int dt = 0; dt < 2; dt++) {
            char dir[256], tag[64];
            mr_config cfg;
            snprintf(tag, sizeof tag, "%s-%s", an[a], dt ? "bf16" : "f32");
            make_dir(dir, sizeof dir, tag);
            tiny_config(&cfg, arch[a], dt ? MR_DT_BF16 : MR_DT_F32);
            assert_int_equal(mr_seeded_write(&cfg, dir, 7, &err), 0);
            parity_model(cuda, tag, dir, NULL, 0);
            if (a == 0) { /* adapters: unmerged (two skinny GEMMs) and merged at load */
                char ad[300], ad0[300];
                mr_model base;
                assert_int_equal(mr_model_load(&base, dir, NULL, &err), 0);
                snprintf(ad, sizeof ad, "%s/adapter", dir);
                snprintf(ad0, sizeof ad0, "%s/adapter0", dir);
                write_adapter(ad, &base, 0.3f);
                write_adapter(ad0, &base, 0.0f);
                mr_model_close(&base);
                const char *both[2] = {ad0, ad};
                mr_model_opts mo = {.adapters = both, .n_adapters = 2, .merge = 0};
                char t2[96];
                snprintf(t2, sizeof t2, "%s unmerged", tag);
                parity_model(cuda, t2, dir, &mo, 3);
                snprintf(t2, sizeof t2, "%s unmerged mask 2", tag);
                parity_model(cuda, t2, dir, &mo, 2);
                mo.merge = 1;
                snprintf(t2, sizeof t2, "%s merged", tag);
                parity_model(cuda, t2, dir, &mo, 0);
            }
            rm_dir(dir);
        }
    /* the attention kernel's other head-dim instantiations (tiny_config's 8 pads to 32) */
    static const int hds[3] = {128, 64, 256};
    for (int a = 0; a < 3; a++) {
        char dir[256], tag[64];
        mr_config cfg;
        snprintf(tag, sizeof tag, "%s-hd%d", an[a], hds[a]);
        make_dir(dir, sizeof dir, tag);
        tiny_config(&cfg, arch[a], MR_DT_F32);
        cfg.head_dim = hds[a];
        assert_int_equal(mr_seeded_write(&cfg, dir, 7, &err), 0);
        parity_model(cuda, tag, dir, NULL, 0);
        rm_dir(dir);
    }
    printf("[  NOTE    ] CUDA parity: %d scores within tolerance; worst |gpu - cpu| / "
           "max(|cpu|, %g) %.4f (bound %g)\n", g_checked, CUDA_FLOOR, g_worst, CUDA_RTOL);
}

/* ---- cuda-fp8 vs CPU ----
 * e4m3 keeps 3 mantissa bits (2^-4 relative rounding per weight and activation), so scores
 * are compared as a whole: per exit, ||fp8 - cpu|| / ||cpu|| over the batch <= FP8_REL_L2.
 * The bound's history (git log -S'<= 0.3' tests/test_backend.c, docs/cuda.md "FP8 check"): a
 * first guess of 0.15, unmeasured, failed the first GPU run at 0.164 (head dim 128, exit 4, all
 * exits), and was raised to 0.3 in the same commit. Re-run at 0.3 on an H200 (2026-12-04,
 * with query prefixes shared): worst 0.209 over all cases and exits.
 * Why 0.3: the error is rounding noise that these seeded random models amplify layer by layer
 * (tests/oracle/cuda_rounding.py's emulation of per-tensor-scaled e4m3 GEMM inputs gives 0.12
 * at that same head dim 128, exit 4, and 0.09 at most at head dim 8; the GPUs measured 1.4x
 * to 1.7x more), while the faults this test is for are off by about 1 or more (a doubled
 * scale gives 1, a lost one orders of magnitude, a wrong layout ~1.4 for uncorrelated
 * scores): 0.3 is ~1.4x the worst measured noise and ~3x below the smallest fault. The fp8
 * scores must also differ from the bf16 backend's (else the e4m3 path did not run). */
#define FP8_REL_L2 0.3

static double rel_l2(const float *a, const float *b, int n, int stride, int e) {
    double num = 0, den = 0;
    for (int r = 0; r < n; r++) {
        double x = a[r * stride + e], y = b[r * stride + e];
        num += (x - y) * (x - y);
        den += y * y;
    }
    return sqrt(num / (den > 1e-12 ? den : 1e-12)); /* 1e-12: only guards a zero ||cpu|| */
}

static void test_cuda_fp8_near_cpu(void **state) {
    const mr_backend *f8 = mr_backend_get("cuda-fp8"), *bf = mr_backend_get("cuda");
    const mr_backend *cpu = mr_backend_get("cpu");
    mr_err err = {0};
    require_device(f8, "the FP8 test");
    static const int hds[2] = {8, 128};
    double worst = 0;
    for (int h = 0; h < 2; h++) {
        char dir[256], tag[64];
        mr_config cfg;
        snprintf(tag, sizeof tag, "fp8-hd%d", hds[h]);
        make_dir(dir, sizeof dir, tag);
        tiny_config(&cfg, MR_ARCH_LLAMA, MR_DT_F32);
        cfg.head_dim = hds[h];
        assert_int_equal(mr_seeded_write(&cfg, dir, 7, &err), 0);
        mr_model m;
        void *cc = NULL, *fc = NULL, *bc = NULL;
        assert_int_equal(mr_model_load(&m, dir, NULL, &err), 0);
        assert_int_equal(mr_backend_ctx_new(cpu, &m, MAXT, MAXR, MAXL, &cc, &err), 0);
        if (mr_backend_ctx_new(f8, &m, MAXT, MAXR, MAXL, &fc, &err) ||
            mr_backend_ctx_new(bf, &m, MAXT, MAXR, MAXL, &bc, &err))
            fail_msg("cuda ctx: %s", err.msg);
        mr_row rows[MAXR];
        make_rows(rows, MAXR);
        for (int i = 0; i < 3; i++) { /* all exits, two exits, ratio 2 mean */
            mr_run_opts o;
            float sc[MAXR * 4], sf[MAXR * 4], sb[MAXR * 4];
            int dc[MAXR], df[MAXR], db[MAXR];
            case_opts(&o, &m, i);
            score_with(cpu, cc, rows, MAXR, &o, sc, dc);
            score_with(f8, fc, rows, MAXR, &o, sf, df);
            score_with(bf, bc, rows, MAXR, &o, sb, db);
            int differs = 0;
            for (int k = 0; k < MAXR * o.n_exits; k++) differs |= sf[k] != sb[k];
            if (!differs) fail_msg("%s / %s: fp8 scores equal bf16's", tag, CASE_NAMES[i]);
            for (int e = 0; e < o.n_exits; e++) {
                double d = rel_l2(sf, sc, MAXR, o.n_exits, e);
                worst = fmax(worst, d);
                if (!(d <= FP8_REL_L2))
                    fail_msg("%s / %s: exit %d: ||fp8 - cpu|| / ||cpu|| = %.3g", tag,
                             CASE_NAMES[i], o.exits[e], d);
            }
        }
        mr_backend_ctx_free(f8, fc);
        mr_backend_ctx_free(bf, bc);
        mr_backend_ctx_free(cpu, cc);
        mr_model_close(&m);
        rm_dir(dir);
    }
    printf("[  NOTE    ] cuda-fp8: worst ||fp8 - cpu|| / ||cpu|| per exit %.4f\n", worst);
}

/* `test_backend write DIR`: writes the seeded checkpoints the CUDA cases test (DIR/<arch>-f32,
 * -bf16, -hd<N>, fp8-hd8, fp8-hd128), for tests/oracle/cuda_rounding.py, the emulation behind
 * CUDA_RTOL and FP8_REL_L2. */
static int write_checkpoints(const char *root) {
    static const mr_arch arch[3] = {MR_ARCH_LLAMA, MR_ARCH_QWEN2, MR_ARCH_GEMMA2};
    static const char *const an[3] = {"llama", "qwen2", "gemma2"};
    static const int hds[3] = {128, 64, 256};
    mr_err err = {0};
    char dir[512];
    mr_config cfg;
    for (int k = 0; k < 11; k++) {
        int a = k < 6 ? k / 2 : k < 9 ? k - 6 : 0;
        tiny_config(&cfg, arch[a], k < 6 && k % 2 ? MR_DT_BF16 : MR_DT_F32);
        if (k < 6) snprintf(dir, sizeof dir, "%s/%s-%s", root, an[a], k % 2 ? "bf16" : "f32");
        else if (k < 9) snprintf(dir, sizeof dir, "%s/%s-hd%d", root, an[a], hds[a]);
        else snprintf(dir, sizeof dir, "%s/fp8-hd%d", root, k == 9 ? 8 : 128);
        if (k >= 6 && k < 9) cfg.head_dim = hds[a];
        if (k == 10) cfg.head_dim = 128;
        mkdir(dir, 0755);
        if (mr_seeded_write(&cfg, dir, 7, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    }
    return 0;
}

/* Which group runs is the first argument: none, the CPU group; "cuda", the CUDA group (its own
 * ctest entry, test_backend_cuda). The CUDA group exits 77 (ctest's SKIP_RETURN_CODE for it)
 * when every one of its cases skipped, so a machine without a CUDA build or device reports it
 * Skipped, never Passed; a partial skip is a failure (both cases need the same device). */
int main(int argc, char **argv) {
    const struct CMUnitTest cpu_tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_cpu_equals_model_score),
        cmocka_unit_test(test_cuda_loaded_on_demand), /* after the CPU cases: it loads CUDA */
    };
    const struct CMUnitTest cuda_tests[] = {
        cmocka_unit_test(test_cuda_equals_cpu),
        cmocka_unit_test(test_cuda_fp8_near_cpu),
    };
    enum { N_CUDA = sizeof cuda_tests / sizeof cuda_tests[0] };
    if (argc == 1) return cmocka_run_group_tests_name("cpu", cpu_tests, NULL, NULL);
    if (argc == 3 && !strcmp(argv[1], "module")) {
        const struct CMUnitTest module_tests[] = {cmocka_unit_test(test_module_refused)};
        if (!getenv("MR_CUDA_MODULE")) {
            fprintf(stderr, "test_backend module: set MR_CUDA_MODULE\n");
            return 2;
        }
        g_expect = argv[2];
        return cmocka_run_group_tests_name("module", module_tests, NULL, NULL);
    }
    if (argc == 3 && !strcmp(argv[1], "write")) return write_checkpoints(argv[2]);
    if (argc != 2 || strcmp(argv[1], "cuda")) {
        fprintf(stderr, "usage: %s [cuda | write DIR | module EXPECTED-MESSAGE]\n", argv[0]);
        return 2;
    }
    int failed = cmocka_run_group_tests_name("cuda", cuda_tests, NULL, NULL);
    if (failed) return 1; /* never 77 by accident */
    if (g_skipped == N_CUDA) {
        printf("SKIPPED: every CUDA case skipped (no CUDA build or no device), exit 77\n");
        return 77;
    }
    if (g_skipped) {
        printf("FAIL: %d of %d CUDA cases skipped, the others ran on the same device\n",
               g_skipped, (int)N_CUDA);
        return 1;
    }
    return 0;
}
